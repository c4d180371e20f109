/**
 * Checkout stays exactly-once through what operators do and what Redis does to them (issue 14), driven through the
 * public API with real redis-servers: the key ring rotated as the README says ([k1] -> [k2, k1] -> [k2]), Redis
 * killed right after the provider charged and restarted empty, and a guest "add" in flight while the user signs in.
 */
import { createHmac } from 'node:crypto'
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'
import { Browser, RecordingProvider, startShop, type InjectResult, type ShopOptions } from '../helpers/cart-shop.js'
import type { LostCheckout } from '../../plugins/cart.js'
import { DEFAULT_CART_LIMITS, applyChange, emptyCart } from '../../lib/cart.js'

const K1 = { id: 'k1', secret: 'the-first-secret-of-this-cluster-32-bytes-or-more' }
const K2 = { id: 'k2', secret: 'the-second-secret-of-this-cluster-32-bytes-or-more' }

let redis: RedisHandle
t.before(async () => { redis = await startRedis({ private: true }) })
t.teardown(async () => await redis.stop())

/** A shop on its own private redis-server (so a test may wipe or restart it), both closed when the test ends. */
async function ownShop (t: Test, opts: Omit<ShopOptions, 'redisUrl' | 'secret'>): Promise<{ own: RedisHandle, app: FastifyInstance, b: Browser }> {
  const own = await startRedis({ private: true })
  t.teardown(async () => await own.stop())
  const app = await startShop({ redisUrl: own.url, secret: [K1], ...opts })
  t.teardown(async () => await app.close())
  return { own, app, b: new Browser(app) }
}

async function readyToPay (b: Browser, sku: string): Promise<void> {
  t.equal((await b.call('POST', '/items', { sku, qty: 2 })).statusCode, 200)
  t.equal((await b.call('PUT', '/details')).statusCode, 200)
  t.equal((await b.call('PUT', '/payment')).statusCode, 200)
}

t.test('key rotation [k1] -> [k2, k1] -> [k2]: the cart and the order stay their owner\'s, a retried checkout charges once', async t => {
  const provider = new RecordingProvider()
  const instance = async (secret: Array<typeof K1>): Promise<FastifyInstance> => {
    const app = await startShop({ redisUrl: redis.url, secret, provider })
    t.teardown(async () => await app.close())
    return app
  }
  // [k1]: sign in, fill the cart, check out, and start the next cart.
  let app = await instance([K1])
  const b = new Browser(app)
  await b.call('POST', '/login', { user: 'rosa' })
  await readyToPay(b, 'FIRST')
  const placed = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'rotation-key-1' })
  t.match(placed.json(), { status: 'placed', total: 2000 })
  const orderId = placed.json().orderId as string
  t.equal((await b.call('POST', '/items', { sku: 'NEXT' })).statusCode, 200)
  t.equal(provider.charges.size, 1)

  for (const ring of [[K2, K1], [K2]]) {
    const label = `[${ring.map(k => k.id).join(', ')}]`
    await app.close()
    app = await instance(ring)
    b.app = app
    // At [k2] the user signs in again on a new device: the cart and order belong to the user, not to a secret.
    const who = ring.length === 1 ? new Browser(app) : b
    if (ring.length === 1) await who.call('POST', '/login', { user: 'rosa' })
    t.equal((await who.call('GET', '/whoami')).json().user, 'rosa', `${label}: signed in`)
    const items = (await who.call('GET', '/cart')).json().items as Array<{ sku: string }>
    t.same(items.map(i => i.sku), ['NEXT'], `${label}: the user's cart is intact`)
    const order = await who.call('GET', `/orders/${orderId}`)
    t.equal(order.statusCode, 200, `${label}: the user reads the order`)
    t.match(order.json(), { orderId, amount: 2000, items: [{ sku: 'FIRST', quantity: 2 }] })
    const retry = await who.call('POST', '/checkout', undefined, { 'idempotency-key': 'rotation-key-1' })
    t.match(retry.json(), { status: 'placed', orderId }, `${label}: the same Idempotency-Key gives the same order`)
    t.equal(provider.charges.size, 1, `${label}: still one charge`)
    t.equal(app.handoffCart.metrics.ordersPlaced, 0, `${label}: no second order placed`)
  }
})

