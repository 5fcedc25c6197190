if redis.call('SADD', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 1
   and redis.call('EXISTS', KEYS[2]) == 0 then
  return 1
end
return 0
