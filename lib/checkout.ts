import { createHash, createHmac, randomBytes } from 'node:crypto'
import {
  applyChange, assertCheckoutReady, cartTotal, emptyCart, refuseCardNumbers, verifyAnchor,
  CheckoutInProgressError, type CartChange, type CartItem, type CartLimits, type CheckoutRecord, type Order,
  type PaymentMethod, type PurchaseDetails, type StoredCart
} from './cart.js'
import {
  BadInputError, CartMovedError, CheckoutLostError, IdempotencyKeyReusedError, NoProviderError, PaymentPendingError, isHandoffError
} from './errors.js'
import type { Collection } from './collection.js'
import type { KeyRing } from './seal.js'
import type { Durability, TieredStore, UpdateResult } from './tiered-store.js'

/**
 * The cart and checkout state machine, framework-free (plugins/cart.ts is the Fastify glue around it).
 *
 * Names of stored state never depend on a secret: they are SHA-256 over a fixed namespace, a purpose and the id
 * (`stableName`), so rotating the key ring changes what protects entries (seals, cookie MACs) and never what names
 * them. Names derived by earlier versions from the ring's oldest secret (`LegacyNames`) are still read, once, and moved.
 *
 * Checkout: `open -> checking out -> placed | failed`, exactly once per (owner, Idempotency-Key). Before the provider
 * is called a durable checkout record (amount, currency, items, order id, key) exists apart from the cart, with its
 * own durability; if everything is lost anyway (Redis restarted empty after the charge), a retry is never answered
 * "the cart is empty": the charge is recovered through `provider.lookup`, or reported through `onCheckoutLost`, and
 * the client gets FST_HANDOFF_CHECKOUT_LOST.
 */

/** The fixed namespace of every stable name. Changing it renames all stored carts and orders: never do. */
export const IDENTITY_NAMESPACE = 'fastify-handoff/v1'

/** Who a cart belongs to: a signed-in user (their application user id) or a guest (a random id kept in the session). */
export interface Owner { kind: 'user' | 'guest', id: string }

/** An owner as stored state names it. `name` is what carts and order ids are keyed by; `userId` when known. */
export interface OwnerRef { kind: Owner['kind'], name: string, userId?: string }

/** Hex SHA-256 of the namespace, a purpose and parts, newline-separated: the same on every instance, no secret. */
export function stableName (purpose: string, ...parts: string[]): string {
  const h = createHash('sha256').update(IDENTITY_NAMESPACE).update('\n').update(purpose)
  for (const p of parts) h.update('\n').update(p)
  return h.digest('hex')
}

const GUEST_ID = /^a[A-Za-z0-9_-]{32}$/
const NAME = /^(u[0-9a-f]{40}|a[A-Za-z0-9_-]{32})$/
const ORDER_ID = /^ord_[0-9a-f]{24}$/

export function ownerRef (owner: Owner): OwnerRef {
  if (owner.kind === 'user') return { kind: 'user', name: `u${stableName('cart-owner', 'user', owner.id).slice(0, 40)}`, userId: owner.id }
  return { kind: 'guest', name: owner.id }
}

export function newGuestId (): string { return `a${randomBytes(24).toString('base64url')}` }

/** The order id of one checkout: the same on every instance and after any rotation or data loss. */
export function orderIdFor (ownerName: string, idempotencyKey: string): string {
  return `ord_${stableName('order-id', ownerName, idempotencyKey).slice(0, 24)}`
}

/** Recorded in each order: only its owner's requests read it back. */
export function ownerTagFor (ownerName: string): string { return stableName('order-owner', ownerName).slice(0, 24) }

/** The running digest's HMAC key: public and fixed (the chain detects rollbacks and forks; it is no secret). */
export const CHAIN_KEY = createHash('sha256').update(`${IDENTITY_NAMESPACE}\ncart-digest`).digest()

function hmacHex (key: Buffer, ...parts: string[]): string {
  const h = createHmac('sha256', key)
  for (const p of parts) h.update(p).update('\n')
  return h.digest('hex')
}

/**
 * Names that versions before stable names derived with the ring's oldest secret, computed with every secret of the
 * ring (any of them may have been the oldest when the entry was written): read on a miss under the stable name and
 * moved. Once the secret that made them is dropped from the ring, they cannot be found any more.
 */
export class LegacyNames {
  private readonly ownerKeys: Buffer[]
  private readonly orderKeys: Buffer[]
  constructor (ring: KeyRing) {
    this.ownerKeys = ring.derive('cart-owner')
    this.orderKeys = ring.derive('order-id')
  }

  /** The owner names a user's cart had, one per secret; a guest's id never depended on a secret. */
  owners (ref: OwnerRef): string[] {
    if (ref.kind === 'guest') return [ref.name]
    if (ref.userId === undefined) return []
    const userId = ref.userId
    return this.ownerKeys.map(k => `u${hmacHex(k, 'user', userId).slice(0, 40)}`)
  }

  orderIds (ref: OwnerRef, idempotencyKey: string): string[] {
    const owners = this.owners(ref)
    if (owners.length === 0) return []
    const ids = new Set<string>()
    this.orderKeys.forEach((k, i) => {
      for (const o of ref.kind === 'guest' ? owners : [owners[i] as string]) ids.add(`ord_${hmacHex(k, o, idempotencyKey).slice(0, 24)}`)
    })
    return [...ids]
  }

  ownerTags (ref: OwnerRef): Set<string> { return this.tags(ref, 'order-owner', 24) }
  anchorTags (ref: OwnerRef): Set<string> { return this.tags(ref, 'anchor', 12) }

  private tags (ref: OwnerRef, purpose: string, length: number): Set<string> {
    const owners = this.owners(ref)
    const out = new Set<string>()
    if (owners.length === 0) return out
    this.ownerKeys.forEach((k, i) => {
      for (const o of ref.kind === 'guest' ? owners : [owners[i] as string]) out.add(hmacHex(k, purpose, o).slice(0, length))
    })
    return out
  }
}

// ------------------------------------------------------------------------------------------------ stored shapes

/** The durable checkout record, written before the provider is called (kind 'checkout', keyed by order id). */
export interface CheckoutEntry {
  orderId: string
  idempotencyKey: string
  owner: string
  amount: number
  currency: string
  items: CartItem[]
  details: PurchaseDetails
  /** The provider token (needed to charge if the cart is gone) and its display fields. Sealed at rest, never shown. */
  payment: PaymentMethod
  digest: string
  startedAt: number
  /** Set when the provider declined this charge: the key cannot be reused for a different cart. */
  declined?: string
}

