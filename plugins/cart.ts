import { createHmac, randomBytes } from 'node:crypto'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Signer } from '@fastify/cookie'
import { Ajv, type ValidateFunction } from 'ajv'
import createError from '@fastify/error'
import {
  DEFAULT_CART_LIMITS, applyChange, assertCheckoutReady, cartTotal, emptyCart, refuseCardNumbers, verifyAnchor,
  CheckoutInProgressError, type CartChange, type CartItem, type CartLimits, type CheckoutRecord, type Order,
  type PaymentMethod, type PurchaseDetails, type StoredCart
} from '../lib/cart.js'
import { BadInputError, InvalidOptionError, UnavailableError, isHandoffError } from '../lib/errors.js'
import { compileOptions, optionPath, cookieNameSchema, cookieSchema, resolveCookie, type CookieOptions, type OptionsCheck, type ResolvedCookie } from '../lib/options.js'
import type { StoreEntry, TieredStore } from '../lib/tiered-store.js'

export type { CartItem, CartItemExtra, Address, PurchaseDetails, PaymentMethod, Order } from '../lib/cart.js'
export { redactedRequestSerializer } from './redact.js'

/** The application's payment provider. It must deduplicate by `idempotencyKey` (every real provider does). */
export interface PaymentProvider {
  charge: (req: ChargeRequest) => Promise<ChargeResult>
}

export interface ChargeRequest {
  /** Stable across retries of one checkout, on any instance: the provider charges once per key. */
  idempotencyKey: string
  orderId: string
  amount: number
  currency: string
  token: string
}

export type ChargeResult = { status: 'succeeded', chargeId: string } | { status: 'declined', reason: string }

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
}

/** What the routes return: the stored cart as the client may see it (no token, no chain). */
export interface CartView {
  items: CartItem[]
  total: number
  currency: string | undefined
  /** Number of changes so far: grows by one per change. */
  version: number
  details: PurchaseDetails
  payment: { brand: string, last4: string } | undefined
  checkout: { state: CheckoutRecord['state'], orderId: string, reason?: string } | undefined
  /** Where this request found the cart: this instance's local tier, the repository, or nowhere yet (new). */
  source: 'local' | 'repository' | 'new'
  /**
   * True when the cart is not the one this client last saw (rolled back or forked, e.g. by a store failover):
   * checkout is refused until the user has reviewed it and `acknowledge()` was called.
   */
  reviewNeeded: boolean
  /**
   * True when the store could not be reached and this instance answered from its own copy, unconfirmed for up to the
   * store's `maxDegradedMs` (it may miss changes made elsewhere meanwhile).
   */
  degraded: boolean
}

