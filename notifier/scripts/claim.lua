-- Take due jobs and push their score a lease ahead, atomically, so no two replicas send one.
-- KEYS[1] the due-jobs sorted set; ARGV[1] now (ms), ARGV[2] the lease (ms), ARGV[3] the limit.
local jobs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, job in ipairs(jobs) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), job)
end
return jobs