/** A lost checkout reported to the application (kind 'checkoutlost'): it is reported once. */
interface LostMark { reportedAt: number, idempotencyKey: string }

class ShapeError extends Error {}
function need (ok: boolean, what: string): void { if (!ok) throw new ShapeError(`stored value: ${what}`) }
const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)
const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v)
const isStr = (v: unknown): v is string => typeof v === 'string'

function checkItems (v: unknown): void {
  need(Array.isArray(v), 'items is not an array')
  for (const it of v as unknown[]) {
    need(isObj(it) && isStr(it.sku) && isInt(it.quantity) && isInt(it.unitPrice) && isStr(it.currency), 'malformed item')
  }
}

function checkPayment (v: unknown): void {
  need(isObj(v) && isStr(v.brand) && isStr(v.last4), 'malformed payment')
}

export function parseCart (v: unknown): StoredCart {
  need(isObj(v), 'cart is not an object')
  const c = v as Record<string, unknown>
  checkItems(c.items)
  need(isObj(c.details) && isInt(c.seq) && isStr(c.digest) && Array.isArray(c.chain) && isInt(c.createdAt) && isInt(c.updatedAt), 'malformed cart')
  for (const l of c.chain as unknown[]) need(isObj(l) && isInt(l.seq) && isStr(l.digest), 'malformed chain link')
  if (c.payment !== undefined) { checkPayment(c.payment); need(isStr((c.payment as Record<string, unknown>).token), 'payment without token') }
  if (c.movedTo !== undefined) need(isStr(c.movedTo) && NAME.test(c.movedTo), 'malformed movedTo')
  // Only `true` is written; `false` (a later writer's way to say "not pristine") reads as not pristine, not as corrupt.
  need(c.pristine === undefined || typeof c.pristine === 'boolean', 'malformed pristine')
  const prev = c.previous
  if (prev !== undefined) need(isObj(prev) && isStr(prev.guest) && GUEST_ID.test(prev.guest) && (prev.key === undefined || isStr(prev.key)), 'malformed previous')
  if (c.merged !== undefined) need(isObj(c.merged), 'malformed merged')
  const r = c.checkout
  if (r !== undefined) {
    need(isObj(r) && (r.state === 'checking_out' || r.state === 'placed' || r.state === 'failed') && isStr(r.idempotencyKey) &&
      isStr(r.orderId) && isInt(r.amount) && isStr(r.currency) && isStr(r.digest) && isInt(r.startedAt), 'malformed checkout record')
  }
  return v as unknown as StoredCart
}

export function parseOrder (v: unknown): Order {
  need(isObj(v), 'order is not an object')
  const o = v as Record<string, unknown>
  need(isStr(o.orderId) && ORDER_ID.test(o.orderId) && isStr(o.idempotencyKey) && o.status === 'placed' && isObj(o.details) &&
    isInt(o.amount) && isStr(o.currency) && isStr(o.chargeId) && isStr(o.digest) && isInt(o.placedAt) && isStr(o.ownerTag) &&
    typeof o.delivered === 'boolean', 'malformed order')
  checkItems(o.items)
  checkPayment(o.payment)
  return v as unknown as Order
}

export function parseCheckoutEntry (v: unknown): CheckoutEntry {
  need(isObj(v), 'checkout record is not an object')
  const e = v as Record<string, unknown>
  need(isStr(e.orderId) && isStr(e.idempotencyKey) && isStr(e.owner) && isInt(e.amount) && isStr(e.currency) && isObj(e.details) &&
    isStr(e.digest) && isInt(e.startedAt), 'malformed checkout record')
  checkItems(e.items)
  checkPayment(e.payment)
  need(isStr((e.payment as Record<string, unknown>).token), 'payment without token')
  need(e.declined === undefined || isStr(e.declined), 'malformed declined')
  return v as unknown as CheckoutEntry
}

function parseLostMark (v: unknown): LostMark {
  need(isObj(v) && isInt(v.reportedAt) && isStr(v.idempotencyKey), 'malformed lost-checkout mark')
  return v as unknown as LostMark
}

// ------------------------------------------------------------------------------------------------- public types

/** The application's payment provider. It must deduplicate by `idempotencyKey` (every real provider does). */
export interface PaymentProvider {
  charge: (req: ChargeRequest) => Promise<ChargeResult>
  /**
   * Optional: the charge made earlier with this `idempotencyKey` (the one `charge` got), undefined when none was
   * made. With it, a checkout whose records the store lost (Redis restarted empty after the charge) is recovered as
   * an order instead of being reported through `onCheckoutLost`.
   */
  lookup?: (idempotencyKey: string) => Promise<ChargeLookup | undefined>
}

export interface ChargeRequest {
  /** Stable across retries of one checkout, on any instance, after any key rotation: the provider charges once per key. */
  idempotencyKey: string
  orderId: string
  amount: number
  currency: string
  token: string
}

export type ChargeResult = { status: 'succeeded', chargeId: string } | { status: 'declined', reason: string }

/** What `provider.lookup` reports of a successful charge. */
export interface ChargeLookup { chargeId: string, amount: number, currency: string }

/** A checkout whose records the store lost after it may have charged: handed to `onCheckoutLost` once. */
export interface LostCheckout {
  orderId: string
  /** The client's Idempotency-Key. */
  idempotencyKey: string
  /** The key the provider got (look the charge up by it). */
  providerKey: string
  owner: OwnerRef
  detectedAt: number
}

export interface CheckoutResult {
  orderId: string
  /** An unanswered charge is not a result: checkout() throws FST_HANDOFF_PAYMENT_PENDING (503) instead. */
  status: 'placed' | 'failed'
  total: number
  currency: string
  reason?: string
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
  /** Checkouts whose records were lost, recovered from the provider's charge (`provider.lookup`). */
  ordersRecovered: number
  /** Checkouts whose records were lost and that could not be recovered: reported through `onCheckoutLost`. */
  checkoutsLost: number
  /** Carts and orders found under a name derived from a secret (before stable names) and moved. */
  legacyMoved: number
  /** "add"s (and other changes) that arrived at a guest cart already merged at sign-in: applied to the user's cart. */
  changesForwarded: number
}

