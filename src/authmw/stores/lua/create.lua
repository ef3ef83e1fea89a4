-- A new session and its place in the user's index.
-- KEYS[1] session, KEYS[2] user index; ARGV: value, ttl_ms, sid, index_ttl_ms
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
return 1
