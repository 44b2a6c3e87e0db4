-- Add or refresh clients' presence in one channel (one call covers every client a node has
-- there: a node's periodic refresh is one call per channel, pipelined).
-- KEYS[1] sorted set client id -> expiry (ms), KEYS[2] hash client id -> details (JSON),
-- KEYS[3] hash user id -> number of present clients of that user
-- ARGV[1] ttl in ms, then pairs: client id, details (JSON with user_id)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local id, info = ARGV[i], ARGV[i + 1]
  local known = redis.call('HGET', KEYS[2], id)
  if not known then
    redis.call('HINCRBY', KEYS[3], cjson.decode(info)['user_id'], 1)
  end
  redis.call('ZADD', KEYS[1], ms + ttl, id)
  redis.call('HSET', KEYS[2], id, info)
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('PEXPIRE', KEYS[2], ttl * 2)
redis.call('PEXPIRE', KEYS[3], ttl * 2)
return 1