/** Checks out with the provider killing Redis right after the money moved; Redis comes back empty. */
async function chargeThenWipe (t: Test, own: RedisHandle, app: FastifyInstance, b: Browser, provider: RecordingProvider, key: string): Promise<void> {
  provider.afterCharge = async () => { await own.kill() }
  const first = await b.call('POST', '/checkout', undefined, { 'idempotency-key': key })
  t.equal(provider.charges.size, 1, 'the provider charged')
  t.equal(first.statusCode, 503, 'the order could not be stored')
  await own.restart()
  t.equal(own.cli('KEYS', '*').split('\n').filter(k => /:(cart|order|checkout|session)$/.test(k)).length, 0, 'Redis came back empty')
  await waitFor(async () => (await app.inject({ method: 'GET', url: '/whoami' })).statusCode === 200, { timeoutMs: 10_000, intervalMs: 50 })
}

/** Retries until an answer other than "store unavailable" (the reconnect); every answer is kept. */
async function retryCheckout (b: Browser, key: string, answers: InjectResult[]): Promise<InjectResult> {
  let last: InjectResult | undefined
  await waitFor(async () => {
    last = await b.call('POST', '/checkout', undefined, { 'idempotency-key': key })
    answers.push(last)
    return last.json().code !== 'FST_HANDOFF_UNAVAILABLE'
  }, { timeoutMs: 10_000, intervalMs: 50 })
  return last as InjectResult
}

function neverEmpty (t: Test, answers: InjectResult[]): void {
  t.same(answers.filter(a => /empty/.test(a.body) || a.json().code === 'FST_HANDOFF_BAD_INPUT').map(a => a.body), [], 'no retry answered "the cart is empty"')
}

t.test('Redis restarted empty right after the charge: with provider.lookup the charge is recovered as the order', async t => {
  const provider = new RecordingProvider(true)
  const delivered: Array<{ orderId: string, amount: number, recovered?: boolean }> = []
  const { own, app, b } = await ownShop(t, { provider, cart: { onOrderPlaced: order => { delivered.push(order) } } })
  await b.call('POST', '/login', { user: 'wanda' })
  await readyToPay(b, 'WIPED')
  await chargeThenWipe(t, own, app, b, provider, 'wipe-key-lookup')
  const answers: InjectResult[] = []
  const recovered = await retryCheckout(b, 'wipe-key-lookup', answers)
  t.match(recovered.json(), { status: 'placed', total: 2000, currency: 'EUR' }, 'the charge became the order')
  const again = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'wipe-key-lookup' })
  t.equal(again.json().orderId, recovered.json().orderId, 'the same order on the next retry')
  neverEmpty(t, [...answers, again])
  t.equal(provider.charges.size, 1, 'exactly one charge')
  t.match(delivered, [{ orderId: recovered.json().orderId, amount: 2000, recovered: true }], 'the application got the order, once')
  t.equal(delivered.length, 1)
  t.equal(app.handoffCart.metrics.ordersRecovered, 1)
  // Signed in again (the session was lost too), the user reads the recovered order.
  await b.call('POST', '/login', { user: 'wanda' })
  t.equal((await b.call('GET', `/orders/${recovered.json().orderId as string}`)).statusCode, 200)
})

t.test('Redis restarted empty right after the charge: without lookup the loss is reported once through onCheckoutLost', async t => {
  const provider = new RecordingProvider(false)
  const lost: LostCheckout[] = []
  const { own, app, b } = await ownShop(t, { provider, cart: { onCheckoutLost: l => { lost.push(l) } } })
  await b.call('POST', '/login', { user: 'xena' })
  await readyToPay(b, 'WIPED')
  await chargeThenWipe(t, own, app, b, provider, 'wipe-key-hook')
  const answers: InjectResult[] = []
  const answer = await retryCheckout(b, 'wipe-key-hook', answers)
  t.equal(answer.statusCode, 409)
  t.match(answer.json(), { code: 'FST_HANDOFF_CHECKOUT_LOST', message: /payment may have been taken/ })
  const [chargeKey] = [...provider.charges.keys()]
  t.match(lost, [{ idempotencyKey: 'wipe-key-hook', providerKey: chargeKey, owner: { kind: 'user' } }], 'the application was told which charge to reconcile')
  for (let i = 0; i < 2; i++) answers.push(await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'wipe-key-hook' }))
  t.same(answers.slice(-2).map(a => a.json().code), ['FST_HANDOFF_CHECKOUT_LOST', 'FST_HANDOFF_CHECKOUT_LOST'], 'later retries say the same')
  t.equal(lost.length, 1, 'reported once')
  neverEmpty(t, answers)
  t.equal(provider.charges.size, 1, 'exactly one charge: no retry charged again')
  t.equal(provider.calls, 1)
})

