local job_id = redis.call('LPOP', KEYS[1])
if not job_id then return {false, 0} end
redis.call('ZADD', KEYS[2], ARGV[1], job_id)
return {job_id, redis.call('LLEN', KEYS[1])}
