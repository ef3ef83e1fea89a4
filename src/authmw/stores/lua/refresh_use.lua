-- A refresh token's use: marked used and its successor stored, atomically; a reuse revokes the family.
-- KEYS: the token, its family, its successor, and (when bound to one) its session: every key declared (Cluster).
-- ARGV: now, grace, successor expiry, successor ttl_ms, the family and the session read in phase 1.
local r = redis.call('HMGET', KEYS[1], 'uid', 'fam', 'scopes', 'exp', 'sess', 'auth', 'used')
if not r[1] or r[2] ~= ARGV[5] or r[5] ~= ARGV[6] then return {'invalid'} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'revoked'} end
if r[5] ~= '' and (not KEYS[4] or redis.call('EXISTS', KEYS[4]) == 0) then
  redis.call('DEL', KEYS[2])
  return {'revoked'}
end
local now = tonumber(ARGV[1])
local used = tonumber(r[7])
local outcome = 'ok'
if used > 0 then
  if tonumber(ARGV[2]) <= 0 or now - used > tonumber(ARGV[2]) then
    redis.call('DEL', KEYS[2])
    return {'reuse', r[1], r[2], r[3], r[4], r[5], r[6], r[7]}
  end
  outcome = 'grace'
else
  redis.call('HSET', KEYS[1], 'used', ARGV[1])
  used = ARGV[1]
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], 'uid', r[1], 'fam', r[2], 'scopes', r[3], 'exp', ARGV[3], 'sess', r[5],
             'auth', r[6], 'used', '0')
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return {outcome, r[1], r[2], r[3], r[4], r[5], r[6], tostring(used)}
