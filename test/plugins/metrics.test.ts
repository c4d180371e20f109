import t from 'tap'
import Fastify from 'fastify'
import { handoffStore } from '../../plugins/store.js'
import { handoffMetrics } from '../../plugins/metrics.js'
import { RedisRepository } from '../../lib/repository/redis.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startRedis } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'

function value (text: string, name: string, labels = ''): number {
  const line = text.split('\n').find(l => l.startsWith(`${name}${labels === '' ? ' ' : `{${labels}} `}`))
  if (line === undefined) throw new Error(`metric ${name}{${labels}} not found`)
  return Number(line.split(' ').pop())
}

// Both transports count the same: on tracking, the writer's own echo is one invalidation per write as on pub/sub,
// and the partition's sequence counter, which Redis tracks too, is not counted.
for (const transport of ['pubsub', 'tracking'] as const) {
  t.test(`metrics match a scripted workload; health turns degraded while Redis is down (${transport})`, async t => {
    const server = await startRedis({ private: true })
    t.teardown(async () => await server.stop())
    const app = Fastify()
    // Counts are exact only while the coherence lease holds: with the default 250 ms, a loaded machine let it lapse,
    // turning local hits into repository reads and localReads false. 10 s outlasts any stall; the lease is not the
    // subject here.
    await app.register(handoffStore, { secret: SECRET, redis: server.url, commandTimeoutMs: 300, coherence: { leaseMs: 10_000, transport } })
    await app.register(handoffMetrics)
    await app.ready()
    t.teardown(async () => await app.close())
    const store = app.handoff.store
    const inc = (c: unknown): { n: number } => ({ n: ((c as { n: number } | undefined)?.n ?? 0) + 1 })

    // 10 creates (10 CAS), 20 local hits, 3 misses on absent keys (3 repository reads)
    const keys = Array.from({ length: 10 }, (_, i) => store.key(`m-${i}`, 'counter'))
    for (const k of keys) await store.update(k, inc)
    for (const k of keys) { await store.get(k); await store.get(k) }
    for (let i = 0; i < 3; i++) await store.get(store.key(`absent-${i}`, 'counter'))
    // Another instance writes one key: this one receives the invalidation, drops its copy and reads it again.
    const otherRepo = new RedisRepository({ url: server.url })
    t.teardown(async () => await otherRepo.close())
    const other = new TieredStore({ repository: otherRepo, secret: SECRET, coherence: false })
    await other.start()
    const before = store.counters.invalidations
    await other.update(keys[0] as string, inc)
    t.ok(await waitFor(() => store.counters.invalidations !== before, { intervalMs: 5 }), 'the other instance\'s invalidation arrived')
    t.match(await store.get(keys[0] as string), { version: 2, source: 'repository' })
    const res = await app.inject('/metrics')
    t.equal(res.statusCode, 200)
    t.match(res.headers['content-type'], /text\/plain/)
    const m = res.body
    t.equal(value(m, 'handoff_store_writes_total'), 10)
    t.equal(value(m, 'handoff_store_local_hits_total'), 20)
    t.equal(value(m, 'handoff_store_repository_reads_total'), 4, '3 misses + 1 refill')
    t.equal(value(m, 'handoff_store_repository_hits_total'), 1)
    t.equal(value(m, 'handoff_repository_latency_seconds_count', 'op="compareAndSet",outcome="ok"'), 10, 'one CAS per write')
    t.equal(value(m, 'handoff_repository_latency_seconds_count', 'op="get",outcome="ok"'), 4)
    t.equal(value(m, 'handoff_store_local_entries'), 10)
    t.equal(value(m, 'handoff_store_degraded'), 0)
    t.equal(value(m, 'handoff_store_invalidations_total'), 11, 'own 10 writes and the other instance\'s one')
    t.match((await app.inject('/health')).json(), { status: 'ok', repository: 'redis', localReads: true })
    t.equal(value(m, 'handoff_store_coherence_transport', `transport="${transport}"`), 1, 'the invalidation transport in use')
    t.equal((await app.inject('/health')).json().coherence, transport)

    await server.kill()
    await t.rejects(store.update(keys[1] as string, inc), { code: 'FST_HANDOFF_UNAVAILABLE' })
    const health = await app.inject('/health')
    t.equal(health.statusCode, 200, 'still 200: degraded service is service')
    t.match(health.json(), { status: 'degraded' })
    const m2 = (await app.inject('/metrics')).body
    t.equal(value(m2, 'handoff_store_degraded'), 1)
    t.equal(value(m2, 'handoff_store_repository_errors_total'), 1)
    t.equal(value(m2, 'handoff_repository_latency_seconds_count', 'op="compareAndSet",outcome="error"'), 1)
    await server.restart()
  })
}