/** What the cart needs of one request: its session's owner fields and the anchor cookie, nothing of Fastify. */
export interface CartRequest<R> {
  /** The Fastify request (or whatever the glue passes), handed to the hooks. */
  readonly request: R
  userId: () => string | undefined
  guestId: () => string | undefined
  setGuestId: (id: string) => void
  forgetGuestId: () => void
  /** The anchor cookie's value, its signature checked; undefined when absent or invalid. */
  anchor: () => string | undefined
  /**
   * Sets the anchor cookie. `maxAgeMs`: how long the cart it names still lives (the cookie must not outlive it: an
   * anchor naming a guest whose cart is gone is taken as a sign of lost data); default the cart lifetime.
   */
  setAnchor: (value: string, maxAgeMs?: number) => void
  warn: (obj: object, msg: string) => void
}

export interface CartConfig<R> {
  store: TieredStore
  ring: KeyRing
  limits: CartLimits
  cartTtlMs: number
  orderTtlMs: number
  checkoutTimeoutMs: number
  /** Replicas orders and checkout records wait for (default: the store's durability). */
  orderDurability?: Durability
  provider?: PaymentProvider
  onOrderPlaced?: (order: Order, request: R) => Promise<void> | void
  onCheckoutLost?: (lost: LostCheckout, request: R) => Promise<void> | void
}

/** How long a guest cart merged at sign-in stays as a forwarding mark for requests still in flight. */
const MOVED_TTL_MS = 86_400_000

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

/** Thrown inside firstCheckout's mutator: the cart is not an open, ready, pristine one; the full checkout path decides. */
class NotFirst extends Error { constructor () { super('not a first checkout') } }

/** The checkout record of a cart frozen now: amount and currency of its items, its digest. */
function frozenRecord (cart: StoredCart, idempotencyKey: string, orderId: string, lookupSkipped: boolean): CheckoutRecord {
  const { total, currency } = cartTotal(cart)
  return {
    state: 'checking_out',
    idempotencyKey,
    orderId,
    amount: total,
    currency: currency as string,
    digest: cart.digest,
    startedAt: Date.now(),
    ...(lookupSkipped ? { lookupSkipped: true } : {})
  }
}

/** Thrown inside a mutator: the guest cart was merged into `to` at sign-in, the change goes there. */
class Forward extends Error { constructor (readonly to: string) { super('forwarded') } }

/** Carts, checkouts and orders of one store. One per plugin registration; every method takes the request's view. */
export class Carts<R> {
  readonly metrics: CartMetrics = Object.fromEntries([
    'changes', 'merges', 'checkoutsStarted', 'checkoutsResumed', 'ordersPlaced', 'checkoutsFailed', 'chargesPending', 'cardNumbersRefused',
    'historyRejected', 'ordersRecovered', 'checkoutsLost', 'legacyMoved', 'changesForwarded'
  ].map(k => [k, 0])) as unknown as CartMetrics

  private readonly carts: Collection<StoredCart>
  private readonly orders: Collection<Order>
  private readonly checkouts: Collection<CheckoutEntry>
  private readonly lost: Collection<LostMark>
  private readonly legacy: LegacyNames
  private readonly durable: { durability?: Durability }

  constructor (private readonly cfg: CartConfig<R>) {
    const store = cfg.store
    this.carts = store.collection('cart', { parse: parseCart })
    this.orders = store.collection('order', { parse: parseOrder })
    this.checkouts = store.collection('checkout', { parse: parseCheckoutEntry })
    this.lost = store.collection('checkoutlost', { parse: parseLostMark })
    this.legacy = new LegacyNames(cfg.ring)
    // Long-lived: what is read while a rotation overlaps must still open after the old key is dropped.
    store.resealOnRead('cart', 'order', 'checkout', 'checkoutlost')
    this.durable = cfg.orderDurability === undefined ? {} : { durability: cfg.orderDurability }
  }

  /** Any order by id, whoever placed it (back office). */
  async order (orderId: string): Promise<Order | undefined> {
    if (!ORDER_ID.test(orderId)) return undefined
    return (await this.orders.get(orderId))?.value
  }

  /** Card numbers are refused before anything else looks at the input, and never echoed or logged. */
  guard (input: unknown, what: string): void {
    try {
      refuseCardNumbers(input, what)
    } catch (err) {
      this.metrics.cardNumbersRefused++
      throw err
    }
  }

  /** The owner: the signed-in user, else the guest cart id kept in the session (made on the first write). */
  owner (rq: CartRequest<R>, create: boolean): OwnerRef | undefined {
    const user = rq.userId()
    if (user !== undefined) return ownerRef({ kind: 'user', id: user })
    const guest = rq.guestId()
    if (guest !== undefined && GUEST_ID.test(guest)) return ownerRef({ kind: 'guest', id: guest })
    if (!create) return undefined
    const id = newGuestId()
    rq.setGuestId(id)
    return ownerRef({ kind: 'guest', id })
  }

  // ------------------------------------------------------------------------------------------------- the cart

  async get (rq: CartRequest<R>): Promise<CartView> {
    const owner = this.owner(rq, false)
    if (owner === undefined) return view(emptyCart(Date.now()), 'new')
    // The legacy move first: merging first would create the cart under the stable name and orphan the old one.
    if (owner.kind === 'user') { await this.load(owner); await this.mergeGuest(rq, owner) }
    const found = await this.load(owner)
    // Gone although this client saw it hold something: rolled back (or expired), flag it for review.
    if (found === undefined) return view(emptyCart(Date.now()), 'new', (this.readAnchor(rq, owner)?.seq ?? 0) > 0)
    return view(found.value, found.source, !this.advanceAnchor(rq, owner, found.value, found.expiresAt), found.degraded)
  }

  async acknowledge (rq: CartRequest<R>): Promise<CartView> {
    const owner = this.owner(rq, false)
    if (owner === undefined) return view(emptyCart(Date.now()), 'new')
    const found = await this.load(owner)
    const cart = found?.value ?? emptyCart(Date.now())
    this.setAnchor(rq, owner, cart, found?.expiresAt)
    return view(cart, found?.source ?? 'new')
  }

