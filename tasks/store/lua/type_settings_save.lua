local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[4]) then return -1 end
local before = redis.call('HGET', KEYS[1], 'overrides') or '{}'
if before == ARGV[1] then return version end
version = version + 1
redis.call('HSET', KEYS[1], 'version', version, 'overrides', ARGV[1], 'updated_at', ARGV[2])
redis.call('LPUSH', KEYS[2], '{"version":' .. version .. ',"at":' .. ARGV[2] ..
           ',"before":' .. before .. ',"after":' .. ARGV[1] .. '}')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return version
