/**
 * Coherence between instances on a real Redis. The guarantee under test: a read that is not flagged `degraded`
 * and starts more than one lease after a write's acknowledgement never returns an older version; a read with a
 * version floor never returns less than the floor.
 */
import t, { type Test } from 'tap'
import fc from 'fast-check'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { RedisRepository, type RedisRepositoryOptions } from '../../lib/repository/redis.js'
import { MemoryRepository } from '../../lib/repository/memory.js'
import type { Repository } from '../../lib/repository/types.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { startProxy } from '../helpers/proxy.js'
import { inc, interleaving, poll, sleep, violations as staleReads, writeAll, type Ack, type Read } from '../helpers/staleness.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
const LEASE = 250
const violations = (reads: Read[], acks: Ack[]): Read[] => staleReads(reads, acks, LEASE)

async function store (t: Test, url: string, repoOpts: RedisRepositoryOptions = {}): Promise<TieredStore> {
  const repository = new RedisRepository({ url, commandTimeoutMs: 500, ...repoOpts })
  const s = new TieredStore({ repository, secret: SECRET, partitions: 64, coherence: { leaseMs: LEASE } })
  await s.start()
  t.teardown(async () => { await s.close(); await repository.close() })
  return s
}

let redis: RedisHandle
t.before(async () => { redis = await startRedis({ private: true }) })
t.teardown(async () => await redis.stop())

t.test('an invalidation drops the other instance\'s copy', async t => {
  const a = await store(t, redis.url)
  const b = await store(t, redis.url)
  const k = a.key('basic', 'cart')
  await a.update(k, inc)
  t.match(await b.get(k), { version: 1, source: 'repository' })
  t.match(await b.get(k), { version: 1, source: 'local' })
  await a.update(k, inc)
  const deadline = performance.now() + 1000
  while (b.counters.invalidations < 2 && performance.now() < deadline) await sleep(2)
  t.match(await b.get(k), { version: 2, source: 'repository' }, 'b read the new version, not its old copy')
  // Pub/sub tells every instance of every write; client tracking only of writes after b read the key (the second).
  t.ok(b.counters.invalidations >= (b.health().coherence === 'tracking' ? 1 : 2))
  t.ok(b.localHitRatio > 0)
})

t.test('subscriber connection killed (CLIENT KILL) with writes during the gap: no stale read past the lease', async t => {
  const a = await store(t, redis.url)
  const b = await store(t, redis.url)
  const k = a.key('killed-sub', 'cart')
  await a.update(k, inc)
  await b.get(k)
  const p = poll(b, k)
  await sleep(50)
  redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub')
  const acks = await writeAll(a, k, 20, 10)
  await sleep(LEASE * 2)
  const reads = await p.stop()
  t.same(violations(reads, acks), [], `${reads.length} reads, none stale past the lease`)
  t.match(await b.get(k), { version: 21 })
  t.ok(b.counters.resyncs >= 2, 'the reconnect was treated as a resync')
})

t.test('subscriber silently blackholed: reads stop using local copies within the lease', async t => {
  const proxy = await startProxy(redis.port)
  t.teardown(async () => await proxy.close())
  const a = await store(t, redis.url)
  const b = await store(t, redis.url, { subscriberOptions: { port: proxy.port } })
  const k = a.key('blackhole', 'cart')
  await a.update(k, inc)
  await b.get(k)
  t.match(await b.get(k), { source: 'local' })
  const p = poll(b, k)
  proxy.blackhole()
  const acks = await writeAll(a, k, 30, 20)
  const reads = await p.stop()
  t.same(violations(reads, acks), [], `${reads.length} reads while the subscriber heard nothing, none stale past the lease`)
  t.ok(b.counters.leaseSuspensions >= 1, 'the lease lapsed')
  t.match(await b.get(k), { version: 31, source: 'repository' })
  proxy.restore()
  const deadline = performance.now() + 2000
  let back
  while (performance.now() < deadline) {
    back = await b.get(k)
    if (back?.source === 'local') break
    await sleep(20)
  }
  t.match(back, { version: 31, source: 'local' }, 'local reads resume once heartbeats are answered again')
})

