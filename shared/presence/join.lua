-- Add or refresh one client's presence in a channel.
-- KEYS[1] sorted set client id -> expiry (ms), KEYS[2] hash client id -> details (JSON)
-- ARGV[1] client id, ARGV[2] details, ARGV[3] ttl in ms
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], ms + ttl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('PEXPIRE', KEYS[2], ttl * 2)
return 1
