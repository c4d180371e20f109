import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Ajv, type ValidateFunction } from 'ajv'
import { DEFAULT_CART_LIMITS, type CartChange, type CartItem, type CartLimits, type Order, type PaymentMethod, type PurchaseDetails } from '../lib/cart.js'
import {
  Carts, type CartMetrics, type CartRequest, type CartView, type CheckoutResult, type LostCheckout, type PaymentProvider
} from '../lib/checkout.js'
import { BadInputError, InvalidOptionError, UnavailableError } from '../lib/errors.js'
import { CachedSigner } from '../lib/signed-values.js'
import { compileOptions, optionPath, cookieNameSchema, cookieSchema, resolveCookie, type CookieOptions, type OptionsCheck, type ResolvedCookie } from '../lib/options.js'
import type { Durability } from '../lib/tiered-store.js'

export type { CartItem, CartItemExtra, Address, PurchaseDetails, PaymentMethod, Order } from '../lib/cart.js'
export type {
  CartMetrics, CartView, ChargeLookup, ChargeRequest, ChargeResult, CheckoutResult, LostCheckout, Owner, OwnerRef, PaymentProvider
} from '../lib/checkout.js'
export { PaymentDeclinedError, PaymentPendingError, NoProviderError, CheckoutLostError, CartMovedError, IdempotencyKeyReusedError } from '../lib/errors.js'
export { redactedRequestSerializer } from './redact.js'

export interface CartOptions {
  /** Charges the frozen amount at checkout. Required for checkout; without it `checkout()` fails with a 500. */
  provider?: PaymentProvider
  /**
   * Called with each placed order (write it to your database here). At least once: after a crash between storing
   * the order and this call it may run again, so deduplicate by `order.orderId`. Default: none.
   */
  onOrderPlaced?: (order: Order, request: FastifyRequest) => Promise<void> | void
  /**
   * A checkout still "checking out" after this long (its client lost the Idempotency-Key) is re-driven by the next
   * checkout with its own key, instead of locking the cart. Default: 600000 (10 min).
   */
  checkoutTimeoutMs?: number
  /** Distinct items per cart. Default: 100. */
  maxItems?: number
  /** Quantity of one item. Default: 999. */
  maxQuantity?: number
  /** How many changes back a client's anchor can still be verified at checkout. Default: 16. */
  chainLength?: number
  /** Cart lifetime since its last change, ms. Default: 2592000000 (30 days). */
  cartTtlMs?: number
  /** How long placed orders stay in the store (for idempotent retries and GET), ms. Default: 7776000000 (90 days). */
  orderTtlMs?: number
  /**
   * The signed cookie holding the client's anchor (seq and digest it last saw): the same options shape as the
   * session cookie. Its name must differ from the session cookie's. Defaults: name 'handoff_cart', Path=/, Secure,
   * HttpOnly, SameSite=Lax.
   */
  cookie?: CookieOptions
  /** @deprecated Use `cookie.name`. Name of the anchor cookie. Default: 'handoff_cart'. */
  anchorCookie?: string
  /** @deprecated Use `cookie.secure`. Mark the anchor cookie Secure. Default: true. */
  secureCookie?: boolean
  /**
   * Called once when a retried checkout finds that the store lost its records after the provider may have charged
   * (e.g. Redis restarted empty) and `provider.lookup` is not there to recover the order: reconcile it with the
   * provider by `lost.providerKey`. The client gets 409 FST_HANDOFF_CHECKOUT_LOST either way. Default: none (logged).
   */
  onCheckoutLost?: (lost: LostCheckout, request: FastifyRequest) => Promise<void> | void
  /**
   * Redis replicas that must acknowledge each checkout record and order before checkout goes on (WAIT), also when
   * the store's own `durability` (sessions, carts) asks for none. Default: the store's `durability`.
   */
  orderDurability?: Durability
}

export interface HandoffCart {
  get: () => Promise<CartView>
  add: (item: Omit<CartItem, 'quantity'> & { quantity?: number }) => Promise<CartView>
  remove: (sku: string) => Promise<CartView>
  setQuantity: (sku: string, quantity: number) => Promise<CartView>
  setDetails: (details: PurchaseDetails) => Promise<CartView>
  setPayment: (payment: PaymentMethod) => Promise<CartView>
  /** Runs (or resumes) the checkout for `idempotencyKey`; the same key on any instance gives the same order. */
  checkout: (idempotencyKey: string) => Promise<CheckoutResult>
  /** The user has reviewed the cart as it is now (after `reviewNeeded`): it becomes what this client last saw. */
  acknowledge: () => Promise<CartView>
  /** An order placed from this client's cart (same user, or same anonymous session); undefined for anyone else's. */
  getOrder: (orderId: string) => Promise<Order | undefined>
}