export interface CheckoutResult {
  orderId: string
  /** An unanswered charge is not a result: checkout() throws FST_HANDOFF_PAYMENT_PENDING (503) instead. */
  status: 'placed' | 'failed'
  total: number
  currency: string
  reason?: string
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

export interface CartMetrics {
  changes: number
  merges: number
  checkoutsStarted: number
  checkoutsResumed: number
  ordersPlaced: number
  checkoutsFailed: number
  chargesPending: number
  cardNumbersRefused: number
  historyRejected: number
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

export const PaymentDeclinedError = createError<'FST_HANDOFF_PAYMENT_DECLINED', 402, [string]>(
  'FST_HANDOFF_PAYMENT_DECLINED', 'Payment declined: %s', 402)
export const PaymentPendingError = createError<'FST_HANDOFF_PAYMENT_PENDING', 503, [string]>(
  'FST_HANDOFF_PAYMENT_PENDING', 'The payment did not complete (%s): retry with the same Idempotency-Key; you will be charged at most once', 503)
export const NoProviderError = createError<'FST_HANDOFF_NO_PROVIDER', 500, []>(
  'FST_HANDOFF_NO_PROVIDER', 'No payment provider configured (option "provider")', 500)

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

interface Runtime {
  store: TieredStore
  opts: Required<Pick<CartOptions, 'cartTtlMs' | 'orderTtlMs' | 'checkoutTimeoutMs'>> & CartOptions
  /** The anchor cookie, every default applied. */
  cookie: ResolvedCookie
  limits: CartLimits
  digestKey: Buffer
  ownerKey: Buffer
  orderKey: Buffer
  signer: Signer
  validate: { item: ValidateFunction, details: ValidateFunction, payment: ValidateFunction, idempotencyKey: ValidateFunction }
  metrics: CartMetrics
}

function hmacHex (key: Buffer, ...parts: string[]): string {
  const h = createHmac('sha256', key)
  for (const p of parts) h.update(p).update('\n')
  return h.digest('hex')
}

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

function view (cart: StoredCart, source: CartView['source'] = 'repository', reviewNeeded = false, degraded = false): CartView {
  const { total, currency } = cartTotal(cart)
  const c = cart.checkout
  return {
    items: cart.items,
    total,
    currency,
    version: cart.seq,
    details: cart.details,
    payment: cart.payment === undefined ? undefined : { brand: cart.payment.brand, last4: cart.payment.last4 },
    checkout: c === undefined ? undefined : { state: c.state, orderId: c.orderId, ...(c.reason === undefined ? {} : { reason: c.reason }) },
    source,
    reviewNeeded,
    degraded
  }
}

/** One per request: resolves the cart's owner from the session, merges an anonymous cart after login. */
class RequestCart implements HandoffCart {
  /** HMAC tags computed for this request (owner ids and cookie/order tags), each needed several times. */
  private readonly tags = new Map<string, string>()

  constructor (private readonly rt: Runtime, private readonly request: FastifyRequest, private readonly reply: FastifyReply) {}

  private tag (purpose: string, value: string, length: number): string {
    const k = `${purpose}\n${value}`
    let t = this.tags.get(k)
    if (t === undefined) {
      t = hmacHex(this.rt.ownerKey, purpose, value).slice(0, length)
      this.tags.set(k, t)
    }
    return t
  }

  /** The owner id: the signed-in user's, else the anonymous cart id kept in the session (made on first write). */
  private owner (create: boolean): string | undefined {
    const session = this.request.session
    const user = session.user
    if (user !== undefined) return `u${this.tag('user', user.id, 40)}`
    const anon = session.get(CART_FIELD)
    if (typeof anon === 'string') return anon
    if (!create) return undefined
    const id = `a${randomBytes(24).toString('base64url')}`
    session.set(CART_FIELD, id)
    return id
  }

  private key (owner: string): string { return this.rt.store.key(owner, 'cart') }

  /**
   * After login: the anonymous cart still named in the session is merged into the user's, once. `read`: the caller
   * already read the anonymous cart (checkout does), so it is not read twice.
   */
  private async mergeAnonymous (userOwner: string, read?: { found: StoreEntry<unknown> | undefined }): Promise<void> {
    const session = this.request.session
    const anon = session.get(CART_FIELD)
    if (typeof anon !== 'string' || session.user === undefined) return
    const anonKey = this.key(anon)
    const found = read !== undefined ? read.found : await this.rt.store.get(anonKey)
    const from = found?.value as StoredCart | undefined
    // A guest checkout still running stays the guest's: merging it would re-key its order and charge twice.
    // It finishes (retry with the same Idempotency-Key, see checkout) and the emptied cart merges afterwards.
    if (from?.checkout?.state === 'checking_out') return
    if (from !== undefined && from.items.length > 0) {
      const now = Date.now()
      await this.rt.store.update(this.key(userOwner), cur => {
        const base = (cur as StoredCart | undefined) ?? emptyCart(now)
        return applyChange(base, { op: 'merge', from: anon, fromSeq: from.seq, items: from.items }, this.rt.digestKey, this.rt.limits, now)
      }, { ttlMs: this.rt.opts.cartTtlMs })
      this.rt.metrics.merges++
    }
    // The user's cart holds the items now (or there were none): drop the anonymous cart, then forget it.
    if (found !== undefined) await this.rt.store.delete(anonKey)
    session.delete(CART_FIELD)
  }

