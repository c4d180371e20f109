/**
 * Bounded degraded reads: an instance cut off from Redis (while the others reach it) may answer from its local
 * copies, flagged degraded, only for maxDegradedMs after Redis was last confirmed; then reads fail like writes.
 */
import t, { type Test } from 'tap'
import { UnavailableError } from '../../lib/errors.js'
import { MemoryRepository } from '../../lib/repository/memory.js'
import { RedisRepository } from '../../lib/repository/redis.js'
import type { Invalidation, InvalidationListener, StoredEntry, SubscriptionScope, Subscription } from '../../lib/repository/types.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { startProxy } from '../helpers/proxy.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
const MAX_DEGRADED = 1500
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

let redis: RedisHandle
t.before(async () => { redis = await startRedis({ private: true }) })
t.teardown(async () => await redis.stop())

async function store (t: Test, port: number, maxDegradedMs?: number): Promise<TieredStore> {
  const repository = new RedisRepository({ url: `redis://127.0.0.1:${port}`, commandTimeoutMs: 1000 })
  const s = new TieredStore({ repository, secret: SECRET, partitions: 64, ...(maxDegradedMs === undefined ? {} : { maxDegradedMs }) })
  await s.start()
  t.teardown(async () => { await s.close(); await repository.close() })
  return s
}

/** Reads until the local tier answers (a loaded machine may lapse the lease for a moment), at most 2 s. */
async function warm (s: TieredStore, k: string): Promise<unknown> {
  const deadline = performance.now() + 2000
  let e = await s.get(k)
  while (e?.source !== 'local' && performance.now() < deadline) { await sleep(20); e = await s.get(k) }
  return e
}

t.test('a partitioned instance stops answering a deleted session within maxDegradedMs + 1 s; the others are unaffected', async t => {
  const proxy = await startProxy(redis.port)
  t.teardown(async () => await proxy.close())
  const a = await store(t, redis.port)
  const b = await store(t, proxy.port, MAX_DEGRADED)
  const c = await store(t, redis.port)
  const k = a.key('partitioned', 'session')
  await a.update(k, () => ({ user: 'alice' }))
  t.match(await b.get(k), { value: { user: 'alice' } })
  t.match(await warm(b, k), { source: 'local', degraded: false })

  proxy.blackhole()
  const cutAt = performance.now()
  await a.delete(k)
  t.equal(await c.get(k), undefined, 'an instance that reaches Redis sees the logout at once')

  let degradedAnswers = 0
  let refusedAfter = Number.POSITIVE_INFINITY
  let code: string | undefined
  while (performance.now() - cutAt < MAX_DEGRADED + 3000) {
    try {
      const e = await b.get(k)
      if (e !== undefined) {
        t.equal(e.degraded || e.source === 'local', true)
        if (e.degraded) degradedAnswers++
      }
    } catch (err) {
      refusedAfter = performance.now() - cutAt
      code = (err as { code?: string }).code
      break
    }
    await sleep(50)
  }
  t.ok(degradedAnswers > 0, `while cut off, b answered from its copy flagged degraded (${degradedAnswers} times)`)
  t.ok(refusedAfter <= MAX_DEGRADED + 1000, `b stopped answering ${refusedAfter.toFixed(0)} ms after the cut (maxDegradedMs ${MAX_DEGRADED})`)
  t.equal(code, 'FST_HANDOFF_UNAVAILABLE', 'reads fail like writes: 503')
  t.ok(b.unconfirmedMs > MAX_DEGRADED, 'b knows how long Redis has not been confirmed')
  t.equal(await c.get(k), undefined, 'the other instance is still unaffected')

  proxy.restore()
  const deadline = performance.now() + 10_000
  let back
  while (performance.now() < deadline) {
    try { back = await b.get(k); if (back === undefined) break } catch {}
    await sleep(50)
  }
  t.equal(back, undefined, 'once reconnected, b sees the deletion')
})

t.test('maxDegradedMs: 0 never answers from an unconfirmed copy; invalid values are refused', async t => {
  const proxy = await startProxy(redis.port)
  t.teardown(async () => await proxy.close())
  const b = await store(t, proxy.port, 0)
  const k = b.key('never-degraded', 'session')
  await b.update(k, () => ({ user: 'bob' }))
  t.match(await warm(b, k), { source: 'local' })
  proxy.blackhole()
  await sleep(600) // past the lease: local reads stop, the repository is asked
  await t.rejects(b.get(k), { code: 'FST_HANDOFF_UNAVAILABLE' })
  const repository = new RedisRepository({ url: redis.url })
  t.teardown(async () => await repository.close())
  t.throws(() => new TieredStore({ repository, secret: SECRET, maxDegradedMs: -1 }), { code: 'FST_HANDOFF_INVALID_OPTION', message: /maxDegradedMs/ })
})

/**
 * The in-process repository with delivery that can be lost, heartbeats sent by the test, invalidations it can withhold
 * (a missed message) and reads it can fail (Redis unreachable): the lease and degraded rules, step by step.
 */
class LossyMemoryRepository extends MemoryRepository {
  deaf = false
  failGets = false
  /** Runs inside a get, before it fails (something that happens while the call is in flight). */
  duringGet: (() => Promise<void>) | undefined
  private listener: InvalidationListener | undefined

  override async subscribe (scope: SubscriptionScope, listener: InvalidationListener): Promise<Subscription> {
    this.listener = listener
    const sub = await super.subscribe(scope, {
      onInvalidation: (msg: Invalidation) => { if (!this.deaf) listener.onInvalidation(msg) },
      onResync: partitions => listener.onResync(partitions),
      onWitness: (name, value, partitions) => { if (!this.deaf) listener.onWitness?.(name, value, partitions) }
    })
    return { reliable: false, close: sub.close }
  }

