import t from 'tap'
import fc from 'fast-check'
import { Signer } from '@fastify/cookie'
import { CachedSigner, SignedValues } from '../../lib/signed-values.js'
import { SessionCookieCodec, newSessionId } from '../../lib/session/cookie.js'

const K1 = Buffer.alloc(32, 1)
const K2 = Buffer.alloc(32, 2)

/** Counts the HMACs a Signer computes (sign and unsign) while `work` runs. */
function countHmacs (work: () => void): number {
  let n = 0
  const sign = Signer.prototype.sign
  const unsign = Signer.prototype.unsign
  Signer.prototype.sign = function (this: Signer, v: string) { n++; return sign.call(this, v) }
  Signer.prototype.unsign = function (this: Signer, v: string) { n++; return unsign.call(this, v) }
  try { work() } finally {
    Signer.prototype.sign = sign
    Signer.prototype.unsign = unsign
  }
  return n
}

t.test('SignedValues: bounded, the oldest dropped first, constant time', async t => {
  const s = new SignedValues<number>(4)
  for (let i = 0; i < 6; i++) s.remember(`r${i}`, i)
  t.ok(s.size <= 4)
  t.equal(s.get('r0'), undefined)
  t.equal(s.get('r1'), undefined)
  for (let i = 2; i < 6; i++) t.equal(s.get(`r${i}`), i, `r${i} kept`)
  const big = new SignedValues<number>(10_000)
  for (let i = 0; i < 100_000; i++) big.remember(`raw${i}`, i)
  t.ok(big.size <= 10_000, 'never more than max')
  t.equal(big.get('raw99999'), 99_999)
  t.equal(big.get('raw95000'), 95_000, 'the newest half at least is kept')
  t.equal(big.get('raw80000'), undefined)
})

t.test('CachedSigner answers as a plain Signer does, for any input', async t => {
  const plain = new Signer([K1, K2])
  const cached = new CachedSigner([K1, K2], 64)
  fc.assert(fc.property(fc.string(), fc.boolean(), fc.string(), (value, tamper, junk) => {
    const raw = cached.sign(value)
    t.equal(raw, plain.sign(value), 'the same signature')
    t.equal(cached.unsign(raw), value)
    const other = tamper ? `${raw.slice(0, -1)}${raw.endsWith('A') ? 'B' : 'A'}` : junk
    const u = plain.unsign(other)
    t.equal(cached.unsign(other), u.valid && u.value !== null ? u.value : undefined, 'tampered or junk: as the Signer says')
  }), { numRuns: 300 })
  // Signed with the older key: verified (and then remembered) like any other.
  const old = new Signer([K2]).sign('2.g.x.3.abc')
  t.equal(cached.unsign(old), '2.g.x.3.abc')
  t.equal(cached.unsign(old), '2.g.x.3.abc')
  t.equal(new CachedSigner([K1], 8).unsign(old), undefined, 'not in the ring: refused')
})

t.test('CachedSigner: a value it signed or verified costs no second HMAC, anything else does', async t => {
  const cached = new CachedSigner([K1, K2], 64)
  let raw = ''
  t.equal(countHmacs(() => { raw = cached.sign('2.g.cart.1.aaaa') }), 1)
  t.equal(countHmacs(() => { t.equal(cached.unsign(raw), '2.g.cart.1.aaaa') }), 0, 'its own signature comes back: no HMAC')
  t.equal(countHmacs(() => { t.equal(cached.unsign(`${raw}x`), undefined) }), 1, 'a changed signature is checked')
  t.equal(countHmacs(() => { t.equal(cached.unsign(`${raw}x`), undefined) }), 1, 'and checked again: refusals are not remembered')
  t.equal(countHmacs(() => { cached.sign('2.g.cart.2.bbbb') }), 1, 'another value is signed')
})

t.test('session cookie codec: a cookie that verified once costs no second HMAC; tampered, junk and retired ones still fail', async t => {
  const codec = new SessionCookieCodec([K1, K2])
  const fresh = (): SessionCookieCodec => new SessionCookieCodec([K1, K2])
  fc.assert(fc.property(fc.nat({ max: 999_999_999_999_999 }), version => {
    const id = newSessionId()
    const raw = codec.encode(id, version)
    t.same(codec.decode(raw), { id, version, renew: false })
    let again
    t.equal(countHmacs(() => { again = codec.decode(raw) }), 0, 'no HMAC the second time')
    t.same(again, fresh().decode(raw))
    t.equal(codec.decode(`${raw.slice(0, -2)}${raw.endsWith('AA') ? 'BB' : 'AA'}`), undefined, 'tampered: refused')
  }), { numRuns: 200 })
  // A cookie signed with the older key still asks for renewal, as before.
  const id = newSessionId()
  const old = new Signer([K2]).sign(`${id}.7`)
  t.same(codec.decode(old), { id, version: 7, renew: true })
  t.same(codec.decode(old), { id, version: 7, renew: true })
  t.equal(new SessionCookieCodec([K1]).decode(old), undefined, 'not in the ring: refused')
  t.equal(codec.decode(codec.encode('short', 1)), undefined)
  t.equal(codec.decode(codec.encode(id, 1_000_000_000_000_000)), undefined, 'a 16-digit version: refused')
  // Many distinct cookies: the cache stays bounded and a new cookie still decodes (the eviction path).
  let decoded = 0
  for (let v = 0; v < 25_000; v++) if (codec.decode(codec.encode(id, v))?.version === v) decoded++
  t.equal(decoded, 25_000)
})
