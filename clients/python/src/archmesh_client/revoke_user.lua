-- ArchMesh Realtime: revoke a user's tokens issued before a time, atomically.
--
-- EVAL <this script> 1 rt:revoked:user:<user_id> <before> <expire_at_ms>
--   before        Unix time in seconds: tokens with `iat` < before are refused
--   expire_at_ms  Unix time in milliseconds until which the revocation is kept
-- The key holds the latest cut-off ever given and lives until the latest expiry ever given,
-- so a second, earlier revocation never shortens the first. Returns 1, or 0 when
-- `expire_at_ms` has already passed (nothing left to revoke).
local key = KEYS[1]
local before = tonumber(ARGV[1])
local expire_at = tonumber(ARGV[2])
if not before or not expire_at or string.sub(key, 1, 16) ~= 'rt:revoked:user:' then
  return redis.error_reply('ERR archmesh: expected rt:revoked:user:<id> <before> <expire_at_ms>')
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = redis.call('PTTL', key)
if ttl > 0 and now + ttl > expire_at then
  expire_at = now + ttl
end
if expire_at <= now then
  return 0
end
local value = ARGV[1]
local current = redis.call('GET', key)
if current and tonumber(current) and tonumber(current) > before then
  value = current
end
redis.call('SET', key, value, 'PX', expire_at - now)
return 1
