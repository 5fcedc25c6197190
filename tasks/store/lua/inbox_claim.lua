local taken = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #taken == 0 then return taken end
redis.call('LTRIM', KEYS[1], #taken, -1)
for _, entry in ipairs(taken) do redis.call('ZADD', KEYS[2], ARGV[2], entry) end
return taken
