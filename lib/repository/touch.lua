-- Extend a live entry's expiry without rewriting its value or changing its version (no published invalidation: the
-- value did not change; other instances' local copies simply expire earlier and are fetched again; with client
-- tracking, Redis itself drops them, as PEXPIRE counts as a modification).
-- KEYS[1] entry   ARGV[1] ttl ms   ARGV[2] now ms
-- ARGV[3] the epoch the caller knows the entry from ('' = written before epochs, '*' = not checked)
-- Returns 1 when extended, 0 when absent, a tombstone, or from another epoch (not the entry the caller knew).
if redis.call('HEXISTS', KEYS[1], 'd') == 0 then return 0 end
if ARGV[3] ~= '*' and (redis.call('HGET', KEYS[1], 'g') or '') ~= ARGV[3] then return 0 end
local ttl = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'e', tonumber(ARGV[2]) + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
