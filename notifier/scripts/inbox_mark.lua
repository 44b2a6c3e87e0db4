-- ArchMesh notifier: mark inbox items and publish the user's new counts, in one atomic step,
-- so the counts an event carries are the store's at that moment and every change of them is
-- published exactly once (two clients marking at once can never leave a stale last event).
-- KEYS: order, items, unread, unseen, archived [, rt:{user:<id>}:meta, rt:{user:<id>}:history]
-- ARGV: op (seen | read | archive | unarchive), all ("1": every item, else the ids),
--       size, ttl_ms (the user channel's history retention), ids...
-- Read implies seen and archived implies read, so the counts are the two sets' sizes.
-- With the channel keys, a change of either count publishes {"type": "inbox", "unseen": n,
-- "unread": m} through `publish`: the gateway's publish script, prepended as a function by
-- notifier/live.py (same history, offsets and pub/sub message as any other publication).
-- Returns {unseen, unread, changed (1 if either count changed), found (1 or 0 per id)...}.
local order, unread, unseen, archived = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local op, all = ARGV[1], ARGV[2] == '1'
local before_unseen = redis.call('SCARD', unseen)
local before_unread = redis.call('SCARD', unread)
local found = {}

if all then
  if op == 'archive' then
    local ids = redis.call('ZRANGE', order, 0, -1)
    for i = 1, #ids, 1000 do
      redis.call('SADD', archived, unpack(ids, i, math.min(i + 999, #ids)))
    end
  end
  if op == 'unarchive' then
    redis.call('DEL', archived)
  else
    redis.call('DEL', unseen)
    if op ~= 'seen' then
      redis.call('DEL', unread)
    end
  end
else
  for i = 5, #ARGV do
    local id = ARGV[i]
    if redis.call('ZSCORE', order, id) then
      found[#found + 1] = 1
      if op == 'unarchive' then
        redis.call('SREM', archived, id)
      else
        redis.call('SREM', unseen, id)
        if op ~= 'seen' then
          redis.call('SREM', unread, id)
        end
        if op == 'archive' then
          redis.call('SADD', archived, id)
        end
      end
    else
      found[#found + 1] = 0
    end
  end
end

local after_unseen = redis.call('SCARD', unseen)
local after_unread = redis.call('SCARD', unread)
local changed = 0
if after_unseen ~= before_unseen or after_unread ~= before_unread then
  changed = 1
end
if KEYS[6] and changed == 1 then
  local data = '{"type":"inbox","unseen":' .. after_unseen .. ',"unread":' .. after_unread .. '}'
  local reply = publish({KEYS[6], KEYS[7]}, {data, ARGV[3], ARGV[4], '0', '', '1'}) -- built here
  if reply.err then
    return reply
  end
end
return {after_unseen, after_unread, changed, unpack(found)}
