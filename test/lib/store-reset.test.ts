/**
 * The repository forgets (FLUSHALL, Redis restarted empty): versions start again at 1, so a version alone no longer
 * names a value. Every entry and invalidation carries its partition's epoch; the store must notice the reset, drop
 * what it holds, count it, and never let a base from before the reset overwrite what was written after it.
 */
import t, { type Test } from 'tap'
import { LocalTier } from '../../lib/local-tier.js'
import { MemoryRepository } from '../../lib/repository/memory.js'
import { RedisRepository } from '../../lib/repository/redis.js'
import { ShardedRepository } from '../../lib/repository/sharded.js'
import type { InvalidationListener, Repository, Subscription, SubscriptionScope } from '../../lib/repository/types.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
// Long enough that a loaded machine does not lapse it between a fill and the read that checks it is local.
const LEASE = 1000
type Cart = readonly string[]

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))
const add = (sku: string) => (cur: Cart | undefined): Cart => [...(cur ?? []), sku]

async function store (t: Test, repository: Repository): Promise<TieredStore<Cart>> {
  const s = new TieredStore<Cart>({ repository, secret: SECRET, partitions: 64, coherence: { leaseMs: LEASE } })
  await s.start()
  t.teardown(async () => { await s.close() })
  return s
}

function redisRepo (t: Test, url: string): RedisRepository {
  const r = new RedisRepository({ url, commandTimeoutMs: 1000 })
  t.teardown(async () => await r.close())
  return r
}

/** Polls `test` until it holds or `ms` pass; returns how long it took (Infinity: never). */
async function until (ms: number, test: () => Promise<boolean>): Promise<number> {
  const started = performance.now()
  while (performance.now() - started < ms) {
    if (await test()) return performance.now() - started
    await sleep(10)
  }
  return Number.POSITIVE_INFINITY
}

/**
 * FLUSHALL over a client of this process: redis-cli (spawnSync) would block the event loop long enough on a loaded
 * machine to lapse the lease, and a lapse flushes local copies by itself, hiding what is under test.
 */
async function flushAll (s: TieredStore<Cart>): Promise<void> {
  await (s.repository as RedisRepository).command(async c => await c.flushall())
}

let redis: RedisHandle
t.before(async () => { redis = await startRedis({ private: true }) })
t.teardown(async () => await redis.stop())

t.test('FLUSHALL, then a write to the same key: the other instance drops its copy of the same version number', async t => {
  const a = await store(t, redisRepo(t, redis.url))
  const k = a.key('flush-write', 'cart')
  await a.update(k, add('BOOK'))
  // b starts after the first write: it never saw this partition's sequence, so no gap can reveal the restart.
  const b = await store(t, redisRepo(t, redis.url))
  t.match(await b.get(k), { version: 1, value: ['BOOK'] })
  t.match(await b.get(k), { version: 1, source: 'local' })
  await flushAll(a)
  const written = await a.update(k, add('MUG'))
  t.same(written.value, ['MUG'], 'a sees the flush (its version 1 is another value now) and writes on nothing')
  t.equal(written.version, 1, 'the version number restarted')
  const after = await until(2000, async () => (await b.get(k))?.value?.[0] === 'MUG')
  t.ok(after < 2000, `b answers the new value ${after.toFixed(0)} ms after the write`)
  t.match(await b.get(k), { version: 1, value: ['MUG'] })
  t.ok(b.counters.resets >= 1, `b counted the reset (${b.counters.resets})`)
  t.not((await b.get(k))?.epoch, '', 'entries name their epoch')
})

t.test('FLUSHALL and silence: a copy stops answering what Redis forgot, without any write', async t => {
  const a = await store(t, redisRepo(t, redis.url))
  const b = await store(t, redisRepo(t, redis.url))
  const k = a.key('flush-silent', 'session')
  await a.update(k, add('signed-in'))
  t.match(await b.get(k), { value: ['signed-in'] })
  t.match(await b.get(k), { source: 'local' })
  const resetsBefore = b.counters.resets
  await flushAll(a)
  const gone = await until(2000, async () => (await b.get(k)) === undefined)
  t.ok(gone < 2000, `b stopped answering the forgotten entry after ${gone.toFixed(0)} ms (no write, no reconnect)`)
  t.ok(b.counters.resets > resetsBefore, 'the reset was counted')
  t.ok(await until(2000, async () => a.counters.resets >= 1) < 2000, 'every instance counts it')
})