  async change (rq: CartRequest<R>, change: CartChange): Promise<CartView> {
    const known = this.owner(rq, false)
    // A guest id minted now names nothing yet: the cart created under it starts pristine (see firstCheckout). Unless
    // the anchor names another guest's cart with changes: the session was lost, and a checkout of that cart may be
    // retried from this one (see earlierGuest). That cart is remembered instead, and this one is not pristine.
    const minted = known === undefined
    const anchored = minted ? this.anchorOwner(rq) : undefined
    const previous = anchored?.kind === 'guest' && GUEST_ID.test(anchored.name) && (this.readAnchor(rq, anchored)?.seq ?? 0) > 0
      ? { guest: anchored.name }
      : undefined
    let owner = known ?? this.owner(rq, true) as OwnerRef
    if (owner.kind === 'user') {
      await this.load(owner) // moves a cart kept under a name from before stable names (before the merge creates one)
      await this.mergeGuest(rq, owner)
    }
    const now = Date.now()
    let r: UpdateResult<StoredCart>
    try {
      r = await this.carts.update(owner.name, (cur, info) => {
        // A guest cart merged at sign-in while this request ran: the change belongs to the user's cart now.
        if (cur?.movedTo !== undefined) throw new Forward(cur.movedTo)
        // Deleted (by a version without forwarding marks): recreating it would acknowledge a change nobody sees.
        if (cur === undefined && info.deleted && owner.kind === 'guest') throw new CartMovedError()
        const base = cur ?? (!minted ? emptyCart(now) : previous !== undefined ? { ...emptyCart(now), previous } : { ...emptyCart(now), pristine: true as const })
        return applyChange(base, change, CHAIN_KEY, this.cfg.limits, now)
      }, { ttlMs: this.cfg.cartTtlMs })
    } catch (err) {
      if (!(err instanceof Forward)) throw err
      owner = { kind: 'user', name: err.to }
      r = await this.carts.update(owner.name, cur => applyChange(cur ?? emptyCart(now), change, CHAIN_KEY, this.cfg.limits, now),
        { ttlMs: this.cfg.cartTtlMs })
      this.metrics.changesForwarded++
    }
    this.metrics.changes++
    const cart = r.value as StoredCart
    return view(cart, 'repository', !this.advanceAnchor(rq, owner, cart))
  }

  /**
   * The owner's cart; for a user whose cart is not under its stable name, the one under a name from before stable
   * names (derived with any secret of the ring) is moved there first.
   */
  private async load (owner: OwnerRef): Promise<{ value: StoredCart, source: 'local' | 'repository', degraded: boolean, expiresAt?: number } | undefined> {
    const found = await this.carts.get(owner.name)
    if (found !== undefined || owner.kind !== 'user') return found
    for (const old of this.legacy.owners(owner)) {
      const was = await this.carts.get(old)
      if (was === undefined) continue
      const moved = await this.carts.update(owner.name, cur => cur === undefined ? was.value : undefined, { ttlMs: this.cfg.cartTtlMs })
      // Not moved (a racer created the cart under the stable name first): the old cart stays, nothing of it is lost.
      if (moved.written) {
        await this.carts.delete(old)
        this.metrics.legacyMoved++
      }
      return { value: moved.value as StoredCart, source: 'repository', degraded: false }
    }
    return undefined
  }

  /**
   * After sign-in: the guest cart still named in the session joins the user's, once. First the guest cart is marked
   * as moved to the user (compare-and-set: a guest change racing with it either lands before and is merged, or sees
   * the mark and is applied to the user's cart), then its items are merged (recorded, so a retry does not add twice).
   */
  private async mergeGuest (rq: CartRequest<R>, user: OwnerRef): Promise<void> {
    const guest = rq.guestId()
    if (guest === undefined) return
    if (!GUEST_ID.test(guest)) { rq.forgetGuestId(); return }
    const found = (await this.carts.get(guest))?.value
    // A guest checkout still running stays the guest's: merging it would re-key its order and charge twice.
    // It finishes (retry with the same Idempotency-Key, see checkout) and the emptied cart merges afterwards.
    if (found?.checkout?.state === 'checking_out') return
    let from = found
    if (found !== undefined && found.movedTo === undefined) {
      const marked = await this.carts.update(guest, cur => {
        if (cur === undefined || cur.movedTo !== undefined || cur.checkout?.state === 'checking_out') return undefined
        return { ...cur, movedTo: user.name }
      }, { ttlMs: Math.min(MOVED_TTL_MS, this.cfg.cartTtlMs) })
      from = marked.value
      if (from?.checkout?.state === 'checking_out') return
    }
    if (from !== undefined && from.movedTo === user.name && from.items.length > 0) {
      const now = Date.now()
      const merge: CartChange = { op: 'merge', from: guest, fromSeq: from.seq, items: from.items }
      const r = await this.carts.update(user.name, cur => cur?.merged?.[guest] !== undefined
        ? undefined // merged already (a retried sign-in)
        : applyChange(cur ?? emptyCart(now), merge, CHAIN_KEY, this.cfg.limits, now), { ttlMs: this.cfg.cartTtlMs })
      if (r.written) this.metrics.merges++
    }
    rq.forgetGuestId()
  }

  // --------------------------------------------------------------------------------------------- the anchor

  /** Moves the client's anchor to `cart` if the cart extends what it last saw; otherwise leaves it and says false. */
  private advanceAnchor (rq: CartRequest<R>, owner: OwnerRef, cart: StoredCart, expiresAt?: number): boolean {
    try {
      verifyAnchor(cart, this.readAnchor(rq, owner))
    } catch {
      return false
    }
    this.setAnchor(rq, owner, cart, expiresAt)
    return true
  }

  /**
   * `expiresAt`: when the stored cart expires, if this is not a write that just renewed it. A read re-sends the anchor
   * with what is left of the cart's life, not a full lifetime: a cookie that outlived its cart would name a guest
   * whose cart is gone, which a later checkout takes for lost data (see earlierGuest).
   */
  private setAnchor (rq: CartRequest<R>, owner: OwnerRef, cart: StoredCart, expiresAt?: number): void {
    const left = expiresAt === undefined || expiresAt <= 0 ? undefined : Math.max(0, expiresAt - Date.now())
    rq.setAnchor(`2.${owner.kind === 'user' ? 'u' : 'g'}.${owner.name}.${cart.seq}.${cart.digest.slice(0, 24)}`, left)
  }

  /** The seq and digest this client last saw of this owner's cart; undefined when absent, foreign or malformed. */
  private readAnchor (rq: CartRequest<R>, owner: OwnerRef): { seq: number, digest: string } | undefined {
    const parts = rq.anchor()?.split('.')
    if (parts === undefined) return undefined
    let seq: string | undefined
    let digest: string | undefined
    if (parts.length === 5 && parts[0] === '2') {
      if (parts[2] !== owner.name) return undefined
      ;[,,, seq, digest] = parts
    } else if (parts.length === 3) {
      // Written by a version before stable names: its owner tag was derived with one of the ring's secrets.
      if (!this.legacy.anchorTags(owner).has(parts[0] as string)) return undefined
      ;[, seq, digest] = parts
    } else {
      return undefined
    }
    const n = Number(seq)
    return digest !== undefined && Number.isSafeInteger(n) && n >= 0 ? { seq: n, digest } : undefined
  }

