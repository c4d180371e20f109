/**
 * The example shop: one Fastify instance with the whole suite (store, TLS sessions, auth sessions, carts, metrics)
 * and the JSON API of examples/checkout/README.md. `buildShop` is used by the instance script, the demo and tests.
 */
import { readFileSync } from 'node:fs'
import { timingSafeEqual } from 'node:crypto'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { handoffStore } from '../../plugins/store.js'
import { authSession } from '../../plugins/auth-session.js'
import { tlsSessions, handoffHttpsOptions } from '../../plugins/tls-sessions.js'
import { cart, redactedRequestSerializer, type PaymentProvider, type ChargeRequest, type ChargeResult } from '../../plugins/cart.js'
import { handoffMetrics } from '../../plugins/metrics.js'
import { proxyProtocol, type ProxyProtocolOptions } from '../../plugins/proxy-protocol.js'
import { handoffDrain, type HandoffDrainOptions } from '../../plugins/drain.js'
import type { TieredStore } from '../../lib/tiered-store.js'
import type { Repository } from '../../lib/repository/types.js'

export const PRODUCTS = [
  { sku: 'TEE-BLK', name: 'Black T-shirt', price: 1900, currency: 'EUR' },
  { sku: 'MUG-LOGO', name: 'Logo mug', price: 1200, currency: 'EUR' },
  { sku: 'CAP-RED', name: 'Red cap', price: 2400, currency: 'EUR' },
  { sku: 'SOCK-3', name: 'Socks, 3 pairs', price: 1500, currency: 'EUR' },
  { sku: 'BAG-TOTE', name: 'Tote bag', price: 900, currency: 'EUR' }
] as const

const USERS: Record<string, string> = { alice: 'alice', bob: 'bob' }

export interface ShopOptions {
  /** Shown in `x-handoff-instance` and every response. */
  instanceName: string
  /** Cluster secret (>= 32 bytes), identical on every instance. */
  secret: string
  /** Redis to share state through; none: the embedded repository (one process only). */
  redisUrl?: string
  /** A repository to share instead (the demo's one-process mode shares one MemoryRepository). */
  repository?: Repository
  /** Serve HTTPS with this certificate (PEM). None: plain HTTP (tests). */
  tls?: { cert: string | Buffer, key: string | Buffer }
  logger?: FastifyServerOptions['logger']
  /** Anchor and session cookies marked Secure. Default: true when `tls` is set. */
  secureCookies?: boolean
  /** Read the client's address from a PROXY protocol header sent by these balancers. None: off. */
  proxyProtocol?: ProxyProtocolOptions
  /** Drain options (readiness route, drain period, signals). Default: the plugin's (`/ready`, 5000 ms, no signals). */
  drain?: HandoffDrainOptions
}

/**
 * A fake payment provider with idempotency keys, shared by every instance through the store (as a real provider
 * is shared by being one service): a charge is recorded once per key, create-if-absent. Switches: fail every
 * charge, or delay before/after recording it (to kill an instance mid-charge in the drill and the tests).
 */
export class FakeProvider implements PaymentProvider {
  fail = false
  delayBeforeMs = 0
  delayAfterMs = 0
  constructor (private readonly store: TieredStore) {}

  async charge (req: ChargeRequest): Promise<ChargeResult> {
    if (this.delayBeforeMs > 0) await sleep(this.delayBeforeMs)
    if (this.fail) return { status: 'declined', reason: 'card declined by the demo provider' }
    const key = this.store.key(req.idempotencyKey, 'fakecharge')
    const chargeId = `ch_${req.idempotencyKey.slice(4, 20)}`
    const r = await this.store.update(key, cur => cur === undefined ? { chargeId, amount: req.amount, currency: req.currency, at: Date.now() } : undefined)
    if (r.written) {
      await this.store.update(this.store.key('fake-provider', 'stats'), cur => ({ charges: ((cur as { charges: number } | undefined)?.charges ?? 0) + 1 }))
    }
    if (this.delayAfterMs > 0) await sleep(this.delayAfterMs)
    return { status: 'succeeded', chargeId: (r.value as { chargeId: string }).chargeId }
  }

