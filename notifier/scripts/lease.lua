-- Renew or release a partition's lease, only if this replica still holds it.
-- KEYS[1] the lease; ARGV[1] this replica, ARGV[2] the lease's length (ms), ARGV[3] renew | release
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