  async get (): Promise<CartView> {
    const owner = this.owner(false)
    if (owner === undefined) return view(emptyCart(Date.now()), 'new')
    if (owner.startsWith('u')) await this.mergeAnonymous(owner)
    const found = await this.rt.store.get(this.key(owner))
    // Gone although this client saw it hold something: rolled back (or expired), flag it for review.
    if (found === undefined) return view(emptyCart(Date.now()), 'new', (this.readAnchor(owner)?.seq ?? 0) > 0)
    const cart = found.value as StoredCart
    return view(cart, found.source, !this.advanceAnchor(owner, cart), found.degraded)
  }

  async acknowledge (): Promise<CartView> {
    const owner = this.owner(false)
    if (owner === undefined) return view(emptyCart(Date.now()), 'new')
    const found = await this.rt.store.get(this.key(owner))
    const cart = (found?.value as StoredCart | undefined) ?? emptyCart(Date.now())
    this.setAnchor(owner, cart)
    return view(cart, found?.source ?? 'new')
  }

  /** `scanned`: the caller already refused card numbers in the input (before validating it). */
  private async change (change: CartChange, scanned = false): Promise<CartView> {
    if (!scanned) this.guard(change, 'cart')
    const owner = this.owner(true) as string
    if (owner.startsWith('u')) await this.mergeAnonymous(owner)
    const now = Date.now()
    const r = await this.rt.store.update(this.key(owner), cur =>
      applyChange((cur as StoredCart | undefined) ?? emptyCart(now), change, this.rt.digestKey, this.rt.limits, now),
    { ttlMs: this.rt.opts.cartTtlMs })
    this.rt.metrics.changes++
    const cart = r.value as StoredCart
    return view(cart, 'repository', !this.advanceAnchor(owner, cart))
  }

  /**
   * Moves the client's anchor to `cart` if the cart extends what the client last saw; otherwise leaves the anchor
   * where it is (the evidence of a rollback or fork must survive until the user reviewed the cart) and says false.
   */
  private advanceAnchor (owner: string, cart: StoredCart): boolean {
    try {
      verifyAnchor(cart, this.readAnchor(owner))
    } catch {
      return false
    }
    this.setAnchor(owner, cart)
    return true
  }

  async add (item: Omit<CartItem, 'quantity'> & { quantity?: number }): Promise<CartView> {
    this.guard(item, 'item')
    check(this.rt.validate.item, item, 'item')
    return await this.change({ op: 'add', item: { ...item, quantity: item.quantity ?? 1 } as CartItem }, true)
  }

  async remove (sku: string): Promise<CartView> {
    return await this.change({ op: 'remove', sku: checkSku(sku) })
  }

  async setQuantity (sku: string, quantity: number): Promise<CartView> {
    return await this.change({ op: 'setQuantity', sku: checkSku(sku), quantity })
  }

  async setDetails (details: PurchaseDetails): Promise<CartView> {
    this.guard(details, 'details')
    check(this.rt.validate.details, details, 'details')
    return await this.change({ op: 'details', details }, true)
  }

  async setPayment (payment: PaymentMethod): Promise<CartView> {
    this.guard(payment, 'payment')
    check(this.rt.validate.payment, payment, 'payment')
    return await this.change({ op: 'payment', payment }, true)
  }

  /** Card numbers are refused before anything else looks at the input, and never echoed or logged. */
  private guard (input: unknown, what: string): void {
    try {
      refuseCardNumbers(input, what)
    } catch (err) {
      this.rt.metrics.cardNumbersRefused++
      throw err
    }
  }

