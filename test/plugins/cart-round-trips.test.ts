/**
 * Repository calls (Redis round trips: a Lua script is one) of a checkout, counted by wrapping the repository's
 * methods as bench/lib.ts countRoundTrips does (issue 17). A guest cart's first checkout makes four: the cart frozen,
 * the durable checkout record, the order, the cart placed; no order lookup, because a pristine cart (created with its
 * guest id) can have no order yet. Retries and resumes still look the order up first. And the two ways the
 * "pristine" flag could lie are checked to change nothing: the same order, one charge, the cart not emptied.
 */
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'
import { Browser, RecordingProvider, startShop } from '../helpers/cart-shop.js'
import type { ChargeRequest, ChargeResult } from '../../plugins/cart.js'
import type { StoredCart } from '../../lib/cart.js'
import type { Collection } from '../../lib/collection.js'

const K1 = { id: 'k1', secret: 'the-first-secret-of-this-cluster-32-bytes-or-more' }

let redis: RedisHandle
t.before(async () => { redis = await startRedis({ private: true }) })
t.teardown(async () => await redis.stop())

/** Every repository call of the app while `counting`, as "<method> <kind>" (kind: the last part of the key). */
function recordCalls (app: FastifyInstance): { calls: string[], counting: boolean } {
  const log = { calls: [] as string[], counting: false }
  const repo = app.handoff.repository as unknown as Record<string, unknown>
  for (const m of ['get', 'compareAndSet', 'delete', 'touch', 'take']) {
    const f = repo[m] as (...a: unknown[]) => Promise<unknown>
    repo[m] = async (...args: unknown[]): Promise<unknown> => {
      if (log.counting) log.calls.push(`${m} ${String(args[0]).split(':').pop() as string}`)
      return await f.apply(repo, args)
    }
  }
  return log
}

async function shop (t: Test, provider = new RecordingProvider()): Promise<{ app: FastifyInstance, log: ReturnType<typeof recordCalls>, provider: RecordingProvider }> {
  const app = await startShop({ redisUrl: redis.url, secret: [K1], provider })
  t.teardown(async () => await app.close())
  return { app, log: recordCalls(app), provider }
}

async function readyToPay (t: Test, b: Browser, sku: string): Promise<void> {
  t.equal((await b.call('POST', '/items', { sku, qty: 2 })).statusCode, 200)
  t.equal((await b.call('PUT', '/details')).statusCode, 200)
  t.equal((await b.call('PUT', '/payment')).statusCode, 200)
  // The counts below are for a cart this instance holds. A copy can still be dropped under load (a lease that lapsed
  // on a busy machine: a lost copy, never a stale one): the client looks at its cart until it is held.
  const name = /^2\.[gu]\.([^.]+)\./.exec(decodeURIComponent(b.jar.get('handoff_cart') ?? ''))?.[1] as string
  t.ok(await waitFor(async () => cartsOf(b.app).getLocal(name) !== undefined || (await b.call('GET', '/cart')).statusCode < 0), 'the cart is held locally')
}

async function counted<T> (log: ReturnType<typeof recordCalls>, fn: () => Promise<T>): Promise<{ result: T, calls: string[] }> {
  log.calls.length = 0
  log.counting = true
  try {
    return { result: await fn(), calls: [...log.calls] }
  } finally {
    log.counting = false
  }
}

/** The guest cart's name, from the anchor cookie ("2.g.<name>.<seq>.<digest>", then its signature). */
function guestName (b: Browser): string {
  const m = /^2\.g\.(a[A-Za-z0-9_-]{32})\./.exec(decodeURIComponent(b.jar.get('handoff_cart') ?? ''))
  if (m === null) throw new Error('no guest anchor cookie')
  return m[1] as string
}

function cartsOf (app: FastifyInstance): Collection<StoredCart> {
  return app.handoff.store.collection<StoredCart>('cart', { parse: v => v as StoredCart })
}

t.test('a guest cart\'s first checkout: 4 round trips, no order lookup', async t => {
  const { app, log, provider } = await shop(t)
  const b = new Browser(app)
  await readyToPay(t, b, 'FIRST')
  const { result: res, calls } = await counted(log, async () => await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'first-checkout-1' }))
  t.match(res.json(), { status: 'placed', total: 2000 })
  t.same(calls, ['compareAndSet cart', 'compareAndSet checkout', 'compareAndSet order', 'compareAndSet cart'],
    'the cart frozen, the durable record, the order, the cart placed; nothing read')
  t.equal(provider.charges.size, 1)
  t.equal(app.handoffCart.metrics.checkoutsStarted, 1)
  t.equal(app.handoffCart.metrics.ordersPlaced, 1)
  const cart = (await b.call('GET', '/cart')).json()
  t.match(cart, { items: [], checkout: { state: 'placed', orderId: res.json().orderId } }, 'the cart was emptied and marked placed')

  // The next checkout of the same cart is not a first one: it looks for the order first, as before.
  await readyToPay(t, b, 'SECOND')
  const second = await counted(log, async () => await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'first-checkout-2' }))
  t.match(second.result.json(), { status: 'placed' })
  t.same(second.calls.filter(c => c === 'get order').length, 2, 'the order looked up under its id and the id from before stable names')
  t.equal(second.calls.length, 6)
})

