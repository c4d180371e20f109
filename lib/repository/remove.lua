-- Replace an entry by a tombstone with the next version (delete), or read it and do the same (take), then bump the
-- partition's sequence and publish, atomically. The tombstone makes a write still in flight fail its
-- compare-and-set instead of bringing the entry back.
-- KEYS[1] entry   KEYS[2] partition sequence counter   KEYS[3] partition epoch (hash, field id)
-- ARGV[1] tombstone ttl ms   ARGV[2] now ms   ARGV[3] channel   ARGV[4] '1' to return the old entry (take)
-- ARGV[5] a fresh random epoch, used only if the partition has none yet
-- Returns {tombstone version, old version or false, old data or false, old expiresAt or false, old epoch or false}.
local cur = redis.call('HMGET', KEYS[1], 'v', 'd', 'e', 'g')
-- take of nothing (no value: absent or a tombstone) changes nothing: random TLS session ids must cost no write.
if ARGV[4] == '1' and not cur[2] then return {0, false, false, false, false} end
local v = tonumber(cur[1]) or 0
local nv = v + 1
local ttl = tonumber(ARGV[1])
local ep = redis.call('HGET', KEYS[3], 'id')
if not ep then
  ep = ARGV[5]
  redis.call('HSET', KEYS[3], 'id', ep)
end
redis.call('HDEL', KEYS[1], 'd')
redis.call('HSET', KEYS[1], 'v', nv, 'e', tonumber(ARGV[2]) + ttl, 'g', ep)
redis.call('PEXPIRE', KEYS[1], ttl)
local seq = redis.call('INCR', KEYS[2])
redis.call('SPUBLISH', ARGV[3], nv .. ' ' .. seq .. ' ' .. ep .. ' ' .. KEYS[1])
if ARGV[4] == '1' then
  return {nv, v, cur[2], tonumber(cur[3]) or 0, cur[4] or ''}
end
return {nv, false, false, false, false}
