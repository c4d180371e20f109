import { createHmac, timingSafeEqual } from 'node:crypto'
import createError from '@fastify/error'
import { BadInputError, TooLargeError } from './errors.js'

/**
 * The cart model, framework-free: every change is a pure function from one stored cart to the next, run inside
 * TieredStore.update (compare-and-set, retried), so concurrent changes from several instances all survive.
 * Each change also extends an HMAC chain (a running digest) kept with the cart; checkout verifies it against the
 * anchor the client holds, so a cart rolled back or forked (a Redis failover, a restored backup, an older copy
 * written back) is caught before money moves.
 */

/** Extend by declaration merging for your own item fields: `declare module 'fastify-handoff' { interface CartItemExtra { color?: string } }`. */
export interface CartItemExtra {}

export interface CartItem extends CartItemExtra {
  sku: string
  quantity: number
  /** Price of one unit in minor units (cents), as the application gives it. */
  unitPrice: number
  /** ISO 4217 code, e.g. 'EUR'. All items of one cart share a currency. */
  currency: string
  name?: string
}

export interface Address {
  name: string
  line1: string
  line2?: string
  city: string
  postcode: string
  country: string
}

export interface PurchaseDetails {
  billing?: Address
  shipping?: { method: string, address?: Address }
  note?: string
}

/** A payment-provider token plus display fields. Never a card number. */
export interface PaymentMethod {
  token: string
  brand: string
  last4: string
}

export type CheckoutState = 'checking_out' | 'placed' | 'failed'

export interface CheckoutRecord {
  state: CheckoutState
  idempotencyKey: string
  orderId: string
  /** Frozen when checkout started. */
  amount: number
  currency: string
  /** The cart's running digest when checkout started: the order records it. */
  digest: string
  startedAt: number
  chargeId?: string
  reason?: string
  /**
   * Started on a pristine cart without looking for an order of this key first (see lib/checkout.ts, firstCheckout):
   * an order of this key with another digest was then not placed from this cart, which is not emptied for it.
   */
  lookupSkipped?: boolean
}

/** One link of the kept chain: the change number and the first 32 hex digits (128 bits) of the digest after it. */
export interface ChainLink { seq: number, digest: string }

export interface StoredCart {
  items: CartItem[]
  details: PurchaseDetails
  payment?: PaymentMethod
  /** Number of changes so far, and the digest after the last one. */
  seq: number
  digest: string
  /** The most recent links of the chain (bounded), to verify a client's anchor and the chain itself. */
  chain: ChainLink[]
  checkout?: CheckoutRecord
  /** Anonymous carts merged into this one: id -> seq merged, so a merge retried after a crash counts once. */
  merged?: Record<string, number>
  /**
   * Set on a guest cart merged at sign-in: the user's cart name. A guest change still in flight then goes to the
   * user's cart instead of a cart nobody reads any more.
   */
  movedTo?: string
  /**
   * Set on a guest cart created in the request that minted its guest id, and dropped by the first checkout that
   * freezes it: no order, checkout record or lost-checkout mark can exist under this owner name yet.
   */
  pristine?: boolean
  /**
   * Set on a guest cart created in the request that minted its guest id while the client's anchor cookie named
   * another guest's cart with changes (the session was lost, e.g. with Redis's data): `guest` is that guest's id,
   * whose checkout the client may still be retrying with its Idempotency-Key (see lib/checkout.ts, earlierGuest).
   * `key`: the one key whose possible loss this cart reports when the provider has no lookup (set once).
   */
  previous?: { guest: string, key?: string }
  createdAt: number
  updatedAt: number
}

export interface Order {
  orderId: string
  idempotencyKey: string
  status: 'placed'
  items: CartItem[]
  details: PurchaseDetails
  payment: { brand: string, last4: string }
  amount: number
  currency: string
  chargeId: string
  /** The cart's running digest at checkout: the history this order was placed from. */
  digest: string
  placedAt: number
  /** HMAC tag of the cart's owner: only the owner's requests read the order back (request.cart.getOrder). */
  ownerTag: string
  /** True once `onOrderPlaced` returned without error: until then every retry of the checkout calls it again. */
  delivered: boolean
  /**
   * True for an order rebuilt from the provider's charge (`provider.lookup`) after the store lost the checkout: its
   * items, details and payment display fields are unknown (empty), amount, currency and chargeId are the charge's.
   */
  recovered?: boolean
}