  async charges (): Promise<number> {
    return ((await this.store.get(this.store.key('fake-provider', 'stats')))?.value as { charges: number } | undefined)?.charges ?? 0
  }
}

async function sleep (ms: number): Promise<void> { await new Promise(resolve => setTimeout(resolve, ms)) }

function passwordOk (username: string, password: string): boolean {
  const want = USERS[username]
  if (want === undefined) return false
  const a = Buffer.from(want)
  const b = Buffer.from(password)
  return a.length === b.length && timingSafeEqual(a, b)
}

/** The logger options with card numbers redacted from the logged URLs (a DELETE /api/cart/items/<number>). */
function withRedactedUrls (logger: ShopOptions['logger']): ShopOptions['logger'] {
  if (logger === undefined || logger === false) return false
  const given = logger === true ? {} : logger
  return { ...given, serializers: { ...given.serializers, req: redactedRequestSerializer } }
}

export async function buildShop (opts: ShopOptions): Promise<{ app: FastifyInstance, provider: FakeProvider }> {
  const app = Fastify({
    logger: withRedactedUrls(opts.logger),
    ...(opts.tls === undefined ? {} : { https: handoffHttpsOptions({ cert: opts.tls.cert, key: opts.tls.key }, { secret: opts.secret }) }),
    bodyLimit: 16 * 1024
  })
  const secure = opts.secureCookies ?? opts.tls !== undefined
  if (opts.proxyProtocol !== undefined) await app.register(proxyProtocol, opts.proxyProtocol)
  await app.register(fastifyCookie)
  await app.register(handoffStore, {
    secret: opts.secret,
    ...(opts.redisUrl === undefined ? {} : { redis: opts.redisUrl }),
    ...(opts.repository === undefined ? {} : { repository: opts.repository })
  })
  if (opts.tls !== undefined) await app.register(tlsSessions, { sessionCache: true })
  await app.register(authSession, { cookie: { secure } })
  const provider = new FakeProvider(app.handoff.store)
  await app.register(cart, {
    provider,
    cookie: { secure },
    onOrderPlaced: async (order, request) => { request.log.info({ orderId: order.orderId, amount: order.amount }, 'order placed') }
  })
  await app.register(handoffMetrics)
  await app.register(handoffDrain, opts.drain ?? {})

  app.addHook('onSend', async (_req, reply) => { reply.header('x-handoff-instance', opts.instanceName) })

  const tlsInfo = (req: { raw: { socket: unknown }, tlsResumed?: boolean }): { protocol: string | null, resumed: boolean } => {
    const s = req.raw.socket as { getProtocol?: () => string | null }
    return { protocol: typeof s.getProtocol === 'function' ? s.getProtocol() : null, resumed: opts.tls === undefined ? false : req.tlsResumed === true }
  }

  app.get('/api/whoami', async (req) => ({
    instance: opts.instanceName,
    ip: req.ip,
    user: req.session.user?.id ?? null,
    tls: tlsInfo(req as never),
    session: { version: req.session.version, isNew: req.session.isNew }
  }))

  app.post<{ Body: { username: string, password: string } }>('/api/login', {
    schema: { body: { type: 'object', required: ['username', 'password'], additionalProperties: false, properties: { username: { type: 'string', maxLength: 64 }, password: { type: 'string', maxLength: 128 } } } }
  }, async (req, reply) => {
    if (!passwordOk(req.body.username, req.body.password)) return await reply.code(401).send({ error: 'unknown user or wrong password' })
    await req.session.regenerate()
    req.session.user = { id: req.body.username }
    return { instance: opts.instanceName, user: req.body.username }
  })

  app.post('/api/logout', async (req) => {
    await req.session.destroy()
    return { instance: opts.instanceName, user: null }
  })

  app.get('/api/products', { config: { handoffSession: false } }, async () => PRODUCTS)

  const withInstance = <T extends object>(body: T): T & { instance: string } => ({ ...body, instance: opts.instanceName })

  app.get('/api/cart', async (req) => withInstance(await req.cart.get()))

  app.post<{ Body: { sku: string, qty?: number, options?: Record<string, string> } }>('/api/cart/items', {
    schema: {
      body: {
        type: 'object',
        required: ['sku'],
        properties: {
          sku: { type: 'string', maxLength: 64 },
          qty: { type: 'integer', minimum: 1, maximum: 999 },
          // The shopper's choices kept with the item (size, gift message): free text the cart plugin checks.
          options: { type: 'object', maxProperties: 8, additionalProperties: { type: 'string', maxLength: 200 } }
        }
      }
    }
  }, async (req, reply) => {
    const product = PRODUCTS.find(p => p.sku === req.body.sku)
    // The sku is not echoed: it is whatever the client sent.
    if (product === undefined) return await reply.code(404).send({ error: 'no such product' })
    const options = req.body.options === undefined ? {} : { options: req.body.options }
    return withInstance(await req.cart.add({ ...options, sku: product.sku, name: product.name, unitPrice: product.price, currency: product.currency, quantity: req.body.qty ?? 1 }))
  })

  app.delete<{ Params: { sku: string } }>('/api/cart/items/:sku', async (req) => withInstance(await req.cart.remove(req.params.sku)))

  app.put<{ Body: Record<string, string> }>('/api/cart/billing', async (req) => withInstance(await req.cart.setDetails({ billing: req.body as never })))

  app.put<{ Body: { token: string, brand: string, last4: string } }>('/api/cart/payment', async (req) => withInstance(await req.cart.setPayment(req.body)))

  // After a store failover rolled the cart back, the user reviews it and confirms it as it is now.
  app.post('/api/cart/review', async (req) => withInstance(await req.cart.acknowledge()))

  app.post('/api/checkout', async (req, reply) => {
    const key = req.headers['idempotency-key']
    if (typeof key !== 'string') return await reply.code(400).send({ error: 'the Idempotency-Key header is required' })
    const r = await req.cart.checkout(key)
    if (r.status === 'failed') return await reply.code(402).send(withInstance(r))
    return withInstance(r)
  })

  app.get<{ Params: { id: string } }>('/api/orders/:id', async (req, reply) => {
    const order = await req.cart.getOrder(req.params.id) // only the customer's own orders
    if (order === undefined) return await reply.code(404).send({ error: 'no such order' })
    return withInstance({ orderId: order.orderId, status: order.status, items: order.items, total: order.amount, currency: order.currency, payment: order.payment, placedAt: order.placedAt })
  })

  // Demo controls for the fake provider (the drill and the tests use them; a real shop has none of this).
  app.get('/api/_provider', { config: { handoffSession: false } }, async () => ({ charges: await provider.charges(), fail: provider.fail, delayBeforeMs: provider.delayBeforeMs, delayAfterMs: provider.delayAfterMs }))
  app.post<{ Body: { fail?: boolean, delayBeforeMs?: number, delayAfterMs?: number } }>('/api/_provider', { config: { handoffSession: false } }, async (req) => {
    if (typeof req.body.fail === 'boolean') provider.fail = req.body.fail
    if (typeof req.body.delayBeforeMs === 'number') provider.delayBeforeMs = Math.min(Math.max(0, req.body.delayBeforeMs), 60_000)
    if (typeof req.body.delayAfterMs === 'number') provider.delayAfterMs = Math.min(Math.max(0, req.body.delayAfterMs), 60_000)
    return { fail: provider.fail, delayBeforeMs: provider.delayBeforeMs, delayAfterMs: provider.delayAfterMs }
  })

  // Fastify's default answer and log line for an unknown route repeat the URL, whatever it holds.
  app.setNotFoundHandler(async (_req, reply) => await reply.code(404).send({ error: 'not found' }))

  const page = readFileSync(new URL('./public/index.html', import.meta.url), 'utf8')
  app.get('/', { config: { handoffSession: false } }, async (_req, reply) => await reply.type('text/html; charset=utf-8').send(page))

  return { app, provider }
}
