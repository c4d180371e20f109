import t from 'tap'
import fc from 'fast-check'
import { deepFreeze } from '../../lib/entry-codec.js'

function everyPartFrozen (v: unknown): boolean {
  if (v === null || typeof v !== 'object') return true
  return Object.isFrozen(v) && Object.values(v).every(everyPartFrozen)
}

t.test('deepFreeze freezes every object and array of a JSON value, and keeps it equal', async t => {
  fc.assert(fc.property(fc.jsonValue(), v => {
    const copy = JSON.parse(JSON.stringify(v)) as unknown
    const frozen = deepFreeze(JSON.parse(JSON.stringify(v)) as unknown)
    t.ok(everyPartFrozen(frozen))
    t.same(frozen, copy)
  }), { numRuns: 300 })
  const cart = deepFreeze({ items: [{ sku: 'A', options: { size: 'M' } }], chain: [[1, { d: 'x' }]] })
  t.ok(Object.isFrozen(cart.items[0]?.options))
  t.ok(Object.isFrozen(cart.chain[0]?.[1]))
})
