-- ArchMesh Realtime: a channel's position and the history after an offset, atomically.
-- KEYS: rt:{<channel>}:meta rt:{<channel>}:history; ARGV: since, limit, ttl_ms.
-- Returns {offset, epoch, first_offset_or_-1, id1, data1, id2, data2, ...}.
local meta, history = KEYS[1], KEYS[2]
local since, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  local now = redis.call('TIME')
  epoch = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('DEL', history)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', meta, tonumber(ARGV[3]))
end
local offset = tonumber(redis.call('HGET', meta, 'offset'))
local first = -1
local head = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)
if #head > 0 then
  first = tonumber(string.match(head[1][1], '^(%d+)'))
end
local reply = {offset, epoch, first}
if limit > 0 and since < offset then
  local start = '(' .. since .. '-0'
  if since < 1 then start = '-' end
  for _, entry in ipairs(redis.call('XRANGE', history, start, '+', 'COUNT', limit)) do
    reply[#reply + 1] = string.match(entry[1], '^(%d+)')
    reply[#reply + 1] = entry[2][2]
  end
end
return reply