t.test('a guest "add" held in flight while the guest signs in is merged into the user\'s cart, not acknowledged and lost', async t => {
  let release = (): void => {}
  let held = false
  const gate = new Promise<void>(resolve => { release = resolve })
  const app = await startShop({
    redisUrl: redis.url,
    secret: [K1],
    provider: new RecordingProvider(),
    hold: async () => { held = true; await gate }
  })
  t.teardown(async () => await app.close())
  const b = new Browser(app)
  await b.call('POST', '/items', { sku: 'BEFORE' })
  // The add starts as the guest (its session read), then waits; its own response's cookies are not kept.
  const late = app.inject({ method: 'POST', url: '/items-held', payload: { sku: 'LATE' }, headers: { cookie: b.cookieHeader() } })
  t.ok(await waitFor(() => held), 'the guest add is in flight')
  await b.call('POST', '/login', { user: 'gina' })
  t.same((await b.call('GET', '/cart')).json().items.map((i: { sku: string }) => i.sku), ['BEFORE'], 'signed in: the guest cart merged')
  release()
  const res = await late
  const cart = (await b.call('GET', '/cart')).json()
  const skus = cart.items.map((i: { sku: string }) => i.sku)
  if (res.statusCode === 200) t.same(skus.sort(), ['BEFORE', 'LATE'], 'acknowledged: the add is in the user\'s cart')
  else t.match(res.json(), { statusCode: 409, code: 'FST_HANDOFF_CART_MOVED' }, 'refused with a clear error')
  t.equal(res.statusCode, 200, 'this plugin forwards it rather than refusing')
  t.equal(app.handoffCart.metrics.changesForwarded, 1)
})

t.test('migration: a cart and an order stored under names derived from the oldest secret (before stable names) stay reachable', async t => {
  const app = await startShop({ redisUrl: redis.url, secret: [K2, K1], provider: new RecordingProvider() })
  t.teardown(async () => await app.close())
  const store = app.handoff.store
  // What the previous version wrote: names from HMAC(deriveOldest('cart-owner' | 'order-id'), ...), here k1's.
  const hmac = (key: Buffer, ...parts: string[]): string => {
    const h = createHmac('sha256', key)
    for (const p of parts) h.update(p).update('\n')
    return h.digest('hex')
  }
  const ownerKey = app.handoff.keyRing.deriveOldest('cart-owner')
  const oldOwner = `u${hmac(ownerKey, 'user', 'olga').slice(0, 40)}`
  const oldOrderId = `ord_${hmac(app.handoff.keyRing.deriveOldest('order-id'), oldOwner, 'old-key-0001').slice(0, 24)}`
  const now = Date.now()
  const cartValue = applyChange(emptyCart(now), { op: 'add', item: { sku: 'KEPT', quantity: 2, unitPrice: 500, currency: 'EUR' } }, ownerKey, DEFAULT_CART_LIMITS, now)
  await store.update(store.key(oldOwner, 'cart'), () => cartValue)
  await store.update(store.key(oldOrderId, 'order'), () => ({
    orderId: oldOrderId,
    idempotencyKey: 'old-key-0001',
    status: 'placed',
    items: [],
    details: {},
    payment: { brand: 'visa', last4: '4242' },
    amount: 700,
    currency: 'EUR',
    chargeId: 'ch_old',
    digest: 'd',
    placedAt: now,
    ownerTag: hmac(ownerKey, 'order-owner', oldOwner).slice(0, 24),
    delivered: true
  }))
  const b = new Browser(app)
  await b.call('POST', '/login', { user: 'olga' })
  t.same((await b.call('GET', '/cart')).json().items.map((i: { sku: string, quantity: number }) => [i.sku, i.quantity]), [['KEPT', 2]], 'the cart moved')
  t.equal(await store.get(store.key(oldOwner, 'cart')), undefined, 'and is gone from the old name')
  t.equal((await b.call('GET', `/orders/${oldOrderId}`)).statusCode, 200, 'the old order is its owner\'s')
  const retry = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'old-key-0001' })
  t.match(retry.json(), { status: 'placed', orderId: oldOrderId }, 'a retry of the old checkout finds the old order')
  t.equal(app.handoffCart.metrics.legacyMoved, 2, 'one cart moved, one order re-tagged')
  // The order was re-tagged and re-sealed while both keys were in the ring: still the user's at [k2].
  await app.close()
  const after = await startShop({ redisUrl: redis.url, secret: [K2], provider: new RecordingProvider() })
  t.teardown(async () => await after.close())
  const c = new Browser(after)
  await c.call('POST', '/login', { user: 'olga' })
  t.equal((await c.call('GET', `/orders/${oldOrderId}`)).statusCode, 200, 'at [k2] too')
  t.same((await c.call('GET', '/cart')).json().items.map((i: { sku: string }) => i.sku), ['KEPT'])
})

