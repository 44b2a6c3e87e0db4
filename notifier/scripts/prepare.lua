-- ArchMesh notifier: everything a batch of requests needs before it is planned, in one call.
-- ARGV[1]: JSON {owner, px, now (ms), due, n, lock, prefs, tpl (key prefixes),
--   requests: [{id, user, throttle: {key, limit, window} (optional),
--               digest: {pointer, window_prefix, job_prefix, id, skeleton, window, sliding,
--                        max, show, first} (optional)}],
--   templates: [names]}
-- Returns per request: exists (0/1), locked (0/1), preferences JSON or nil, admitted by its
-- throttle (0/1), sent at once as its digest window's first event (0/1); then per template
-- its JSON or nil. A request already recorded is not locked: it is a duplicate. Throttle and
-- digest state change only for requests locked here, and idempotently: a request processed
-- again after a crash finds its own id (admitted, opener) and is decided the same way.
local p = cjson.decode(ARGV[1])
local out = {}

local function open_digest(d, now)
  local id = redis.call('GET', d.pointer)
  if id then
    return id
  end
  local window = d.window_prefix .. d.id
  redis.call('SET', d.pointer, d.id)
  redis.call('HSET', window, 'id', d.id, 'pointer', d.pointer, 'skeleton', d.skeleton,
    'opened', now, 'closes', now + d.window, 'max', d.max, 'show', d.show, 'opener', '')
  redis.call('ZADD', p.due, now + d.window, d.job_prefix .. d.id)
  return d.id
end

for _, r in ipairs(p.requests) do
  local exists = redis.call('HEXISTS', p.n .. r.id, 'meta')
  local locked, admitted, opener = 0, 1, 0
  if exists == 0 and redis.call('SET', p.lock .. r.id, p.owner, 'NX', 'PX', p.px) then
    locked = 1
  end
  if locked == 1 and r.throttle then
    local t = r.throttle
    redis.call('ZREMRANGEBYSCORE', t.key, '-inf', p.now - t.window)
    if not redis.call('ZSCORE', t.key, r.id) then
      if redis.call('ZCARD', t.key) < t.limit then
        redis.call('ZADD', t.key, p.now, r.id)
      else
        admitted = 0
      end
    end
    redis.call('PEXPIRE', t.key, t.window)
  end
  if locked == 1 and r.digest then
    local window = r.digest.window_prefix .. open_digest(r.digest, p.now)
    if r.digest.first and redis.call('HGET', window, 'opener') == '' then
      redis.call('HSET', window, 'opener', r.id)
    end
    if redis.call('HGET', window, 'opener') == r.id then
      opener = 1
    end
  end
  out[#out + 1] = exists
  out[#out + 1] = locked
  out[#out + 1] = redis.call('GET', p.prefs .. r.user)
  out[#out + 1] = admitted
  out[#out + 1] = opener
end
for _, name in ipairs(p.templates) do
  out[#out + 1] = redis.call('GET', p.tpl .. name)
end
return out
