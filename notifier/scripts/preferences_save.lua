-- ArchMesh notifier: save a user's preferences only if they are still what the change was made
-- from (notifier/preferences.py merges in Python, then saves with this; a concurrent save in
-- between makes it read and merge again), so no writer's change is lost.
-- KEYS[1] the user's preferences; ARGV[1] what was read: '1' and the JSON, or '0' (none saved),
-- ARGV[2] the new JSON. Returns 1 when saved, 0 when they changed meanwhile.
local current = redis.call('GET', KEYS[1])
local seen = '0'
if current then
  seen = '1' .. current
end
if seen ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
