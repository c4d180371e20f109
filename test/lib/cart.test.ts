import t from 'tap'
import fc from 'fast-check'
import { createHmac } from 'node:crypto'
import {
  applyChange, canonical, chainDigest, emptyCart, looksLikeCardNumber, refuseCardNumbers, verifyAnchor, cartTotal,
  DEFAULT_CART_LIMITS, type CartItem, type StoredCart
} from '../../lib/cart.js'

const KEY = Buffer.alloc(32, 7)
const item = (sku: string, quantity = 1): CartItem => ({ sku, quantity, unitPrice: 1250, currency: 'EUR' })

t.test('card numbers: Luhn-valid 13-19 digit runs, grouped or not, anywhere in the input', async t => {
  for (const n of ['4111111111111111', '4111 1111 1111 1111', '4111-1111-1111-1111', '5500005555555559', '378282246310005', '6011000990139424', '4222222222222']) {
    t.ok(looksLikeCardNumber(n), `${n.slice(0, 4)}… detected`)
    t.ok(looksLikeCardNumber(`my card is ${n}, thanks`), 'inside text too')
  }
  for (const n of ['4111111111111113', '12345', '2026-11-22', '+44 20 7946 0958', 'tok_4111111111111113', '123456789012']) {
    t.notOk(looksLikeCardNumber(n), `${n} is not a card number`)
  }
  t.throws(() => refuseCardNumbers({ billing: { line1: '4111 1111 1111 1111' } }, 'details'), {
    code: 'FST_HANDOFF_BAD_INPUT', statusCode: 400, message: /details\.billing\.line1 looks like a payment card number/
  })
  t.throws(() => refuseCardNumbers({ n: 4111111111111111 }), { code: 'FST_HANDOFF_BAD_INPUT' }, 'as a JSON number too')
  try {
    refuseCardNumbers(['x', { note: 'card 4111111111111111' }])
  } catch (err) {
    t.notMatch((err as Error).message, /4111/, 'the number is never echoed')
  }
})

t.test('changes: add merges quantities, limits and currency are enforced, chain grows', async t => {
  let c = emptyCart(1)
  c = applyChange(c, { op: 'add', item: item('A', 2) }, KEY, DEFAULT_CART_LIMITS, 2)
  c = applyChange(c, { op: 'add', item: item('A', 3) }, KEY, DEFAULT_CART_LIMITS, 3)
  c = applyChange(c, { op: 'add', item: item('B') }, KEY, DEFAULT_CART_LIMITS, 4)
  t.same(c.items.map(i => [i.sku, i.quantity]), [['A', 5], ['B', 1]])
  t.same(cartTotal(c), { total: 6 * 1250, currency: 'EUR' })
  t.equal(c.seq, 3)
  t.equal(c.chain.length, 3)
  t.ok(c.digest.startsWith(c.chain[2]?.digest ?? 'x'), 'the last link is the head digest (first 128 bits)')
  t.throws(() => applyChange(c, { op: 'add', item: { ...item('C'), currency: 'USD' } }, KEY, DEFAULT_CART_LIMITS, 5), { code: 'FST_HANDOFF_BAD_INPUT' })
  t.throws(() => applyChange(c, { op: 'add', item: item('A', 995) }, KEY, DEFAULT_CART_LIMITS, 5), { code: 'FST_HANDOFF_TOO_LARGE', statusCode: 413 })
  const small = { ...DEFAULT_CART_LIMITS, maxItems: 2 }
  t.throws(() => applyChange(c, { op: 'add', item: item('C') }, KEY, small, 5), { code: 'FST_HANDOFF_TOO_LARGE' })
  c = applyChange(c, { op: 'setQuantity', sku: 'A', quantity: 1 }, KEY, DEFAULT_CART_LIMITS, 6)
  c = applyChange(c, { op: 'remove', sku: 'B' }, KEY, DEFAULT_CART_LIMITS, 7)
  t.same(c.items.map(i => [i.sku, i.quantity]), [['A', 1]])
  t.throws(() => applyChange({ ...c, checkout: { state: 'checking_out', idempotencyKey: 'k', orderId: 'o', amount: 1, currency: 'EUR', digest: '', startedAt: 0 } },
    { op: 'add', item: item('Z') }, KEY, DEFAULT_CART_LIMITS, 8), { code: 'FST_HANDOFF_CHECKOUT_IN_PROGRESS', statusCode: 409 })
})