export interface CartLimits {
  /** Distinct items per cart. Default: 100. */
  maxItems: number
  /** Quantity of one item. Default: 999. */
  maxQuantity: number
  /** Chain links kept with the cart (older anchors can no longer be verified). Default: 16. */
  chainLength: number
}

/** Kept links are re-sealed with every change: 16 is plenty for one shopper's tabs and devices, and cheap. */
export const DEFAULT_CART_LIMITS: CartLimits = { maxItems: 100, maxQuantity: 999, chainLength: 16 }
const LINK_HEX = 32

export const CheckoutInProgressError = createError<'FST_HANDOFF_CHECKOUT_IN_PROGRESS', 409, [string]>(
  'FST_HANDOFF_CHECKOUT_IN_PROGRESS', 'A checkout of this cart is %s: the cart cannot change now', 409)
export const CartHistoryError = createError<'FST_HANDOFF_CART_HISTORY', 409, [string]>(
  'FST_HANDOFF_CART_HISTORY', 'Your cart changed unexpectedly (%s): please review it before checking out', 409)
export const CheckoutIncompleteError = createError<'FST_HANDOFF_CHECKOUT_INCOMPLETE', 400, [string]>(
  'FST_HANDOFF_CHECKOUT_INCOMPLETE', 'Checkout needs %s', 400)

const GENESIS = '0'.repeat(64)

export function emptyCart (now: number): StoredCart {
  return { items: [], details: {}, seq: 0, digest: GENESIS, chain: [], createdAt: now, updatedAt: now }
}

/** Stable JSON (sorted keys), so the same change always hashes the same on every instance. */
export function canonical (v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null'
  // Loops rather than map/filter/join: this runs on every cart change (same output, fewer intermediate arrays).
  if (Array.isArray(v)) {
    let out = '['
    // A hole of a sparse array stays empty, as Array.prototype.map and join left it.
    for (let i = 0; i < v.length; i++) out += (i === 0 ? '' : ',') + (i in v ? canonical(v[i]) : '')
    return out + ']'
  }
  const o = v as Record<string, unknown>
  const keys = Object.keys(o).sort()
  let out = '{'
  let first = true
  for (const k of keys) {
    const x = o[k]
    if (x === undefined) continue
    out += (first ? '' : ',') + JSON.stringify(k) + ':' + canonical(x)
    first = false
  }
  return out + '}'
}

/** HMAC of `previous`, `seq` and the change, newline-separated: one update of the same bytes as one per part. */
export function chainDigest (key: Buffer, previous: string, seq: number, change: unknown): string {
  return createHmac('sha256', key).update(`${previous}\n${seq}\n${canonical(change)}`).digest('hex')
}

// ---------------------------------------------------------------------------------------------- raw card numbers

// The detector lives in lib/pan.ts (also used for log redaction); re-exported here where it always was.
export { looksLikeCardNumber, refuseCardNumbers } from './pan.js'

// ----------------------------------------------------------------------------------------------------- changes

export type CartChange =
  | { op: 'add', item: CartItem }
  | { op: 'remove', sku: string }
  | { op: 'setQuantity', sku: string, quantity: number }
  | { op: 'details', details: PurchaseDetails }
  | { op: 'payment', payment: PaymentMethod }
  | { op: 'merge', from: string, fromSeq: number, items: CartItem[] }
  | { op: 'clear' }

function assertOpen (cart: StoredCart): void {
  const c = cart.checkout
  if (c !== undefined && c.state === 'checking_out') throw new CheckoutInProgressError('in progress')
}

function assertQuantity (q: number, limits: CartLimits): void {
  if (!Number.isSafeInteger(q) || q < 1) throw new BadInputError('quantity must be a whole number >= 1')
  if (q > limits.maxQuantity) throw new TooLargeError('Quantity', String(q), String(limits.maxQuantity))
}

function addItems (items: CartItem[], add: CartItem, limits: CartLimits): CartItem[] {
  const i = items.findIndex(x => x.sku === add.sku)
  if (i < 0) {
    if (items.length >= limits.maxItems) throw new TooLargeError('Cart', `${items.length + 1} distinct items`, `${limits.maxItems}`)
    if (items.length > 0 && items[0]?.currency !== add.currency) throw new BadInputError(`currency ${add.currency} differs from the cart's ${items[0]?.currency ?? ''}`)
    assertQuantity(add.quantity, limits)
    return [...items, { ...add }]
  }
  const cur = items[i] as CartItem
  const quantity = cur.quantity + add.quantity
  assertQuantity(quantity, limits)
  const next = [...items]
  next[i] = { ...cur, ...add, quantity }
  return next
}