  async checkout (idempotencyKey: string): Promise<CheckoutResult> {
    // A key with letters is a UUID or a random token, never scanned (0.71% of UUIDs would trip the text rule).
    if (typeof idempotencyKey === 'string' && !/[A-Za-z]/.test(idempotencyKey)) this.guard(idempotencyKey, 'Idempotency-Key')
    check(this.rt.validate.idempotencyKey, idempotencyKey, 'Idempotency-Key')
    const provider = this.rt.opts.provider
    if (provider === undefined) throw new NoProviderError()
    let owner = this.owner(false)
    if (owner === undefined) throw new BadInputError('the cart is empty')
    if (owner.startsWith('u')) {
      // Signed in while a guest checkout of this key was pending: finish that one, under the guest's cart.
      const anon = this.request.session.get(CART_FIELD)
      const read = typeof anon === 'string' ? { found: await this.rt.store.get(this.key(anon)) } : undefined
      const guest = read?.found?.value as StoredCart | undefined
      if (typeof anon === 'string' && guest?.checkout?.idempotencyKey === idempotencyKey) owner = anon
      else await this.mergeAnonymous(owner, read)
    }
    const cartKey = this.key(owner)
    const orderId = `ord_${hmacHex(this.rt.orderKey, owner, idempotencyKey).slice(0, 24)}`
    const orderKey = this.rt.store.key(orderId, 'order')

    // Placed already (this key, any instance, any time within orderTtlMs): the same order again.
    const existing = (await this.rt.store.get(orderKey))?.value as Order | undefined
    if (existing !== undefined) {
      await this.deliver(orderKey, existing)
      await this.markPlaced(owner, existing)
      return { orderId, status: 'placed', total: existing.amount, currency: existing.currency }
    }

    // 1. open -> checking out, amount frozen; or resume the record this key left behind.
    const anchor = this.readAnchor(owner)
    let resumed = false
    let staleKey: string | undefined
    const started = await this.rt.store.update(cartKey, (cur): StoredCart | undefined => {
      const cart = cur as StoredCart | undefined
      if (cart === undefined) throw new BadInputError('the cart is empty')
      const c = cart.checkout
      if (c !== undefined && c.idempotencyKey === idempotencyKey) { resumed = true; return undefined }
      if (c !== undefined && c.state === 'checking_out') {
        // Stale: its client gave up (lost the key). Re-drive it with its own key: the provider charges at most once.
        if (Date.now() - c.startedAt > this.rt.opts.checkoutTimeoutMs) { staleKey = c.idempotencyKey; return undefined }
        throw new CheckoutInProgressError('in progress with another Idempotency-Key')
      }
      assertCheckoutReady(cart)
      verifyAnchor(cart, anchor)
      const { total, currency } = cartTotal(cart)
      const record: CheckoutRecord = {
        state: 'checking_out', idempotencyKey, orderId, amount: total, currency: currency as string, digest: cart.digest, startedAt: Date.now()
      }
      return { ...cart, checkout: record }
    }, { ttlMs: this.rt.opts.cartTtlMs }).catch((err: unknown) => {
      // Counted here, not in mutate: mutate may run more than once.
      if (isHandoffError(err, 'FST_HANDOFF_CART_HISTORY')) this.rt.metrics.historyRejected++
      throw err
    })
    if (staleKey !== undefined) {
      this.rt.metrics.checkoutsResumed++
      const earlier = await this.checkout(staleKey)
      // The cart is open again now (placed and emptied, or failed): this key's own checkout can start.
      if (earlier.status === 'placed') return earlier
      return await this.checkout(idempotencyKey)
    }
    const cart = started.value as StoredCart
    const record = cart.checkout as CheckoutRecord
    if (resumed) this.rt.metrics.checkoutsResumed++
    else this.rt.metrics.checkoutsStarted++
    if (record.state === 'failed') {
      return { orderId, status: 'failed', total: record.amount, currency: record.currency, reason: record.reason ?? 'declined' }
    }
    if (record.state === 'placed') {
      return { orderId, status: 'placed', total: record.amount, currency: record.currency }
    }

    // 2. charge, with the same idempotency key on every attempt: the provider charges once.
    let result: ChargeResult
    try {
      result = await provider.charge({ idempotencyKey: orderId, orderId, amount: record.amount, currency: record.currency, token: (cart.payment as PaymentMethod).token })
    } catch (err) {
      this.rt.metrics.chargesPending++
      this.request.log.warn({ orderId, err: err instanceof Error ? err.message : String(err) }, 'fastify-handoff: charge did not complete; the checkout stays open for a retry')
      throw new PaymentPendingError('provider unreachable or timed out')
    }
    if (result.status === 'declined') {
      await this.rt.store.update(cartKey, cur => {
        const c = (cur as StoredCart | undefined)?.checkout
        if (c?.orderId !== orderId || c.state !== 'checking_out') return undefined
        return { ...(cur as StoredCart), checkout: { ...c, state: 'failed', reason: result.reason } }
      }, { ttlMs: this.rt.opts.cartTtlMs })
      this.rt.metrics.checkoutsFailed++
      return { orderId, status: 'failed', total: record.amount, currency: record.currency, reason: result.reason }
    }

    // 3. the order, created once (create-if-absent); the instance that created it hands it to the application.
    const order: Order = {
      orderId,
      idempotencyKey,
      status: 'placed',
      items: cart.items,
      details: cart.details,
      payment: { brand: (cart.payment as PaymentMethod).brand, last4: (cart.payment as PaymentMethod).last4 },
      amount: record.amount,
      currency: record.currency,
      chargeId: result.chargeId,
      digest: record.digest,
      placedAt: Date.now(),
      // Whoever checks out now owns the order: after sign-in, the user (also for a guest checkout finished then).
      ownerTag: this.ownerTag(this.owner(false) ?? owner),
      delivered: this.rt.opts.onOrderPlaced === undefined
    }
    const created = await this.rt.store.update(orderKey, cur => cur === undefined ? order : undefined, { ttlMs: this.rt.opts.orderTtlMs })
    const placed = (created.value as Order | undefined) ?? order
    if (created.written) this.rt.metrics.ordersPlaced++
    await this.deliver(orderKey, placed)
    await this.markPlaced(owner, placed)
    return { orderId, status: 'placed', total: placed.amount, currency: placed.currency }
  }

