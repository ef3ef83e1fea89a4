-- Phase 2 of ending a user's sessions and/or tokens, with every key it touches declared (Redis Cluster routes a
-- script by its KEYS and, while a slot migrates, answers TRYAGAIN instead of half-doing the work).
-- KEYS: session index, family index, not-before, then ARGV[3] session keys, then the family keys.
-- ARGV: the session members and family members read in phase 1 (sorted, '\n'-joined), the number of session keys,
-- not_before, not_before_ttl_ms, '1' to end the sessions, '1' to revoke the tokens. Returns -1 when the members
-- changed in between (the caller reads them again), else the number of sessions ended.
local function listed(key)
  local members = redis.call('SMEMBERS', key)
  table.sort(members)
  return table.concat(members, '\n')
end
if ARGV[6] == '1' and listed(KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[7] == '1' and listed(KEYS[2]) ~= ARGV[2] then return -1 end
local sessions = tonumber(ARGV[3])
local n = 0
for i = 4, 3 + sessions do n = n + redis.call('DEL', KEYS[i]) end
for i = 4 + sessions, #KEYS do redis.call('DEL', KEYS[i]) end
if ARGV[6] == '1' then redis.call('DEL', KEYS[1]) end
if ARGV[7] == '1' then
  redis.call('DEL', KEYS[2])
  local current = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tonumber(ARGV[4]) > current then redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5]) end
end
return n
