local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return -1
end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'progress_at')  -- a redelivery's judging time counts from now
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