t.test('a guest add that finds its cart deleted (tombstone: merged by a version without forwarding marks) is refused, not recreated', async t => {
  const { own, app, b } = await ownShop(t, { provider: new RecordingProvider() })
  t.equal((await b.call('POST', '/items', { sku: 'GUEST' })).statusCode, 200)
  const [cartKey] = own.cli('KEYS', '*:cart').trim().split('\n')
  await app.handoff.store.delete(cartKey as string)
  const res = await b.call('POST', '/items', { sku: 'AFTER' })
  t.equal(res.statusCode, 409)
  t.equal(res.json().code, 'FST_HANDOFF_CART_MOVED')
  t.equal(await app.handoff.store.get(cartKey as string), undefined, 'the deleted cart was not brought back')
})

/** A shop on the shared Redis with a user signed in and a cart ready to pay. */
async function userReadyToPay (t: Test, user: string, sku: string): Promise<{ provider: RecordingProvider, b: Browser }> {
  const provider = new RecordingProvider()
  const app = await startShop({ redisUrl: redis.url, secret: [K1], provider })
  t.teardown(async () => await app.close())
  const b = new Browser(app)
  await b.call('POST', '/login', { user })
  await readyToPay(b, sku)
  return { provider, b }
}

t.test('after sign-out, the cart cookie left in the browser cannot start a checkout of the user\'s cart', async t => {
  const { provider, b } = await userReadyToPay(t, 'sam', 'SHARED-PC')
  // The session ends (signed out elsewhere, expired); the anchor cookie stays in this browser.
  b.jar.delete('handoff.sid')
  const res = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'shared-pc-key' })
  t.equal(res.statusCode, 400)
  t.match(res.json().message, /sign in again/)
  t.equal(provider.calls, 0, 'nothing charged')
})

/** A private Redis and shop; the guest fills a cart ready to pay and the one cart key is returned. */
async function guestShop (t: Test, provider: RecordingProvider): Promise<{ own: RedisHandle, app: FastifyInstance, b: Browser, cartKey: string }> {
  const { own, app, b } = await ownShop(t, { provider })
  await readyToPay(b, 'GUEST')
  const [cartKey] = own.cli('KEYS', '*:cart').trim().split('\n')
  return { own, app, b, cartKey: cartKey as string }
}

t.test('a guest checkout charged with its reply lost, its cart rolled back, then signed in: the retry of the same key charges once', async t => {
  const provider = new RecordingProvider()
  const { app, b, cartKey } = await guestShop(t, provider)
  const store = app.handoff.store
  const before = (await store.get(cartKey))?.value
  provider.afterCharge = async () => { throw new Error('reply lost') }
  const first = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'guest-lost-key' })
  t.equal(first.statusCode, 503, 'the charge reply was lost')
  t.equal(provider.charges.size, 1, 'the provider charged')
  const [guestOrderId] = [...provider.charges.keys()]
  // The guest cart rolls back to before its checkout (a failover); the durable checkout entry stays.
  await store.update(cartKey, () => before)
  await b.call('POST', '/login', { user: 'gus' })
  t.same((await b.call('GET', '/cart')).json().items.map((i: { sku: string }) => i.sku), ['GUEST'], 'the guest cart merged')
  t.equal((await b.call('PUT', '/details')).statusCode, 200)
  t.equal((await b.call('PUT', '/payment')).statusCode, 200)
  const retry = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'guest-lost-key' })
  t.match(retry.json(), { status: 'placed', orderId: guestOrderId }, 'the guest\'s order, resumed')
  t.equal(provider.charges.size, 1, 'one charge')
  t.equal((await b.call('GET', `/orders/${guestOrderId as string}`)).statusCode, 200, 'the user reads the order')
})

t.test('a guest checkout held in flight while its cart is merged into the user\'s at sign-in is refused: FST_HANDOFF_CART_MOVED', async t => {
  let release = (): void => {}
  let held = false
  const gate = new Promise<void>(resolve => { release = resolve })
  const provider = new RecordingProvider()
  const { app, b } = await ownShop(t, { provider, hold: async () => { held = true; await gate } })
  await readyToPay(b, 'GUEST')
  // The checkout starts as the guest (its session read), then waits while the guest signs in (another tab).
  const late = app.inject({ method: 'POST', url: '/checkout-held', headers: { cookie: b.cookieHeader(), 'idempotency-key': 'moved-key' } })
  t.ok(await waitFor(() => held), 'the guest checkout is in flight')
  await b.call('POST', '/login', { user: 'mia' })
  t.same((await b.call('GET', '/cart')).json().items.map((i: { sku: string }) => i.sku), ['GUEST'], 'merged at sign-in')
  release()
  const res = await late
  t.equal(res.statusCode, 409)
  t.equal(res.json().code, 'FST_HANDOFF_CART_MOVED')
  t.equal(provider.calls, 0, 'nothing charged for the merged cart')
})

