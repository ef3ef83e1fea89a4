-- Phase 1 of ending a user's sessions and/or tokens (end_user.lua): both member lists.
-- KEYS[1] session index, KEYS[2] refresh-family index.
return {redis.call('SMEMBERS', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
