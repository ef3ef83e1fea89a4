-- A refresh token (and, for a new family, the family), unless revoked meanwhile or its session is gone.
-- KEYS[1] token, KEYS[2] family, KEYS[3] family index, KEYS[4] the user's not-before, KEYS[5] the bound
-- session and KEYS[6] its families (when there is one); ARGV: uid, family, scopes, exp, session, auth_time,
-- token_ttl_ms, family_ttl_ms, new_family, created
if ARGV[10] ~= '0' then
  -- a logout-everywhere that landed while these tokens were being issued
  local revoked = redis.call('GET', KEYS[4])
  if revoked and tonumber(revoked) >= tonumber(ARGV[10]) then return 0 end
end
local absolute = nil
if ARGV[5] ~= '' then
  -- the bound session must exist and be this user's
  if not KEYS[5] then return 0 end
  local v = redis.call('GET', KEYS[5])
  local payload = v and string.match(v, '^%d+:%d+:(.*)$')
  if not payload then return 0 end
  local ok, body = pcall(cjson.decode, payload)
  if not ok or type(body) ~= 'table' or body['uid'] ~= ARGV[1] then return 0 end
  absolute = string.match(v, '^(%d+):')
end
if ARGV[9] == '0' and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'uid', ARGV[1], 'fam', ARGV[2], 'scopes', ARGV[3], 'exp', ARGV[4],
           'sess', ARGV[5], 'auth', ARGV[6], 'used', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[7])
if ARGV[9] == '1' then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[8])
  redis.call('SADD', KEYS[3], ARGV[2])
  if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[8]) then redis.call('PEXPIRE', KEYS[3], ARGV[8]) end
  if absolute and KEYS[6] then
    -- the session's families, which its logout revokes: kept while the session may live
    redis.call('SADD', KEYS[6], ARGV[2])
    redis.call('PEXPIREAT', KEYS[6], absolute)
  end
end
return 1
