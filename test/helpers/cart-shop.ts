/**
 * A small shop over the public plugins (store, auth-session, cart) for the checkout tests that restart instances
 * (key rotation), lose Redis's data, or hold a request in flight: its payment provider keeps its charges outside
 * any instance, as a real provider does.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { handoffStore, type HandoffStoreOptions } from '../../plugins/store.js'
import { authSession } from '../../plugins/auth-session.js'
import { cart, type CartOptions, type ChargeLookup, type ChargeRequest, type ChargeResult, type PaymentProvider } from '../../plugins/cart.js'

/** Charges once per idempotency key, like a real provider; `lookup` is optional (set `withLookup`). */
export class RecordingProvider implements PaymentProvider {
  readonly charges = new Map<string, { chargeId: string, amount: number, currency: string }>()
  calls = 0
  /** Runs after the money moved and before charge() answers (e.g. the test kills Redis there). */
  afterCharge: (() => Promise<void>) | undefined
  lookup?: (idempotencyKey: string) => Promise<ChargeLookup | undefined>
  /** Declines the next charge (nothing charged), as a provider does for a refused card. */
  declineNext = false

  constructor (withLookup = false) {
    if (withLookup) this.lookup = async key => this.charges.get(key)
  }

  async charge (req: ChargeRequest): Promise<ChargeResult> {
    this.calls++
    if (this.declineNext) { this.declineNext = false; return { status: 'declined', reason: 'card_declined' } }
    let prior = this.charges.get(req.idempotencyKey)
    if (prior === undefined) {
      prior = { chargeId: `ch_${this.charges.size + 1}`, amount: req.amount, currency: req.currency }
      this.charges.set(req.idempotencyKey, prior)
      const after = this.afterCharge
      this.afterCharge = undefined
      if (after !== undefined) await after()
    }
    return { status: 'succeeded', chargeId: prior.chargeId }
  }
}

export interface ShopOptions {
  redisUrl: string
  secret: HandoffStoreOptions['secret']
  provider: PaymentProvider
  cart?: Partial<CartOptions>
  store?: Partial<HandoffStoreOptions>
  /** Awaited by POST /items-held and /checkout-held first: a request held in flight for as long as the test needs. */
  hold?: () => Promise<void>
}

export async function startShop (opts: ShopOptions): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(fastifyCookie)
  await app.register(handoffStore, { secret: opts.secret, redis: opts.redisUrl, ...opts.store })
  await app.register(authSession, { cookie: { secure: false } })
  await app.register(cart, { provider: opts.provider, cookie: { secure: false }, ...opts.cart })
  app.post<{ Body: { sku: string, qty?: number } }>('/items', async req => await req.cart.add({ sku: req.body.sku, quantity: req.body.qty ?? 1, unitPrice: 1000, currency: 'EUR' }))
  app.post<{ Body: { sku: string } }>('/items-held', async req => {
    await opts.hold?.()
    return await req.cart.add({ sku: req.body.sku, unitPrice: 1000, currency: 'EUR' })
  })
  app.put('/details', async req => await req.cart.setDetails({ billing: { name: 'Ada Example', line1: '1 Main St', city: 'Berlin', postcode: '10115', country: 'DE' } }))
  app.put('/payment', async req => await req.cart.setPayment({ token: 'tok_visa_123', brand: 'visa', last4: '4242' }))
  app.get('/cart', async req => await req.cart.get())
  app.post<{ Body: { user: string } }>('/login', async req => { await req.session.regenerate(); req.session.user = { id: req.body.user }; return { ok: true } })
  app.get('/whoami', async req => ({ user: req.session.user?.id ?? null }))
  app.get<{ Params: { id: string } }>('/orders/:id', async (req, reply) => (await req.cart.getOrder(req.params.id)) ?? await reply.code(404).send({ error: 'no such order' }))
  app.post('/checkout', async req => await req.cart.checkout(String(req.headers['idempotency-key'])))
  app.post('/checkout-held', async req => {
    await opts.hold?.()
    return await req.cart.checkout(String(req.headers['idempotency-key']))
  })
  await app.ready()
  return app
}

export interface InjectResult { statusCode: number, json: () => any, body: string }

/** A cookie jar over fastify.inject; the app it talks to can be swapped (an instance restarted). */
export class Browser {
  readonly jar = new Map<string, string>()
  constructor (public app: FastifyInstance) {}

  cookieHeader (): string { return [...this.jar].map(([k, v]) => `${k}=${v}`).join('; ') }

  async call (method: string, url: string, payload?: unknown, headers: Record<string, string> = {}, cookie = this.cookieHeader()): Promise<InjectResult> {
    const res = await this.app.inject({
      method: method as 'GET',
      url,
      ...(payload === undefined ? {} : { payload: payload as object }),
      headers: { ...headers, cookie }
    })
    for (const c of res.cookies as Array<{ name: string, value: string, maxAge?: number }>) {
      if (c.value === '' || c.maxAge === 0) this.jar.delete(c.name); else this.jar.set(c.name, c.value)
    }
    return res
  }
}