export interface HandoffCartDecorator {
  metrics: Readonly<CartMetrics>
  /** Any order by id, whoever placed it (back office); requests should use `request.cart.getOrder`. */
  getOrder: (orderId: string) => Promise<Order | undefined>
  /** JSON schemas of the inputs, to reuse as route schemas. */
  schemas: typeof SCHEMAS
}

declare module './auth-session.js' {
  interface SessionData {
    /** The anonymous cart's id, until it is merged into the user's cart at login. */
    handoffCart?: string
  }
}

declare module 'fastify' {
  interface FastifyRequest {
    cart: HandoffCart
  }
  interface FastifyInstance {
    handoffCart: HandoffCartDecorator
  }
}

const address = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'line1', 'city', 'postcode', 'country'],
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 200 },
    line1: { type: 'string', minLength: 1, maxLength: 200 },
    line2: { type: 'string', maxLength: 200 },
    city: { type: 'string', minLength: 1, maxLength: 100 },
    postcode: { type: 'string', minLength: 1, maxLength: 20 },
    country: { type: 'string', pattern: '^[A-Z]{2}$' }
  }
} as const

export const SCHEMAS = {
  item: {
    type: 'object',
    additionalProperties: true,
    required: ['sku', 'unitPrice', 'currency'],
    properties: {
      sku: { type: 'string', pattern: '^[A-Za-z0-9._-]{1,64}$' },
      quantity: { type: 'integer', minimum: 1 },
      unitPrice: { type: 'integer', minimum: 0, maximum: 100_000_000 },
      currency: { type: 'string', pattern: '^[A-Z]{3}$' },
      name: { type: 'string', maxLength: 200 }
    }
  },
  details: {
    type: 'object',
    additionalProperties: false,
    properties: {
      billing: address,
      shipping: {
        type: 'object',
        additionalProperties: false,
        required: ['method'],
        properties: { method: { type: 'string', minLength: 1, maxLength: 50 }, address }
      },
      note: { type: 'string', maxLength: 1000 }
    }
  },
  payment: {
    type: 'object',
    additionalProperties: false,
    required: ['token', 'brand', 'last4'],
    properties: {
      // Provider tokens (tok_..., pm_...) carry letters; a bare digit string is refused before this anyway.
      token: { type: 'string', pattern: '^[A-Za-z][A-Za-z0-9_-]{5,200}$' },
      // Display text copied into every order: letters only (visa, mastercard, "American Express", cartes_bancaires).
      brand: { type: 'string', pattern: '^[A-Za-z][A-Za-z _-]{0,29}$' },
      last4: { type: 'string', pattern: '^[0-9]{4}$' }
    }
  },
  idempotencyKey: { type: 'string', pattern: '^[A-Za-z0-9._:-]{8,128}$' }
} as const

const CART_FIELD = 'handoffCart' as const
/** Anchor cookies remembered per instance (signed or verified here), each one HMAC not computed again. */
const KNOWN_ANCHORS = 10_000

interface Validators { item: ValidateFunction, details: ValidateFunction, payment: ValidateFunction, idempotencyKey: ValidateFunction }

function checkSku (sku: string): string {
  if (typeof sku !== 'string' || sku.length === 0 || sku.length > 64) throw new BadInputError('sku must be 1 to 64 characters')
  return sku
}

function check (v: ValidateFunction, input: unknown, what: string): void {
  if (!v(input)) {
    const e = v.errors?.[0]
    throw new BadInputError(`${what}${e?.instancePath ?? ''} ${e?.message ?? 'is invalid'}`)
  }
}

/** One per request: checks the input, then hands it to lib/checkout.ts with this request's session and cookies. */
class RequestCart implements HandoffCart {
  private readonly rq: CartRequest<FastifyRequest>

