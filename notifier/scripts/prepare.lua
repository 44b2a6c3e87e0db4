-- ArchMesh notifier: everything a batch of requests needs before it is planned, in one call.
-- ARGV: owner lock_ms n notification_prefix lock_prefix prefs_prefix template_prefix
--       then n pairs (id, user_id), then template names.
-- Returns per request: exists (0/1), locked (0/1), preferences JSON or nil; then per template
-- its JSON or nil. A request already recorded is not locked: it is a duplicate.
local owner, px, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n_prefix, lock_prefix, prefs_prefix, tpl_prefix = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local out = {}
for i = 0, n - 1 do
  local id, user = ARGV[8 + 2 * i], ARGV[9 + 2 * i]
  local exists = redis.call('HEXISTS', n_prefix .. id, 'meta')
  local locked = 0
  if exists == 0 and redis.call('SET', lock_prefix .. id, owner, 'NX', 'PX', px) then
    locked = 1
  end
  out[#out + 1] = exists
  out[#out + 1] = locked
  out[#out + 1] = redis.call('GET', prefs_prefix .. user)
end
for j = 8 + 2 * n, #ARGV do
  out[#out + 1] = redis.call('GET', tpl_prefix .. ARGV[j])
end
return out
