-- A session's record, its absolute expiry enforced and its idle TTL slid at most once per touch interval.
-- KEYS[1] session; ARGV: now_ms, touch_interval_ms. Returns false or {value, pttl}.
local v = redis.call('GET', KEYS[1])
if not v then return false end
local abs, idle = string.match(v, '^(%d+):(%d+):')
if not abs then return {v, 0} end
abs = tonumber(abs); idle = tonumber(idle)
local now = tonumber(ARGV[1])
if abs <= now then redis.call('DEL', KEYS[1]); return false end
local pttl = redis.call('PTTL', KEYS[1])
local full = math.min(idle, abs - now)
if full - pttl >= tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], full)
  pttl = full
end
return {v, pttl}
