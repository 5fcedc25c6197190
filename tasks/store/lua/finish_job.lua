local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then return 0 end
for i = 1, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return redis.call('HGET', KEYS[1], 'created_at') or ''
