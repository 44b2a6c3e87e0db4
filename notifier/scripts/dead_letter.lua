-- ArchMesh notifier: requeue or discard dead letters, each exactly once.
-- KEYS[1]: the dead-letter stream; KEYS[2]: the request stream.
-- ARGV[1]: 'requeue' | 'discard'; ARGV[2]: the request field's name; ARGV[3..]: entry ids.
-- An entry is handled only if it is still there, and removed in the same step: two operators
-- (or two clicks) on the same entry requeue it once; the second finds nothing.
-- Returns, per id: the new request entry's id (requeue), the id itself (discard), or '' when
-- the entry was gone already.
local done = {}
for i = 3, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found == 1 then
    if ARGV[1] == 'requeue' then
      local fields, request = found[1][2], nil
      for j = 1, #fields, 2 do
        if fields[j] == 'request' then
          request = fields[j + 1]
        end
      end
      done[#done + 1] = redis.call('XADD', KEYS[2], '*', ARGV[2], request or '')
    else
      done[#done + 1] = ARGV[i]
    end
    redis.call('XDEL', KEYS[1], ARGV[i])
  else
    done[#done + 1] = ''
  end
end
return done
