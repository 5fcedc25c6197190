return counted(KEYS[1], ARGV[1])
