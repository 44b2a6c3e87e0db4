-- Add or refresh clients' presence in one channel (one call covers many of a node's clients
-- there: a node's periodic refresh is a few calls per channel, pipelined).
-- KEYS[1] sorted set client id -> expiry (ms), KEYS[2] hash client id -> details (JSON),
-- KEYS[3] hash user id -> number of present clients of that user
-- ARGV[1] ttl in ms, then pairs: client id, details (JSON with user_id). A client's details
-- never change (a client id lives on one node, for one user): HSETNX enters them, and says
-- whether the client is new. The expiries go in one ZADD (a caller sends at most a few
-- thousand pairs a call: presence/redis.py).
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[1])
local expiries = {}
for i = 2, #ARGV, 2 do
  local id, info = ARGV[i], ARGV[i + 1]
  if redis.call('HSETNX', KEYS[2], id, info) == 1 then
    redis.call('HINCRBY', KEYS[3], cjson.decode(info)['user_id'], 1)
  end
  expiries[#expiries + 1] = ms + ttl
  expiries[#expiries + 1] = id
end
if #expiries > 0 then
  redis.call('ZADD', KEYS[1], unpack(expiries))
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('PEXPIRE', KEYS[2], ttl * 2)
redis.call('PEXPIRE', KEYS[3], ttl * 2)
return 1
