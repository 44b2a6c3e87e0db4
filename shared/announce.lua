-- ArchMesh node announcements: which gateway and notifier processes are alive, and their figures.
-- KEYS[1]: zset node id -> expiry (ms, this server's clock); KEYS[2]: hash node id -> JSON.
-- Both keys carry the hash tag {nodes}: one slot, so this runs on Redis Cluster too.
-- ARGV[1]: 'announce' | 'withdraw' | 'list'; ARGV[2]: node id; ARGV[3]: TTL ms; ARGV[4]: JSON.
-- Expiry is judged by the server's clock alone (TIME), so nodes with skewed clocks agree.
-- Returns, for 'list', the JSON of every node whose announcement has not expired.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
end
local action = ARGV[1]
if action == 'announce' then
  local ttl = tonumber(ARGV[3])
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
  -- A deployment that stopped altogether leaves nothing behind for long.
  redis.call('PEXPIRE', KEYS[1], ttl * 10)
  redis.call('PEXPIRE', KEYS[2], ttl * 10)
  return {}
elseif action == 'withdraw' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  return {}
end
local alive = redis.call('ZRANGE', KEYS[1], 0, -1)
if #alive == 0 then
  return {}
end
local found = redis.call('HMGET', KEYS[2], unpack(alive))
local out = {}
for _, value in ipairs(found) do
  if value then
    out[#out + 1] = value
  end
end
return out