t.test('retries and resumes look the order up first', async t => {
  const provider = new RecordingProvider()
  const { app, log } = await shop(t, provider)
  const b = new Browser(app)
  await readyToPay(t, b, 'RETRY')
  const first = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'retry-key-1' })
  t.match(first.json(), { status: 'placed' })

  // A lost reply retried on another instance (nothing in its local tier): the order is found, nothing is written.
  const { app: other, log: otherLog } = await shop(t, provider)
  b.app = other
  const retry = await counted(otherLog, async () => await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'retry-key-1' }))
  t.equal(retry.result.json().orderId, first.json().orderId, 'the same order')
  t.ok(retry.calls.includes('get order'), 'the order looked up')
  t.notOk(retry.calls.some(c => c.startsWith('compareAndSet')), 'nothing written')
  t.equal(provider.charges.size, 1, 'one charge')

  // A charge that did not answer (503), resumed with the same key: more round trips, one charge.
  b.app = app
  await readyToPay(t, b, 'RESUME')
  const realCharge = provider.charge.bind(provider)
  provider.charge = async (_req: ChargeRequest): Promise<ChargeResult> => { provider.charge = realCharge; throw new Error('timeout') }
  const pending = await counted(log, async () => await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'resume-key-1' }))
  t.equal(pending.result.json().code, 'FST_HANDOFF_PAYMENT_PENDING')
  t.same(pending.calls, ['get order', 'get order', 'compareAndSet cart', 'compareAndSet checkout'], 'the cart was not pristine any more: the order looked up first')
  const resumed = await counted(log, async () => await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'resume-key-1' }))
  t.match(resumed.result.json(), { status: 'placed' })
  t.ok(resumed.calls.includes('get order'), 'the resume looks the order up first')
  t.ok(resumed.calls.length <= 6, `at most 6 round trips (${resumed.calls.join(', ')})`)
  t.equal(provider.charges.size, 2)
})

t.test('a signed-in user\'s first checkout still looks the order up (a user\'s cart name has a past)', async t => {
  const { app, log } = await shop(t)
  const b = new Browser(app)
  await b.call('POST', '/login', { user: 'round-trips-user' })
  await readyToPay(t, b, 'USER')
  const { result, calls } = await counted(log, async () => await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'user-key-1' }))
  t.match(result.json(), { status: 'placed' })
  t.same(calls, ['get order', 'get order', 'compareAndSet cart', 'compareAndSet checkout', 'compareAndSet order', 'compareAndSet cart'])
})

t.test('a "pristine" flag that lies (an older instance, a rolled-back freeze): the same order, one charge, the cart kept', async t => {
  const { app, provider } = await shop(t)
  const b = new Browser(app)
  await readyToPay(t, b, 'PLACED')
  const first = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'liar-key-1' })
  t.match(first.json(), { status: 'placed', total: 2000 })
  const name = guestName(b)
  const carts = cartsOf(app)
  // The cart changes (its record of the key is dropped), then the flag comes back as if the freeze had been lost.
  await readyToPay(t, b, 'NEXT')
  const w = await carts.update(name, cur => ({ ...(cur as StoredCart), pristine: true }))
  t.ok(w.written)
  // Retried on another instance, so that nothing answers from a local copy: every step is a round trip (the session
  // read aside).
  const { app: other, log: otherLog } = await shop(t, provider)
  b.app = other
  const { result: retry, calls } = await counted(otherLog, async () => await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'liar-key-1' }))
  t.same(calls.filter(c => c !== 'get session').slice(0, 5), ['get cart', 'compareAndSet cart', 'compareAndSet checkout', 'compareAndSet cart', 'get order'],
    'frozen, the record found by the refused create instead of written, the freeze taken back, then the full path: the order looked up')
  t.same(retry.json(), first.json(), 'the same order again')
  t.equal(provider.charges.size, 1, 'one charge')
  t.equal(provider.calls, 1, 'the provider was not asked again')
  const cart = (await b.call('GET', '/cart')).json()
  t.same(cart.items.map((i: { sku: string }) => i.sku), ['NEXT'], 'the cart keeps what was added after the order')
  t.equal(cart.checkout, undefined, 'and is open')
  t.equal(app.handoffCart.metrics.ordersPlaced + other.handoffCart.metrics.ordersPlaced, 1)
  t.equal(other.handoffCart.metrics.checkoutsStarted, 0, 'no checkout counted as started by the retry')
})

