/**
 * Fault-history checker on a real Redis Cluster (3 primaries, 3 replicas): three store instances in their own
 * processes run the random workload while the primary serving one of the keys is killed (kill -9) and its replica
 * takes over. Replication is asynchronous, so Redis may roll back the last acknowledged writes of that shard: those
 * are counted as lost by Redis. Nothing else may be lost, no read may be stale past the lease, and every instance
 * must converge to what the new primary holds.
 */
import t from 'tap'
import { Cluster } from 'ioredis'
import clusterKeySlot from 'cluster-key-slot'
import { RedisRepository } from '../../lib/repository/redis.js'
import { startCluster } from '../helpers/cluster.js'
import { formatTable } from '../helpers/history.js'
import { clock, directReader, phaseKeys, runPhase, sleep, startClient, PARTITIONS, SECRET, type Phase } from './harness.js'
import { assertCommon } from './standalone-rig.js'

// A loaded 2-core machine starts six redis-servers and three tsx processes slowly: an upper bound, not a target.
t.setTimeout(240_000)
const prefix = `histcl${process.pid}:`
const cluster = await startCluster()
const clients = await Promise.all(['A', 'B', 'C'].map(async name =>
  await startClient({ name, clusterNodes: cluster.startupNodes, prefix, secret: SECRET, partitions: PARTITIONS, commandTimeoutMs: 1000 })))
const readerRepo = new RedisRepository({
  client: new Cluster(cluster.startupNodes, { enableOfflineQueue: false, redisOptions: { maxRetriesPerRequest: 0 } }),
  ownsClient: true,
  commandTimeoutMs: 1000
})
const reader = directReader(readerRepo, prefix)
await reader.start()
t.teardown(async () => {
  await Promise.all(clients.map(async c => await c.close()))
  await reader.close()
  await readerRepo.close()
  await cluster.stop()
})

t.test('Cluster: kill -9 of one primary, its replica promoted', async t => {
  const phase: Phase = {
    name: 'Cluster primary failover (kill -9)',
    nemesis: async () => {
      // The primary of the first hot key.
      const key = reader.key(phaseKeys(phase, 1).hotKeys[0] as string, 'reg')
      const victim = cluster.primaryOf(clusterKeySlot(key))
      const start = clock()
      await victim.kill()
      // Over once the key's slot answers again (a replica was promoted); cheaper than polling every node's view.
      const deadline = start + 20_000
      for (;;) {
        try { await reader.get(key); break } catch (err) { if (clock() > deadline) throw err }
        await sleep(100)
      }
      return [{ kind: 'primary failover', start, end: clock(), dataLoss: 'partial' as const }]
    }
  }
  const o = await runPhase(phase, { clients, reader, warmMs: 800, afterMs: 1000, convergeBoundMs: 2000, lanes: 2, gapMs: 8, seed: 1 })
  assertCommon(t, o)
  t.comment(`${o.result.lostByRedis} acknowledged writes/deletes rolled back by the failover (counted)`)
  t.ok(o.history.some(op => op.outcome !== 'ok'), 'the failover was felt: some operation failed or timed out')
  for (const line of formatTable([o.row]).split('\n')) t.comment(line)
})