  /**
   * Hands the order to the application until that succeeds once: called on every path that finds it undelivered
   * (at least once; a crash between the call and the flag repeats it, so applications deduplicate by orderId).
   */
  private async deliver (orderKey: string, order: Order): Promise<void> {
    const hook = this.rt.opts.onOrderPlaced
    if (hook === undefined || order.delivered) return
    await hook(order, this.request)
    await this.rt.store.update(orderKey, cur => cur === undefined || (cur as Order).delivered ? undefined : { ...(cur as Order), delivered: true },
      { ttlMs: this.rt.opts.orderTtlMs })
  }

  /** checking out -> placed: the cart is emptied, the record stays for retries of the same key. */
  private async markPlaced (owner: string, order: Order): Promise<void> {
    const now = Date.now()
    const r = await this.rt.store.update(this.key(owner), cur => {
      const cart = cur as StoredCart | undefined
      const c = cart?.checkout
      if (cart === undefined || c?.orderId !== order.orderId || c.state !== 'checking_out') return undefined
      const emptied = applyChange({ ...cart, checkout: undefined }, { op: 'clear' }, this.rt.digestKey, this.rt.limits, now)
      return { ...emptied, checkout: { ...c, state: 'placed', chargeId: order.chargeId } }
    }, { ttlMs: this.rt.opts.cartTtlMs })
    // Anchored only when it is this client's current cart: a guest checkout finished after sign-in is not (its seq
    // and digest under the user's tag would make the user's own cart look rolled back).
    if (r.value !== undefined && owner === this.owner(false)) this.setAnchor(owner, r.value as StoredCart)
  }

  private ownerTag (owner: string): string { return this.tag('order-owner', owner, 24) }

  async getOrder (orderId: string): Promise<Order | undefined> {
    const owner = this.owner(false)
    if (owner === undefined || !/^ord_[0-9a-f]{24}$/.test(orderId)) return undefined
    const order = (await this.rt.store.get(this.rt.store.key(orderId, 'order')))?.value as Order | undefined
    return order?.ownerTag === this.ownerTag(owner) ? order : undefined
  }