t.test('the "add MUG" case: an acknowledged add after FLUSHALL is not overwritten from a pre-flush base', async t => {
  const a = await store(t, redisRepo(t, redis.url))
  const k = a.key('add-mug', 'cart')
  await a.update(k, add('BOOK'))
  const b = await store(t, redisRepo(t, redis.url))
  t.match(await b.get(k), { version: 1, value: ['BOOK'] })
  t.match(await b.get(k), { source: 'local' })
  await flushAll(a)
  const acked = await a.update(k, add('MUG'))
  t.same(acked.value, ['MUG'])
  // At once: b may not have heard of the reset yet; its local base (version 1, old epoch) must be refused anyway.
  const other = await b.update(k, add('PEN'))
  t.same(other.value, ['MUG', 'PEN'], 'b re-read the stored cart instead of writing on its pre-flush copy')
  t.match(await a.get(k, { minVersion: 2 }), { version: 2, value: ['MUG', 'PEN'] })
})

t.test('a compare-and-set whose base is from another epoch is refused, even at a matching version', async t => {
  const repo = redisRepo(t, redis.url)
  await repo.connect()
  const s = await store(t, repo)
  const k = s.key('cas-epoch', 'cart')
  const first = await repo.compareAndSet(k, null, Buffer.from('old'), 10_000)
  t.ok(first.ok)
  const oldEpoch = first.ok ? first.epoch : ''
  await flushAll(s)
  const second = await repo.compareAndSet(k, null, Buffer.from('new'), 10_000)
  t.ok(second.ok && second.version === 1 && second.epoch !== oldEpoch, 'a new epoch after the flush')
  const stale = await repo.compareAndSet(k, 1, Buffer.from('stale'), 10_000, oldEpoch)
  t.equal(stale.ok, false, 'version 1 of the old epoch is not version 1 of the new one')
  if (!stale.ok) t.same(stale.current?.value, Buffer.from('new'), 'the refusal returns what is stored')
  t.equal(await repo.touch(k, 10_000, oldEpoch), false, 'touch refuses an entry of another epoch too')
  const fresh = await repo.compareAndSet(k, 1, Buffer.from('fine'), 10_000, second.ok ? second.epoch : '')
  t.ok(fresh.ok, 'a base from the current epoch is accepted')
})

t.test('entries written before epochs (no epoch field) stay readable and writable', async t => {
  const repo = redisRepo(t, redis.url)
  const s = await store(t, repo)
  const k = s.key('legacy', 'cart')
  // Write through the store, then strip the epoch as an older version of this library would have left the entry.
  await s.update(k, add('OLD'))
  await repo.command(async c => await c.hdel(k, 'g'))
  // On tracking the HDEL invalidates this instance's copy (the key was tracked): wait until that was heard, or it can
  // arrive after the read below and drop the copy the update is meant to start from (a lost copy, never a stale one).
  if (s.coherenceTransport === 'tracking') t.ok(await waitFor(() => s.getLocal(k) === undefined), 'the HDEL\'s invalidation was heard')
  s.clearLocal()
  t.match(await s.get(k), { version: 1, value: ['OLD'], epoch: '' }, 'read, with an empty epoch')
  t.match(s.getLocal(k), { version: 1, epoch: '' }, 'and kept locally')
  const r = await s.update(k, add('NEW'))
  t.same(r.value, ['OLD', 'NEW'], 'updated from the legacy base')
  t.equal(r.conflicts, 0, 'without a conflict: the legacy entry matched its empty epoch')
  t.not(r.epoch, '', 'and migrated to the current epoch')
})

