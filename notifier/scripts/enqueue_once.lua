-- Enqueue a request only the first time its id is seen (every replica reads the same events).
-- KEYS[1] the id's marker, KEYS[2] the request stream; ARGV[1] the request JSON, ARGV[2] the
-- marker's TTL (s), ARGV[3] the stream entry's field name.
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[1])
  return 1
end
return 0
