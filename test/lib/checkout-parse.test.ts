import t from 'tap'
import { emptyCart } from '../../lib/cart.js'
import { parseCart } from '../../lib/checkout.js'

const stored = (extra: Record<string, unknown>): unknown => JSON.parse(JSON.stringify({ ...emptyCart(1_700_000_000_000), ...extra }))

t.test('pristine: true and absent read as written; false reads as "not pristine", not as a corrupt cart', async t => {
  t.equal(parseCart(stored({ pristine: true })).pristine, true)
  t.equal(parseCart(stored({})).pristine, undefined)
  // Nothing writes false today; a later writer that does must not make carts vanish as corrupt entries.
  const c = parseCart(stored({ pristine: false }))
  t.not(c.pristine, true, 'a cart marked false is not taken for a pristine one (every check asks for === true)')
})

t.test('any other pristine value is a malformed cart', async t => {
  for (const bad of ['yes', 1, null, {}]) {
    t.throws(() => parseCart(stored({ pristine: bad })), /malformed pristine/, `pristine: ${JSON.stringify(bad)}`)
  }
})
