/**
 * The tracking transport on a real Redis Cluster when one shard refuses CLIENT TRACKING at first: the failed hub is
 * not reused by later replans (it would open a redirect connection that never enables tracking nor renews a lease),
 * and once the refusal is lifted that shard's partitions get their lease back through a fresh hub.
 */
import t from 'tap'
import { Cluster } from 'ioredis'
import { RedisRepository } from '../../../lib/repository/redis.js'
import { TieredStore } from '../../../lib/tiered-store.js'
import { startCluster, type ClusterHandle } from '../../helpers/cluster.js'
import { waitFor } from '../../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'

let cluster: ClusterHandle
t.before(async () => { cluster = await startCluster() })
t.teardown(async () => await cluster.stop())

/** Redirect connections the hubs opened on `node`. */
function redirects (node: ClusterHandle['nodes'][number]): number {
  return node.cli('CLIENT', 'LIST').split('\n').filter(l => l.includes('name=fastify-handoff:tracking')).length
}

t.test('a shard that refused CLIENT TRACKING at start: a fresh hub takes over once it is allowed, no dead hub is restarted', async t => {
  const refusing = cluster.primaryOf(0)
  refusing.cli('ACL', 'SETUSER', 'default', '-client|tracking')
  t.teardown(() => { refusing.cli('ACL', 'SETUSER', 'default', '+client|tracking') })
  const repository = new RedisRepository({
    client: new Cluster(cluster.startupNodes, { enableOfflineQueue: false, redisOptions: { maxRetriesPerRequest: 0 } }),
    ownsClient: true,
    commandTimeoutMs: 1000
  })
  const s = new TieredStore({ repository, secret: SECRET, partitions: 64, coherence: { leaseMs: 2000, transport: 'tracking' } })
  t.teardown(async () => { await s.close(); await repository.close() })
  await s.start()
  t.equal(s.health().coherence, 'tracking')
  // Several replans (every 500 ms) try the refusing shard again; its partitions stay without a lease meanwhile.
  await new Promise(resolve => setTimeout(resolve, 1500))
  t.notOk(s.health().localReads, 'the refusing shard\'s partitions hold no lease')
  t.ok(redirects(refusing) <= 1, `no redirect connections pile up on the refusing shard (${redirects(refusing)})`)
  refusing.cli('ACL', 'SETUSER', 'default', '+client|tracking')
  t.ok(await waitFor(() => s.health().localReads, { timeoutMs: 10_000 }), 'once allowed, every partition holds its lease again')
  t.equal(redirects(refusing), 1, 'one redirect connection on that shard')
  const k = s.key('after-refusal', 'cart')
  await s.update(k, () => ({ n: 1 }))
  t.ok(await waitFor(async () => (await s.get(k))?.source === 'local', { timeoutMs: 5000 }), 'local reads are served again')
})
