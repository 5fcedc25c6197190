-- KEYS[11..]: markers of further batches merged together with this one (a micro-batch's
-- jobs): all or none of them are merged.
for k = 11, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then return 0 end
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for k = 11, #KEYS do redis.call('SET', KEYS[k], '1', 'EX', ARGV[1]) end
local history_max = tonumber(ARGV[2])
local sqrt = math.sqrt
local alpha, clip, warm = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local n_fields = tonumber(ARGV[12])
local i = 13
for _ = 1, n_fields do
  local field = ARGV[i]
  local n, ref, off, m2 = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]),
                          tonumber(ARGV[i + 4])
  i = i + 5
  local current = redis.call('HGET', KEYS[2], field)
  if current then
    local na, ka, oa, qa = moments(current)
    -- A baseline made inf or nan before values were bounded starts over from this batch.
    if finite(ka) and finite(oa) and finite(qa) then
      local total = na + n
      -- The batch's mean about the stored reference (close references: exact difference);
      -- delta * (delta * w) with w <= min(na, n): nothing larger than the result.
      local delta = ((ref - ka) + off) - oa
      off = oa + delta * (n / total)
      m2 = qa + m2 + delta * (delta * (na * n / total))
      ref, n = ka, total
    end
  end
  ref, off = rebased(ref, off)
  -- Never store a non-finite result: the field keeps its moments (values are bounded by
  -- MAX_MAGNITUDE before they get here, so this guards, it does not happen).
  if finite(ref) and finite(off) and finite(m2) then
    redis.call('HSET', KEYS[2], field, moments_text(n, ref, off, m2))
  end
end
-- Recent baselines: every value in time order, clipped to mean +/- clip*std once warm.
-- The weight is 1/n until that falls below alpha (a plain mean while young, so the first
-- value does not dominate), then alpha (forgetting with the configured half-life).
-- Stored as 'n,ref,mean,var' like the all-time moments: the loop works on values about ref
-- (the rounded mean), mean being their offset from it, so a field far from zero (1e13 +/- 1)
-- keeps its precision; 'n,mean,var' as stored before reads as ref = mean.
-- ARGV[11]: per field, its level shifts in this batch ({k, mean, var}: after its k-th value
-- the baseline re-seeds at that mean and variance; tasks.level_shifts), in order.
local reseeds = cjson.decode(ARGV[11])
for field, values in pairs(cjson.decode(ARGV[8])) do
  local n, ref, mean, var = 0, values[1], 0, 0
  local current = redis.call('HGET', KEYS[7], field)
  if current then n, ref, mean, var = moments(current) end
  if not (finite(ref) and finite(mean) and finite(var)) then  -- made inf or nan before
    n, ref, mean, var = 0, values[1], 0, 0                    -- values were bounded
  end
  -- The loop that costs: about half the script's time for a 1,000-event chunk. A local
  -- sqrt and no math.max call took about a sixth off the whole script (four alternating
  -- runs: 11-30%), with the same figures to the bit.
  -- Between re-seeds (usually none: one pass over all the values).
  local marks, from = reseeds[field] or {}, 1
  for m = 1, #marks + 1 do
    local to = marks[m] and marks[m][1] or #values
    for k = from, to do
      local x = values[k] - ref
      if n >= warm then
        local band = clip * sqrt(var)
        if x > mean + band then x = mean + band elseif x < mean - band then x = mean - band end
      end
      n = n + 1
      local w = 1 / n
      if w < alpha then w = alpha end
      local d = x - mean
      mean = mean + w * d
      var = (1 - w) * (var + w * d * d)
    end
    if marks[m] then ref, mean, var = marks[m][2], 0, marks[m][3] end  -- n goes on counting
    from = to + 1
  end
  ref, mean = rebased(ref, mean)
  if finite(ref) and finite(mean) and finite(var) then  -- as the all-time moments
    redis.call('HSET', KEYS[7], field, moments_text(n, ref, mean, var))
  end
  redis.call('HSET', KEYS[8], field, string.format('%.17g', values[#values]))
end
local rows = #ARGV - i + 1
local j = i
while j <= #ARGV do
  local last = math.min(j + 999, #ARGV)
  redis.call('RPUSH', KEYS[3], unpack(ARGV, j, last))
  j = last + 1
end
if rows > 0 then
  redis.call('LTRIM', KEYS[3], -history_max, -1)
  redis.call('INCRBY', KEYS[4], rows)
end
redis.call('HINCRBY', KEYS[5], ARGV[3], rows)
redis.call('SADD', KEYS[6], ARGV[4] .. ':' .. ARGV[3])
-- Invalid events: counted, and the latest kept for the UI.
local flagged = cjson.decode(ARGV[9])
if #flagged > 0 then
  for k = 1, #flagged, 1000 do
    local chunk = {}
    for m = k, math.min(k + 999, #flagged) do chunk[#chunk + 1] = cjson.encode(flagged[m]) end
    redis.call('RPUSH', KEYS[9], unpack(chunk))
  end
  redis.call('LTRIM', KEYS[9], -ARGV[10], -1)
  redis.call('HINCRBY', KEYS[10], ARGV[3], #flagged)
end
return 1
