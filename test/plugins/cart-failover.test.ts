/**
 * Carts across separate instance processes on one Redis (the checkout example's instances, HTTPS):
 * concurrent "add to cart" over two instances, the same checkout sent to two instances at once, and a checkout
 * whose instance dies right after the charge call.
 */
import t from 'tap'
import { startShopCluster, type ShopCluster, type InstanceHandle } from '../../examples/checkout/cluster.js'
import { ShopClient } from '../../examples/checkout/client.js'
import { freePort } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'

let cluster: ShopCluster
let a: InstanceHandle
let b: InstanceHandle
t.before(async () => {
  cluster = await startShopCluster({ instances: 2, ports: [await freePort(), await freePort()], balancerPort: await freePort() })
  ;[a, b] = cluster.instances as [InstanceHandle, InstanceHandle]
})
t.teardown(async () => await cluster.stop())

async function preparedClient (): Promise<ShopClient> {
  const c = new ShopClient(cluster.balancerPort)
  await c.call('POST', '/api/login', { username: 'bob', password: 'bob' })
  return c
}

t.test('50 concurrent "add" requests for one cart, alternating between two instances: all 50 count', async t => {
  const c = new ShopClient(cluster.balancerPort)
  await c.call('POST', '/api/cart/items', { sku: 'MUG-LOGO', qty: 1 }) // the session and its cart exist first
  const adds = Array.from({ length: 50 }, async (_, i) =>
    await c.call('POST', '/api/cart/items', { sku: i % 2 === 0 ? 'TEE-BLK' : 'CAP-RED', qty: 1 }, {}, { port: i % 2 === 0 ? a.port : b.port }))
  const results = await Promise.all(adds)
  t.same(results.filter(r => r.status !== 200).map(r => r.status), [], 'every add acknowledged')
  t.same(new Set(results.map(r => r.instance)), new Set([a.name, b.name]), 'both instances took adds')
  const cart = await c.call<{ items: Array<{ sku: string, quantity: number }> }>('GET', '/api/cart')
  const q = Object.fromEntries(cart.body.items.map(i => [i.sku, i.quantity]))
  t.same(q, { 'MUG-LOGO': 1, 'TEE-BLK': 25, 'CAP-RED': 25 }, 'the final quantities account for all 50')
})

async function readyToPay (c: ShopClient): Promise<void> {
  await c.call('POST', '/api/cart/items', { sku: 'BAG-TOTE', qty: 2 })
  await c.call('PUT', '/api/cart/billing', { name: 'Bob Example', line1: '2 Side St', city: 'Paris', postcode: '75001', country: 'FR' })
  await c.call('PUT', '/api/cart/payment', { token: 'tok_mastercard', brand: 'mastercard', last4: '4444' })
}

async function charges (c: ShopClient): Promise<number> {
  return (await c.call<{ charges: number }>('GET', '/api/_provider')).body.charges
}

t.test('the same checkout sent to two instances at once: one charge, one order, the same order id', async t => {
  const c = await preparedClient()
  await readyToPay(c)
  const before = await charges(c)
  await c.call('POST', '/api/_provider', { delayBeforeMs: 150 }, {}, { port: a.port })
  await c.call('POST', '/api/_provider', { delayBeforeMs: 150 }, {}, { port: b.port })
  const key = `same-${Date.now()}`
  const [x, y] = await Promise.all([
    c.call<{ orderId: string, status: string }>('POST', '/api/checkout', undefined, { 'idempotency-key': key }, { port: a.port }),
    c.call<{ orderId: string, status: string }>('POST', '/api/checkout', undefined, { 'idempotency-key': key }, { port: b.port })
  ])
  await c.call('POST', '/api/_provider', { delayBeforeMs: 0 }, {}, { port: a.port })
  await c.call('POST', '/api/_provider', { delayBeforeMs: 0 }, {}, { port: b.port })
  t.equal(x.body.status, 'placed')
  t.equal(y.body.status, 'placed')
  t.equal(x.body.orderId, y.body.orderId, 'the same order id in both responses')
  t.equal(await charges(c) - before, 1, 'one charge at the provider')
  const order = await c.call<{ total: number, items: unknown[] }>('GET', `/api/orders/${x.body.orderId}`)
  t.match(order.body, { total: 1800, items: [{ sku: 'BAG-TOTE', quantity: 2 }] })
})

t.test('the first instance dies right after the charge call: the retry elsewhere charges once and places one order', async t => {
  const c = await preparedClient()
  await readyToPay(c)
  const before = await charges(c)
  const key = `killed-${Date.now()}`
  await c.call('POST', '/api/_provider', { delayAfterMs: 5000 }, {}, { port: a.port })
  const first = c.call('POST', '/api/checkout', undefined, { 'idempotency-key': key }, { port: a.port, retries: 0 }).catch((err: Error) => err)
  await waitFor(async () => await charges(c) !== before, { timeoutMs: 10_000, intervalMs: 25 })
  t.equal(await charges(c) - before, 1, 'the provider charged during the first attempt')
  await a.kill()
  t.type(await first, Error, 'the first attempt never answered')
  const retries = []
  for (let i = 0; i < 2; i++) retries.push(await c.call<{ orderId: string, status: string }>('POST', '/api/checkout', undefined, { 'idempotency-key': key }, { port: b.port }))
  await a.restart()
  retries.push(await c.call<{ orderId: string, status: string }>('POST', '/api/checkout', undefined, { 'idempotency-key': key }, { port: a.port }))
  t.same(retries.map(r => r.body.status), ['placed', 'placed', 'placed'])
  t.equal(new Set(retries.map(r => r.body.orderId)).size, 1, 'the same order id in every response')
  t.equal(await charges(c) - before, 1, 'still one charge')
  const who = await c.call<{ user: string }>('GET', '/api/whoami')
  t.equal(who.body.user, 'bob', 'still signed in')
  t.equal((await c.call<{ items: unknown[] }>('GET', '/api/cart')).body.items.length, 0, 'the cart was emptied once, by the order')
})
