-- A session's new id, atomically: nothing when the old one is gone (never a resurrection).
-- KEYS[1] old session, KEYS[2] new session, KEYS[3] user index; ARGV: value, ttl_ms, old sid, new sid, index_ttl
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end
return 1
