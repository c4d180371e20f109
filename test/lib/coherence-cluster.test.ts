/**
 * The coherence fault tests on a real Redis Cluster: subscriber connections killed on every shard, a primary
 * failover, one shard's subscriber killed, and random interleavings. (A silently blackholed subscriber is covered on
 * standalone Redis: on a cluster each shard's heartbeats lease its own partitions, the same mechanism per shard.)
 */
import t, { type Test } from 'tap'
import fc from 'fast-check'
import { Cluster } from 'ioredis'
import clusterKeySlot from 'cluster-key-slot'
import { RedisRepository } from '../../lib/repository/redis.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startCluster, type ClusterHandle } from '../helpers/cluster.js'
import { waitFor } from '../helpers/wait-for.js'
import { inc, interleaving, poll, sleep, violations, writeAll } from '../helpers/staleness.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
const LEASE = 250

let cluster: ClusterHandle
t.before(async () => { cluster = await startCluster() })
t.teardown(async () => await cluster.stop())

async function store (t: Test, leaseMs = LEASE): Promise<TieredStore> {
  const repository = new RedisRepository({
    client: new Cluster(cluster.startupNodes, { enableOfflineQueue: false, redisOptions: { maxRetriesPerRequest: 0 } }),
    ownsClient: true,
    commandTimeoutMs: 1000
  })
  const s = new TieredStore({ repository, secret: SECRET, partitions: 64, coherence: { leaseMs } })
  await s.start()
  t.teardown(async () => { await s.close(); await repository.close() })
  return s
}

t.test('cluster: subscriber connections killed on every shard, writes during the gap', async t => {
  const a = await store(t)
  const b = await store(t)
  const keys = Array.from({ length: 6 }, (_, i) => a.key(`ck-${i}`, 'cart'))
  for (const k of keys) { await a.update(k, inc); await b.get(k) }
  const polls = keys.map(k => poll(b, k))
  await sleep(50)
  for (const n of cluster.nodes) n.cli('CLIENT', 'KILL', 'TYPE', 'pubsub')
  const acks = await Promise.all(keys.map(async k => await writeAll(a, k, 10, 10)))
  await sleep(LEASE * 2)
  for (let i = 0; i < keys.length; i++) {
    const reads = await (polls[i] as ReturnType<typeof poll>).stop()
    t.same(violations(reads, acks[i] ?? [], LEASE), [], `${keys[i] as string}: ${reads.length} reads, none stale past the lease`)
  }
})

t.test('cluster: one primary\'s subscriber killed resyncs only its slots; the other shards\' copies keep answering', async t => {
  // A lease a loaded machine does not lapse by itself while the test looks (a lapse drops every copy of the shard).
  const a = await store(t, 2000)
  const keys = Array.from({ length: 30 }, (_, i) => a.key(`shard-resync-${i}`, 'cart'))
  const owners = cluster.slotOwners()
  const killed = owners(clusterKeySlot(keys[0] as string))
  const onKilled = keys.filter(k => owners(clusterKeySlot(k)) === killed)
  const elsewhere = keys.filter(k => !onKilled.includes(k))
  t.ok(onKilled.length > 2 && elsewhere.length > 5, `${onKilled.length} keys on the shard whose subscriber is killed, ${elsewhere.length} elsewhere`)
  for (const k of keys) await a.update(k, inc)
  t.same(keys.filter(k => a.getLocal(k) === undefined), [], 'every key has a local copy')
  const resyncs = a.counters.resyncs
  killed.cli('CLIENT', 'KILL', 'TYPE', 'pubsub')
  t.ok(await waitFor(() => a.counters.resyncs > resyncs, { timeoutMs: 5000 }), 'that shard\'s subscriber reconnected: a resync')
  t.ok(await waitFor(() => a.health().localReads, { timeoutMs: 5000 }), 'and the lease is held again')
  const reads = a.counters.repositoryReads
  const local = await Promise.all(elsewhere.map(async k => (await a.get(k))?.source))
  t.same(local.filter(s => s !== 'local'), [], 'every copy of the other shards\' partitions still answers')
  t.equal(a.counters.repositoryReads, reads, 'no read for them')
  const reread = await Promise.all(onKilled.map(async k => (await a.get(k))?.source))
  t.same(reread.filter(s => s !== 'repository'), [], 'copies of the resynced shard\'s partitions are read again')
})

t.test('cluster: primary failover, then new writes: no stale copy served', async t => {
  const a = await store(t)
  const b = await store(t)
  const k = a.key('failover-key', 'session')
  await a.update(k, inc)
  await b.get(k)
  const node = cluster.primaryOf(clusterKeySlot(k))
  const p = poll(b, k)
  await node.kill()
  const deadline = Date.now() + 15_000
  while (Date.now() < deadline) {
    try { if (cluster.primaryOf(clusterKeySlot(k)) !== node) break } catch {}
    await sleep(50)
  }
  const acks = []
  const writeDeadline = Date.now() + 15_000
  while (acks.length < 10 && Date.now() < writeDeadline) {
    try {
      const r = await a.update(k, inc)
      acks.push({ at: performance.now(), version: r.version })
    } catch { await sleep(50) }
  }
  await sleep(LEASE * 2)
  const reads = await p.stop()
  t.equal(acks.length, 10, 'writes resumed on the promoted replica')
  t.same(violations(reads, acks, LEASE), [], `${reads.length} reads across the failover, none stale past the lease`)
  const last = acks[acks.length - 1]?.version ?? 0
  t.match(await b.get(k), { version: last }, 'the other instance follows the new primary')
  await node.restart()
  await cluster.waitHealthy()
})

t.test('cluster: property, random interleavings over 3 instances', async t => {
  const stores = [await store(t), await store(t), await store(t)]
  let run = 0
  await fc.assert(fc.asyncProperty(
    fc.array(fc.record({ write: fc.boolean(), on: fc.nat(2), floor: fc.boolean() }), { minLength: 5, maxLength: 30 }),
    async ops => await interleaving(stores, (stores[0] as TieredStore).key(`cprop-${run++}`, 'counter'), ops, LEASE)
  ), { numRuns: 20 })
  t.pass('20 random interleavings on the cluster: every floor honoured, nothing stale past the lease')
})
