/**
 * orderDurability: checkout records and orders wait for Redis replicas (WAIT) even when the store's own durability
 * (sessions, carts) asks for none; without a replica the checkout stops before any money moves.
 */
import t from 'tap'
import Fastify from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { handoffStore } from '../../plugins/store.js'
import { authSession } from '../../plugins/auth-session.js'
import { cart } from '../../plugins/cart.js'
import { waitFor } from '../helpers/wait-for.js'
import { startPrimaryWithReplica } from '../helpers/replica.js'
import { Browser, RecordingProvider, startShop } from '../helpers/cart-shop.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'

t.test('orders and checkout records wait for the replica; with none, checkout fails before charging, carts still work', async t => {
  const { primary, replica } = await startPrimaryWithReplica(t)

  const provider = new RecordingProvider()
  const app = await startShop({
    redisUrl: primary.url,
    secret: SECRET,
    provider,
    store: { commandTimeoutMs: 5000 },
    cart: { orderDurability: { replicas: 1, timeoutMs: 1000 } }
  })
  t.teardown(async () => await app.close())
  const b = new Browser(app)
  await b.call('POST', '/login', { user: 'dora' })
  for (const [m, u, body] of [['POST', '/items', { sku: 'A' }], ['PUT', '/details'], ['PUT', '/payment']] as const) {
    t.equal((await b.call(m, u, body)).statusCode, 200)
  }
  const placed = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'durable-key-1' })
  t.match(placed.json(), { status: 'placed' })
  const orderKeys = replica.cli('KEYS', '*').split('\n').filter(k => /:(order|checkout)$/.test(k))
  t.equal(orderKeys.length, 2, 'the replica holds the checkout record and the order when checkout answers')

  await replica.kill()
  t.equal((await b.call('POST', '/items', { sku: 'B' })).statusCode, 200, 'carts do not wait (the store has no durability)')
  t.equal((await b.call('PUT', '/payment')).statusCode, 200)
  const calls = provider.calls
  const refused = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'durable-key-2' })
  t.equal(refused.statusCode, 503)
  t.equal(refused.json().code, 'FST_HANDOFF_DURABILITY')
  t.equal(provider.calls, calls, 'the provider was not called: no money moved without a durable record')

  // The replica comes back (empty, resyncing): the retry confirms the record on it before charging, once.
  await replica.restart()
  replica.cli('REPLICAOF', '127.0.0.1', String(primary.port))
  await waitFor(() => /slave0:.*state=online/.test(primary.cli('INFO', 'replication')), { timeoutMs: 10_000, intervalMs: 50 })
  const retried = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'durable-key-2' })
  t.match(retried.json(), { status: 'placed', total: 1000 }, 'the cart as it was frozen: item B')
  t.equal(provider.charges.size, 2, 'one charge per checkout')
  t.equal(app.handoffCart.metrics.ordersPlaced, 2)
})

t.test('orderDurability on the embedded repository (no replicas) is refused at registration, naming the option', async t => {
  const app = Fastify()
  await app.register(fastifyCookie)
  await app.register(handoffStore, { secret: SECRET })
  await app.register(authSession, { cookie: { secure: false } })
  await t.rejects(async () => {
    await app.register(cart, { provider: new RecordingProvider(), orderDurability: { replicas: 1 } })
    await app.ready()
  }, { code: 'FST_HANDOFF_INVALID_OPTION', message: /orderDurability.*no replicas/ })
  await app.close()
})
