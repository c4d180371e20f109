-- Compare-and-set one entry, bump its partition's sequence and publish the invalidation, all in one atomic step,
-- so a writer can never die between storing a value and telling the other instances about it.
-- KEYS[1] entry (hash: v = version, d = sealed data, e = expiry ms since epoch; no d = tombstone)
-- KEYS[2] the partition's sequence counter (same hash tag, so same Cluster slot)
-- ARGV[1] expected version, or '' for "create if absent"   ARGV[2] data   ARGV[3] ttl ms   ARGV[4] now ms
-- ARGV[5] invalidation channel (same hash tag)
-- Returns {1, new version, expiresAt} or {0, current version, current data or false, current expiresAt}.
local cur = redis.call('HMGET', KEYS[1], 'v', 'd', 'e')
local v = tonumber(cur[1])
if ARGV[1] == '' then
  if v ~= nil then return {0, v, cur[2], tonumber(cur[3]) or 0} end
  v = 0
else
  if (v or 0) ~= tonumber(ARGV[1]) then
    if v == nil then return {0, 0, false, 0} end
    return {0, v, cur[2], tonumber(cur[3]) or 0}
  end
  v = v or 0
end
local nv = v + 1
local ttl = tonumber(ARGV[3])
local exp = tonumber(ARGV[4]) + ttl
redis.call('HSET', KEYS[1], 'v', nv, 'd', ARGV[2], 'e', exp)
redis.call('PEXPIRE', KEYS[1], ttl)
local seq = redis.call('INCR', KEYS[2])
redis.call('SPUBLISH', ARGV[5], nv .. ' ' .. seq .. ' ' .. KEYS[1])
return {1, nv, exp}