  /** The owner the anchor cookie names: after the store lost the session, the only trace of whose checkout it was. */
  private anchorOwner (rq: CartRequest<R>): OwnerRef | undefined {
    const parts = rq.anchor()?.split('.')
    if (parts?.length !== 5 || parts[0] !== '2' || !NAME.test(parts[2] as string)) return undefined
    return { kind: parts[1] === 'u' ? 'user' : 'guest', name: parts[2] as string }
  }

  // ----------------------------------------------------------------------------------------------- checkout

  async checkout (rq: CartRequest<R>, idempotencyKey: string): Promise<CheckoutResult> {
    if (this.cfg.provider === undefined) throw new NoProviderError()
    let owner = this.owner(rq, false)
    // No session owner (the store lost the session too): the anchor cookie still says whose cart this client had.
    const fromAnchor = owner === undefined
    owner ??= this.anchorOwner(rq)
    if (owner === undefined) throw new BadInputError('the cart is empty')
    if (owner.kind === 'user' && !fromAnchor) {
      // Signed in while a guest checkout of this key was pending: finish that one, under the guest's cart.
      const guest = rq.guestId()
      const pending = guest !== undefined && GUEST_ID.test(guest) ? (await this.carts.get(guest))?.value : undefined
      if (guest !== undefined && pending?.checkout?.idempotencyKey === idempotencyKey) owner = { kind: 'guest', name: guest }
      else { await this.load(owner); await this.mergeGuest(rq, owner) } // the legacy move before the merge, as in get
    }

    const orderId = orderIdFor(owner.name, idempotencyKey)
    // A guest's cart is read first: when it is pristine, its first checkout needs no order lookup (firstCheckout).
    let early = owner.kind === 'guest' && !fromAnchor ? { found: await this.load(owner) } : undefined
    if (early?.found?.value.pristine === true) {
      const first = await this.firstCheckout(rq, owner, idempotencyKey, orderId)
      if (first !== undefined) return first
      early = undefined // it was not pristine after all, or it changed: read it again below
    }

    // Placed already (this key, any instance, any time within orderTtlMs): the same order again.
    const placed = await this.findOrder(owner, idempotencyKey)
    if (placed !== undefined) return await this.finish(rq, owner, placed)

    const found = early !== undefined ? early.found : await this.load(owner)
    const cart = found?.value
    const anchor = this.readAnchor(rq, owner)
    if (fromAnchor) {
      // Not signed in (any more): the anchor only lets a retry finish or recover what this key started, never start a
      // checkout of a cart this request does not own now (a shared computer after sign-out).
      const recovered = await this.recover(rq, owner, idempotencyKey, orderId, cart === undefined && (anchor?.seq ?? 0) > 0)
      if (recovered !== undefined) return recovered
      throw new BadInputError('this session has no cart to check out (sign in again)')
    }
    if (owner.kind === 'user' && cart?.checkout?.idempotencyKey !== idempotencyKey) {
      // A guest checkout of this key (a guest merged into this cart, or the one the anchor names) may have charged
      // with its reply lost and its cart rolled back: resume it under its own order id, never charge again.
      const earlier = await this.guestCheckout(rq, cart, idempotencyKey)
      if (earlier !== undefined) return earlier
    }
    if (owner.kind === 'guest' && cart?.previous !== undefined && cart.checkout?.idempotencyKey !== idempotencyKey) {
      // This guest id was minted after the session was lost: the key may be a retry of the earlier guest's checkout.
      const earlier = await this.earlierGuest(rq, owner, cart.previous, idempotencyKey)
      if (earlier !== undefined) return earlier
    }
    if (cart?.checkout?.idempotencyKey !== idempotencyKey) {
      // No trace of this key in the cart. If the cart is gone or is not what this client last saw, the store may have
      // lost this checkout after the provider charged: recover it before anything else.
      const suspicious = cart === undefined || cart.items.length === 0 || !anchorVerifies(cart, anchor)
      if (suspicious) {
        const recovered = await this.recover(rq, owner, idempotencyKey, orderId, cart === undefined && (anchor?.seq ?? 0) > 0)
        if (recovered !== undefined) return recovered
      }
      if (cart === undefined) throw new BadInputError('the cart is empty')
    }

    // 1. open -> checking out, amount frozen; or resume the record this key left behind.
    let resumed = false
    let staleKey: string | undefined
    const started = await this.carts.update(owner.name, (cur): StoredCart | undefined => {
      if (cur === undefined) throw new BadInputError('the cart is empty')
      const c = cur.checkout
      if (c !== undefined && c.idempotencyKey === idempotencyKey) { resumed = true; return undefined }
      // Merged into the user's cart at sign-in while this request ran: its items are the user's to check out now.
      if (cur.movedTo !== undefined) throw new CartMovedError()
      if (c !== undefined && c.state === 'checking_out') {
        // Stale: its client gave up (lost the key). Re-drive it with its own key: the provider charges at most once.
        if (Date.now() - c.startedAt > this.cfg.checkoutTimeoutMs) { staleKey = c.idempotencyKey; return undefined }
        throw new CheckoutInProgressError('in progress with another Idempotency-Key')
      }
      assertCheckoutReady(cur)
      verifyAnchor(cur, anchor)
      return { ...cur, checkout: frozenRecord(cur, idempotencyKey, orderId, false) }
    }, { ttlMs: this.cfg.cartTtlMs }).catch((err: unknown) => {
      // Counted here, not in mutate: mutate may run more than once.
      if (isHandoffError(err, 'FST_HANDOFF_CART_HISTORY')) this.metrics.historyRejected++
      throw err
    })
    if (staleKey !== undefined) {
      this.metrics.checkoutsResumed++
      const earlier = await this.checkout(rq, staleKey)
      // The cart is open again now (placed and emptied, or failed): this key's own checkout can start.
      if (earlier.status === 'placed') return earlier
      return await this.checkout(rq, idempotencyKey)
    }
    const now = started.value as StoredCart
    const record = now.checkout as CheckoutRecord
    if (resumed) this.metrics.checkoutsResumed++
    else this.metrics.checkoutsStarted++
    if (record.state === 'failed') {
      return { orderId: record.orderId, status: 'failed', total: record.amount, currency: record.currency, reason: record.reason ?? 'declined' }
    }
    if (record.state === 'placed') return { orderId: record.orderId, status: 'placed', total: record.amount, currency: record.currency }

    const { frozen } = await this.writeRecord(owner, idempotencyKey, now, record)
    return await this.chargeRecord(rq, owner, record, frozen)
  }

