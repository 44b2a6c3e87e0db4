-- ArchMesh notifier: apply one provider event once (notifier/feedback.py): mark it applied and,
-- if it outranks what is kept, lay its report on the delivery and count it, in one step.
-- KEYS[1] the event's marker; with a delivery, KEYS[2] the notification's hash and KEYS[3] the
-- hour's analytics hash (the marker is in the notification's partition: one slot).
-- ARGV[1] the marker's TTL (s), ARGV[2] the delivery's `ch:` field, ARGV[3] its `fb:` field,
-- ARGV[4] what the caller read: '1' and the kept report after it ('1' alone: none kept), or
-- '0' (no such delivery), ARGV[5] the new report JSON ('' when it does not outrank the kept
-- one), ARGV[6] the analytics field to count ('' none), ARGV[7] its TTL (s).
-- The caller decided on what it read (the ranking is Python's, notifier/feedback_report.py):
-- if that changed meanwhile, nothing is written and -1 says read again.
-- Returns 0: applied before (a duplicate), 1: applied now, -1: read again.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if KEYS[2] then
  local meta, delivery, kept = unpack(redis.call('HMGET', KEYS[2], 'meta', ARGV[2], ARGV[3]))
  local seen = '0'
  if meta and delivery then
    seen = '1' .. (kept or '')
  end
  if seen ~= ARGV[4] then
    return -1
  end
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
if KEYS[2] and ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
  if ARGV[6] ~= '' then
    redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
    redis.call('EXPIRE', KEYS[3], ARGV[7])
  end
end
return 1