t.test('Redis killed and restarted empty on the same port: no stale read, the reset is counted', async t => {
  const r = await startRedis({ private: true })
  t.teardown(async () => await r.stop())
  const a = await store(t, redisRepo(t, r.url))
  const b = await store(t, redisRepo(t, r.url))
  const k = a.key('restart-empty', 'session')
  await a.update(k, add('before'))
  t.match(await b.get(k), { value: ['before'] })
  t.match(await b.get(k), { source: 'local' })
  await r.restart()
  const restartedAt = performance.now()
  // Within the lease after the restart a copy may still answer (the subscriber has not noticed yet); past it, never.
  const late: unknown[] = []
  const settled = await until(5000, async () => {
    let e
    try { e = await b.get(k) } catch { return false }
    if (e !== undefined && performance.now() - restartedAt > LEASE) late.push(e.value)
    return e === undefined && b.counters.resets >= 1
  })
  t.ok(settled < 5000, `b answers "absent" and counted the reset within ${settled.toFixed(0)} ms`)
  t.same(late, [], 'no read of the forgotten value later than one lease after the restart')
  t.equal(await b.get(k), undefined)
  t.ok(b.counters.resets >= 1, `resets counted: ${b.counters.resets}`)
})

t.test('MemoryRepository: wipe() is a reset for every store on it', async t => {
  const repo = new MemoryRepository()
  t.teardown(async () => await repo.close())
  const a = await store(t, repo)
  const b = await store(t, repo)
  const k = a.key('wipe', 'cart')
  await a.update(k, add('BOOK'))
  t.match(await b.get(k), { value: ['BOOK'] })
  t.match(await b.get(k), { source: 'local' })
  repo.wipe()
  t.equal(await b.get(k), undefined, 'b dropped its copy at once')
  t.equal(b.counters.resets, 1)
  t.equal(a.counters.resets, 1)
  await a.update(k, add('MUG'))
  t.same((await b.update(k, add('PEN'))).value, ['MUG', 'PEN'])
})

/** A coherent local tier with a lease held for the test's duration, as a subscriber with an open lease sees it. */
function coherentTier (): LocalTier {
  const tier = new LocalTier({ partitions: 4, stripes: 4, maxBytes: 1 << 20, ttlMs: 60_000, leaseMs: 60_000, reliable: false, now: Date.now, repository: 'test' })
  tier.onHeartbeat(performance.now())
  return tier
}

function fillFrom (tier: LocalTier, key: string, version: number, epoch: string): void {
  tier.fill(tier.open(key, 0), { value: { v: version }, version, epoch, expiresAt: Date.now() + 60_000, bytes: 8 })
}

t.test('a late reply from the old epoch does not set the partition back, count a reset, or fill', async t => {
  const tier = coherentTier()
  tier.onInvalidation({ key: 'k1', version: 3, partition: 0, sequence: 1, epoch: 'old' })
  tier.onInvalidation({ key: 'k2', version: 1, partition: 0, sequence: 1, epoch: 'new' }) // the reset is heard
  t.equal(tier.counters.resets, 1)
  fillFrom(tier, 'other', 1, 'new')
  t.ok(tier.get('other', 0, 0) !== undefined, 'a copy of the new epoch answers')
  fillFrom(tier, 'k', 5, 'old') // a read answered from the old epoch (a late reply, or a node that has not reset yet)
  t.equal(tier.counters.resets, 1, 'no reset counted for the late reply')
  t.equal(tier.get('k', 0, 0), undefined, 'the old-epoch copy is not kept')
  t.ok(tier.get('other', 0, 0) !== undefined, 'the partition was not flushed')
  tier.onInvalidation({ key: 'k3', version: 2, partition: 0, sequence: 2, epoch: 'new' })
  t.equal(tier.counters.resets, 1, 'the partition is still in the new epoch: its next invalidation is no reset')
  t.ok(tier.get('other', 0, 0) !== undefined)
})

