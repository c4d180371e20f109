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
import { startRedis, type RedisHandle } from '../helpers/redis.js'
import { startProxy } from '../helpers/proxy.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
const LEASE = 250
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))
interface Counter { n: number }
const inc = (cur: unknown): Counter => ({ n: ((cur as Counter | undefined)?.n ?? 0) + 1 })

async function store (t: Test, url: string, repoOpts: RedisRepositoryOptions = {}): Promise<TieredStore> {
  const repository = new RedisRepository({ url, commandTimeoutMs: 500, ...repoOpts })
  const s = new TieredStore({ repository, secret: SECRET, partitions: 64, coherence: { leaseMs: LEASE } })
  await s.start()
  t.teardown(async () => { await s.close(); await repository.close() })
  return s
}

interface Read { start: number, version: number, degraded: boolean }
interface Ack { at: number, version: number }

/** Reads `key` on `reader` every few ms until stopped. */
function poll (reader: TieredStore, key: string): { stop: () => Promise<Read[]> } {
  const reads: Read[] = []
  const state = { on: true }
  const loop = (async () => {
    while (state.on) {
      const start = performance.now()
      try {
        const e = await reader.get(key)
        reads.push({ start, version: e?.version ?? 0, degraded: e?.degraded ?? false })
      } catch {}
      await sleep(2)
    }
  })()
  return { stop: async () => { state.on = false; await loop; return reads } }
}

/** Reads outside the guarantee: not degraded, started a lease after an ack, older than that ack. */
function violations (reads: Read[], acks: Ack[]): Read[] {
  return reads.filter(r => !r.degraded && acks.some(a => r.start > a.at + LEASE && r.version < a.version))
}

async function writeAll (writer: TieredStore, key: string, n: number, gapMs: number): Promise<Ack[]> {
  const acks: Ack[] = []
  for (let i = 0; i < n; i++) {
    const r = await writer.update(key, inc)
    acks.push({ at: performance.now(), version: r.version })
    await sleep(gapMs)
  }
  return acks
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
  t.ok(b.counters.invalidations >= 2)
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
    async ops => {
      const key = stores[0]?.key(`prop-${run++}`, 'counter') as string
      const acks: Ack[] = []
      const reads: Read[] = []
      let floorViolations = 0
      let acked = 0
      await Promise.all(ops.map(async (op, i) => {
        await sleep(i % 7)
        const s = stores[op.on] as TieredStore
        if (op.write) {
          const r = await s.update(key, inc)
          acks.push({ at: performance.now(), version: r.version })
          acked = Math.max(acked, r.version)
        } else {
          const floor = op.floor ? acked : 0
          const start = performance.now()
          const e = await s.get(key, { minVersion: floor })
          if ((e?.version ?? 0) < floor) floorViolations++
          reads.push({ start, version: e?.version ?? 0, degraded: e?.degraded ?? false })
        }
      }))
      return floorViolations === 0 && violations(reads, acks).length === 0
    }), { numRuns: runs })
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