  /**
   * The first checkout of a pristine guest cart: no order lookup before the cart is frozen, so four repository calls
   * (freeze the cart, the durable record, the order, the cart placed) instead of those plus one order read per key
   * of the ring (the stable order id and each id from before stable names).
   *
   * Why the lookup can go: it answers "was an order placed for this owner and key already?", and for a pristine cart
   * the answer is no without asking. `pristine` is set only on a cart created in the request that minted its guest
   * id (192 random bits: nothing was ever stored under that name, no order under its stable id nor under any id from
   * before stable names, no checkout record, no lost-checkout mark), and this compare-and-set drops it in the same
   * write that freezes the cart for the first checkout. Every order, checkout record and lost mark of an owner comes
   * after such a freeze of that owner's cart (placed orders: freeze, record, charge, order; recovered orders and lost
   * marks only when the cart has no trace of the key, after the freeze of a cart that is then gone). A cart recreated
   * later under the same guest id (expired, lost with Redis's data) is created by a request that did not mint the id:
   * it is not pristine and takes the full path. The decision is made inside the compare-and-set, on the stored cart:
   * a stale local copy that still says pristine is refused and re-decided (see TieredStore.update).
   *
   * What could still make the flag lie: a write that cleared it lost while a later record or order survived (Redis
   * Cluster: the cart and the order id live in different slots, so a failover of the cart's shard can roll the freeze
   * back while the order's shard kept the record waited for by orderDurability), or an older instance that froze the
   * cart without knowing the flag. Then the record of this key is already there: its create-if-absent below returns
   * it instead of writing (the reply that refuses the write answers the question, no read), the freeze is taken back
   * and the full path decides, order lookup first, exactly as before. Should this instance stop in between, the
   * record stays marked `lookupSkipped`, and markPlaced does not empty the cart for an order placed from another
   * digest.
   *
   * undefined: the full path decides (the cart was not pristine, not ready, or anything else the full path answers).
   */
  private async firstCheckout (rq: CartRequest<R>, owner: OwnerRef, idempotencyKey: string, orderId: string): Promise<CheckoutResult | undefined> {
    const anchor = this.readAnchor(rq, owner)
    let started: UpdateResult<StoredCart>
    try {
      started = await this.carts.update(owner.name, (cur): StoredCart => {
        // Anything but an open, ready, pristine cart whose history verifies is left to the full path (refusals too:
        // it gives them the same answers as before).
        if (cur?.pristine !== true || cur.checkout !== undefined || cur.movedTo !== undefined) throw new NotFirst()
        try {
          assertCheckoutReady(cur)
          verifyAnchor(cur, anchor)
        } catch {
          throw new NotFirst()
        }
        const next: StoredCart = { ...cur, checkout: frozenRecord(cur, idempotencyKey, orderId, true) }
        delete next.pristine
        return next
      }, { ttlMs: this.cfg.cartTtlMs })
    } catch (err) {
      if (err instanceof NotFirst) return undefined
      throw err
    }
    const now = started.value as StoredCart
    const record = now.checkout as CheckoutRecord
    const { frozen, existed } = await this.writeRecord(owner, idempotencyKey, now, record)
    // A record of this very freeze (same start, same digest) was written by a retry of this key racing with this
    // request (it found the cart frozen and resumed it): that is no lie, go on as it does.
    if (existed && (frozen.startedAt !== record.startedAt || frozen.digest !== record.digest)) {
      // The flag lied (see above): this key left a record before. Taken back, the full path looks for the order first.
      await this.release(owner, record)
      return undefined
    }
    this.metrics.checkoutsStarted++
    return await this.chargeRecord(rq, owner, record, frozen)
  }

  /**
   * 2. The durable record, before any money moves (with the orders' durability): created from the frozen cart, or
   * the one found (a retry). `existed`: one was there already (the refused create-if-absent returned it).
   */
  private async writeRecord (owner: OwnerRef, idempotencyKey: string, cart: StoredCart, record: CheckoutRecord): Promise<{ frozen: CheckoutEntry, existed: boolean }> {
    const entry: CheckoutEntry = {
      orderId: record.orderId,
      idempotencyKey,
      owner: owner.name,
      amount: record.amount,
      currency: record.currency,
      items: cart.items,
      details: cart.details,
      payment: cart.payment as PaymentMethod,
      digest: record.digest,
      startedAt: record.startedAt
    }
    let existed = false
    // Found (a retry): with orderDurability it is written again, so that the replicas confirm it before money moves.
    const kept = await this.checkouts.update(entry.orderId, cur => { existed = cur !== undefined; return cur === undefined ? entry : this.rewrite(cur) },
      { ttlMs: this.cfg.orderTtlMs, ...this.durable })
    return { frozen: kept.value ?? entry, existed }
  }

  /** Charges what the durable record froze, unless it froze another cart that was declined. */
  private async chargeRecord (rq: CartRequest<R>, owner: OwnerRef, record: CheckoutRecord, frozen: CheckoutEntry): Promise<CheckoutResult> {
    const differs = frozen.digest !== record.digest || frozen.amount !== record.amount || frozen.currency !== record.currency
    if (differs && frozen.declined !== undefined) {
      // This key froze another cart, which was declined (the key reused after a decline): charging that one would
      // bill what is not in the cart. The record this request put in the cart is taken back, so the cart stays open
      // for a new key. (Not declined: that charge may have been taken, it is resumed as before, never charged twice.)
      await this.release(owner, record)
      throw new IdempotencyKeyReusedError()
    }
    return await this.charge(rq, owner, frozen, true)
  }

  /** Takes back the record this request put in the cart (while it is still there, unchanged): the cart is open again. */
  private async release (owner: OwnerRef, record: CheckoutRecord): Promise<void> {
    await this.carts.update(owner.name, cur => {
      const c = cur?.checkout
      if (cur === undefined || c?.orderId !== record.orderId || c.state !== 'checking_out' || c.digest !== record.digest) return undefined
      return { ...cur, checkout: undefined }
    }, { ttlMs: this.cfg.cartTtlMs })
  }