t.test('an entry that outlived its partition\'s epoch key does not flip the partition back and forth', async t => {
  const tier = coherentTier()
  tier.onInvalidation({ key: 'fresh', version: 1, partition: 0, sequence: 1, epoch: 'current' })
  fillFrom(tier, 'fresh', 1, 'current')
  for (let i = 0; i < 5; i++) {
    fillFrom(tier, 'survivor', 7, 'evicted') // read again and again: its epoch is the one of a lost epoch key
    fillFrom(tier, 'fresh', 1, 'current')
  }
  t.equal(tier.counters.resets, 0, 'no reset counted')
  t.equal(tier.get('survivor', 0, 0), undefined, 'the survivor is read from the repository each time, not kept')
  t.ok(tier.get('fresh', 0, 0) !== undefined, 'copies of the partition\'s epoch stay')
  fillFrom(tier, 'legacy', 2, '')
  t.ok(tier.get('legacy', 0, 0) !== undefined, 'entries written before epochs are kept')
})

/** An in-process node whose witness the test reports, as a Redis node's subscriber does with every heartbeat. */
class WitnessingMemoryRepository extends MemoryRepository {
  private readonly witnessListeners: InvalidationListener[] = []
  override async subscribe (scope: SubscriptionScope, listener: InvalidationListener): Promise<Subscription> {
    this.witnessListeners.push(listener)
    return await super.subscribe(scope, listener)
  }

  heartbeat (): void { for (const l of this.witnessListeners) l.onWitness?.('witness', 'unchanged') }
}

t.test('{ shards }: a node\'s partitions are computed once, not on every witness heartbeat', async t => {
  const nodes = [new WitnessingMemoryRepository(), new WitnessingMemoryRepository()]
  const sharded = new ShardedRepository(nodes.map((repository, i) => ({ id: `n${i}`, repository })))
  t.teardown(async () => await sharded.close())
  const rendezvous = (sharded as unknown as { rendezvous: { nodeFor: (p: number) => string } }).rendezvous
  const nodeFor = rendezvous.nodeFor.bind(rendezvous)
  let lookups = 0
  rendezvous.nodeFor = p => { lookups++; return nodeFor(p) }
  const reported = new Map<string, readonly number[] | undefined>()
  const sub = await sharded.subscribe({ prefix: 'handoff:', partitions: 64 }, {
    onInvalidation: () => {},
    onResync: () => {},
    onWitness: (name, _value, partitions) => { reported.set(name, partitions) }
  })
  t.teardown(async () => await sub.close())
  for (const n of nodes) n.heartbeat()
  const afterFirst = lookups
  for (let beat = 0; beat < 20; beat++) for (const n of nodes) n.heartbeat()
  t.equal(lookups, afterFirst, 'no rendezvous lookup on later heartbeats')
  const owned = reported.get('n0 witness') ?? []
  t.ok(owned.length > 0 && owned.length < 64, 'each node reports its share of the partitions')
  t.same([...owned, ...(reported.get('n1 witness') ?? [])].sort((a, b) => a - b), Array.from({ length: 64 }, (_, p) => p), 'together, every partition once')
  t.ok(owned.every(p => nodeFor(p) === 'n0'), 'the partitions a node reports are its own')
})

t.test('the witness is read every half lease at most, not with every heartbeat', async t => {
  const server = await startRedis({ private: true })
  t.teardown(async () => await server.stop())
  const repository = redisRepo(t, server.url)
  const getexCalls = async (): Promise<number> => {
    const info = await repository.command(async c => await c.info('commandstats'))
    return Number(/cmdstat_getex:calls=(\d+)/.exec(info)?.[1] ?? 0)
  }
  const s = new TieredStore<Cart>({ repository, secret: SECRET, partitions: 64, coherence: { leaseMs: 400 } })
  await s.start()
  t.teardown(async () => { await s.close() })
  const before = await getexCalls()
  const started = performance.now()
  await sleep(2000)
  const calls = await getexCalls() - before
  const elapsed = performance.now() - started
  // Heartbeats every 50 ms would read it ~40 times; every 200 ms at most is ~10.
  t.ok(calls >= 1, `the witness is still checked (${calls} reads)`)
  t.ok(calls <= Math.ceil(elapsed / 200) + 1, `${calls} witness reads in ${elapsed.toFixed(0)} ms (heartbeats every 50 ms, lease 400 ms)`)
})
