/**
 * Bounded degraded reads: an instance cut off from Redis (while the others reach it) may answer from its local
 * copies, flagged degraded, only for maxDegradedMs after Redis was last confirmed; then reads fail like writes.
 */
import t, { type Test } from 'tap'
import { RedisRepository } from '../../lib/repository/redis.js'
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