t.test('a cart frozen without the lookup for an order of another digest (the instance stopped before taking it back) is opened, not emptied', async t => {
  const { app, provider } = await shop(t)
  const b = new Browser(app)
  await readyToPay(t, b, 'PLACED')
  const first = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'stopped-key-1' })
  t.match(first.json(), { status: 'placed' })
  const orderId = first.json().orderId as string
  await readyToPay(t, b, 'NEXT')
  const carts = cartsOf(app)
  // What firstCheckout leaves when it stops between finding the record and taking the freeze back.
  const w = await carts.update(guestName(b), cur => {
    const c = cur as StoredCart
    return { ...c, checkout: { state: 'checking_out', idempotencyKey: 'stopped-key-1', orderId, amount: 2000, currency: 'EUR', digest: c.digest, startedAt: Date.now(), lookupSkipped: true } }
  })
  t.ok(w.written)
  const retry = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'stopped-key-1' })
  t.same(retry.json(), first.json(), 'the same order again')
  t.equal(provider.charges.size, 1, 'one charge')
  const cart = (await b.call('GET', '/cart')).json()
  t.same(cart.items.map((i: { sku: string }) => i.sku), ['NEXT'], 'nothing of this cart was charged: it is not emptied')
  t.equal(cart.checkout, undefined, 'and is open again')
  t.equal((await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'stopped-key-2' })).json().status, 'placed', 'a new key checks it out')
  t.equal(provider.charges.size, 2)
})

t.test('a pristine cart\'s first checkout racing with a retry of the same key elsewhere: one charge, one order, the cart emptied', async t => {
  const provider = new RecordingProvider()
  const { app } = await shop(t, provider)
  const { app: other } = await shop(t, provider)
  const b = new Browser(app)
  await readyToPay(t, b, 'RACE')
  const b2 = new Browser(other)
  for (const [k, v] of b.jar) b2.jar.set(k, v)
  // This instance's durable record waits until the other instance has written it (it found the cart frozen by this
  // one and resumed it): the create-if-absent here then finds the record of this very freeze. The other instance's
  // order waits until this one has gone on for a while, so that whatever this one does with the cart comes first.
  let written!: () => void
  const otherWrote = new Promise<void>(resolve => { written = resolve })
  let found!: () => void
  const recordFound = new Promise<void>(resolve => { found = resolve })
  const otherRepo = other.handoff.repository as unknown as { compareAndSet: (...a: unknown[]) => Promise<unknown> }
  const otherCas = otherRepo.compareAndSet.bind(otherRepo)
  otherRepo.compareAndSet = async (...a: unknown[]) => {
    if (String(a[0]).endsWith(':order')) {
      await Promise.race([recordFound, new Promise(resolve => setTimeout(resolve, 3000))])
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    const res = await otherCas(...a)
    if (String(a[0]).endsWith(':checkout')) written()
    return res
  }
  const repo = app.handoff.repository as unknown as { compareAndSet: (...a: unknown[]) => Promise<unknown> }
  const cas = repo.compareAndSet.bind(repo)
  let held = 0
  let cartWrites = 0
  repo.compareAndSet = async (...a: unknown[]) => {
    if (String(a[0]).endsWith(':cart')) cartWrites++
    if (!String(a[0]).endsWith(':checkout') || held++ > 0) return await cas(...a)
    await Promise.race([otherWrote, new Promise(resolve => setTimeout(resolve, 3000))])
    const res = await cas(...a)
    found()
    return res
  }
  const first = b.call('POST', '/checkout', undefined, { 'idempotency-key': 'race-key-1' })
  // The retry starts once this instance has frozen the cart.
  const name = guestName(b)
  const carts = cartsOf(other)
  const deadline = Date.now() + 3000
  while ((await carts.get(name))?.value.checkout === undefined && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 2))
  other.handoff.store.clearLocal()
  const [x, y] = await Promise.all([first, b2.call('POST', '/checkout', undefined, { 'idempotency-key': 'race-key-1' })])
  t.equal(held, 1, 'this instance wrote its record once: it went on with the record of its own freeze')
  t.equal(cartWrites, 2, 'its cart writes: the freeze and the cart placed (the freeze was not taken back)')
  t.match(x.json(), { status: 'placed', total: 2000 })
  t.same(y.json(), x.json(), 'the same order in both responses')
  t.equal(provider.charges.size, 1, 'one charge')
  t.equal(app.handoffCart.metrics.ordersPlaced + other.handoffCart.metrics.ordersPlaced, 1, 'one order placed')
  const cart = (await b.call('GET', '/cart')).json()
  t.same(cart.items, [], 'the cart was emptied by the order')
  t.match(cart.checkout, { state: 'placed', orderId: x.json().orderId })
})

