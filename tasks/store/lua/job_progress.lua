local before = redis.call('HGET', KEYS[1], 'done') or '0'
local since = redis.call('HGET', KEYS[1], 'progress_at')
              or redis.call('HGET', KEYS[1], 'started_at') or ARGV[2]
redis.call('HSET', KEYS[1], 'done', ARGV[1], 'progress_at', ARGV[2])
return {before, since, redis.call('HGET', KEYS[1], 'total') or '0'}
