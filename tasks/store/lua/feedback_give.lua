local before = redis.call('HGET', KEYS[1], ARGV[1])
local before_label, before_note = '', ''
if before then
  local old = cjson.decode(before)
  before_label = old.label or ''
  before_note = old.note or ''
end
local label, valid = ARGV[2], ARGV[4] == '1'
local function member(l) if valid then return l ~= 'confirmed' else return l == 'false_alarm' end end
local was, now = member(before_label), member(label)
local record = ARGV[3] ~= '' and cjson.decode(ARGV[3]) or nil
if before_label == label and before_note == ((record and record.note) or '') then
  return {0, now and 1 or 0}
end
if was ~= now then
  local sign = now and 1 or -1
  for i = 10, #ARGV, 2 do
    local field, x = ARGV[i], tonumber(ARGV[i + 1])
    local raw = redis.call('HGET', KEYS[3], field)
    if raw then
      local n, ref, off, m2 = moments(raw)
      local delta = (x - ref) - off
      if sign > 0 then
        n = n + 1
        off = off + delta / n
        m2 = m2 + delta * ((x - ref) - off)
      elseif n <= 1 then
        n = 0
      else
        -- The exact inverse of adding x: the mean and m2 of the other n - 1 values.
        off = off - delta / (n - 1)
        m2 = m2 - delta * delta * n / (n - 1)
        if m2 < 0 then m2 = 0 end
        n = n - 1
      end
      if n == 0 then
        redis.call('HDEL', KEYS[3], field)
      else
        ref, off = rebased(ref, off)
        if finite(ref) and finite(off) and finite(m2) then
          redis.call('HSET', KEYS[3], field, moments_text(n, ref, off, m2))
        end
      end
    elseif sign > 0 then
      redis.call('HSET', KEYS[3], field, moments_text(1, x, 0, 0))
    end
  end
  if now then
    redis.call('RPUSH', KEYS[4], ARGV[5])
    redis.call('LTRIM', KEYS[4], -tonumber(ARGV[8]), -1)
    redis.call('INCR', KEYS[5])
    redis.call('HINCRBY', KEYS[6], ARGV[9], 1)
  else
    redis.call('LREM', KEYS[4], 1, ARGV[5])
    redis.call('HINCRBY', KEYS[6], ARGV[9], -1)
  end
end
-- Spliced into the JSON as text: cjson.encode would round timestamps to 14 digits.
if record then
  redis.call('HSET', KEYS[1], ARGV[1],
             string.sub(ARGV[3], 1, -2) .. ',"in_history":' .. tostring(now) .. '}')
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('LPUSH', KEYS[2], string.sub(ARGV[6], 1, -2) .. ',"before":' .. (before or 'null') .. '}')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
return {1, now and 1 or 0}
