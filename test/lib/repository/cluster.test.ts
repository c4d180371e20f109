import t from 'tap'
import { Cluster } from 'ioredis'
import { RedisRepository } from '../../../lib/repository/redis.js'
import { TieredStore } from '../../../lib/tiered-store.js'
import { startCluster, type ClusterHandle } from '../../helpers/cluster.js'
import { repositoryContract } from './contract.js'
import { waitFor } from '../../helpers/wait-for.js'
import { countSocketWrites, streamOf } from '../../helpers/socket-writes.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'

let cluster: ClusterHandle
let repo: RedisRepository
t.before(async () => {
  cluster = await startCluster()
  repo = clusterRepository()
  await repo.connect()
})
t.teardown(async () => { await repo.close(); await cluster.stop() })

function clusterRepository (): RedisRepository {
  const client = new Cluster(cluster.startupNodes, { enableOfflineQueue: false, redisOptions: { maxRetriesPerRequest: 0 } })
  return new RedisRepository({ client, ownsClient: true, commandTimeoutMs: 1000 })
}

repositoryContract(t, 'redis-cluster', async () => repo)

t.test('cluster: partitions spread over all three shards, each write one script in one slot', async t => {
  t.equal(repo.kind, 'redis-cluster')
  const store = new TieredStore({ repository: repo, secret: SECRET, partitions: 64 })
  await store.start()
  t.teardown(async () => await store.close())
  for (let i = 0; i < 200; i++) await store.update(store.key(`spread-${i}`, 'cart'), () => ({ i }))
  const counts = cluster.nodes.filter(n => n.cli('ROLE').startsWith('master')).map(n => Number(n.cli('DBSIZE')))
  t.equal(counts.length, 3)
  for (const c of counts) t.ok(c > 30, `a shard holds ${c} keys (entries and sequence counters)`)
})

t.test('cluster: invalidations reach another instance from every shard', async t => {
  const other = clusterRepository()
  const a = new TieredStore({ repository: repo, secret: SECRET, partitions: 64 })
  // A 10 s lease for the reader: with 250 ms a loaded machine let it lapse, and its warm reads went to Redis.
  const b = new TieredStore({ repository: other, secret: SECRET, partitions: 64, coherence: { leaseMs: 10_000 } })
  await a.start()
  await b.start()
  t.teardown(async () => { await a.close(); await b.close(); await other.close() })
  const keys = Array.from({ length: 30 }, (_, i) => a.key(`inv-${i}`, 'cart'))
  for (const k of keys) await a.update(k, () => ({ v: 1 }))
  for (const k of keys) t.match(await b.get(k), { version: 1 })
  for (const k of keys) t.match(await b.get(k), { source: 'local' })
  const before = b.counters.invalidations
  for (const k of keys) await a.update(k, () => ({ v: 2 }))
  await waitFor(() => b.counters.invalidations >= before + keys.length, { timeoutMs: 5000, intervalMs: 5 })
  t.equal(b.counters.invalidations - before, keys.length, 'one invalidation per write, whichever shard owns it')
  for (const k of keys) t.match(await b.get(k), { version: 2, value: { v: 2 } })
})

t.test('cluster: the commands of one turn leave in one socket write per primary', async t => {
  const keys = Array.from({ length: 48 }, (_, i) => `cl-turn:{p${i}}:k`)
  for (const k of keys) await repo.get(k) // every primary's connection open and the scripts' slots mapped
  await repo.compareAndSet(keys[0] as string, null, Buffer.from('warm'), 10_000)
  const client = repo.client as Cluster
  const primaries = client.nodes('master')
  const counters = primaries.map(n => countSocketWrites(streamOf(n)))
  const results = await Promise.all(keys.map(async k => await repo.compareAndSet(k, null, Buffer.from('v'), 10_000)))
  const writes = counters.map(stop => stop())
  t.equal(results.filter(r => r.ok).length, keys.length - 1, 'every write done (the warm-up key existed already)')
  t.same(writes, primaries.map(() => 1), 'one write per primary for the 48 commands of the turn')
})
