local current = redis.call('HGET', KEYS[1], 'current')
if current then
  redis.call('HSET', KEYS[1], 'previous', current, 'previous_expires_at', ARGV[3])
end
redis.call('HSET', KEYS[1], 'current', ARGV[1], 'created_at', ARGV[2])
if current then return 1 end
return 0
