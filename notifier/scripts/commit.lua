-- ArchMesh notifier: record a batch's outcome and acknowledge its entries, atomically.
-- ARGV[1]: JSON {stream, group, attempts, dead, due, retention, inbox_size, stats_ttl,
--   n, lock, tl (prefixes of a notification's status, lock and timeline: + its id),
--   owners: [before, after] (the user's index of notifications: before .. user .. after),
--   inbox (prefix of a user's inbox order: + user id; the other keys add :items, :unread,
--          :unseen, :archived),
--   items: [{id, fields: [f, v, ...], due: [score, member, ...], entry, user (if owner or inbox),
--            inbox: {score, payload,
--                    publish: {meta, history, size, ttl, prefix} or absent} or absent,
--            owner: creation ms (indexed in the user's notifications) or absent,
--            cancel: cancel index key or absent,
--            collect: {digest (as in prepare.lua), id, event, score, now} or absent}],
--   acks: [entry ids], dead_letters: [[entry, request, reason, failed_at]],
--   stats: [[key, field, count]]}
-- Returns, per item with an inbox entry (in order), the user's {unseen, unread} after it.
-- With `publish`, the item's event (`prefix` and the counts) is published on the user's
-- channel here, through the gateway's publish script (`publish`, prepended by
-- notifier/live.py): the counts it carries are the store's, in the same atomic step.
local p = cjson.decode(ARGV[1])

-- Entries and locks are let go of at the end, a few commands for the whole batch (each takes
-- many arguments) instead of four per entry: the same atomic step, far less script time.
local acked, locks = {}, {}

local function ack(entry)
  acked[#acked + 1] = entry
end

local function each_chunk(list, fn)
  for i = 1, #list, 1000 do
    fn(unpack(list, i, math.min(i + 999, #list)))
  end
end

-- The digest window open for the event's name (opened now if the last one closed since the
-- batch was prepared); the event joins it, and its close moves earlier (sliding, or full).
local function collect(c, key)
  local d = c.digest
  local id = redis.call('GET', d.pointer)
  if not id then
    id = d.id
    redis.call('SET', d.pointer, id)
    redis.call('HSET', d.window_prefix .. id, 'id', id, 'pointer', d.pointer,
      'skeleton', d.skeleton, 'opened', c.now, 'closes', c.now + d.window, 'max', d.max,
      'show', d.show, 'opener', '')
  end
  local window = d.window_prefix .. id
  local events, data = window .. ':ev', window .. ':data'
  redis.call('ZADD', events, c.score, c.id)
  redis.call('HSET', data, c.id, c.event)
  redis.call('HSET', key, 'dg', cjson.encode({events = events, data = data}))
  local closes = tonumber(redis.call('HGET', window, 'closes'))
  if d.sliding > 0 then
    local opened = tonumber(redis.call('HGET', window, 'opened'))
    closes = math.min(c.now + d.window, opened + d.sliding)
  end
  if redis.call('ZCARD', events) >= tonumber(redis.call('HGET', window, 'max')) then
    closes = math.min(closes, c.now)
    redis.call('DEL', d.pointer) -- full: the next event opens a new window
  end
  redis.call('HSET', window, 'closes', closes)
  redis.call('ZADD', p.due, closes, d.job_prefix .. id)
end

local unread = {}
for _, it in ipairs(p.items) do
  local key, timeline = p.n .. it.id, p.tl .. it.id
  redis.call('HSET', key, unpack(it.fields))
  redis.call('EXPIRE', key, p.retention)
  if #it.due > 0 then
    redis.call('ZADD', p.due, unpack(it.due))
  end
  if it.cancel then
    redis.call('SADD', it.cancel, it.id)
    redis.call('EXPIRE', it.cancel, p.retention)
  end
  if it.collect then
    collect(it.collect, key)
  end
  if it.owner then
    local index = p.owners[1] .. it.user .. p.owners[2]
    redis.call('ZADD', index, it.owner, it.id)
    -- Trimmed, and its lifetime renewed, only once that runs below the retention (to it and
    -- an eighth): a read per notification instead of two writes. Ids past the retention
    -- (their statuses gone) stay at most an eighth of it longer; an erasure skips them.
    if redis.call('TTL', index) < p.retention then
      redis.call('ZREMRANGEBYSCORE', index, '-inf', it.owner - p.retention * 1000)
      redis.call('EXPIRE', index, p.retention + math.floor(p.retention / 8))
    end
  end
  -- The notification's timeline (ops console): each `ch:<medium>` field written is one entry
  -- {"medium", "delivery"}, as notifier/status.py's timeline_entry writes later changes.
  for i = 1, #it.fields, 2 do
    local name = it.fields[i]
    if string.sub(name, 1, 3) == 'ch:' then
      redis.call('RPUSH', timeline, '{"medium":' .. cjson.encode(string.sub(name, 4)) ..
        ',"delivery":' .. it.fields[i + 1] .. '}')
    end
  end
  redis.call('EXPIRE', timeline, p.retention)
  local box = it.inbox
  if box then
    local order = p.inbox .. it.user
    local items, unread_ids, unseen = order .. ':items', order .. ':unread', order .. ':unseen'
    redis.call('ZADD', order, box.score, it.id)
    redis.call('HSET', items, it.id, box.payload)
    redis.call('SADD', unread_ids, it.id)
    redis.call('SADD', unseen, it.id)
    local excess = redis.call('ZCARD', order) - p.inbox_size
    if excess > 0 then
      local old = redis.call('ZRANGE', order, 0, excess - 1)
      redis.call('ZREMRANGEBYRANK', order, 0, excess - 1)
      redis.call('HDEL', items, unpack(old))
      redis.call('SREM', unread_ids, unpack(old))
      redis.call('SREM', unseen, unpack(old))
      redis.call('SREM', order .. ':archived', unpack(old))
    end
    local counts = {redis.call('SCARD', unseen), redis.call('SCARD', unread_ids)}
    unread[#unread + 1] = counts
    local pub = box.publish
    if pub then
      local data = pub.prefix .. ',"unseen":' .. counts[1] .. ',"unread":' .. counts[2] .. '}'
      publish({pub.meta, pub.history}, {data, pub.size, pub.ttl, '0', '', '1'}) -- built here
    end
  end
  ack(it.entry)
  locks[#locks + 1] = p.lock .. it.id
end
for _, entry in ipairs(p.acks) do
  ack(entry)
end
for _, d in ipairs(p.dead_letters) do
  redis.call('XADD', p.dead, 'MAXLEN', '~', 100000, '*',
    'request', d[2], 'reason', d[3], 'entry', d[1], 'failed_at', d[4])
  ack(d[1])
end
each_chunk(acked, function(...)
  redis.call('XACK', p.stream, p.group, ...)
  redis.call('XDEL', p.stream, ...)
  redis.call('HDEL', p.attempts, ...)
end)
each_chunk(locks, function(...) redis.call('DEL', ...) end)
for _, s in ipairs(p.stats) do
  redis.call('HINCRBY', s[1], s[2], s[3])
  redis.call('EXPIRE', s[1], p.stats_ttl)
end
return unread
