local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for i = #lapsed, 1, -1 do
  redis.call('ZREM', KEYS[2], lapsed[i])
  redis.call('LPUSH', KEYS[1], lapsed[i])
end
return {#lapsed, redis.call('LLEN', KEYS[1])}
