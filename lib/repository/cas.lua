-- Compare-and-set one entry, bump its partition's sequence and publish the invalidation, all in one atomic step,
-- so a writer can never die between storing a value and telling the other instances about it.
-- KEYS[1] entry (hash: v = version, d = sealed data, e = expiry ms since epoch, g = epoch; no d = tombstone)
-- KEYS[2] the partition's sequence counter   KEYS[3] the partition's epoch (hash, field id; same hash tag, so same Cluster slot)
-- ARGV[1] expected version, or '' for "create if absent"   ARGV[2] data   ARGV[3] ttl ms   ARGV[4] now ms
-- ARGV[5] invalidation channel (same hash tag)
-- ARGV[6] expected epoch of the entry ('' = written before epochs, '*' = not checked)
-- ARGV[7] a fresh random epoch, used only if the partition has none yet (first write, or Redis lost its data)
-- Returns {1, new version, expiresAt, epoch} or {0, current version, current data or false, current expiresAt, epoch}.
local cur = redis.call('HMGET', KEYS[1], 'v', 'd', 'e', 'g')
local v = tonumber(cur[1])
local g = cur[4] or ''
if ARGV[1] == '' then
  if v ~= nil then return {0, v, cur[2], tonumber(cur[3]) or 0, g} end
  v = 0
else
  -- A base from another epoch is refused even when its version number matches again: it is another value.
  if (v or 0) ~= tonumber(ARGV[1]) or (v ~= nil and ARGV[6] ~= '*' and g ~= ARGV[6]) then
    if v == nil then return {0, 0, false, 0, ''} end
    return {0, v, cur[2], tonumber(cur[3]) or 0, g}
  end
  v = v or 0
end
local ep = redis.call('HGET', KEYS[3], 'id')
if not ep then
  ep = ARGV[7]
  redis.call('HSET', KEYS[3], 'id', ep)
end
local nv = v + 1
local ttl = tonumber(ARGV[3])
local exp = tonumber(ARGV[4]) + ttl
redis.call('HSET', KEYS[1], 'v', nv, 'd', ARGV[2], 'e', exp, 'g', ep)
redis.call('PEXPIRE', KEYS[1], ttl)
local seq = redis.call('INCR', KEYS[2])
redis.call('SPUBLISH', ARGV[5], nv .. ' ' .. seq .. ' ' .. ep .. ' ' .. KEYS[1])
-- Read it again: under client tracking, writing the key ended this connection's tracking of it, and the writer keeps
-- what it wrote as a local copy; keys a script reads are tracked (Redis >= 7). About 1 us otherwise.
redis.call('HEXISTS', KEYS[1], 'v')
return {1, nv, exp, ep}
