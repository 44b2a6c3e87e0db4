-- Remove one client's presence. KEYS as in join.lua; ARGV[1] client id.
local info = redis.call('HGET', KEYS[2], ARGV[1])
if info then
  local user = cjson.decode(info)['user_id']
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
    redis.call('HDEL', KEYS[3], user)
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
