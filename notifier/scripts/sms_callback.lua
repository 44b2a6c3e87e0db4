-- ArchMesh notifier: find the delivery of an SMS status callback by its sid or, when the sid is
-- not stored yet (Twilio called back before its reply to the send reached the notifier), hold
-- the callback until sms_sent.lua stores it. One step against that script, so a callback is
-- either matched or held where the sender will find it, never lost in between.
-- KEYS[1] the sid's map entry, KEYS[2] its held callbacks (one slot: both tagged by the sid).
-- ARGV[1] the callback to hold (JSON {event, report}), ARGV[2] how long (s), ARGV[3] at most
-- how many are held per sid. Returns `<notification id>|sms`, or nil when held.
local found = redis.call('GET', KEYS[1])
if found then
  return found
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return false
