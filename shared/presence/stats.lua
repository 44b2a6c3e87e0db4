-- How many clients and distinct users are present in a channel, without listing them: the
-- expired entries are dropped first (as in members.lua; each is dropped once, so the work is
-- that of the entries that expired, then O(1)), then ZCARD and HLEN.
-- KEYS as in join.lua. Returns {connections, users}.
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
return {redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[3])}