for (const first of ['GET /cart', 'POST /items'] as const) {
  t.test(`migration on the first sign-in after the upgrade with a guest cart (first request ${first}): the user's old cart is moved, then the guest's merged`, async t => {
    const app = await startShop({ redisUrl: redis.url, secret: [K2, K1], provider: new RecordingProvider() })
    t.teardown(async () => await app.close())
    const store = app.handoff.store
    const user = `lena-${first.length}`
    const ownerKey = app.handoff.keyRing.deriveOldest('cart-owner')
    const oldOwner = `u${createHmac('sha256', ownerKey).update('user').update('\n').update(user).update('\n').digest('hex').slice(0, 40)}`
    const now = Date.now()
    const saved = applyChange(emptyCart(now), { op: 'add', item: { sku: 'SAVED', quantity: 1, unitPrice: 500, currency: 'EUR' } }, ownerKey, DEFAULT_CART_LIMITS, now)
    await store.update(store.key(oldOwner, 'cart'), () => saved)
    const b = new Browser(app)
    t.equal((await b.call('POST', '/items', { sku: 'GUEST' })).statusCode, 200)
    await b.call('POST', '/login', { user })
    if (first === 'POST /items') t.equal((await b.call('POST', '/items', { sku: 'NEW' })).statusCode, 200)
    const skus = (await b.call('GET', '/cart')).json().items.map((i: { sku: string }) => i.sku).sort()
    t.same(skus, first === 'GET /cart' ? ['GUEST', 'SAVED'] : ['GUEST', 'NEW', 'SAVED'], 'the saved cart and the guest cart are both the user\'s')
    t.equal(await store.get(store.key(oldOwner, 'cart')), undefined, 'the old name is gone')
    t.equal(app.handoffCart.metrics.legacyMoved, 1)
  })
}

t.test('an Idempotency-Key reused for a different cart after a decline is refused (409), not charged as the old cart', async t => {
  const { provider, b } = await userReadyToPay(t, 'dora', 'DECLINED')
  provider.declineNext = true
  t.match((await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'reused-key' })).json(), { status: 'failed', total: 2000 })
  t.equal((await b.call('POST', '/items', { sku: 'MORE' })).statusCode, 200)
  const res = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'reused-key' })
  t.equal(res.statusCode, 409)
  t.match(res.json(), { code: 'FST_HANDOFF_IDEMPOTENCY_KEY_REUSED', message: /Idempotency-Key was used for a different cart/ })
  t.equal(provider.charges.size, 0, 'nothing charged')
  const fresh = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'fresh-key' })
  t.match(fresh.json(), { status: 'placed', total: 3000 }, 'a new key checks out the cart as it is')
})

t.test('a lost checkout retried on two instances at once is reported once', async t => {
  const own = await startRedis({ private: true })
  t.teardown(async () => await own.stop())
  const provider = new RecordingProvider(false)
  const lost: LostCheckout[] = []
  // Each report waits (bounded) for a second one: without the mark written first, both retries would report.
  const onCheckoutLost = async (l: LostCheckout): Promise<void> => { lost.push(l); await waitFor(() => lost.length >= 2, { timeoutMs: 1500, intervalMs: 20 }) }
  const apps = await Promise.all([0, 1].map(async () => await startShop({ redisUrl: own.url, secret: [K1], provider, cart: { onCheckoutLost } })))
  t.teardown(async () => { for (const app of apps) await app.close() })
  const [one, two] = apps as [FastifyInstance, FastifyInstance]
  const b = new Browser(one)
  await b.call('POST', '/login', { user: 'twin' })
  await readyToPay(b, 'WIPED')
  await chargeThenWipe(t, own, one, b, provider, 'wipe-key-twice')
  await waitFor(async () => (await two.inject({ method: 'GET', url: '/whoami' })).statusCode === 200, { timeoutMs: 10_000, intervalMs: 50 })
  const answers: InjectResult[] = []
  await waitFor(async () => {
    const both = await Promise.all([one, two].map(async app =>
      await app.inject({ method: 'POST', url: '/checkout', headers: { cookie: b.cookieHeader(), 'idempotency-key': 'wipe-key-twice' } })))
    answers.push(...both)
    return both.every(a => a.json().code !== 'FST_HANDOFF_UNAVAILABLE')
  }, { timeoutMs: 10_000, intervalMs: 50 })
  t.same(answers.slice(-2).map(a => a.json().code), ['FST_HANDOFF_CHECKOUT_LOST', 'FST_HANDOFF_CHECKOUT_LOST'])
  t.equal(lost.length, 1, 'reported once')
  t.equal(provider.calls, 1, 'no retry charged again')
})

