-- ArchMesh notifier: erase one user (DELETE /api/users/{user}), atomically.
-- ARGV[1]: JSON {user, prefs, index, due, prefix, timeline (the prefix of a notification's
--   timeline), sessions ('' when partitioned), media: [...], delete: [keys], now (ISO time),
--   reason, digest_job (the prefix of a digest window's due job)}
-- A notification's timeline (the console's list of its status changes) and its providers'
-- reports (`fb:<medium>`) are deleted: they quote error texts as they were, addresses included.
-- Statuses of the user's notifications stay (a service may still ask how one went) without
-- the user: `meta.user_id` emptied, jobs (addresses, rendered content) deleted, contact data
-- masked in error texts, and every delivery not yet done cancelled and taken out of `due`.
-- KEYS: every key it touches (the due set first), found by notifier/erasure.py with the same
-- reads as below: on a Cluster a key not declared is not checked against its slot's migration
-- before the script starts, so a script could stop half done. If the user's keys changed since
-- they were read (a notification committed, a digest window opened), nothing is written and
-- -1 says read them again.
-- Returns the number of deliveries cancelled, or -1.
local p = cjson.decode(ARGV[1])

local declared = {}
for _, key in ipairs(KEYS) do
  declared[key] = true
end

-- Whether every key below is declared, reading only declared ones to find out.
local function all_declared()
  for _, key in ipairs({p.prefs, p.index, p.due}) do
    if not declared[key] then return false end
  end
  for _, key in ipairs(p.delete) do
    if not declared[key] then return false end
  end
  if p.sessions ~= '' and not declared[p.sessions] then return false end
  for _, id in ipairs(redis.call('ZRANGE', p.index, 0, -1)) do
    local key = p.prefix .. id
    if not (declared[key] and declared[p.timeline .. id]) then return false end
    local throttle, digest = unpack(redis.call('HMGET', key, 'th', 'dg'))
    if throttle and not declared[throttle] then return false end
    if digest then
      local where = cjson.decode(digest)
      local window = string.sub(where.events, 1, -4)
      if not (declared[window] and declared[where.events] and declared[where.data]) then
        return false
      end
      local pointer = redis.call('HGET', window, 'pointer')
      if pointer and not declared[pointer] then return false end
    end
  end
  return true
end

if not all_declared() then
  return -1
end

local contacts = {}
local function remember(value)
  if type(value) == 'string' and #value > 0 then
    contacts[#contacts + 1] = value
  end
end

local saved = redis.call('GET', p.prefs)
if saved then
  local c = cjson.decode(saved).contacts
  if type(c) == 'table' then
    remember(c.email)
    remember(c.phone)
    if type(c.push_subscriptions) == 'table' then
      for _, sub in ipairs(c.push_subscriptions) do
        remember(sub.endpoint)
      end
    end
  end
end

local ids = redis.call('ZRANGE', p.index, 0, -1)
for _, id in ipairs(ids) do
  for _, medium in ipairs(p.media) do
    local job = redis.call('HGET', p.prefix .. id, 'job:' .. medium)
    if job then
      for _, target in ipairs(cjson.decode(job).targets or {}) do
        if type(target) == 'table' then remember(target.endpoint) else remember(target) end
      end
    end
  end
end

local function mask(text)
  for _, secret in ipairs(contacts) do
    local from = 1
    while true do
      local i, j = string.find(text, secret, from, true)
      if not i then break end
      text = string.sub(text, 1, i - 1) .. '***' .. string.sub(text, j + 1)
      from = i + 3
    end
  end
  return text
end

local cancelled = 0
for _, id in ipairs(ids) do
  local key = p.prefix .. id
  redis.call('DEL', p.timeline .. id)
  local meta = redis.call('HGET', key, 'meta')
  if meta then
    local fields = cjson.decode(meta)
    fields.user_id = ''
    redis.call('HSET', key, 'meta', cjson.encode(fields))
    for _, medium in ipairs(p.media) do
      redis.call('ZREM', p.due, id .. '|' .. medium)
      redis.call('HDEL', key, 'job:' .. medium, 'fb:' .. medium)
      local raw = redis.call('HGET', key, 'ch:' .. medium)
      if raw then
        local d = cjson.decode(raw)
        local open = d.status == 'pending' or d.status == 'retrying' or d.status == 'held'
        if open or d.status == 'waiting' or d.status == 'digested' then
          d.status = 'cancelled'
          d.last_error = p.reason
          d.next_attempt_at = cjson.null
          d.updated_at = p.now
          cancelled = cancelled + 1
        elseif type(d.last_error) == 'string' then
          d.last_error = mask(d.last_error)
        end
        redis.call('HSET', key, 'ch:' .. medium, cjson.encode(d))
      end
    end
  end
end

-- Throttle logs and open digest windows name the user (and hold the events' content).
for _, id in ipairs(ids) do
  local key = p.prefix .. id
  local throttle, digest = unpack(redis.call('HMGET', key, 'th', 'dg'))
  if throttle then
    redis.call('DEL', throttle)
  end
  if digest then
    local where = cjson.decode(digest)
    local window = string.sub(where.events, 1, -4) -- the events key is <window>:ev
    local pointer, window_id = unpack(redis.call('HMGET', window, 'pointer', 'id'))
    if pointer then
      redis.call('DEL', pointer)
      redis.call('ZREM', p.due, p.digest_job .. window_id)
    end
    redis.call('DEL', window, where.events, where.data)
  end
  redis.call('HDEL', key, 'th', 'dg')
end

if p.sessions ~= '' then -- partitioned: forget_sessions.lua, per shard
  local sessions = redis.call('HGETALL', p.sessions)
  for i = 1, #sessions, 2 do
    local ok, state = pcall(cjson.decode, sessions[i + 1])
    if ok and type(state) == 'table' and state.owner == p.user then
      redis.call('HDEL', p.sessions, sessions[i])
    end
  end
end

redis.call('DEL', unpack(p.delete))
return cancelled
