local function count_judged(events_key, ms_key, second, n, ms, ttl, kept, window)
  redis.call('HINCRBY', events_key, second, n)
  redis.call('HINCRBY', ms_key, second, ms)
  for _, key in ipairs({events_key, ms_key}) do
    redis.call('EXPIRE', key, ttl)
    if redis.call('HLEN', key) > kept then
      for _, s in ipairs(redis.call('HKEYS', key)) do
        if tonumber(s) < second - window then redis.call('HDEL', key, s) end
      end
    end
  end
end