/**
 * The next cart after `change`, with the chain extended; throws a clear error (400/409/413) when the change is not
 * allowed. Pure: safe to run again after a lost compare-and-set.
 */
export function applyChange (cart: StoredCart, change: CartChange, digestKey: Buffer, limits: CartLimits, now: number): StoredCart {
  if (change.op !== 'merge') assertOpen(cart)
  let items = cart.items
  let details = cart.details
  let payment = cart.payment
  let merged = cart.merged
  switch (change.op) {
    case 'add':
      items = addItems(items, change.item, limits)
      break
    case 'remove':
      items = items.filter(x => x.sku !== change.sku)
      break
    case 'setQuantity': {
      if (change.quantity === 0) { items = items.filter(x => x.sku !== change.sku); break }
      assertQuantity(change.quantity, limits)
      const i = items.findIndex(x => x.sku === change.sku)
      if (i < 0) throw new BadInputError(`no item ${change.sku} in the cart`)
      items = items.map(x => x.sku === change.sku ? { ...x, quantity: change.quantity } : x)
      break
    }
    case 'details':
      details = { ...details, ...change.details }
      break
    case 'payment':
      payment = change.payment
      break
    case 'merge':
      if (merged?.[change.from] !== undefined) return cart // merged already (a retried login)
      assertOpen(cart)
      // Best effort: an item that cannot join (another currency, the item limit) is left out and a quantity is
      // capped, rather than failing every cart operation of the session on a merge that can never succeed.
      for (const it of change.items) {
        const have = items.find(x => x.sku === it.sku)?.quantity ?? 0
        const quantity = Math.min(it.quantity, limits.maxQuantity - have)
        if (quantity < 1) continue
        try { items = addItems(items, { ...it, quantity }, limits) } catch {}
      }
      merged = { ...merged, [change.from]: change.fromSeq }
      break
    case 'clear':
      items = []
      break
  }
  const seq = cart.seq + 1
  const digest = chainDigest(digestKey, cart.digest, seq, change)
  const chain = [...cart.chain, { seq, digest: digest.slice(0, LINK_HEX) }].slice(-limits.chainLength)
  const next: StoredCart = { ...cart, items, details, seq, digest, chain, updatedAt: now }
  if (payment !== undefined) next.payment = payment
  if (merged !== undefined) next.merged = merged
  // A finished checkout's record stays (for idempotent retries) until the cart changes again.
  if (next.checkout !== undefined && next.checkout.state !== 'checking_out') delete next.checkout
  return next
}

/** Where the client's anchor (the seq and digest it last saw) stands against the stored cart's history. */
export function verifyAnchor (cart: StoredCart, anchor: { seq: number, digest: string } | undefined): void {
  // The chain itself must be intact: each kept link's digest is the head for its seq, the last is the cart's.
  const last = cart.chain[cart.chain.length - 1]
  if (cart.seq > 0 && (last === undefined || last.seq !== cart.seq || !cart.digest.startsWith(last.digest))) {
    throw new CartHistoryError('its history does not verify')
  }
  if (anchor === undefined) return
  if (anchor.seq > cart.seq) throw new CartHistoryError('it is older than what you last saw, e.g. after a store failover')
  if (anchor.seq === 0) return
  const link = cart.chain.find(l => l.seq === anchor.seq)
  if (link === undefined) throw new CartHistoryError('what you last saw can no longer be verified')
  const n = Math.min(anchor.digest.length, link.digest.length)
  const a = Buffer.from(link.digest.slice(0, n))
  const b = Buffer.from(anchor.digest.slice(0, n))
  if (n < 16 || !timingSafeEqual(a, b)) {
    throw new CartHistoryError('its history forked from what you last saw')
  }
}

export function cartTotal (cart: Pick<StoredCart, 'items'>): { total: number, currency: string | undefined } {
  let total = 0
  for (const it of cart.items) total += it.unitPrice * it.quantity
  return { total, currency: cart.items[0]?.currency }
}

/** Checkout can start: items, billing address and payment token present. */
export function assertCheckoutReady (cart: StoredCart): void {
  if (cart.items.length === 0) throw new CheckoutIncompleteError('at least one item')
  if (cart.details.billing === undefined) throw new CheckoutIncompleteError('a billing address')
  if (cart.payment === undefined) throw new CheckoutIncompleteError('a payment method (provider token)')
}
