-- ArchMesh notifier: close a digest window whose time has come, atomically: its events become
-- one request on the intake stream (the digest's id is the request's id, so it is processed
-- once), the window is deleted, and its due job removed. A window not due yet (a sliding one
-- was pushed later) is re-scheduled instead; a window already closed leaves only its job to drop.
-- ARGV[1]: JSON {due, member, window, events, data, now (ms), stream, field, marker}
-- Returns the number of events sent in the digest (0: none, or not closed now).
local p = cjson.decode(ARGV[1])
if redis.call('EXISTS', p.window) == 0 then
  redis.call('ZREM', p.due, p.member)
  return 0
end
local closes = tonumber(redis.call('HGET', p.window, 'closes'))
if closes > p.now then
  redis.call('ZADD', p.due, closes, p.member)
  return 0
end
local id, pointer, skeleton, show = unpack(redis.call('HMGET', p.window, 'id', 'pointer',
  'skeleton', 'show'))
local count = redis.call('ZCARD', p.events)
if count > 0 then
  local ids = redis.call('ZRANGE', p.events, 0, tonumber(show) - 1)
  local events = redis.call('HMGET', p.data, unpack(ids))
  -- Spliced as text: the events' JSON goes through untouched (cjson would turn [] into {}).
  local request = string.sub(skeleton, 1, -2) .. ',"data":{"count":' .. count
    .. ',"events":[' .. table.concat(events, ',') .. ']}}'
  redis.call('XADD', p.stream, '*', p.field, request, p.marker, '1')
end
redis.call('DEL', p.window, p.events, p.data)
if redis.call('GET', pointer) == id then
  redis.call('DEL', pointer)
end
redis.call('ZREM', p.due, p.member)
return count
