local clock = redis.call('GET', KEYS[2]) or '0'
return redis.call('ZADD', KEYS[1], 'NX', clock, ARGV[1])
