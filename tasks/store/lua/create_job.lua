if redis.call('EXISTS', KEYS[1]) == 1 then return -2 end
local limit = tonumber(ARGV[6])
if limit > 0 and counted(KEYS[5], ARGV[7]) > limit then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[6], ARGV[8], ARGV[9]) end
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[1]) end
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, ARGV[2])
if ARGV[5] ~= '' then return redis.call('RPUSH', KEYS[4], ARGV[5]) end
return 0
