local since = tonumber(ARGV[2])
local function judged(key, ms_key)
  local flat = redis.call('HGETALL', key)
  local seconds, sum = {}, 0
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s >= since then
      sum = sum + tonumber(flat[i + 1])
      seconds[#seconds + 1] = s
    end
  end
  if sum == 0 then return 0, 0 end
  table.sort(seconds)
  local ms_of = {}
  flat = redis.call('HGETALL', ms_key)
  for i = 1, #flat, 2 do ms_of[tonumber(flat[i])] = tonumber(flat[i + 1]) end
  local busy = 0
  for k, s in ipairs(seconds) do
    local ms = ms_of[s] or 0
    if k > 1 then ms = math.min(ms, (s - seconds[k - 1]) * 1000) end
    busy = busy + ms
  end
  return sum, busy
end
local mine = redis.call('HGET', KEYS[1], ARGV[1])
if not mine then
  local sum, busy = judged(KEYS[4], KEYS[5])
  return {0, 0, sum, busy}
end
local created = tonumber(string.match(mine, '^(%S+)'))
local ahead = 0
local flat = redis.call('HGETALL', KEYS[1])
for i = 2, #flat, 2 do
  local at, left = string.match(flat[i], '^(%S+) (%S+)$')
  if tonumber(at) <= created then ahead = ahead + tonumber(left) end
end
local sum, busy = judged(KEYS[2], KEYS[3])
return {1, ahead, sum, busy}
