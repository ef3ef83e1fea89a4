-- One session's logout, with the refresh families issued from it.
-- KEYS[1] session, KEYS[2] user index, KEYS[3] the refresh families issued from the session, KEYS[4] the user's
-- family index, then the keys of the families the caller expects; ARGV: sid, those families (sorted, '\n'-joined).
-- Returns the session's families when they are not the ones expected (the caller declares those and runs it again:
-- every key a script touches is declared, for Redis Cluster), else the number of sessions deleted.
local families = redis.call('SMEMBERS', KEYS[3])
table.sort(families)
if table.concat(families, '\n') ~= ARGV[2] then return families end
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if #families > 0 then
  for i = 5, #KEYS do redis.call('DEL', KEYS[i]) end
  redis.call('SREM', KEYS[4], unpack(families))
  redis.call('DEL', KEYS[3])
end
return n
