redis.call('SET', KEYS[3], ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZINCRBY', KEYS[1], ARGV[2], ARGV[1])
end
return 1