  beat (): void { this.listener?.onHeartbeat?.(performance.now()) }

  override async get (key: string): Promise<StoredEntry | null> {
    const during = this.duringGet
    this.duringGet = undefined
    if (during !== undefined) await during()
    if (this.failGets) throw new UnavailableError('connection lost (test)')
    return await super.get(key)
  }
}

async function lossyStore (t: Test, maxDegradedMs: number): Promise<{ repo: LossyMemoryRepository, s: TieredStore }> {
  const repo = new LossyMemoryRepository()
  const s = new TieredStore({ repository: repo, secret: SECRET, partitions: 64, coherence: { leaseMs: 50 }, maxDegradedMs })
  await s.start()
  repo.beat()
  t.teardown(async () => { await s.close(); await repo.close() })
  return { repo, s }
}

t.test('a copy from before a lapse, during which a logout was missed, never answers degraded', async t => {
  const { repo, s } = await lossyStore(t, 60_000)
  const k = s.key('missed-logout', 'session')
  await s.update(k, () => ({ user: 'alice' }))
  t.match(s.getLocal(k), { value: { user: 'alice' } }, 'the write filled a copy that answers while the lease holds')
  repo.deaf = true
  await repo.delete(k, 60_000) // the logout, published while the subscriber is not listening
  await sleep(120) // the lease lapses
  repo.deaf = false
  repo.beat() // the lease is regained: a new generation
  t.equal(s.getLocal(k), undefined, 'the copy from before the lapse does not answer as fresh')
  repo.failGets = true // then the repository becomes unreachable, well within maxDegradedMs of the last heartbeat
  await t.rejects(s.get(k), { code: 'FST_HANDOFF_UNAVAILABLE' }, 'nor does it answer degraded')
  t.equal(s.counters.degradedReads, 0)
})

t.test('with coherence, a call answered by the repository does not extend degraded reads: only the lease does', async t => {
  const { repo, s } = await lossyStore(t, 200)
  const k = s.key('lease-age', 'session')
  const other = s.key('elsewhere', 'session')
  await s.update(k, () => ({ user: 'alice' }))
  await sleep(60)
  repo.failGets = true
  t.match(await s.get(k), { value: { user: 'alice' }, degraded: true }, 'within maxDegradedMs of the last heartbeat: degraded answer')
  await sleep(300) // no heartbeat for longer than maxDegradedMs (the invalidation path is silent)...
  repo.failGets = false
  t.equal(await s.get(other), undefined, '...while another call is answered (another key, maybe another node)')
  repo.failGets = true
  await t.rejects(s.get(k), { code: 'FST_HANDOFF_UNAVAILABLE' }, 'the copy is unconfirmed since the last heartbeat: no answer')
  t.ok(s.unconfirmedMs > 200, `unconfirmedMs is the lease age (${s.unconfirmedMs.toFixed(0)} ms)`)
})

t.test('an invalidation that arrives while the failing call is in flight counts: the dropped copy is not served', async t => {
  const { repo, s } = await lossyStore(t, 60_000)
  const k = s.key('during-call', 'session')
  await s.update(k, () => ({ user: 'alice' }))
  await sleep(60) // the lease lapses: the next get asks the repository
  repo.failGets = true
  repo.duringGet = async () => { await repo.delete(k, 60_000) } // the logout is heard while the read is in flight
  await t.rejects(s.get(k), { code: 'FST_HANDOFF_UNAVAILABLE' })
  t.equal(s.counters.degradedReads, 0)
})

t.test('a compare-and-set refused because its local base is from another epoch drops every copy of the partition', async t => {
  const repo = new LossyMemoryRepository()
  const b = new TieredStore({ repository: repo, secret: SECRET, partitions: 1, coherence: { leaseMs: 60_000 } })
  await b.start()
  repo.beat()
  t.teardown(async () => { await b.close(); await repo.close() })
  const cart = b.key('cart', 'cart')
  const session = b.key('session', 'session') // the same (only) partition
  await b.update(cart, () => ['BOOK'])
  await b.update(session, () => ({ user: 'alice' }))
  t.ok(b.getLocal(session) !== undefined)
  repo.deaf = true // the reset is not heard (no witness, no invalidation reaches b yet)
  repo.wipe()
  const other = new TieredStore({ repository: repo, secret: SECRET, partitions: 1 })
  t.teardown(async () => { await other.close() })
  await other.update(cart, () => ['MUG']) // written after the reset, at version 1 of the new epoch
  const written = await b.update(cart, (cur: unknown) => [...(cur as string[]), 'PEN'])
  t.same(written.value, ['MUG', 'PEN'], 'the update is re-made on what is stored')
  t.equal(b.getLocal(session), undefined, 'the session the repository forgot no longer answers from the local tier')
  t.ok(b.counters.resets >= 1, 'the reset is counted')
})

t.test('waiting for replicas is a repository call like the others: its latency is observed', async t => {
  const repository = new RedisRepository({ url: redis.url, commandTimeoutMs: 1000 })
  const ops: string[] = []
  const s = new TieredStore({ repository, secret: SECRET, partitions: 64, durability: { replicas: 1, timeoutMs: 50 }, observe: op => { ops.push(op) } })
  await s.start()
  t.teardown(async () => { await s.close(); await repository.close() })
  ops.length = 0
  // No replica here: the write is stored, WAIT answers 0, and the caller gets a clear 503.
  await t.rejects(s.update(s.key('durable', 'cart'), () => ['BOOK']), { code: 'FST_HANDOFF_DURABILITY' })
  t.same(ops, ['compareAndSet', 'waitForReplicas'], 'the WAIT is observed after the write')
})
