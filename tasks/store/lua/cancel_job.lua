local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  if status == 'queued' then redis.call('HDEL', KEYS[2], ARGV[2]) end
  return 'cancelled'
end
return status
