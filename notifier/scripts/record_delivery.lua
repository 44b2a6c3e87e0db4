-- ArchMesh notifier: record one delivery attempt's outcome (notifier/deliveries.py), unless the
-- step was cancelled (a cancel_key, a read, the user's erasure) while the attempt ran: then it
-- stays `cancelled`, is not tried again, and its job (addresses, content), which an erasure
-- deleted, is not written back; one that went out anyway is recorded `sent`, without its job.
-- KEYS[1] the notification's hash, KEYS[2] its timeline, KEYS[3] the partition's due set,
-- KEYS[4] the hour's analytics hash (all in the notification's partition: one slot).
-- ARGV[1] the medium, ARGV[2] the delivery JSON, ARGV[3] its timeline entry, ARGV[4] the job's
-- work JSON ('': kept as it is), ARGV[5] the due member, ARGV[6] when it is due again (ms; ''
-- when done), ARGV[7] the analytics field of its status ('': not counted), ARGV[8] the field
-- of `sent`, ARGV[9] their TTL (s).
-- Idempotent: run again (its reply lost), it finds its own record and changes nothing.
-- Returns 1 when the outcome was recorded, 0 when the cancel kept it.
local key, timeline, due, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local medium, delivery, entry, work = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local member, again = ARGV[5], ARGV[6]
local raw = redis.call('HGET', key, 'ch:' .. medium)
if raw == delivery then
  return 1
end
local cancelled = raw and cjson.decode(raw).status == 'cancelled'
local sent = cjson.decode(delivery).status == 'sent'

local function count(field)
  redis.call('HINCRBY', stats, field, 1)
  redis.call('EXPIRE', stats, ARGV[9])
end

if cancelled then
  redis.call('ZREM', due, member)
  if not sent then
    return 0
  end
  redis.call('HSET', key, 'ch:' .. medium, delivery)
  redis.call('RPUSH', timeline, entry)
  count(ARGV[8])
  return 1
end
if work ~= '' then
  redis.call('HSET', key, 'ch:' .. medium, delivery, 'job:' .. medium, work)
else
  redis.call('HSET', key, 'ch:' .. medium, delivery)
end
redis.call('RPUSH', timeline, entry)
if again ~= '' then
  redis.call('ZADD', due, again, member)
else
  redis.call('ZREM', due, member)
end
if ARGV[7] ~= '' then
  count(ARGV[7])
end
return 1
