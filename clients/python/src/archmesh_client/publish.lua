-- ArchMesh Realtime: append to a channel's history and fan out, atomically; at most once per
-- idempotency key.
--
-- EVAL <this script> 2 rt:{<channel>}:meta rt:{<channel>}:history <data> [size] [ttl_ms] [sharded]
-- EVAL <this script> 3 rt:{<channel>}:meta rt:{<channel>}:history rt:{<channel>}:idem:<key>
--      <data> <size> <ttl_ms> <sharded> [window_ms] [validated]
--   data       the event, a JSON object (its text)
--   size       history entries to keep (default 1000; 0 keeps none)
--   ttl_ms     history lifetime after the last publish (default 3600000): at least this long,
--              at most an eighth longer (lifetimes are renewed once they run below it)
--   sharded    "1" to fan out with SPUBLISH (Redis Cluster), else PUBLISH
--   window_ms  how long the idempotency key is remembered (default 300000)
--   validated  "1": the caller built `data` itself (our scripts that publish, notifier/live.py),
--              so it is not parsed again here; anything else parses it (the default)
-- Returns {offset, epoch}. The pub/sub message is "<offset>:<epoch>:<data>" on rt:{<channel>}.
-- With an idempotency key already used within the window: the same event returns
-- {offset, epoch, 1} of the first publication and publishes nothing; a different event is
-- refused with the error "archmesh: idempotency_conflict ...".
local meta, history, idem = KEYS[1], KEYS[2], KEYS[3]
local data = ARGV[1]
local size = tonumber(ARGV[2] or '1000')
local ttl = tonumber(ARGV[3] or '3600000')
if ARGV[6] ~= '1' and (not string.match(data, '^%s*{') or not pcall(cjson.decode, data)) then
  return redis.error_reply('ERR archmesh: data must be a JSON object')
end
if string.sub(meta, -5) ~= ':meta' or string.sub(history, -8) ~= ':history' then
  return redis.error_reply('ERR archmesh: keys must be rt:{<channel>}:meta and rt:{<channel>}:history')
end
local name = string.sub(meta, 1, -6)
local digest
if idem then
  -- The key shares the channel's hash tag (one slot on a cluster): checked, then recorded
  -- below, in this one script, so two racing retries cannot both publish.
  local prefix = name .. ':idem:'
  if #idem <= #prefix or string.sub(idem, 1, #prefix) ~= prefix then
    return redis.error_reply('ERR archmesh: the third key must be rt:{<channel>}:idem:<key>')
  end
  digest = redis.sha1hex(data)
  local seen = redis.call('HMGET', idem, 'offset', 'epoch', 'digest')
  if seen[1] then
    if seen[3] ~= digest then
      return redis.error_reply('ERR archmesh: idempotency_conflict: the key was used for a different event')
    end
    return {tonumber(seen[1]), seen[2], 1}
  end
end
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- History was never there or is lost: a new epoch tells recovering clients so.
  local now = redis.call('TIME')
  epoch = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('DEL', history)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', meta, 'offset', 1)
if size > 0 then
  redis.call('XADD', history, 'MAXLEN', size, offset .. '-0', 'd', data)
else
  redis.call('DEL', history)
end
-- Lifetimes are renewed only once they run below `ttl`, to `ttl` and an eighth: a PTTL is a
-- read, while each PEXPIRE is rewritten for propagation (two of them were a fifth of this
-- script's time). History a publish creates (after a new epoch, or after size 0) has no
-- lifetime yet (PTTL -1), so it gets one here; meta's is never shorter than history's.
if redis.call('PTTL', size > 0 and history or meta) < ttl then
  local keep = ttl + math.floor(ttl / 8)
  if size > 0 then
    redis.call('PEXPIRE', history, keep)
  end
  redis.call('PEXPIRE', meta, keep)
end
if idem then
  redis.call('HSET', idem, 'offset', offset, 'epoch', epoch, 'digest', digest)
  redis.call('PEXPIRE', idem, tonumber(ARGV[5] or '300000'))
end
local message = offset .. ':' .. epoch .. ':' .. data
if ARGV[4] == '1' then
  redis.call('SPUBLISH', name, message)
else
  redis.call('PUBLISH', name, message)
end
return {offset, epoch}