  constructor (private readonly carts: Carts<FastifyRequest>, private readonly validate: Validators, request: FastifyRequest, reply: FastifyReply,
    cookie: ResolvedCookie, signer: CachedSigner, cartTtlMs: number) {
    // request.session is read when used, never here: routes without a session (config.handoffSession: false) pass here too.
    const { name, domain, partitioned, ...attributes } = cookie
    this.rq = {
      request,
      userId: () => request.session.user?.id,
      guestId: () => { const v = request.session.get(CART_FIELD); return typeof v === 'string' ? v : undefined },
      setGuestId: id => { request.session.set(CART_FIELD, id) },
      forgetGuestId: () => { request.session.delete(CART_FIELD) },
      anchor: () => {
        const raw = request.cookies?.[name]
        return raw === undefined ? undefined : signer.unsign(raw)
      },
      setAnchor: (value, maxAgeMs) => {
        reply.setCookie(name, signer.sign(value), {
          ...attributes,
          ...(domain !== undefined ? { domain } : {}),
          ...(partitioned ? { partitioned } : {}),
          maxAge: Math.floor(Math.min(maxAgeMs ?? cartTtlMs, cartTtlMs) / 1000)
        })
      },
      warn: (obj, msg) => { request.log.warn(obj, msg) }
    }
  }

  async get (): Promise<CartView> { return await this.carts.get(this.rq) }
  async acknowledge (): Promise<CartView> { return await this.carts.acknowledge(this.rq) }
  async getOrder (orderId: string): Promise<Order | undefined> { return await this.carts.getOrder(this.rq, orderId) }

  async add (item: Omit<CartItem, 'quantity'> & { quantity?: number }): Promise<CartView> {
    this.carts.guard(item, 'item')
    check(this.validate.item, item, 'item')
    return await this.carts.change(this.rq, { op: 'add', item: { ...item, quantity: item.quantity ?? 1 } as CartItem })
  }

  async remove (sku: string): Promise<CartView> {
    const change: CartChange = { op: 'remove', sku: checkSku(sku) }
    this.carts.guard(change, 'cart')
    return await this.carts.change(this.rq, change)
  }

  async setQuantity (sku: string, quantity: number): Promise<CartView> {
    const change: CartChange = { op: 'setQuantity', sku: checkSku(sku), quantity }
    this.carts.guard(change, 'cart')
    return await this.carts.change(this.rq, change)
  }

  async setDetails (details: PurchaseDetails): Promise<CartView> {
    this.carts.guard(details, 'details')
    check(this.validate.details, details, 'details')
    return await this.carts.change(this.rq, { op: 'details', details })
  }

  async setPayment (payment: PaymentMethod): Promise<CartView> {
    this.carts.guard(payment, 'payment')
    check(this.validate.payment, payment, 'payment')
    return await this.carts.change(this.rq, { op: 'payment', payment })
  }

  async checkout (idempotencyKey: string): Promise<CheckoutResult> {
    // A key with letters is a UUID or a random token, never scanned (0.71% of UUIDs would trip the text rule).
    if (typeof idempotencyKey === 'string' && !/[A-Za-z]/.test(idempotencyKey)) this.carts.guard(idempotencyKey, 'Idempotency-Key')
    check(this.validate.idempotencyKey, idempotencyKey, 'Idempotency-Key')
    return await this.carts.checkout(this.rq, idempotencyKey)
  }
}

/** The options' schema: types and ranges (lib/options.ts applies it the same way in every plugin). */
export const CART_OPTIONS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    provider: {
      type: 'object',
      required: ['charge'],
      properties: { charge: { typeof: 'function' }, lookup: { typeof: 'function' } },
      description: 'an object with a charge({ idempotencyKey, orderId, amount, currency, token }) method (and optionally lookup(idempotencyKey))'
    },
    onOrderPlaced: { typeof: 'function', description: 'a function (order, request)' },
    onCheckoutLost: { typeof: 'function', description: 'a function (lost, request)' },
    orderDurability: {
      type: 'object',
      additionalProperties: false,
      required: ['replicas'],
      properties: { replicas: { type: 'integer', minimum: 1 }, timeoutMs: { type: 'integer', minimum: 1 } }
    },
    checkoutTimeoutMs: { type: 'integer', minimum: 1 },
    maxItems: { type: 'integer', minimum: 1 },
    maxQuantity: { type: 'integer', minimum: 1 },
    chainLength: { type: 'integer', minimum: 1 },
    cartTtlMs: { type: 'integer', minimum: 1 },
    orderTtlMs: { type: 'integer', minimum: 1 },
    cookie: cookieSchema,
    anchorCookie: cookieNameSchema,
    secureCookie: { type: 'boolean' }
  }
} as const

/** Refuses invalid cart options (unknown keys with a did-you-mean, types, ranges), naming the option. */
export const checkCartOptions: OptionsCheck = compileOptions(CART_OPTIONS_SCHEMA)

/**
 * The anchor cookie from `cookie` or the older `anchorCookie`/`secureCookie` (not both), refused when it would share
 * the session cookie's name (each would overwrite the other on every response).
 */
