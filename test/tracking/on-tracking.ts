/**
 * Runs a suite again with every store on the tracking transport (issue 19: the coherence and fault suites pass
 * unchanged on it). HANDOFF_COHERENCE_TRANSPORT is what those suites' stores, and the fault-history checker's child
 * processes, read when no transport is given; this first proves on a real redis-server that a store started under it
 * really runs on tracking, so a store ignoring the variable fails here instead of passing on pub/sub.
 */
import t from 'tap'
import { RedisRepository } from '../../lib/repository/redis.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startRedis } from '../../scripts/redis-server.js'

export async function onTracking (): Promise<void> {
  process.env.HANDOFF_COHERENCE_TRANSPORT = 'tracking'
  await t.test('stores started under HANDOFF_COHERENCE_TRANSPORT=tracking run on tracking', async t => {
    const redis = await startRedis({ private: true })
    t.teardown(async () => { await redis.stop() })
    const repository = new RedisRepository({ url: redis.url })
    const store = new TieredStore({ repository, secret: 'a-test-secret-that-is-at-least-32-bytes-long' })
    await store.start()
    t.teardown(async () => { await store.close(); await repository.close() })
    t.equal(store.coherenceTransport, 'tracking', 'the started subscription is the tracking hub')
    t.equal(store.health().coherence, 'tracking', 'and health() says so')
  })
}
