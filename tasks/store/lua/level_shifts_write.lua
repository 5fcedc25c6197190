for k = 3, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then return 0 end
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[2], ARGV[1]) end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
