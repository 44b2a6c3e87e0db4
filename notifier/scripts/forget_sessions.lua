-- Forget the workflow sessions one user owns, in one shard (an erasure, partitioned).
-- KEYS[1] the shard's sessions hash; ARGV[1] the user id. Returns how many were forgotten.
local sessions = redis.call('HGETALL', KEYS[1])
local forgotten = 0
for i = 1, #sessions, 2 do
  local ok, state = pcall(cjson.decode, sessions[i + 1])
  if ok and type(state) == 'table' and state.owner == ARGV[1] then
    redis.call('HDEL', KEYS[1], sessions[i])
    forgotten = forgotten + 1
  end
end
return forgotten
