import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { Writable } from 'node:stream'
import { Redis } from 'ioredis'
import { handoffStore } from '../../plugins/store.js'
import { authSession } from '../../plugins/auth-session.js'
import { cart, type PaymentProvider, type ChargeRequest, type ChargeResult, type PurchaseDetails, type CartOptions } from '../../plugins/cart.js'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
const CARD = '4111111111111111'
/** The test card's digits as they appear in a run, with or without separators. */
const CARD_RUN = /4111[\s-]*1111/

class TestProvider implements PaymentProvider {
  charges = new Map<string, ChargeResult>()
  calls = 0
  decline = false
  /** While set, charge() waits for it: a checkout held at the provider for as long as the test needs (no timing). */
  hold: Promise<void> | undefined
  /** Charge, then fail to answer (a timeout after the money moved). */
  loseAnswers = 0
  async charge (req: ChargeRequest): Promise<ChargeResult> {
    this.calls++
    if (this.hold !== undefined) await this.hold
    const prior = this.charges.get(req.idempotencyKey)
    if (prior !== undefined) return prior
    const r: ChargeResult = this.decline ? { status: 'declined', reason: 'insufficient funds' } : { status: 'succeeded', chargeId: `ch_${this.charges.size + 1}` }
    if (r.status === 'succeeded') this.charges.set(req.idempotencyKey, r)
    if (this.loseAnswers > 0) { this.loseAnswers--; throw new Error('provider timeout') }
    return r
  }
}

interface Shop { app: FastifyInstance, provider: TestProvider, logs: string[] }

async function shop (t: Test, redis: RedisHandle, cartOptions: Partial<CartOptions> = {}): Promise<Shop> {
  const logs: string[] = []
  const stream = new Writable({ write (chunk: Buffer, _enc, cb) { logs.push(chunk.toString()); cb() } })
  const app = Fastify({ logger: { level: 'trace', stream } })
  const provider = new TestProvider()
  await app.register(fastifyCookie)
  await app.register(handoffStore, { secret: SECRET, redis: redis.url })
  await app.register(authSession, { cookie: { secure: false } })
  await app.register(cart, { provider, secureCookie: false, ...cartOptions })
  app.post<{ Body: { sku: string, qty?: number, name?: string, currency?: string } }>('/items', async req => await req.cart.add({ sku: req.body.sku, quantity: req.body.qty ?? 1, unitPrice: 1000, currency: req.body.currency ?? 'EUR', ...(req.body.name === undefined ? {} : { name: req.body.name }) }))
  app.delete<{ Params: { sku: string } }>('/items/:sku', async req => await req.cart.remove(req.params.sku))
  app.put<{ Body: { sku: string, qty: number } }>('/qty', async req => await req.cart.setQuantity(req.body.sku, req.body.qty))
  app.put<{ Body: PurchaseDetails }>('/details', async req => await req.cart.setDetails(req.body))
  app.put<{ Body: { token: string, brand: string, last4: string } }>('/payment', async req => await req.cart.setPayment(req.body))
  app.get('/cart', async req => await req.cart.get())
  app.post<{ Body: { user: string } }>('/login', async req => { await req.session.regenerate(); req.session.user = { id: req.body.user }; return { ok: true } })
  app.post('/logout', async req => { await req.session.destroy(); return { ok: true } })
  app.get<{ Params: { id: string } }>('/orders/:id', async (req, reply) => (await req.cart.getOrder(req.params.id)) ?? await reply.code(404).send({ error: 'no such order' }))
  app.post('/review', async req => await req.cart.acknowledge())
  app.post('/checkout', async req => await req.cart.checkout(String(req.headers['idempotency-key'])))
  await app.ready()
  t.teardown(async () => await app.close())
  return { app, provider, logs }
}

