local n = tonumber(ARGV[2])
if n > 0 then
  count_judged(KEYS[2], KEYS[3], tonumber(ARGV[4]), n, ARGV[3], ARGV[5], tonumber(ARGV[6]),
               tonumber(ARGV[7]))
end
local mine = redis.call('HGET', KEYS[1], ARGV[1])
if mine then
  local created = string.match(mine, '^(%S+)')
  redis.call('HSET', KEYS[1], ARGV[1], created .. ' ' .. ARGV[8])
end
