-- One login-throttle counter (authmw.throttle): `decide` in Lua; keep the two the same (tests/test_throttle.py
-- runs both on the same operations).
-- KEYS[1] the counter (a hash: n, until); ARGV: op, now_ms, free, first_ms, max_ms, window_ms.
local key, op = KEYS[1], ARGV[1]
if op == 'clear' then redis.call('DEL', key); return 0 end
local now, free = tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', key, 'n', 'until')
local count, locked = tonumber(state[1]) or 0, tonumber(state[2]) or 0
if op == 'undo' then
  if count <= 1 then redis.call('DEL', key); return 0 end
  if count - 1 < free then locked = 0 end
  redis.call('HSET', key, 'n', count - 1, 'until', locked)
  return 0
end
if now < locked then return locked - now end
count = count + 1
local lock = 0
if count >= free then
  lock = math.min(tonumber(ARGV[4]) * 2 ^ math.min(count - free, 40), tonumber(ARGV[5]))
  locked = now + lock
end
redis.call('HSET', key, 'n', count, 'until', locked)
redis.call('PEXPIRE', key, tonumber(ARGV[6]) + lock)
return 0