/** A cookie jar over fastify.inject. */
function browser (app: FastifyInstance) {
  const jar = new Map<string, string>()
  return async (method: string, url: string, payload?: unknown, headers: Record<string, string> = {}) => {
    const res = await app.inject({
      method: method as 'GET',
      url,
      ...(payload === undefined ? {} : { payload: payload as object }),
      headers: { ...headers, cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') }
    })
    for (const c of res.cookies as Array<{ name: string, value: string, maxAge?: number }>) {
      if (c.value === '' || c.maxAge === 0) jar.delete(c.name); else jar.set(c.name, c.value)
    }
    return res
  }
}

const billing = { billing: { name: 'Alice Example', line1: '1 Main St', city: 'Berlin', postcode: '10115', country: 'DE' } }
const payment = { token: 'tok_visa_123', brand: 'visa', last4: '4242' }

let redis: RedisHandle
t.before(async () => { redis = await startRedis() })
t.teardown(async () => await redis.stop())

t.test('add, set quantity, remove, details and payment; the view never shows the token', async t => {
  const { app } = await shop(t, redis)
  const b = browser(app)
  t.equal((await b('GET', '/cart')).json().source, 'new')
  await b('POST', '/items', { sku: 'A', qty: 2 })
  await b('POST', '/items', { sku: 'A', qty: 1 })
  await b('POST', '/items', { sku: 'B' })
  await b('PUT', '/qty', { sku: 'B', qty: 5 })
  await b('DELETE', '/items/A')
  await b('PUT', '/details', billing)
  const r = (await b('PUT', '/payment', payment)).json()
  t.same(r.items.map((i: { sku: string, quantity: number }) => [i.sku, i.quantity]), [['B', 5]])
  t.equal(r.total, 5000)
  t.equal(r.version, 7)
  t.same(r.payment, { brand: 'visa', last4: '4242' })
  t.notMatch(JSON.stringify(r), /tok_visa/)
  t.match((await b('GET', '/cart')).json(), { version: 7, source: 'local' })
  t.equal((await b('PUT', '/qty', { sku: 'B', qty: 100000 })).statusCode, 413)
  t.equal((await b('POST', '/items', { sku: 'bad sku!' })).statusCode, 400)
  t.equal((await b('PUT', '/details', { billing: { name: 'x' } })).statusCode, 400, 'JSON schema: missing address fields')
})

t.test('a raw card number in any field is refused, and appears nowhere in Redis or in the logs', async t => {
  const { app, logs } = await shop(t, redis)
  const b = browser(app)
  await b('POST', '/items', { sku: 'A' })
  const attempts = [
    await b('POST', '/items', { sku: 'B', name: `gift for card ${CARD}` }),
    await b('PUT', '/details', { note: 'pay with 4111 1111 1111 1111 please' }),
    await b('PUT', '/details', { billing: { ...billing.billing, line1: CARD } }),
    await b('PUT', '/payment', { token: CARD, brand: 'visa', last4: '1111' }),
    await b('PUT', '/payment', { token: `tok_${CARD}`, brand: 'visa', last4: '1111' })
  ]
  for (const res of attempts) {
    t.equal(res.statusCode, 400)
    t.equal(res.json().code, 'FST_HANDOFF_BAD_INPUT')
    t.notMatch(res.body, /4111/, 'the answer does not echo it')
  }
  t.equal(app.handoffCart.metrics.cardNumbersRefused, 5)
  const client = new Redis(redis.url)
  t.teardown(() => client.disconnect())
  const keys = await client.keys('*')
  let opened = 0
  for (const k of keys) {
    const raw = await client.dumpBuffer(k)
    // The digits as a run (4111 1111...): '4111' alone turns up by chance in sealed bytes, timings and ids.
    t.notMatch(raw?.toString('latin1') ?? '', CARD_RUN, `raw ${k} holds no card digits`)
    if (/:(cart|session)$/.test(k)) {
      const e = await app.handoff.store.get(k)
      if (e !== undefined) { opened++; t.notMatch(JSON.stringify(e.value), CARD_RUN, `opened ${k} holds no card digits`) }
    }
  }
  t.ok(opened >= 1, 'the cart itself was opened and checked')
  t.notMatch(logs.join(''), CARD_RUN, 'no log line holds the digits')
})

t.test('an anonymous cart merges into the user\'s cart at login, losing neither side', async t => {
  const { app } = await shop(t, redis)
  const before = browser(app)
  await before('POST', '/login', { user: 'carol' })
  await before('POST', '/items', { sku: 'SAVED', qty: 2 })
  await before('POST', '/logout')
  const b = browser(app)
  await b('POST', '/items', { sku: 'ANON' })
  await b('POST', '/items', { sku: 'SAVED' })
  await b('POST', '/login', { user: 'carol' })
  const merged = (await b('GET', '/cart')).json()
  t.same(merged.items.map((i: { sku: string, quantity: number }) => [i.sku, i.quantity]).sort(), [['ANON', 1], ['SAVED', 3]])
  t.equal(app.handoffCart.metrics.merges, 1)
  t.same((await b('GET', '/cart')).json().items.length, 2, 'merged once')
})

t.test('checkout: one order per idempotency key, changes refused while it runs, declines reported', async t => {
  const { app, provider } = await shop(t, redis)
  const b = browser(app)
  await b('POST', '/items', { sku: 'A', qty: 3 })
  t.match((await b('POST', '/checkout', undefined, { 'idempotency-key': 'key-00000001' })).json(), { code: 'FST_HANDOFF_CHECKOUT_INCOMPLETE', message: /billing/ })
  await b('PUT', '/details', billing)
  await b('PUT', '/payment', payment)
  provider.decline = true
  const declined = await b('POST', '/checkout', undefined, { 'idempotency-key': 'key-00000002' })
  t.match(declined.json(), { status: 'failed', reason: 'insufficient funds', total: 3000 })
  provider.decline = false
  let release = (): void => {}
  provider.hold = new Promise(resolve => { release = resolve })
  const callsBefore = provider.calls
  const running = b('POST', '/checkout', undefined, { 'idempotency-key': 'key-00000003' })
  t.ok(await waitFor(() => provider.calls > callsBefore), 'the checkout reached the provider')
  const blocked = await b('POST', '/items', { sku: 'LATE' })
  t.equal(blocked.statusCode, 409)
  t.equal(blocked.json().code, 'FST_HANDOFF_CHECKOUT_IN_PROGRESS')
  provider.hold = undefined
  release()
  const placed = (await running).json()
  t.match(placed, { status: 'placed', total: 3000, currency: 'EUR' })
  const again = (await b('POST', '/checkout', undefined, { 'idempotency-key': 'key-00000003' })).json()
  t.equal(again.orderId, placed.orderId, 'a retry returns the same order')
  t.equal(provider.charges.size, 1, 'charged once')
  t.equal((await b('GET', '/cart')).json().items.length, 0, 'the cart is empty after the order')
  const order = await app.handoffCart.getOrder(placed.orderId)
  t.match(order, { status: 'placed', amount: 3000, payment: { last4: '4242' } })
  t.notMatch(JSON.stringify(order), /tok_visa/, 'the order keeps display fields, not the token')
  t.match((await b('GET', `/orders/${placed.orderId as string}`)).json(), { orderId: placed.orderId }, 'the customer reads its order')
  t.equal((await browser(app)('GET', `/orders/${placed.orderId as string}`)).statusCode, 404, 'another client does not')
})

t.test('the running digest catches a cart replaced by an older copy directly in Redis', async t => {
  const own = await startRedis({ private: true })
  t.teardown(async () => await own.stop())
  const { app } = await shop(t, own)
  const b = browser(app)
  await b('POST', '/items', { sku: 'A' })
  await b('PUT', '/details', billing)
  await b('PUT', '/payment', payment)
  const client = new Redis(own.url)
  t.teardown(() => client.disconnect())
  const carts = await client.keys('*:cart')
  t.equal(carts.length, 1)
  const cartKey = carts[0] as string
  const old = await client.dumpBuffer(cartKey)
  await b('POST', '/items', { sku: 'B' })
  await b('POST', '/items', { sku: 'C' })
  // Someone (a failover, a restored backup, an operator) writes the older, authentic copy back.
  await client.restore(cartKey, 0, old as Buffer, 'REPLACE')
  app.handoff.store.clearLocal()
  t.match((await b('GET', '/cart')).json(), { reviewNeeded: true, version: 3 }, 'the store serves the older cart, flagged')
  await b('PUT', '/details', billing) // a change on top of the old copy does not hide the rollback
  const res = await b('POST', '/checkout', undefined, { 'idempotency-key': 'key-rollback-1' })
  t.equal(res.statusCode, 409)
  t.equal(res.json().code, 'FST_HANDOFF_CART_HISTORY')
  t.match(res.json().message, /review/)
  t.equal(app.handoffCart.metrics.historyRejected, 1)
  // The user looks at the cart and confirms it as it is now: checkout proceeds, with what the user saw.
  t.match((await b('POST', '/review')).json(), { reviewNeeded: false, items: [{ sku: 'A' }] })
  t.match((await b('POST', '/checkout', undefined, { 'idempotency-key': 'key-rollback-2' })).json(), { status: 'placed', total: 1000 })
})

t.test('review fixes: signing in during a pending guest checkout charges once; onOrderPlaced is retried until it succeeds', async t => {
  let failHook = 1
  const delivered: string[] = []
  const { app, provider } = await shop(t, redis, {
    onOrderPlaced: async (order) => { if (failHook-- > 0) throw new Error('orders database down'); delivered.push(order.orderId) }
  })
  const b = browser(app)
  await b('POST', '/items', { sku: 'G', qty: 2 })
  await b('PUT', '/details', billing)
  await b('PUT', '/payment', payment)
  provider.loseAnswers = 1
  const pending = await b('POST', '/checkout', undefined, { 'idempotency-key': 'guest-key-1' })
  t.equal(pending.statusCode, 503)
  t.equal(pending.json().code, 'FST_HANDOFF_PAYMENT_PENDING')
  t.equal(pending.headers['retry-after'], '1', 'a 503 tells the client when to retry')
  await b('POST', '/login', { user: 'dave' })
  const hookFails = await b('POST', '/checkout', undefined, { 'idempotency-key': 'guest-key-1' })
  t.equal(hookFails.statusCode, 500, 'the application hook failed: the checkout is not reported placed yet')
  const placed = (await b('POST', '/checkout', undefined, { 'idempotency-key': 'guest-key-1' })).json()
  t.match(placed, { status: 'placed', total: 2000 })
  t.equal(provider.charges.size, 1, 'one charge: the retry after sign-in resumed the guest checkout')
  t.same(delivered, [placed.orderId], 'the hook ran again until it succeeded, then not again')
  await b('POST', '/checkout', undefined, { 'idempotency-key': 'guest-key-1' })
  t.same(delivered, [placed.orderId])
  // The guest checkout finished after sign-in belongs to the user, and leaves the user's own cart's history alone.
  t.equal((await b('GET', `/orders/${placed.orderId as string}`)).statusCode, 200, 'the signed-in user can read the order')
  t.equal((await b('GET', '/cart')).json().reviewNeeded, false, 'the user\'s cart is not flagged as rolled back')
  await b('POST', '/items', { sku: 'H' })
  await b('PUT', '/details', billing)
  await b('PUT', '/payment', payment)
  const own = await b('POST', '/checkout', undefined, { 'idempotency-key': 'user-key-1' })
  t.equal(own.statusCode, 200, 'the user\'s own checkout is not refused as history')
  t.equal(own.json().status, 'placed')
})

t.test('review fixes: a guest cart that cannot merge does not lock the user out of the cart', async t => {
  const { app } = await shop(t, redis, { maxQuantity: 10 })
  const before = browser(app)
  await before('POST', '/login', { user: 'erin' })
  await before('POST', '/items', { sku: 'USD-ITEM', currency: 'USD' })
  await before('POST', '/items', { sku: 'SAME', qty: 8, currency: 'USD' })
  const b = browser(app)
  await b('POST', '/items', { sku: 'EUR-ITEM' })
  await b('POST', '/login', { user: 'erin' })
  const res = await b('GET', '/cart')
  t.equal(res.statusCode, 200)
  t.same(res.json().items.map((i: { sku: string }) => i.sku), ['USD-ITEM', 'SAME'], 'the item in another currency was left out')
  t.equal((await b('POST', '/items', { sku: 'MORE', currency: 'USD' })).statusCode, 200, 'and the cart works')
})

t.test('review fixes: a checkout whose client lost its key is re-driven after checkoutTimeoutMs instead of locking the cart', async t => {
  // 1.5 s: the "still running" request must come within it, which a loaded machine could not promise with 50 ms.
  const checkoutTimeoutMs = 1500
  const { app, provider } = await shop(t, redis, { checkoutTimeoutMs })
  const b = browser(app)
  await b('POST', '/items', { sku: 'S' })
  await b('PUT', '/details', billing)
  await b('PUT', '/payment', payment)
  provider.loseAnswers = 1
  t.equal((await b('POST', '/checkout', undefined, { 'idempotency-key': 'lost-key-1' })).statusCode, 503)
  // The stored checkout started before this instant.
  const firstAnswered = Date.now()
  t.equal((await b('POST', '/checkout', undefined, { 'idempotency-key': 'new-key-01' })).statusCode, 409, 'still running: refused')
  // This test is about time itself: let checkoutTimeoutMs pass since the first checkout started.
  await waitFor(() => Date.now() - firstAnswered > checkoutTimeoutMs, { timeoutMs: checkoutTimeoutMs + 5000, intervalMs: 25 })
  const r = (await b('POST', '/checkout', undefined, { 'idempotency-key': 'new-key-01' })).json()
  t.match(r, { status: 'placed', total: 1000 })
  t.equal(provider.charges.size, 1, 'the earlier charge was completed, not repeated')
})
