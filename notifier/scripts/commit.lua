-- ArchMesh notifier: record a batch's outcome and acknowledge its entries, atomically.
-- ARGV[1]: JSON {stream, group, attempts, dead, due, retention, inbox_size, stats_ttl,
--   items: [{key, fields: [f, v, ...], due: [score, member, ...], entry, lock, timeline,
--            inbox: {order, items, unread, id, score, payload} or absent}],
--   acks: [entry ids], dead_letters: [[entry, request, reason, failed_at]],
--   stats: [[key, field, count]]}
-- Returns, per item with an inbox entry (in order), the user's unread count after it.
local p = cjson.decode(ARGV[1])

local function ack(entry)
  redis.call('XACK', p.stream, p.group, entry)
  redis.call('XDEL', p.stream, entry)
  redis.call('HDEL', p.attempts, entry)
end

local unread = {}
for _, it in ipairs(p.items) do
  redis.call('HSET', it.key, unpack(it.fields))
  redis.call('EXPIRE', it.key, p.retention)
  if #it.due > 0 then
    redis.call('ZADD', p.due, unpack(it.due))
  end
  -- The notification's timeline (ops console): each `ch:<medium>` field written is one entry
  -- {"medium", "delivery"}, as notifier/status.py's timeline_entry writes later changes.
  if it.timeline then
    for i = 1, #it.fields, 2 do
      local name = it.fields[i]
      if string.sub(name, 1, 3) == 'ch:' then
        redis.call('RPUSH', it.timeline, '{"medium":' .. cjson.encode(string.sub(name, 4)) ..
          ',"delivery":' .. it.fields[i + 1] .. '}')
      end
    end
    redis.call('EXPIRE', it.timeline, p.retention)
  end
  local box = it.inbox
  if box then
    redis.call('ZADD', box.order, box.score, box.id)
    redis.call('HSET', box.items, box.id, box.payload)
    redis.call('SADD', box.unread, box.id)
    local excess = redis.call('ZCARD', box.order) - p.inbox_size
    if excess > 0 then
      local old = redis.call('ZRANGE', box.order, 0, excess - 1)
      redis.call('ZREMRANGEBYRANK', box.order, 0, excess - 1)
      redis.call('HDEL', box.items, unpack(old))
      redis.call('SREM', box.unread, unpack(old))
    end
    unread[#unread + 1] = redis.call('SCARD', box.unread)
  end
  ack(it.entry)
  redis.call('DEL', it.lock)
end
for _, entry in ipairs(p.acks) do
  ack(entry)
end
for _, d in ipairs(p.dead_letters) do
  redis.call('XADD', p.dead, 'MAXLEN', '~', 100000, '*',
    'request', d[2], 'reason', d[3], 'entry', d[1], 'failed_at', d[4])
  ack(d[1])
end
for _, s in ipairs(p.stats) do
  redis.call('HINCRBY', s[1], s[2], s[3])
  redis.call('EXPIRE', s[1], p.stats_ttl)
end
return unread