t.test('options are checked', async t => {
  const app = Fastify()
  await app.register(handoffStore, { secret: SECRET })
  await t.rejects(async () => { await app.register(handoffMetrics, { endpoint: 'metrics' }); await app.ready() }, { code: 'FST_HANDOFF_INVALID_OPTION', message: /endpoint/ })
})

t.test('session and cart counters of a scripted shop workload appear as they happened', async t => {
  const { buildShop } = await import('../../examples/checkout/app.js')
  const { MemoryRepository } = await import('../../lib/repository/memory.js')
  const { app } = await buildShop({ instanceName: 'm', secret: SECRET, repository: new MemoryRepository(), secureCookies: false })
  await app.ready()
  t.teardown(async () => await app.close())
  const jar = new Map<string, string>()
  const call = async (method: 'GET' | 'POST' | 'PUT', url: string, payload?: object, headers: Record<string, string> = {}): Promise<number> => {
    const r = await app.inject({ method, url, ...(payload === undefined ? {} : { payload }), headers: { ...headers, cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') } })
    for (const c of r.cookies as Array<{ name: string, value: string }>) jar.set(c.name, c.value)
    return r.statusCode
  }
  t.equal(await call('POST', '/api/login', { username: 'alice', password: 'alice' }), 200)
  for (const sku of ['TEE-BLK', 'MUG-LOGO', 'TEE-BLK']) t.equal(await call('POST', '/api/cart/items', { sku, qty: 1 }), 200)
  t.equal(await call('PUT', '/api/cart/payment', { token: '4111111111111111', brand: 'visa', last4: '1111' }), 400)
  t.equal(await call('PUT', '/api/cart/billing', { name: 'A', line1: 'B', city: 'C', postcode: 'D', country: 'DE' }), 200)
  t.equal(await call('PUT', '/api/cart/payment', { token: 'tok_visa', brand: 'visa', last4: '4242' }), 200)
  t.equal(await call('POST', '/api/checkout', undefined, { 'idempotency-key': 'metrics-test-1' }), 200)
  const m = (await app.inject('/metrics')).body
  t.equal(value(m, 'handoff_cart_changes_total'), 5, '3 adds, billing, payment')
  t.equal(value(m, 'handoff_cart_card_numbers_refused_total'), 1)
  t.equal(value(m, 'handoff_cart_checkouts_started_total'), 1)
  t.equal(value(m, 'handoff_cart_orders_placed_total'), 1)
  t.equal(value(m, 'handoff_session_regenerated_total'), 1, 'the login')
  t.ok(value(m, 'handoff_session_saved_total') >= 1)
})

t.test('a tripped breaker shows as handoff_repository_unavailable_nodes and in /health, and clears on recovery', async t => {
  const server = await startRedis({ private: true })
  t.teardown(async () => { server.resume(); await server.stop() })
  const app = Fastify()
  await app.register(handoffStore, { secret: SECRET, redis: server.url, commandTimeoutMs: 300 })
  await app.register(handoffMetrics)
  await app.ready()
  t.teardown(async () => await app.close())
  const store = app.handoff.store
  const gauge = async (): Promise<number> => value((await app.inject('/metrics')).body, 'handoff_repository_unavailable_nodes')
  t.equal(await gauge(), 0)
  t.match((await app.inject('/health')).json(), { unavailableNodes: [] })

  server.pause()
  await t.rejects(store.update(store.key('frozen', 'counter'), () => ({ n: 1 })), { code: 'FST_HANDOFF_UNAVAILABLE' })
  t.equal(await gauge(), 1)
  t.match((await app.inject('/health')).json(), { status: 'degraded', unavailableNodes: [`127.0.0.1:${server.port}`] })
  server.resume()
  for (const deadline = Date.now() + 5000; Date.now() < deadline && await gauge() !== 0;) await new Promise(resolve => setTimeout(resolve, 50))
  t.equal(await gauge(), 0, 'the probe PING closed the breaker')
  t.match((await app.inject('/health')).json(), { unavailableNodes: [] })
})
