-- ArchMesh topics (archmesh_client/topics.py): add a topic to a user's set of topics unless the user already follows the
-- most allowed, in one step, so subscribes at once cannot pass the limit together.
-- KEYS[1] the user's set of topics; ARGV[1] the topic, ARGV[2] the limit (-1: none).
-- Returns 1 added, 0 followed already (allowed at the limit), -1 the limit is reached.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return 0
end
local limit = tonumber(ARGV[2])
if limit >= 0 and redis.call('SCARD', KEYS[1]) >= limit then
  return -1
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
