local before = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
local done, now = tonumber(ARGV[1]), tonumber(ARGV[3])
local since = tonumber(redis.call('HGET', KEYS[1], 'progress_at')
                       or redis.call('HGET', KEYS[1], 'started_at') or ARGV[3])
redis.call('HSET', KEYS[1], 'done', done, 'progress_at', ARGV[3])
if done > before then
  count_judged(KEYS[3], KEYS[4], math.floor(now), done - before,
               math.max(0, math.floor((now - since) * 1000)), ARGV[4], tonumber(ARGV[5]),
               tonumber(ARGV[6]))
end
local mine = redis.call('HGET', KEYS[2], ARGV[2])
if mine then
  local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
  local created = string.match(mine, '^(%S+)')
  redis.call('HSET', KEYS[2], ARGV[2], created .. ' ' .. math.max(total - done, 0))
end