t.test('migration: when a racer creates the cart under the stable name first, the cart under the old name is kept, not deleted', async t => {
  const app = await startShop({ redisUrl: redis.url, secret: [K2, K1], provider: new RecordingProvider() })
  t.teardown(async () => await app.close())
  const store = app.handoff.store
  const ownerKey = app.handoff.keyRing.deriveOldest('cart-owner')
  const oldOwner = `u${createHmac('sha256', ownerKey).update('user').update('\n').update('rita').update('\n').digest('hex').slice(0, 40)}`
  const oldKey = store.key(oldOwner, 'cart')
  const now = Date.now()
  const cartWith = (sku: string): ReturnType<typeof emptyCart> =>
    applyChange(emptyCart(now), { op: 'add', item: { sku, quantity: 1, unitPrice: 500, currency: 'EUR' } }, ownerKey, DEFAULT_CART_LIMITS, now)
  await store.update(oldKey, () => cartWith('OLD'))
  // The race, at the store's real seam: just before the move's create-if-absent, another request creates the cart.
  const update = store.update.bind(store)
  let raced = false
  store.update = (async (key: string, mutate: any, opts?: any) => {
    if (!raced && key !== oldKey && key.endsWith(':cart')) { raced = true; await update(key, () => cartWith('RACER'), opts) }
    return await update(key, mutate, opts)
  }) as typeof store.update
  const b = new Browser(app)
  await b.call('POST', '/login', { user: 'rita' })
  t.same((await b.call('GET', '/cart')).json().items.map((i: { sku: string }) => i.sku), ['RACER'], 'the racer\'s cart is the user\'s')
  t.ok(raced, 'the race happened')
  t.same((await store.get(oldKey) as { value: { items: Array<{ sku: string }> } } | undefined)?.value.items.map(i => i.sku), ['OLD'], 'the old cart was not moved, so it is kept')
  t.equal(app.handoffCart.metrics.legacyMoved, 0, 'nothing counted as moved')
})

/**
 * The session is lost with the data, so the client's next add mints a new guest id and moves the anchor cookie to it:
 * the retry of the same Idempotency-Key then comes from a new cart under a new owner, whose order id differs.
 */
async function wipeThenRefill (t: Test, lookup: boolean): Promise<{ app: FastifyInstance, b: Browser, provider: RecordingProvider, lost: LostCheckout[], answers: InjectResult[], answer: InjectResult }> {
  const provider = new RecordingProvider(lookup)
  const lost: LostCheckout[] = []
  const { own, app, b } = await ownShop(t, { provider, cart: { onCheckoutLost: l => { lost.push(l) } } })
  await readyToPay(b, 'WIPED')
  await chargeThenWipe(t, own, app, b, provider, 'refill-key')
  // The first write after the reconnect may still find the store unavailable: the client adds again.
  await waitFor(async () => (await b.call('POST', '/items', { sku: 'AFTER', qty: 2 })).statusCode === 200, { timeoutMs: 10_000, intervalMs: 50 })
  t.equal((await b.call('PUT', '/details')).statusCode, 200)
  t.equal((await b.call('PUT', '/payment')).statusCode, 200)
  t.match((await b.call('GET', '/cart')).json(), { items: [{ sku: 'AFTER' }], reviewNeeded: false }, 'a new cart under a new guest id')
  const answers: InjectResult[] = []
  const answer = await retryCheckout(b, 'refill-key', answers)
  return { app, b, provider, lost, answers, answer }
}

t.test('Redis restarted empty after a guest\'s charge, an item added, the same key retried: with lookup the first charge is the order', async t => {
  const { b, provider, answer } = await wipeThenRefill(t, true)
  const [chargeKey] = [...provider.charges.keys()]
  t.match(answer.json(), { status: 'placed', orderId: chargeKey, total: 2000 }, 'the first charge, recovered under the earlier guest\'s order id')
  t.equal(provider.charges.size, 1, 'not charged again')
  t.equal((await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'refill-key' })).json().orderId, chargeKey, 'the same order again')
  t.match((await b.call('GET', '/cart')).json(), { items: [{ sku: 'AFTER' }] }, 'the new cart stays open')
  const next = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'refill-key-2' })
  t.match(next.json(), { status: 'placed', total: 2000 }, 'a new key checks out the new cart')
  t.equal(provider.charges.size, 2)
})