t.test('a first checkout charged with its reply lost, then its record and session lost: the order recovered from the provider empties the cart', async t => {
  // The order recovered through provider.lookup knows no digest (''): it cannot tell "placed from another cart",
  // and it was charged under this very freeze's order id. Its items must not be left in an open cart to be paid again.
  const provider = new RecordingProvider(true)
  const { app } = await shop(t, provider)
  const b = new Browser(app)
  await readyToPay(t, b, 'RECOVERED')
  provider.afterCharge = async () => { throw new Error('reply lost') }
  const first = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'recovered-key-1' })
  t.equal(first.statusCode, 503, 'charged, the reply lost')
  const [orderId] = [...provider.charges.keys()] as [string]
  const name = guestName(b)
  t.match((await cartsOf(app).get(name))?.value.checkout, { state: 'checking_out', orderId, lookupSkipped: true }, 'frozen by the first checkout')
  // The record's node lost it, and the session went with it: only the anchor cookie names the cart.
  await app.handoff.store.collection('checkout', { parse: v => v }).delete(orderId)
  app.handoff.store.clearLocal()
  b.jar.delete('handoff.sid')
  const retry = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'recovered-key-1' })
  t.match(retry.json(), { status: 'placed', orderId, total: 2000 }, 'the charge recovered as the order')
  t.equal(provider.charges.size, 1, 'one charge')
  t.equal(app.handoffCart.metrics.ordersRecovered, 1)
  const cart = (await cartsOf(app).get(name))?.value as StoredCart
  t.same(cart.items, [], 'the charged items are not left in an open cart')
  t.match(cart.checkout, { state: 'placed', orderId })
})

// Review of 4df54c4 (`previous`): a returning guest (session expired, earlier cart placed and still there, nothing lost).
t.test('a returning guest\'s cart remembers the earlier guest: its checkouts cost more than a pristine cart\'s, every time', async t => {
  const { app, log } = await shop(t)
  const b = new Browser(app)
  await readyToPay(t, b, 'VISIT1')
  t.match((await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'visit-key-1' })).json(), { status: 'placed' })
  b.jar.delete('handoff.sid') // the session expires; the anchor cookie (maxAge cartTtlMs) stays
  await readyToPay(t, b, 'VISIT2')
  const first = await counted(log, async () => await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'visit-key-2' }))
  t.match(first.result.json(), { status: 'placed' })
  t.comment(`first checkout of the new cart: ${first.calls.length} calls ${JSON.stringify(first.calls)}`)
  t.equal(first.calls.length, 4, 'as a pristine first checkout', { todo: 'review of 4df54c4: 8 (earlier order, own order x2, earlier record)' })
  await readyToPay(t, b, 'VISIT2B')
  const second = await counted(log, async () => await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'visit-key-3' }))
  t.comment(`next checkout of the new cart: ${second.calls.length} calls ${JSON.stringify(second.calls)}`)
  t.equal(second.calls.length, 6, 'as any later checkout', { todo: 'review of 4df54c4: previous is never dropped, 8' })
})

t.test('the earlier guest\'s cart expired (cartTtlMs), nothing lost: a returning guest\'s first checkout without lookup', async t => {
  const provider = new RecordingProvider(false)
  const lost: unknown[] = []
  const app = await startShop({ redisUrl: redis.url, secret: [K1], provider, cart: { onCheckoutLost: l => { lost.push(l) } } })
  t.teardown(async () => await app.close())
  const b = new Browser(app)
  await readyToPay(t, b, 'VISIT1')
  t.match((await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'expiry-key-1' })).json(), { status: 'placed' })
  const earlier = guestName(b)
  b.jar.delete('handoff.sid')
  // The cart gone while the anchor cookie lives: since the anchor's Max-Age follows the cart's remaining life, expiry
  // alone no longer does this (the browser drops the cookie with the cart); losing the cart early (Redis data loss) does.
  await cartsOf(app).delete(earlier)
  await readyToPay(t, b, 'VISIT2')
  const r = await b.call('POST', '/checkout', undefined, { 'idempotency-key': 'expiry-key-2' })
  t.comment(`answer ${r.statusCode} ${r.body}; charges=${provider.charges.size}; lost reports=${lost.length}`)
  t.equal(r.statusCode, 200, 'a checkout that follows nothing lost is placed', { todo: 'review of 4df54c4: 409 FST_HANDOFF_CHECKOUT_LOST' })
  t.same(lost, [], 'nothing reported', { todo: 'review of 4df54c4: onCheckoutLost for a key that never charged' })
})