  /** The order or durable checkout entry this key left under a guest this user's cart merged, or the anchor names. */
  private async guestCheckout (rq: CartRequest<R>, cart: StoredCart | undefined, idempotencyKey: string): Promise<CheckoutResult | undefined> {
    const guests = new Set(Object.keys(cart?.merged ?? {}))
    const anchored = this.anchorOwner(rq)
    if (anchored?.kind === 'guest') guests.add(anchored.name)
    for (const name of guests) {
      if (!GUEST_ID.test(name)) continue
      const found = await this.resumeUnder(rq, { kind: 'guest', name }, idempotencyKey)
      if (found !== undefined) return found
    }
    return undefined
  }

  /** The order, else the durable checkout entry, this key left under another owner's order id: finished or resumed. */
  private async resumeUnder (rq: CartRequest<R>, other: OwnerRef, idempotencyKey: string): Promise<CheckoutResult | undefined> {
    const orderId = orderIdFor(other.name, idempotencyKey)
    const order = (await this.orders.get(orderId))?.value
    if (order !== undefined && order.idempotencyKey === idempotencyKey) return await this.finish(rq, other, order)
    const entry = (await this.checkouts.get(orderId))?.value
    if (entry !== undefined && entry.idempotencyKey === idempotencyKey) {
      this.metrics.checkoutsResumed++
      return await this.charge(rq, other, entry, false)
    }
    return undefined
  }

  /**
   * A checkout of this key on the cart of the guest this cart's guest id replaced (`previous`: the session was lost
   * and the client's next change minted a new id, moving the anchor here). Its order id is the earlier guest's, so
   * without this a retry would charge again under this guest's. Finished or resumed when its order or durable record
   * is there; when the earlier cart is there too with no trace of this key, the key never checked it out (its record
   * would be there: written before any charge). Else the store lost it: recovered through provider.lookup (no charge
   * under the earlier order id: a new checkout here), or, without lookup, reported once through onCheckoutLost and
   * answered 409. Which key was the retry cannot be known then: the first key checked out here is reported (and stays
   * 409), any later key is a new checkout. undefined: go on with this cart.
   */
  private async earlierGuest (rq: CartRequest<R>, owner: OwnerRef, previous: NonNullable<StoredCart['previous']>, idempotencyKey: string): Promise<CheckoutResult | undefined> {
    const guest: OwnerRef = { kind: 'guest', name: previous.guest }
    const found = await this.resumeUnder(rq, guest, idempotencyKey)
    if (found !== undefined) return found
    const was = (await this.carts.get(guest.name))?.value
    if (was !== undefined && was.checkout?.idempotencyKey !== idempotencyKey) return undefined
    // With lookup no evidence is needed: the provider answers (no charge: undefined, a new checkout here).
    let reported = previous.key
    const noLookup = this.cfg.provider?.lookup === undefined
    if (noLookup && reported === undefined) {
      // The key to report, set once (compare-and-set) before the report: a retry after a crash reports it then.
      const r = await this.carts.update(owner.name, cur => cur?.previous === undefined || cur.previous.key !== undefined
        ? undefined
        : { ...cur, previous: { ...cur.previous, key: idempotencyKey } }, { ttlMs: this.cfg.cartTtlMs })
      reported = r.value?.previous?.key
    }
    return await this.recover(rq, guest, idempotencyKey, orderIdFor(guest.name, idempotencyKey), noLookup && reported === idempotencyKey)
  }

  /** An order placed for this owner and key: under its stable id, or an id from before stable names. */
  private async findOrder (owner: OwnerRef, idempotencyKey: string): Promise<Order | undefined> {
    for (const id of [orderIdFor(owner.name, idempotencyKey), ...this.legacy.orderIds(owner, idempotencyKey)]) {
      const order = (await this.orders.get(id))?.value
      if (order !== undefined && order.idempotencyKey === idempotencyKey) return order
    }
    return undefined
  }

  /**
   * The checkout of this key left no trace in the cart: the durable record may still be there (resume it), the
   * provider may know the charge (recover the order), or the loss is reported. undefined: nothing suggests a checkout
   * of this key ever started, go on as a new one. `evidence`: the client saw a cart the store no longer has.
   */
  private async recover (rq: CartRequest<R>, owner: OwnerRef, idempotencyKey: string, orderId: string, evidence: boolean): Promise<CheckoutResult | undefined> {
    const entry = (await this.checkouts.get(orderId))?.value
    if (entry !== undefined && entry.idempotencyKey === idempotencyKey) {
      this.metrics.checkoutsResumed++
      return await this.charge(rq, owner, entry, false)
    }
    const lookup = this.cfg.provider?.lookup
    if (lookup !== undefined) {
      let charge: ChargeLookup | undefined
      try {
        charge = await lookup.call(this.cfg.provider, orderId)
      } catch (err) {
        rq.warn({ orderId, err: err instanceof Error ? err.message : String(err) }, 'fastify-handoff: charge lookup did not complete')
        throw new PaymentPendingError('the checkout record was lost and the provider could not be asked about the charge')
      }
      if (charge !== undefined) {
        const order: Order = {
          orderId,
          idempotencyKey,
          status: 'placed',
          items: [],
          details: {},
          payment: { brand: '', last4: '' },
          amount: charge.amount,
          currency: charge.currency,
          chargeId: charge.chargeId,
          digest: '',
          placedAt: Date.now(),
          ownerTag: ownerTagFor(this.owner(rq, false)?.name ?? owner.name),
          delivered: this.cfg.onOrderPlaced === undefined,
          recovered: true
        }
        const created = await this.orders.update(orderId, cur => cur === undefined ? order : undefined, { ttlMs: this.cfg.orderTtlMs, ...this.durable })
        if (created.written) this.metrics.ordersRecovered++
        return await this.finish(rq, owner, created.value ?? order)
      }
      if (!evidence) return undefined
      // The provider has no charge for this key: nothing was paid, only the cart was lost.
      throw new CheckoutLostError('no payment was taken; your cart was lost, please fill it again')
    }
    const reported = (await this.lost.get(orderId))?.value
    if (!evidence && reported === undefined) return undefined
    if (reported === undefined) {
      const lost: LostCheckout = { orderId, idempotencyKey, providerKey: orderId, owner, detectedAt: Date.now() }
      // The mark first (create-if-absent): of retries racing on several instances, only the one that wrote it reports.
      const mark = await this.lost.update(orderId, cur => cur === undefined ? { reportedAt: lost.detectedAt, idempotencyKey } : undefined,
        { ttlMs: this.cfg.orderTtlMs, ...this.durable })
      if (mark.written) {
        rq.warn({ orderId }, 'fastify-handoff: a checkout was lost by the store after it may have charged; reported for reconciliation')
        this.metrics.checkoutsLost++
        await this.cfg.onCheckoutLost?.(lost, rq.request)
      }
    }
    throw new CheckoutLostError('payment may have been taken; it is being reconciled, do not pay again')
  }

