-- ArchMesh Realtime: append to a channel's history and fan out, atomically.
--
-- EVAL <this script> 2 rt:{<channel>}:meta rt:{<channel>}:history <data> [size] [ttl_ms] [sharded]
--   data     the event, a JSON object (its text)
--   size     history entries to keep (default 1000; 0 keeps none)
--   ttl_ms   history lifetime after the last publish (default 3600000)
--   sharded  "1" to fan out with SPUBLISH (Redis Cluster), else PUBLISH
-- Returns {offset, epoch}. The pub/sub message is "<offset>:<epoch>:<data>" on rt:{<channel>}.
local meta, history = KEYS[1], KEYS[2]
local data = ARGV[1]
local size = tonumber(ARGV[2] or '1000')
local ttl = tonumber(ARGV[3] or '3600000')
if not string.match(data, '^%s*{') or not pcall(cjson.decode, data) then
  return redis.error_reply('ERR archmesh: data must be a JSON object')
end
if string.sub(meta, -5) ~= ':meta' or string.sub(history, -8) ~= ':history' then
  return redis.error_reply('ERR archmesh: keys must be rt:{<channel>}:meta and rt:{<channel>}:history')
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
  redis.call('PEXPIRE', history, ttl)
else
  redis.call('DEL', history)
end
redis.call('PEXPIRE', meta, ttl)
local message = offset .. ':' .. epoch .. ':' .. data
local name = string.sub(meta, 1, -6)
if ARGV[4] == '1' then
  redis.call('SPUBLISH', name, message)
else
  redis.call('PUBLISH', name, message)
end
return {offset, epoch}
