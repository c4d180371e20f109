/**
 * bench/store: the cost of the store itself.
 * 1. Local-hit get throughput as a ratio to a bare lru-cache get, same process, interleaved rounds, medians.
 * 2. Redis commands per update (INFO commandstats on a private redis-server): target exactly one round trip per
 *    uncontended update.
 */
import { LRUCache } from 'lru-cache'
import { randomBytes } from 'node:crypto'
import { RedisRepository } from '../lib/repository/redis.js'
import { MemoryRepository } from '../lib/repository/memory.js'
import { TieredStore } from '../lib/tiered-store.js'
import { startRedis } from '../scripts/redis-server.js'
import { median, opsPerSec, progress, writeResult, fmt } from './lib.js'

const SECRET = 'bench-secret-bench-secret-bench-secret-0123'
const KEYS = 10_000
const N = 500_000
const ROUNDS = 5

const value = { user: { id: 'u-1', name: 'Alice' }, cart: [{ sku: 'A-1', qty: 2 }], pad: 'x'.repeat(900) }
const store = new TieredStore({ repository: new MemoryRepository(), secret: SECRET })
await store.start()
const keys = Array.from({ length: KEYS }, () => store.key(randomBytes(24).toString('base64url'), 'session'))
for (const k of keys) await store.update(k, () => value)
const bare = new LRUCache<string, object>({ max: KEYS * 2 })
for (const k of keys) bare.set(k, value)

const r = { bare: [] as number[], bareAsync: [] as number[], getLocal: [] as number[], get: [] as number[] }
const mask = KEYS - 1 > 0 ? KEYS : 1
for (let round = 0; round < ROUNDS; round++) {
  progress(`store local hits: round ${round + 1}/${ROUNDS}`)
  r.bare.push(await opsPerSec(N, i => bare.get(keys[i % mask] as string)))
  r.bareAsync.push(await opsPerSec(N, async i => bare.get(keys[i % mask] as string)))
  r.getLocal.push(await opsPerSec(N, i => store.getLocal(keys[i % mask] as string)))
  r.get.push(await opsPerSec(N, async i => await store.get(keys[i % mask] as string)))
}
const m = { bare: median(r.bare), bareAsync: median(r.bareAsync), getLocal: median(r.getLocal), get: median(r.get) }

progress('store: commands per update on a private redis-server')
const server = await startRedis({ private: true })
const repository = new RedisRepository({ url: server.url })
const rs = new TieredStore({ repository, secret: SECRET })
await rs.start()
const UPDATES = 2000
const ukeys = Array.from({ length: 100 }, (_, i) => rs.key(`bench-${i}-${randomBytes(8).toString('hex')}`, 'counter'))
for (const k of ukeys) await rs.update(k, () => ({ n: 0 }))
server.cli('CONFIG', 'RESETSTAT')
const t0 = performance.now()
for (let i = 0; i < UPDATES; i++) await rs.update(ukeys[i % ukeys.length] as string, (c) => ({ n: ((c as { n: number }).n) + 1 }))
const updMs = performance.now() - t0
const stats = server.cli('INFO', 'commandstats')
const calls = (c: string): number => Number(new RegExp(`cmdstat_${c}:calls=(\\d+)`).exec(stats)?.[1] ?? 0)
// Commands the client sent: scripts, plus reads outside scripts (each script runs one HMGET inside Redis).
const scripts = calls('evalsha') + calls('eval')
const readsOutsideScripts = calls('hmget') - scripts
const roundTrips = scripts + readsOutsideScripts

// Memory per entry for a typical signed-in session (docs/scaling.md quotes these): Redis used_memory delta, and
// what the local tier accounts against maxLocalBytes.
progress('store: memory per session entry')
const SESSIONS = 10_000
const session = { user: { id: 'u-12345', name: 'Alice Example', roles: ['customer'] }, data: { theme: 'dark', visits: 12 }, createdAt: Date.now(), lastSeen: Date.now() }
const usedMemory = (): number => Number(/used_memory:(\d+)/.exec(server.cli('INFO', 'memory'))?.[1] ?? 0)
rs.clearLocal()
const memBefore = usedMemory()
for (let i = 0; i < SESSIONS; i++) await rs.update(rs.key(randomBytes(24).toString('base64url'), 'session'), () => session, { ttlMs: 3_600_000 })
const memory = {
  sessionJsonBytes: JSON.stringify(session).length,
  redisBytesPerEntry: (usedMemory() - memBefore) / SESSIONS,
  localAccountedBytesPerEntry: rs.localBytes / rs.localEntries
}
await rs.close()
await repository.close()
await server.stop()

const result = {
  localHit: { opsPerSec: m, ratioGetLocalToBareLru: m.getLocal / m.bare, ratioGetToBareLru: m.get / m.bare, ratioGetToAsyncLru: m.get / m.bareAsync },
  update: { updates: UPDATES, roundTripsPerUpdate: roundTrips / UPDATES, scriptsPerUpdate: scripts / UPDATES, meanMs: updMs / UPDATES },
  memory
}
writeResult('store', result, `
### Store (bench/store.ts)

| measure | result |
|---|---|
| bare lru-cache \`get\` | ${fmt(m.bare / 1e6)} M/s |
| \`store.getLocal\` (sync local hit) | ${fmt(m.getLocal / 1e6)} M/s = **${fmt(result.localHit.ratioGetLocalToBareLru)}x** bare lru-cache |
| \`await store.get\` (local hit) | ${fmt(m.get / 1e6)} M/s = ${fmt(result.localHit.ratioGetToBareLru)}x bare lru-cache, ${fmt(result.localHit.ratioGetToAsyncLru)}x an awaited lru-cache get |
| Redis round trips per uncontended update | **${fmt(result.update.roundTripsPerUpdate)}** (${fmt(result.update.scriptsPerUpdate)} EVALSHA), ${fmt(result.update.meanMs, 3)} ms each, 1 in flight |
| memory per ${memory.sessionJsonBytes}-byte session, Redis (used_memory delta over ${SESSIONS}) | ${fmt(memory.redisBytesPerEntry, 0)} bytes |
| memory per session, local tier (accounted against maxLocalBytes) | ${fmt(memory.localAccountedBytesPerEntry, 0)} bytes |

${KEYS} entries of ~1 KB, ${N} lookups per round, median of ${ROUNDS} interleaved rounds; ${UPDATES} sequential updates on loopback Redis.
`)
process.exit(0)