  /** Charges what the durable record froze (the provider charges once per key), then places the order. */
  private async charge (rq: CartRequest<R>, owner: OwnerRef, entry: CheckoutEntry, inCart: boolean): Promise<CheckoutResult> {
    const provider = this.cfg.provider as PaymentProvider
    const { orderId } = entry
    let result: ChargeResult
    try {
      result = await provider.charge({ idempotencyKey: orderId, orderId, amount: entry.amount, currency: entry.currency, token: entry.payment.token })
    } catch (err) {
      this.metrics.chargesPending++
      rq.warn({ orderId, err: err instanceof Error ? err.message : String(err) }, 'fastify-handoff: charge did not complete; the checkout stays open for a retry')
      throw new PaymentPendingError('provider unreachable or timed out')
    }
    if (result.status === 'declined') {
      const reason = result.reason
      await this.checkouts.update(orderId, cur => cur === undefined || cur.declined !== undefined ? undefined : { ...cur, declined: reason },
        { ttlMs: this.cfg.orderTtlMs, ...this.durable })
      if (inCart) {
        await this.carts.update(owner.name, cur => {
          const c = cur?.checkout
          if (cur === undefined || c?.orderId !== orderId || c.state !== 'checking_out') return undefined
          return { ...cur, checkout: { ...c, state: 'failed', reason } }
        }, { ttlMs: this.cfg.cartTtlMs })
      }
      this.metrics.checkoutsFailed++
      return { orderId, status: 'failed', total: entry.amount, currency: entry.currency, reason }
    }

    // The order, created once (create-if-absent); the instance that created it hands it to the application.
    const order: Order = {
      orderId,
      idempotencyKey: entry.idempotencyKey,
      status: 'placed',
      items: entry.items,
      details: entry.details,
      payment: { brand: entry.payment.brand, last4: entry.payment.last4 },
      amount: entry.amount,
      currency: entry.currency,
      chargeId: result.chargeId,
      digest: entry.digest,
      placedAt: Date.now(),
      // Whoever checks out now owns the order: after sign-in, the user (also for a guest checkout finished then).
      ownerTag: ownerTagFor(this.owner(rq, false)?.name ?? owner.name),
      delivered: this.cfg.onOrderPlaced === undefined
    }
    let fresh = false
    const created = await this.orders.update(orderId, cur => { fresh = cur === undefined; return cur === undefined ? order : this.rewrite(cur) },
      { ttlMs: this.cfg.orderTtlMs, ...this.durable })
    if (fresh && created.written) this.metrics.ordersPlaced++
    return await this.finish(rq, owner, created.value ?? order)
  }

  /** An entry found already is written again only to have the replicas confirm it (orderDurability). */
  private rewrite<T> (cur: T): T | undefined {
    return this.durable.durability === undefined ? undefined : cur
  }

  /** Delivers the order (until that succeeded once), empties the cart it came from, and answers. */
  private async finish (rq: CartRequest<R>, owner: OwnerRef, order: Order): Promise<CheckoutResult> {
    await this.deliver(rq, order)
    await this.markPlaced(rq, owner, order)
    return { orderId: order.orderId, status: 'placed', total: order.amount, currency: order.currency }
  }

  /**
   * Hands the order to the application until that succeeds once: called on every path that finds it undelivered
   * (at least once; a crash between the call and the flag repeats it, so applications deduplicate by orderId).
   */
  private async deliver (rq: CartRequest<R>, order: Order): Promise<void> {
    const hook = this.cfg.onOrderPlaced
    if (hook === undefined || order.delivered) return
    await hook(order, rq.request)
    await this.orders.update(order.orderId, cur => cur === undefined || cur.delivered ? undefined : { ...cur, delivered: true },
      { ttlMs: this.cfg.orderTtlMs, ...this.durable })
  }

  /** checking out -> placed: the cart is emptied, the record stays for retries of the same key. */
  private async markPlaced (rq: CartRequest<R>, owner: OwnerRef, order: Order): Promise<void> {
    const now = Date.now()
    const r = await this.carts.update(owner.name, cur => {
      const c = cur?.checkout
      if (cur === undefined || c?.orderId !== order.orderId || c.state !== 'checking_out') return undefined
      // Frozen without an order lookup, for an order placed from another cart (firstCheckout): nothing of this cart
      // was charged, it is opened again instead of emptied. Not for an order recovered from the provider's charge:
      // it has no digest to tell (''), and the charge was made under this freeze's order id.
      if (c.lookupSkipped === true && order.recovered !== true && c.digest !== order.digest) return { ...cur, checkout: undefined }
      const emptied = applyChange({ ...cur, checkout: undefined }, { op: 'clear' }, CHAIN_KEY, this.cfg.limits, now)
      return { ...emptied, checkout: { ...c, state: 'placed', chargeId: order.chargeId } }
    }, { ttlMs: this.cfg.cartTtlMs })
    // Anchored only when it is this client's current cart: a guest checkout finished after sign-in is not (its seq
    // and digest under the user's name would make the user's own cart look rolled back).
    if (r.value !== undefined && owner.name === this.owner(rq, false)?.name) this.setAnchor(rq, owner, r.value)
  }

  /** An order placed from this client's cart (same user, or same guest session); undefined for anyone else's. */
  async getOrder (rq: CartRequest<R>, orderId: string): Promise<Order | undefined> {
    const owner = this.owner(rq, false)
    if (owner === undefined || !ORDER_ID.test(orderId)) return undefined
    const order = (await this.orders.get(orderId))?.value
    if (order === undefined) return undefined
    const tag = ownerTagFor(owner.name)
    if (order.ownerTag === tag) return order
    if (!this.legacy.ownerTags(owner).has(order.ownerTag)) return undefined
    // Tagged by a version before stable names: re-tag it, so it stays its owner's after the secret is dropped.
    const r = await this.orders.update(orderId, cur => cur === undefined || cur.ownerTag !== order.ownerTag ? undefined : { ...cur, ownerTag: tag },
      { ttlMs: this.cfg.orderTtlMs, ...this.durable })
    if (r.written) this.metrics.legacyMoved++
    return r.value ?? order
  }
}

function anchorVerifies (cart: StoredCart, anchor: { seq: number, digest: string } | undefined): boolean {
  try {
    verifyAnchor(cart, anchor)
    return true
  } catch {
    return false
  }
}