t.test('Redis restarted empty after a guest\'s charge, an item added, the same key retried: without lookup the loss is reported', async t => {
  const { b, provider, lost, answers, answer } = await wipeThenRefill(t, false)
  t.equal(answer.statusCode, 409)
  t.match(answer.json(), { code: 'FST_HANDOFF_CHECKOUT_LOST', message: /payment may have been taken/ })
  const [chargeKey] = [...provider.charges.keys()]
  t.match(lost, [{ idempotencyKey: 'refill-key', providerKey: chargeKey, owner: { kind: 'guest' } }], 'the application was told which charge to reconcile')
  answers.push(await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'refill-key' }))
  t.equal(answers.at(-1)?.json().code, 'FST_HANDOFF_CHECKOUT_LOST', 'the next retry says the same')
  t.equal(lost.length, 1, 'reported once')
  t.equal(provider.charges.size, 1, 'exactly one charge: no retry charged again')
  t.equal(provider.calls, 1)
  const next = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'refill-key-2' })
  t.match(next.json(), { status: 'placed', total: 2000 }, 'a new key checks out the new cart')
  t.equal(lost.length, 1, 'a new key reports nothing')
})

/** A shop on the file's shared redis-server, recording lost checkouts; its provider has no lookup. */
async function sharedShopRecordingLost (t: Test): Promise<{ provider: RecordingProvider, lost: LostCheckout[], b: Browser }> {
  const provider = new RecordingProvider(false)
  const lost: LostCheckout[] = []
  const app = await startShop({ redisUrl: redis.url, secret: [K1], provider, cart: { onCheckoutLost: l => { lost.push(l) } } })
  t.teardown(async () => await app.close())
  return { provider, lost, b: new Browser(app) }
}

t.test('only the session lost after a guest\'s charge, an item added, the same key retried: resumed from the earlier guest\'s record', async t => {
  const { provider, lost, b } = await sharedShopRecordingLost(t)
  await readyToPay(b, 'FIRST')
  provider.afterCharge = async () => { throw new Error('the reply is lost') }
  t.equal((await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'session-key' })).statusCode, 503, 'charged, the reply lost')
  const [chargeKey] = [...provider.charges.keys()]
  // The session expires (or is dropped): the carts, the checkout record and the anchor cookie stay.
  const sid = b.jar.get('handoff.sid')
  b.jar.delete('handoff.sid')
  await readyToPay(b, 'AFTER')
  t.not(b.jar.get('handoff.sid'), sid, 'a new session')
  const retry = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'session-key' })
  t.match(retry.json(), { status: 'placed', orderId: chargeKey, total: 2000 }, 'the earlier guest\'s checkout resumed')
  t.equal(provider.charges.size, 1, 'not charged again')
  t.match((await b.call('GET', '/cart')).json(), { items: [{ sku: 'AFTER' }] }, 'the new cart stays open')
  const next = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'session-key-2' })
  t.match(next.json(), { status: 'placed', total: 2000 }, 'a new key checks out the new cart')
  t.equal(provider.charges.size, 2)
  t.same(lost, [], 'nothing was lost: nothing reported')
})

t.test('only the session lost, the earlier guest cart still there: a new cart\'s new key is no retry, nothing reported', async t => {
  const { provider, lost, b } = await sharedShopRecordingLost(t)
  await readyToPay(b, 'LEFT')
  b.jar.delete('handoff.sid')
  await readyToPay(b, 'AFTER')
  const first = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'kept-key-1' })
  t.match(first.json(), { status: 'placed', total: 2000 }, 'checked out at once')
  t.same(lost, [], 'nothing reported')
  t.equal(provider.charges.size, 1)
})

// Review of 4df54c4 (`previous`): what it still lets through.
/** A shop on a private redis-server of its own (to be restarted empty), recording lost checkouts. */
async function shopRecordingLost (t: Test, lookup: boolean): Promise<{ own: RedisHandle, provider: RecordingProvider, lost: LostCheckout[], app: FastifyInstance, b: Browser }> {
  const provider = new RecordingProvider(lookup)
  const lost: LostCheckout[] = []
  const { own, app, b } = await ownShop(t, { provider, cart: { onCheckoutLost: l => { lost.push(l) } } })
  return { own, provider, lost, app, b }
}
t.test('Redis restarted empty with a filled guest cart and no checkout started, refilled: a first checkout without lookup', async t => {
  const { own, provider, lost, b } = await shopRecordingLost(t, false)
  await readyToPay(b, 'BEFORE')
  await own.kill()
  await own.restart()
  await waitFor(async () => (await b.call('POST', '/items', { sku: 'AFTER', qty: 2 })).statusCode === 200, { timeoutMs: 10_000, intervalMs: 50 })
  t.equal((await b.call('PUT', '/details')).statusCode, 200)
  t.equal((await b.call('PUT', '/payment')).statusCode, 200)
  const r = await retryCheckout(b, 'never-charged-key', [])
  t.comment(`answer ${r.statusCode} ${r.body}; charges=${provider.charges.size}; lost reports=${lost.length}`)
  t.equal(r.statusCode, 200, 'nothing was ever charged: placed', { todo: 'review of 4df54c4: 409 FST_HANDOFF_CHECKOUT_LOST' })
  t.same(lost, [], 'nothing reported', { todo: 'review of 4df54c4: a false onCheckoutLost' })
})