t.test('a subscriber whose heartbeat stays unanswered is dropped and re-opened, and recovers', async t => {
  const proxy = await startProxy(redis.port)
  t.teardown(async () => await proxy.close())
  const a = await store(t, redis.url)
  const b = await store(t, redis.url, { subscriberOptions: { port: proxy.port }, subscriberDeadAfterMs: 300 })
  const k = a.key('dead-sub', 'cart')
  await a.update(k, inc)
  await b.get(k)
  const subscribers = (): number => redis.cli('CLIENT', 'LIST').split('\n').filter(l => l.includes('name=fastify-handoff:subscriber')).length
  const before = b.counters.resyncs
  const connectionsBefore = subscribers()
  proxy.blackhole()
  await sleep(800)
  t.ok(b.counters.resyncs > before, 'the silent connection was given up (a resync)')
  proxy.restore()
  await a.update(k, inc)
  const deadline = performance.now() + 5000
  let back
  while (performance.now() < deadline) {
    back = await b.get(k)
    if (back?.source === 'local' && back.version === 2) break
    await sleep(20)
  }
  t.match(back, { version: 2, source: 'local' }, 'a new subscriber connection renews the lease and delivers again')
  t.equal(subscribers(), connectionsBefore, 'the old connection is gone, one new one replaced it')
})

t.test('Redis restarted (state lost): copies from before are never served again', async t => {
  const r = await startRedis({ private: true })
  t.teardown(async () => await r.stop())
  const a = await store(t, r.url)
  const b = await store(t, r.url)
  const k = a.key('restart', 'session')
  await a.update(k, () => ({ user: 'before' }))
  t.match(await b.get(k), { value: { user: 'before' } })
  await r.restart()
  // After the restart the key is gone; a new write starts again at version 1 with other content.
  const deadline = performance.now() + 5000
  while (performance.now() < deadline) {
    try { await a.update(k, (cur) => cur === undefined ? { user: 'after' } : undefined); break } catch { await sleep(50) }
  }
  await sleep(LEASE * 2)
  t.match(await b.get(k), { version: 1, value: { user: 'after' } }, 'b does not confuse its old version 1 with the new one')
})

t.test('writer process killed right after its acknowledgement: the invalidation still arrives', async t => {
  const b = await store(t, redis.url)
  const k = b.key('doomed-writer', 'counter')
  const first = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/store-writer.ts', redis.url, 'doomed-writer', '1'],
    { env: { ...process.env, HANDOFF_SECRET: SECRET }, stdio: ['ignore', 'pipe', 'inherit'] })
  await waitForLine(first, 'acked 1')
  first.kill('SIGKILL')
  t.match(await b.get(k), { version: 1 })
  t.match(await b.get(k), { source: 'local' })
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/store-writer.ts', redis.url, 'doomed-writer', '1'],
    { env: { ...process.env, HANDOFF_SECRET: SECRET }, stdio: ['ignore', 'pipe', 'inherit'] })
  await waitForLine(child, 'acked 2')
  const ackedAt = performance.now()
  child.kill('SIGKILL')
  await sleep(LEASE)
  const e = await b.get(k)
  t.equal(e?.version, 2, `read ${(performance.now() - ackedAt).toFixed(0)} ms after the dead writer's ack sees its write`)
})

async function waitForLine (child: ReturnType<typeof spawn>, line: string): Promise<void> {
  const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${line}" from child`)), 15_000)
    rl.on('line', l => { if (l === line) { clearTimeout(timer); resolve() } })
  })
}

async function interleavings (t: Test, makeRepo: () => Repository, runs: number): Promise<void> {
  const repos = [makeRepo(), makeRepo(), makeRepo()]
  const stores = repos.map(repository => new TieredStore({ repository, secret: SECRET, partitions: 16, coherence: { leaseMs: LEASE } }))
  await Promise.all(stores.map(async s => await s.start()))
  t.teardown(async () => { for (const s of stores) await s.close(); for (const r of repos) await r.close() })
  let run = 0
  await fc.assert(fc.asyncProperty(
    fc.array(fc.record({ write: fc.boolean(), on: fc.nat(2), floor: fc.boolean() }), { minLength: 5, maxLength: 40 }),
    async ops => await interleaving(stores, stores[0]?.key(`prop-${run++}`, 'counter') as string, ops, LEASE)
  ), { numRuns: runs })
  t.pass(`${runs} random interleavings over 3 instances: every floor honoured, nothing stale past the lease`)
}

t.test('property: random interleavings on Redis', async t => {
  await interleavings(t, () => new RedisRepository({ url: redis.url }), 30)
})

t.test('property: the same on the embedded repository (several stores in one process)', async t => {
  const shared = new MemoryRepository()
  // One repository shared by the stores: closing it once is enough, so hand out views that do not close it.
  await interleavings(t, () => Object.assign(Object.create(shared) as MemoryRepository, { close: async () => {} }), 30)
  await shared.close()
})
