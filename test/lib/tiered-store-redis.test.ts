import t, { type Test } from 'tap'
import fc from 'fast-check'
import { RedisRepository } from '../../lib/repository/redis.js'
import { TieredStore, type StoreValue } from '../../lib/tiered-store.js'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
interface Counter { [k: string]: StoreValue, n: number }
const inc = (cur: unknown): Counter => ({ n: ((cur as Counter | undefined)?.n ?? 0) + 1 })
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

async function makeStore (t: Test, url: string, extra: Partial<ConstructorParameters<typeof TieredStore>[0]> = {}, timeoutMs = 1000): Promise<TieredStore> {
  const repository = new RedisRepository({ url, commandTimeoutMs: timeoutMs })
  const store = new TieredStore({ repository, secret: SECRET, partitions: 64, ...extra })
  await store.start()
  t.teardown(async () => { await store.close(); await repository.close() })
  return store
}

t.test('property: concurrent increments from two instances on one Redis lose nothing', async t => {
  const server = await startRedis()
  t.teardown(async () => await server.stop())
  const a = await makeStore(t, server.url)
  const b = await makeStore(t, server.url)
  let run = 0
  await fc.assert(fc.asyncProperty(
    fc.array(fc.boolean(), { minLength: 1, maxLength: 60 }),
    fc.integer({ min: 1, max: 8 }),
    async (writers, inFlight) => {
      const k = a.key(`prop-${run++}-${Date.now()}`, 'counter')
      // `inFlight` lanes run concurrently; each lane issues its writes in order, alternating instances as drawn.
      const lanes = Array.from({ length: inFlight }, (_, lane) => writers.filter((_, i) => i % inFlight === lane))
      await Promise.all(lanes.map(async lane => { for (const useA of lane) await (useA ? a : b).update(k, inc) }))
      const final = await a.get(k, { minVersion: writers.length })
      return final?.value !== undefined && (final.value as Counter).n === writers.length && final.version === writers.length
    }), { numRuns: 25 })
  t.pass('25 random interleavings, every increment kept, version = number of writes')
})

t.test('an uncontended update from a warm local copy is exactly one round trip', async t => {
  const server = await startRedis()
  t.teardown(async () => await server.stop())
  const store = await makeStore(t, server.url)
  const k = store.key('rtt', 'session')
  // Each update waits until this instance heard its own write (pub/sub message or tracking echo) before the next:
  // uncontended means no write of the key still in flight (the next test does not wait).
  const updateAndHearIt = async (): Promise<void> => {
    const heard = store.counters.invalidations
    await store.update(k, inc)
    t.ok(await waitFor(() => store.counters.invalidations > heard), 'its own invalidation was heard')
  }
  await updateAndHearIt()
  server.cli('CONFIG', 'RESETSTAT')
  for (let i = 0; i < 10; i++) await updateAndHearIt()
  const stats = server.cli('INFO', 'commandstats')
  const evalsha = Number(/cmdstat_evalsha:calls=(\d+)/.exec(stats)?.[1] ?? 0)
  const hmget = Number(/cmdstat_hmget:calls=(\d+)/.exec(stats)?.[1] ?? 0)
  t.equal(evalsha, 10, `one script per update (${stats.replace(/\r?\n/g, ' ')})`)
  t.equal(hmget, 10, 'no read besides the one inside each script')
})

t.test('back-to-back updates of one instance, not waiting for its own echoes: still one script each, and the copy stays', async t => {
  const server = await startRedis()
  t.teardown(async () => await server.stop())
  // A long lease: a loaded machine's stall cannot lapse it (a lapse drops copies too, and would be counted here).
  const store = await makeStore(t, server.url, { coherence: { leaseMs: 30_000 } })
  const k = store.key('back-to-back', 'cart')
  await store.update(k, inc)
  const heard = store.counters.invalidations
  server.cli('CONFIG', 'RESETSTAT')
  // On tracking an update's echo names no version and often arrives while the next update is in flight. Each
  // acknowledged write's echo is counted (LocalTier.echoes), so it does not void the next write's copy: with a
  // copy voided, the update after it would send its script on no base and need a second one.
  const updates = 50
  for (let i = 0; i < updates; i++) await store.update(k, inc)
  const stats = server.cli('INFO', 'commandstats')
  const evalsha = Number(/cmdstat_evalsha:calls=(\d+)/.exec(stats)?.[1] ?? 0)
  t.equal(evalsha, updates, `one script per update (${stats.replace(/\r?\n/g, ' ')})`)
  t.equal(Number(/cmdstat_hmget:calls=(\d+)/.exec(stats)?.[1] ?? 0), updates, 'no read besides the one inside each script')
  t.ok(await waitFor(() => store.counters.invalidations >= heard + updates), 'every write\'s own invalidation was heard')
  const after = await store.get(k)
  t.equal(after?.source, 'local', 'after its echoes the last write\'s copy still answers')
  t.equal((after?.value as Counter | undefined)?.n, updates + 1, 'with the last value')
})

interface Ledger { acked: Map<string, number>, errors: Map<string, number>, maxLatency: number }

/** Drives increments on `keys` until stopped, recording the highest acknowledged value per key. */
function load (store: TieredStore, keys: string[]): { stop: () => Promise<Ledger> } {
  const ledger: Ledger = { acked: new Map(), errors: new Map(), maxLatency: 0 }
  const state = { running: true }
  const lanes = keys.map(async k => {
    while (state.running) {
      const started = performance.now()
      try {
        const r = await store.update(k, inc)
        ledger.acked.set(k, (r.value as Counter).n)
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'unknown'
        ledger.errors.set(code, (ledger.errors.get(code) ?? 0) + 1)
        await sleep(20)
      }
      ledger.maxLatency = Math.max(ledger.maxLatency, performance.now() - started)
    }
  })
  return { stop: async () => { state.running = false; await Promise.all(lanes); return ledger } }
}

