-- Who is present in a channel: the clients (ARGV[1] = 'list') or only how many clients and
-- distinct users (ARGV[1] = 'count'), after dropping the entries whose time ran out (their
-- node died). Each expired entry is dropped once, so a count is O(1) beyond that clean-up.
-- KEYS as in join.lua. 'list' returns a flat list: client id, details, client id, details, ...
-- 'count' returns {connections, users}.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms)
for _, id in ipairs(gone) do
  local info = redis.call('HGET', KEYS[2], id)
  if info then
    local user = cjson.decode(info)['user_id']
    if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
      redis.call('HDEL', KEYS[3], user)
    end
  end
end
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
end
if ARGV[1] == 'count' then
  return {redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[3])}
end
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local reply = {}
for _, id in ipairs(ids) do
  local info = redis.call('HGET', KEYS[2], id)
  if info then
    reply[#reply + 1] = id
    reply[#reply + 1] = info
  end
end
return reply