  private anchorTag (owner: string): string { return this.tag('anchor', owner, 12) }

  private setAnchor (owner: string, cart: StoredCart): void {
    const value = `${this.anchorTag(owner)}.${cart.seq}.${cart.digest.slice(0, 24)}`
    const { name, domain, partitioned, ...attributes } = this.rt.cookie
    this.reply.setCookie(name, this.rt.signer.sign(value), {
      ...attributes,
      ...(domain !== undefined ? { domain } : {}),
      ...(partitioned ? { partitioned } : {}),
      maxAge: Math.floor(this.rt.opts.cartTtlMs / 1000)
    })
  }

  /** The seq and digest this client last saw of this owner's cart; undefined when absent, foreign or tampered. */
  private readAnchor (owner: string): { seq: number, digest: string } | undefined {
    const raw = this.request.cookies?.[this.rt.cookie.name]
    if (raw === undefined) return undefined
    const u = this.rt.signer.unsign(raw)
    if (!u.valid || u.value === null) return undefined
    const [tag, seq, digest] = u.value.split('.')
    if (tag !== this.anchorTag(owner) || digest === undefined) return undefined
    const n = Number(seq)
    return Number.isSafeInteger(n) && n >= 0 ? { seq: n, digest } : undefined
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
      properties: { charge: { typeof: 'function' } },
      description: 'an object with a charge({ idempotencyKey, orderId, amount, currency, token }) method'
    },
    onOrderPlaced: { typeof: 'function', description: 'a function (order, request)' },
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
  const ring = fastify.handoff.keyRing
  const ajv = new Ajv({ allErrors: false, strict: true })
  const rt: Runtime = {
    store: fastify.handoff.store,
    opts: {
      ...opts,
      cartTtlMs: opts.cartTtlMs ?? 30 * 86_400_000,
      orderTtlMs: opts.orderTtlMs ?? 90 * 86_400_000,
      checkoutTimeoutMs: opts.checkoutTimeoutMs ?? 600_000
    },
    cookie,
    limits,
    // The chain, owner tags and order ids must agree on every instance across key rotations: the oldest secret's.
    digestKey: ring.deriveOldest('cart-digest'),
    ownerKey: ring.deriveOldest('cart-owner'),
    orderKey: ring.deriveOldest('order-id'),
    signer: new Signer(ring.derive('cart-anchor')),
    validate: {
      item: ajv.compile(SCHEMAS.item),
      details: ajv.compile(SCHEMAS.details),
      payment: ajv.compile(SCHEMAS.payment),
      idempotencyKey: ajv.compile(SCHEMAS.idempotencyKey)
    },
    metrics: { changes: 0, merges: 0, checkoutsStarted: 0, checkoutsResumed: 0, ordersPlaced: 0, checkoutsFailed: 0, chargesPending: 0, cardNumbersRefused: 0, historyRejected: 0 }
  }
  // Keep the anonymous cart id when the session is regenerated at login, so it can be merged.
  fastify.handoffSessions.keepOnRegenerate(CART_FIELD)

  fastify.decorate('handoffCart', {
    metrics: rt.metrics,
    getOrder: async (orderId: string) => {
      if (!/^ord_[0-9a-f]{24}$/.test(orderId)) return undefined
      return (await rt.store.get(rt.store.key(orderId, 'order')))?.value as Order | undefined
    },
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
    (request as unknown as Record<symbol, RequestCart>)[kCart] = new RequestCart(rt, request, reply)
  })
}

/** Carts and purchases that survive failover. Needs fastify-handoff/store and fastify-handoff/auth-session. */
export const cart = fp(cartPlugin, {
  fastify: '5.x',
  name: 'fastify-handoff/cart',
  dependencies: ['fastify-handoff/store', 'fastify-handoff/auth-session']
})
export default cart
