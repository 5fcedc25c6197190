if redis.call('EXISTS', KEYS[1]) == 1 then return -2 end
local limit = tonumber(ARGV[5])
if limit > 0 and counted(KEYS[4], ARGV[6]) > limit then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[1]) end
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, ARGV[2])
if ARGV[7] ~= '' then return redis.call('RPUSH', KEYS[5], ARGV[7]) end
return 0