async function waitForWrites (store: TieredStore, k: string, deadlineMs: number): Promise<number> {
  const started = performance.now()
  while (performance.now() - started < deadlineMs) {
    try { await store.update(k, inc); return performance.now() - started } catch { await sleep(25) }
  }
  throw new Error(`no successful write within ${deadlineMs} ms`)
}

interface Outage {
  name: string
  serverArgs: string[]
  /** Break Redis; resolve when reads during the outage may be checked. */
  cause: (server: RedisHandle) => Promise<void>
  /** Extra checks while Redis is out. */
  during?: (t: Test, store: TieredStore, quiet: string) => Promise<void>
  /** Bring Redis back. */
  end: (server: RedisHandle) => Promise<void>
}

/**
 * Outside the outage the 300 ms command timeout is only there to make the outage fail fast: a set-up or check call
 * that hit it because the whole suite loads the machine is asked again (a few times, then its error stands).
 */
async function outsideOutage<T> (fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn()
    } catch (err) {
      if (attempt >= 5 || (err as { code?: string }).code !== 'FST_HANDOFF_UNAVAILABLE') throw err
      await sleep(100 * attempt)
    }
  }
}

/** One fault-injection run: a write load on 8 keys, an outage, recovery, then every acknowledged write checked. */
async function outageUnderLoad (t: Test, o: Outage): Promise<void> {
  const server = await startRedis({ private: true, args: o.serverArgs })
  t.teardown(async () => await server.stop())
  const store = await makeStore(t, server.url, {}, 300)
  const keys = Array.from({ length: 8 }, (_, i) => store.key(`${o.name}-${i}`, 'counter'))
  const quiet = store.key(`${o.name}-quiet`, 'session')
  await outsideOutage(async () => await store.update(quiet, () => ({ user: 'alice' })))
  const l = load(store, keys)
  t.teardown(async () => { await l.stop() })
  await sleep(300)
  await o.cause(server)
  const during = await store.get(quiet)
  t.equal(during?.degraded, true, 'a known local copy is still served, flagged degraded')
  await o.during?.(t, store, quiet)
  await o.end(server)
  const recovery = await waitForWrites(store, keys[0] as string, 20_000)
  await sleep(200)
  const ledger = await l.stop()
  t.ok((ledger.errors.get('FST_HANDOFF_UNAVAILABLE') ?? 0) > 0, 'writes failed with FST_HANDOFF_UNAVAILABLE during the outage')
  t.same([...ledger.errors.keys()].filter(c => c !== 'FST_HANDOFF_UNAVAILABLE'), [], 'no other error')
  t.ok(ledger.maxLatency < 300 + 1500, `no call hung past the timeout (max ${ledger.maxLatency.toFixed(0)} ms; slack for a loaded CI machine)`)
  t.ok(recovery < 10_000, `writes resumed ${recovery.toFixed(0)} ms after Redis came back, without restarting anything`)
  store.clearLocal()
  for (const k of keys) {
    const n = ((await outsideOutage(async () => await store.get(k)))?.value as Counter).n
    t.ok(n >= (ledger.acked.get(k) ?? 0), `${k}: ${n} stored >= ${ledger.acked.get(k) ?? 0} acknowledged`)
  }
}

t.test('Redis paused (SIGSTOP): fail fast, keep serving known reads, lose no acknowledged write, recover', async t => {
  await outageUnderLoad(t, {
    name: 'pause',
    serverArgs: [],
    cause: async server => { server.pause(); await sleep(1200) },
    during: async (t, store, quiet) => {
      await t.rejects(store.update(quiet, () => ({ user: 'bob' })), { code: 'FST_HANDOFF_UNAVAILABLE' })
      t.match(await store.get(quiet), { degraded: true, value: { user: 'alice' } }, 'a failed write does not cost the degraded read')
    },
    end: async server => { server.resume() }
  })
})

t.test('Redis killed and restarted (AOF fsync always): no hang, no lost acknowledged write, recovery', async t => {
  await outageUnderLoad(t, {
    name: 'kill',
    serverArgs: ['--appendonly', 'yes', '--appendfsync', 'always'],
    cause: async server => { await server.kill(); await sleep(600) },
    end: async server => { await server.restart() }
  })
})

t.test('corrupt bytes and a foreign seal key in Redis read as a miss, and the next write heals the entry', async t => {
  const server = await startRedis()
  t.teardown(async () => await server.stop())
  const store = await makeStore(t, server.url)
  const foreign = await makeStore(t, server.url, { secret: 'a-completely-different-cluster-secret-0123' })
  const k = store.key('victim', 'session')
  await foreign.update(k, () => ({ user: 'mallory' }))
  t.equal(await store.get(k), undefined, 'foreign seal: miss')
  server.cli('HSET', k, 'd', 'garbage-bytes')
  t.equal(await store.get(k), undefined, 'corrupt bytes: miss')
  server.cli('DEL', k)
  server.cli('SET', k, 'a string where a hash belongs')
  t.equal(await store.get(k), undefined, 'wrong Redis type: miss')
  t.ok(store.counters.corrupt >= 3)
  server.cli('DEL', k)
  t.match(await store.update(k, () => ({ user: 'alice' })), { written: true, version: 1 })
})
