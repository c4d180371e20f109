import t from 'tap'
import { RedisRepository } from '../../lib/repository/redis.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startPrimaryWithReplica } from '../helpers/replica.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'

t.test('durability { replicas: 1 }: acknowledged only once a replica has it, a clear 503 when none confirms', async t => {
  const { primary, replica } = await startPrimaryWithReplica(t)
  t.match(replica.cli('INFO', 'replication'), /master_link_status:up/, 'replica in sync')
  t.match(primary.cli('INFO', 'replication'), /slave0:.*state=online/, 'primary sees it online')

  // WAIT gets up to a second here: a replica on a loaded CI machine can take longer than 200 ms to acknowledge.
  const repository = new RedisRepository({ url: primary.url, commandTimeoutMs: 5000 })
  const store = new TieredStore({ repository, secret: SECRET, partitions: 64, durability: { replicas: 1, timeoutMs: 1000 } })
  await store.start()
  t.teardown(async () => { await store.close(); await repository.close() })
  const k = store.key('durable', 'cart')
  const r = await store.update(k, () => ({ items: 1 }))
  t.equal(r.version, 1)
  t.match(replica.cli('HGET', k, 'v'), '1', 'the replica holds the write when update resolves')
  await store.delete(k)
  t.match(replica.cli('HGET', k, 'v'), '2', 'deletes wait for the replica too')

  await replica.kill()
  const started = performance.now()
  await t.rejects(store.update(k, (_c, info) => info.deleted ? { items: 2 } : undefined), {
    code: 'FST_HANDOFF_DURABILITY', statusCode: 503, message: /0 of 1 required replicas/
  })
  t.ok(performance.now() - started < 3000, 'the wait is bounded by timeoutMs')
  t.equal(store.counters.durabilityFailures, 1)
})
