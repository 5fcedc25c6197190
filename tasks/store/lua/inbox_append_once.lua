if redis.call('ZSCORE', KEYS[2], ARGV[1]) or redis.call('LPOS', KEYS[1], ARGV[1]) then
  return 0
end
return redis.call('RPUSH', KEYS[1], ARGV[1])