export function resolveCartCookie (opts: CartOptions, sessionCookieName: string | undefined, path = ''): ResolvedCookie {
  const at = (name: string): string => optionPath(path, name)
  if (opts.cookie !== undefined && (opts.anchorCookie !== undefined || opts.secureCookie !== undefined)) {
    throw new InvalidOptionError(at(opts.anchorCookie !== undefined ? 'anchorCookie' : 'secureCookie'), 'replaced by cookie.name / cookie.secure; give cookie alone')
  }
  const cookie = resolveCookie(opts.cookie ?? {
    ...(opts.anchorCookie !== undefined ? { name: opts.anchorCookie } : {}),
    ...(opts.secureCookie !== undefined ? { secure: opts.secureCookie } : {})
  }, 'handoff_cart', at('cookie'))
  if (cookie.name === sessionCookieName) {
    const which = opts.anchorCookie !== undefined ? 'anchorCookie' : 'cookie.name'
    throw new InvalidOptionError(at(which), `must differ from the session cookie's name ${JSON.stringify(sessionCookieName)}`)
  }
  return cookie
}

const cartPlugin: FastifyPluginAsync<CartOptions> = async (fastify: FastifyInstance, opts) => {
  checkCartOptions(opts)
  const cookie = resolveCartCookie(opts, fastify.handoffSessions.cookieName)
  const limits: CartLimits = {
    maxItems: opts.maxItems ?? DEFAULT_CART_LIMITS.maxItems,
    maxQuantity: opts.maxQuantity ?? DEFAULT_CART_LIMITS.maxQuantity,
    chainLength: opts.chainLength ?? DEFAULT_CART_LIMITS.chainLength
  }
  const store = fastify.handoff.store
  const ring = fastify.handoff.keyRing
  const cartTtlMs = opts.cartTtlMs ?? 30 * 86_400_000
  const carts = new Carts<FastifyRequest>({
    store,
    ring,
    limits,
    cartTtlMs,
    orderTtlMs: opts.orderTtlMs ?? 90 * 86_400_000,
    checkoutTimeoutMs: opts.checkoutTimeoutMs ?? 600_000,
    // Refused here, at registration, when the repository has no replicas to wait for.
    ...(opts.orderDurability === undefined ? {} : { orderDurability: store.checkDurability(opts.orderDurability, 'orderDurability') }),
    ...(opts.provider === undefined ? {} : { provider: opts.provider }),
    ...(opts.onOrderPlaced === undefined ? {} : { onOrderPlaced: opts.onOrderPlaced }),
    ...(opts.onCheckoutLost === undefined ? {} : { onCheckoutLost: opts.onCheckoutLost })
  })
  // The anchor cookie's MAC is what rotates: signed with the newest key, verified with any in the ring. The anchor a
  // change hands out is the one the client's next change brings: remembered, it is not verified again.
  const signer = new CachedSigner(ring.derive('cart-anchor'), KNOWN_ANCHORS)
  const ajv = new Ajv({ allErrors: false, strict: true })
  const validate: Validators = {
    item: ajv.compile(SCHEMAS.item),
    details: ajv.compile(SCHEMAS.details),
    payment: ajv.compile(SCHEMAS.payment),
    idempotencyKey: ajv.compile(SCHEMAS.idempotencyKey)
  }
  // Keep the anonymous cart id when the session is regenerated at login, so it can be merged.
  fastify.handoffSessions.keepOnRegenerate(CART_FIELD)

  fastify.decorate('handoffCart', {
    metrics: carts.metrics,
    getOrder: async (orderId: string) => await carts.order(orderId),
    schemas: SCHEMAS
  })
  const kCart = Symbol('handoffCart')
  fastify.decorateRequest(kCart, null)
  fastify.decorateRequest('cart', {
    getter (this: FastifyRequest): HandoffCart {
      const self = this as unknown as Record<symbol, RequestCart | null>
      const existing = self[kCart]
      if (existing !== null && existing !== undefined) return existing
      throw new UnavailableError('request.cart is available in handlers (after the preHandler hook)')
    }
  })
  fastify.addHook('preHandler', async (request, reply) => {
    (request as unknown as Record<symbol, RequestCart>)[kCart] = new RequestCart(carts, validate, request, reply, cookie, signer, cartTtlMs)
  })
}

/** Carts and purchases that survive failover. Needs fastify-handoff/store and fastify-handoff/auth-session. */
export const cart = fp(cartPlugin, {
  fastify: '5.x',
  name: 'fastify-handoff/cart',
  dependencies: ['fastify-handoff/store', 'fastify-handoff/auth-session']
})
export default cart
