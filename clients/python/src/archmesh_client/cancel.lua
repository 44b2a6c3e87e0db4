-- ArchMesh notifier: cancel every step of some notifications that is not yet sent, atomically.
-- ARGV[1]: JSON {index (a set of notification ids, optional), ids (used without index),
--   prefix (of the notifications' hashes), due (the due-jobs set), media, only (one medium,
--   optional), states (which step states count as not yet sent, optional: the default below),
--   reason, now (ISO time), stats, stats_ttl, timeline (the prefix of a notification's
--   timeline: each cancelled step is appended there, as every status change is)}.
-- A step not yet sent is pending, retrying, held (quiet hours), waiting (escalation), or
-- digested while its digest is still open (it is then taken out of the digest).
-- On a Cluster the caller reads the ids (the index) and their `dg` fields first, declares
-- every key, and passes `expect` (each id's `dg`, '' for none): the script then walks `ids`,
-- after checking that the index holds just them and no `dg` changed; if not, it changes
-- nothing and returns {-1, -1} (the caller reads again).
-- Returns {steps cancelled, notifications with at least one}.
local p = cjson.decode(ARGV[1])
local ids = p.ids or {}
if p.expect then
  if p.index and redis.call('SCARD', p.index) ~= #ids then
    return {-1, -1}
  end
  for i, id in ipairs(ids) do
    if p.index and redis.call('SISMEMBER', p.index, id) == 0 then
      return {-1, -1}
    end
    if (redis.call('HGET', p.prefix .. id, 'dg') or '') ~= p.expect[i] then
      return {-1, -1}
    end
  end
elseif p.index then
  ids = redis.call('SMEMBERS', p.index)
end
local OPEN = {pending = true, retrying = true, held = true, waiting = true}
if p.states then
  OPEN = {}
  for _, state in ipairs(p.states) do
    OPEN[state] = true
  end
end
local steps, touched = 0, 0
for _, id in ipairs(ids) do
  local key = p.prefix .. id
  local meta = redis.call('HGET', key, 'meta')
  if meta then
    local kind = cjson.decode(meta).type
    local in_digest = false
    local dg = redis.call('HGET', key, 'dg')
    if dg and not p.only then
      local where = cjson.decode(dg)
      if redis.call('ZREM', where.events, id) == 1 then
        redis.call('HDEL', where.data, id)
        in_digest = true
      end
    end
    local any = false
    for _, medium in ipairs(p.media) do
      local raw = nil
      if not p.only or p.only == medium then
        raw = redis.call('HGET', key, 'ch:' .. medium)
      end
      if raw then
        local d = cjson.decode(raw)
        if OPEN[d.status] or (d.status == 'digested' and in_digest) then
          d.status = 'cancelled'
          d.last_error = p.reason
          d.updated_at = p.now
          d.next_attempt_at = cjson.null
          local encoded = cjson.encode(d)
          redis.call('HSET', key, 'ch:' .. medium, encoded)
          if p.timeline then
            local log = p.timeline .. id
            redis.call('RPUSH', log, '{"medium":' .. cjson.encode(medium) .. ',"delivery":' ..
              encoded .. '}')
            local ttl = redis.call('PTTL', key)
            if ttl > 0 then
              redis.call('PEXPIRE', log, ttl)
            end
          end
          redis.call('ZREM', p.due, id .. '|' .. medium)
          redis.call('HINCRBY', p.stats, kind .. '|' .. medium .. '|cancelled', 1)
          redis.call('EXPIRE', p.stats, p.stats_ttl)
          steps = steps + 1
          any = true
        end
      end
    end
    if any then
      touched = touched + 1
    end
  end
end
if p.index then
  redis.call('DEL', p.index)
end
return {steps, touched}