t.test('merge is idempotent per anonymous cart', async t => {
  let user = applyChange(emptyCart(1), { op: 'add', item: item('U', 1) }, KEY, DEFAULT_CART_LIMITS, 1)
  const change = { op: 'merge' as const, from: 'anon-1', fromSeq: 4, items: [item('U', 2), item('N', 1)] }
  user = applyChange(user, change, KEY, DEFAULT_CART_LIMITS, 2)
  const again = applyChange(user, change, KEY, DEFAULT_CART_LIMITS, 3)
  t.equal(again, user, 'a retried merge changes nothing')
  t.same(user.items.map(i => [i.sku, i.quantity]), [['U', 3], ['N', 1]])
})

t.test('property: the chain is deterministic and an anchor from the history verifies; an older cart does not', async t => {
  fc.assert(fc.property(fc.array(fc.constantFrom('A', 'B', 'C'), { minLength: 2, maxLength: 30 }), fc.nat(), (skus, pick) => {
    const build = (): StoredCart[] => {
      const states = [emptyCart(0)]
      for (const sku of skus) states.push(applyChange(states[states.length - 1] as StoredCart, { op: 'add', item: item(sku) }, KEY, DEFAULT_CART_LIMITS, 0))
      return states
    }
    const a = build()
    const b = build()
    const head = a[a.length - 1] as StoredCart
    if (head.digest !== (b[b.length - 1] as StoredCart).digest) return false
    const seen = a[1 + (pick % (a.length - 1))] as StoredCart
    verifyAnchor(head, { seq: seen.seq, digest: seen.digest.slice(0, 24) })
    // The stored cart replaced by an older one: the client has seen more than it holds.
    const older = a[seen.seq - 1] as StoredCart
    try { verifyAnchor(older, { seq: seen.seq, digest: seen.digest.slice(0, 24) }); return false } catch (err) {
      return (err as { code?: string }).code === 'FST_HANDOFF_CART_HISTORY'
    }
  }))
  t.pass('chains agree across instances, anchors verify, rollbacks are caught')
})

t.test('a forked history (same seq, other changes) is caught, and so is a broken chain', async t => {
  const base = applyChange(emptyCart(0), { op: 'add', item: item('A') }, KEY, DEFAULT_CART_LIMITS, 0)
  const mine = applyChange(base, { op: 'add', item: item('B') }, KEY, DEFAULT_CART_LIMITS, 0)
  const fork = applyChange(base, { op: 'add', item: item('C') }, KEY, DEFAULT_CART_LIMITS, 0)
  t.throws(() => verifyAnchor(fork, { seq: mine.seq, digest: mine.digest.slice(0, 24) }), { message: /forked/ })
  t.throws(() => verifyAnchor({ ...mine, digest: fork.digest }, undefined), { message: /does not verify/ })
  t.equal(canonical({ b: 1, a: [2, { d: 3, c: undefined }] }), '{"a":[2,{"d":3}],"b":1}')
})

/** canonical as it was written first (map/filter/join): every stored cart's chain was computed with it. */
function canonicalReference (v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null'
  if (Array.isArray(v)) return `[${v.map(canonicalReference).join(',')}]`
  const o = v as Record<string, unknown>
  return `{${Object.keys(o).filter(k => o[k] !== undefined).sort().map(k => `${JSON.stringify(k)}:${canonicalReference(o[k])}`).join(',')}}`
}

t.test('canonical and chainDigest give the bytes and digests carts already store (old chains still verify)', async t => {
  fc.assert(fc.property(fc.anything({ withSparseArray: true, withNullPrototype: true, withObjectString: true }), v => {
    t.equal(canonical(v), canonicalReference(v))
  }), { numRuns: 500 })
  t.equal(canonical([1, , 3]), '[1,,3]', 'a hole stays empty') // eslint-disable-line no-sparse-arrays
  fc.assert(fc.property(fc.string(), fc.nat(), fc.jsonValue(), (previous, seq, change) => {
    const fivePart = createHmac('sha256', KEY).update(previous).update('\n').update(String(seq)).update('\n').update(canonicalReference(change)).digest('hex')
    t.equal(chainDigest(KEY, previous, seq, change), fivePart)
  }), { numRuns: 300 })
  // Known answers, computed with the first implementation.
  const change = { op: 'add', item: { sku: 'TEE-BLK', quantity: 2, unitPrice: 1900, currency: 'EUR', name: 'Black T-shirt ü', options: { size: 'M', gift: undefined }, tags: ['a', 1, null, true, { z: 1, a: [] }] } }
  t.equal(chainDigest(KEY, '0'.repeat(64), 1, change), '3885fdd3a1598a2c44da14dd071dc21699b4889ffe3885f8c06af821d8708204')
  t.equal(chainDigest(KEY, 'f'.repeat(64), 123456, { op: 'clear' }), 'f62535051a55f5944a3517bc2067a0e5953dd204285721204bc10e6df82947b9')
})
