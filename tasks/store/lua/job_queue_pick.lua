local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #head == 0 then return false end
redis.call('SET', KEYS[2], head[2])
return head[1]