t.test('a guest\'s charge, Redis restarted empty, an item added, Redis restarted empty again, an item added: the retry (with lookup)', async t => {
  const { own, provider, app, b } = await shopRecordingLost(t, true)
  await readyToPay(b, 'FIRST')
  await chargeThenWipe(t, own, app, b, provider, 'chain-key') // cart A charged
  await waitFor(async () => (await b.call('POST', '/items', { sku: 'SECOND' })).statusCode === 200, { timeoutMs: 10_000, intervalMs: 50 }) // cart B, previous A
  await own.kill()
  await own.restart()
  await waitFor(async () => (await b.call('POST', '/items', { sku: 'THIRD', qty: 2 })).statusCode === 200, { timeoutMs: 10_000, intervalMs: 50 }) // cart C, previous B
  t.equal((await b.call('PUT', '/details')).statusCode, 200)
  t.equal((await b.call('PUT', '/payment')).statusCode, 200)
  const r = await retryCheckout(b, 'chain-key', [])
  t.comment(`answer ${r.statusCode} ${r.body}; charges=${provider.charges.size}`)
  t.equal(provider.charges.size, 1, 'not charged again', { todo: 'review of 4df54c4: previous names one guest back only: 2 charges' })
})

t.test('another browser holding a copy of a guest\'s anchor cookie and its key: the guest\'s pending checkout becomes its order', async t => {
  const provider = new RecordingProvider(false)
  const app = await startShop({ redisUrl: redis.url, secret: [K1], provider })
  t.teardown(async () => await app.close())
  const victim = new Browser(app)
  await readyToPay(victim, 'MINE')
  provider.afterCharge = async () => { throw new Error('the reply is lost') }
  t.equal((await victim.call('POST', '/checkout', undefined, { 'idempotency-key': 'victim-key-1' })).statusCode, 503)
  const other = new Browser(app) // its own session; only the (signed) anchor cookie copied
  other.jar.set('handoff_cart', victim.jar.get('handoff_cart') as string)
  await readyToPay(other, 'OTHER')
  const r = await other.call('POST', '/checkout', undefined, { 'idempotency-key': 'victim-key-1' })
  const orderId = r.json().orderId as string
  t.comment(`other browser: ${r.statusCode} ${r.body}; reads it: ${(await other.call('GET', `/orders/${orderId}`)).statusCode}`)
  t.equal(provider.charges.size, 1)
  t.equal(r.statusCode, 409, 'another session\'s checkout is not finished here', { todo: 'review of 4df54c4: placed, the order tagged to the other browser' })
  t.equal((await victim.call('POST', '/checkout', undefined, { 'idempotency-key': 'victim-key-1' })).json().orderId, orderId)
  t.equal((await victim.call('GET', `/orders/${orderId}`)).statusCode, 200, 'the guest whose session is alive reads its order', { todo: 'review of 4df54c4: 404' })
})

t.test('a read re-sends the anchor cookie for what is left of the cart\'s life, never past it', async t => {
  // An anchor that outlived its cart would name a guest whose cart is gone: the next cart would remember that guest
  // and its first checkout would be taken for one after lost data (no provider.lookup: a false 409).
  const { b } = await ownShop(t, { provider: new RecordingProvider(false), cart: { cartTtlMs: 4000 } })
  const anchorMaxAge = (r: InjectResult): number | undefined =>
    (r as unknown as { cookies: Array<{ name: string, maxAge?: number }> }).cookies.find(c => c.name === 'handoff_cart')?.maxAge
  t.equal(anchorMaxAge(await b.call('POST', '/items', { sku: 'TTL' })), 4, 'a change: the cart lives its full lifetime again')
  await new Promise(resolve => setTimeout(resolve, 1500))
  const read = await b.call('GET', '/cart')
  t.match(read.json(), { items: [{ sku: 'TTL' }] })
  const left = anchorMaxAge(read)
  t.ok(left !== undefined && left <= 2, `a read: the cookie lives no longer than the cart (${String(left)} s of 4)`)
})
