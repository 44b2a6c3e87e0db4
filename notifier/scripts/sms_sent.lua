-- ArchMesh notifier: remember which notification an accepted SMS belongs to, and hand back the
-- status callbacks that came before (sms_callback.lua held them), to be applied now.
-- KEYS[1] the sid's map entry, KEYS[2] its held callbacks (one slot: both tagged by the sid).
-- ARGV[1] `<notification id>|sms`, ARGV[2] the entry's TTL (s). Returns the held callbacks;
-- they stay until the caller has applied them (each is applied once, by its event), then it
-- deletes them.
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return redis.call('LRANGE', KEYS[2], 0, -1)
