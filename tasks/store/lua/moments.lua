local huge = math.huge
local function finite(x) return x == x and x < huge and x > -huge end
local function moments(raw)
  local a, b, c, d = string.match(raw, '^([^,]+),([^,]+),([^,]+),?([^,]*)$')
  if d == '' then return tonumber(a), tonumber(b), 0, tonumber(c) end
  return tonumber(a), tonumber(b), tonumber(c), tonumber(d)
end
-- ref + off as the nearest float and its exact rounding error (TwoSum): the new reference
-- is the rounded mean, the offset keeps what rounding lost.
local function rebased(ref, off)
  local s = ref + off
  local bb = s - ref
  return s, (ref - (s - bb)) + (off - bb)
end
local function moments_text(n, ref, off, m2)
  return string.format('%d,%.17g,%.17g,%.17g', n, ref, off, m2)
end
