/**
 * Runs a suite again with every store on the pub/sub transport (the default is tracking; the coherence and fault
 * suites must pass unchanged on both, issue 19). HANDOFF_COHERENCE_TRANSPORT is what those suites' stores, and the
 * fault-history checker's child processes, read when no transport is given; this first proves on a real
 * redis-server that a store started under it really runs on pub/sub, so a store ignoring the variable fails here
 * instead of passing on tracking.
 */
import t from 'tap'
import { RedisRepository } from '../../lib/repository/redis.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startRedis } from '../../scripts/redis-server.js'

export async function onPubsub (): Promise<void> {
  process.env.HANDOFF_COHERENCE_TRANSPORT = 'pubsub'
  await t.test('stores started under HANDOFF_COHERENCE_TRANSPORT=pubsub run on pub/sub', async t => {
    const redis = await startRedis({ private: true })
    t.teardown(async () => { await redis.stop() })
    const repository = new RedisRepository({ url: redis.url })
    const store = new TieredStore({ repository, secret: 'a-test-secret-that-is-at-least-32-bytes-long' })
    await store.start()
    t.teardown(async () => { await store.close(); await repository.close() })
    t.equal(store.coherenceTransport, 'pubsub', 'the started subscription is the pub/sub subscriber')
    t.equal(store.health().coherence, 'pubsub', 'and health() says so')
  })
}
