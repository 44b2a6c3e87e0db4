-- ArchMesh notifier: close a digest window whose time has come, atomically: its events become
-- one request on the intake stream (the digest's id is the request's id, so it is processed
-- once), the window is deleted, and its due job removed. A window not due yet (a sliding one
-- was pushed later) is re-scheduled instead; a window already closed leaves only its job to drop.
-- KEYS[1] the window (hash), KEYS[2] its events, KEYS[3] their content, KEYS[4] the due set,
-- KEYS[5] the intake stream, KEYS[6] the window's `pointer` as the caller read it (absent when
-- the window was gone): every key declared, all in the window's partition (one slot).
-- ARGV[1]: JSON {member, now (ms), field, marker}
-- Returns the number of events sent in the digest (0: none, or not closed now), or -1 when the
-- window's pointer is not the one declared (read it again).
local window, events, data, due, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local p = cjson.decode(ARGV[1])
if redis.call('EXISTS', window) == 0 then
  redis.call('ZREM', due, p.member)
  return 0
end
local id, pointer, skeleton, show, closes = unpack(redis.call('HMGET', window, 'id', 'pointer',
  'skeleton', 'show', 'closes'))
if pointer and pointer ~= KEYS[6] then
  return -1
end
closes = tonumber(closes)
if closes > p.now then
  redis.call('ZADD', due, closes, p.member)
  return 0
end
local count = redis.call('ZCARD', events)
if count > 0 then
  local ids = redis.call('ZRANGE', events, 0, tonumber(show) - 1)
  local found = redis.call('HMGET', data, unpack(ids))
  -- Spliced as text: the events' JSON goes through untouched (cjson would turn [] into {}).
  local request = string.sub(skeleton, 1, -2) .. ',"data":{"count":' .. count
    .. ',"events":[' .. table.concat(found, ',') .. ']}}'
  redis.call('XADD', stream, '*', p.field, request, p.marker, '1')
end
redis.call('DEL', window, events, data)
if pointer and redis.call('GET', pointer) == id then
  redis.call('DEL', pointer)
end
redis.call('ZREM', due, p.member)
return count
