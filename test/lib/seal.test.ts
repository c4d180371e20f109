import { inspect } from 'node:util'
import t from 'tap'
import fc from 'fast-check'
import {
  KeyRing,
  Sealer,
  entryAad,
  entryLabel,
  openEntry,
  sealEntry,
  FORMAT_VERSION,
  IV_BYTES,
  TAG_BYTES,
  type SecretInput
} from '../../lib/seal.js'
import { isHandoffError } from '../../lib/errors.js'

const CORRUPT = 'FST_HANDOFF_CORRUPT_ENTRY'
const INVALID = 'FST_HANDOFF_INVALID_OPTION'

const SECRET_A = 'a-secret-of-exactly-thirty-two-b'
const SECRET_B = Buffer.alloc(32, 0xb0)
const SECRET_C = 'another cluster entirely, also long enough'

/** The error `fn` throws, or undefined when it returns; lets properties return booleans instead of asserting. */
function thrown (fn: () => unknown): unknown {
  try {
    fn()
  } catch (err) {
    return err
  }
  return undefined
}

function isCorrupt (err: unknown, reason?: RegExp): boolean {
  return isHandoffError(err, CORRUPT) && (reason === undefined || reason.test(err.message))
}

const secretArb = fc.uint8Array({ minLength: 32, maxLength: 64 }).map((bytes) => Buffer.from(bytes))
const keyArb = fc.string({ unit: 'grapheme', maxLength: 80 })
const versionArb = fc.maxSafeNat()
const plaintextArb = fc.uint8Array({ maxLength: 2048 }).map((bytes) => Buffer.from(bytes))

function sealerOf (secret: SecretInput, purpose?: string): Sealer {
  return new Sealer(new KeyRing(secret), purpose)
}

t.test('sealEntry / openEntry round-trip random values, keys, versions and secrets', async (t) => {
  fc.assert(fc.property(secretArb, keyArb, versionArb, plaintextArb, (secret, key, version, plaintext) => {
    const sealer = sealerOf(secret)
    const envelope = sealEntry(sealer, key, version, plaintext)
    return openEntry(sealer, key, version, envelope).equals(plaintext)
  }))
  t.pass('round trip holds')
})

t.test('the envelope has the documented layout', async (t) => {
  const ring = new KeyRing([{ id: 'k-2024.1', secret: SECRET_A }])
  const sealer = new Sealer(ring)
  const plaintext = Buffer.from('hello')
  const envelope = sealer.seal(plaintext, Buffer.alloc(0))
  t.equal(envelope[0], FORMAT_VERSION)
  t.equal(envelope[1], 8)
  t.equal(envelope.toString('utf8', 2, 10), 'k-2024.1')
  t.equal(envelope.length, 2 + 8 + IV_BYTES + TAG_BYTES + plaintext.length)
  t.notOk(envelope.includes(plaintext), 'the plaintext is not visible in the envelope')
  const again = sealer.seal(plaintext, Buffer.alloc(0))
  t.not(envelope.subarray(10, 22).toString('hex'), again.subarray(10, 22).toString('hex'), 'a fresh IV per seal')
  t.same(sealer.open(envelope, Buffer.alloc(0)), plaintext)
  t.same(sealer.open(sealer.seal(Buffer.alloc(0), Buffer.alloc(0)), Buffer.alloc(0)), Buffer.alloc(0), 'empty value')
})

t.test('a sealed entry never opens under another key name, version or secret', async (t) => {
  fc.assert(fc.property(
    secretArb, secretArb, keyArb, keyArb, versionArb, versionArb, plaintextArb,
    (secret, otherSecret, key, otherKey, version, otherVersion, plaintext) => {
      const sealer = sealerOf(secret)
      const envelope = sealEntry(sealer, key, version, plaintext)
      const authFailed = /authentication failed/
      if (otherKey !== key && !isCorrupt(thrown(() => openEntry(sealer, otherKey, version, envelope)), authFailed)) {
        return false
      }
      if (otherVersion !== version &&
        !isCorrupt(thrown(() => openEntry(sealer, key, otherVersion, envelope)), authFailed)) {
        return false
      }
      if (!otherSecret.equals(secret)) {
        // A lone secret: another cluster has another id, so the ring says so before any decryption.
        if (!isCorrupt(thrown(() => openEntry(sealerOf(otherSecret), key, version, envelope)), /not in this key ring/)) {
          return false
        }
        // Same id, different secret (a misconfigured deployment): the tag catches it.
        const mine = sealerOf([{ id: 'main', secret }])
        const theirs = sealerOf([{ id: 'main', secret: otherSecret }])
        const sealed = sealEntry(mine, key, version, plaintext)
        if (!isCorrupt(thrown(() => openEntry(theirs, key, version, sealed)), authFailed)) return false
      }
      return true
    }
  ))
  t.pass('no cross-key, cross-version or cross-secret opening')
})

t.test('flipping any single byte of an envelope makes it fail to open', async (t) => {
  const sealer = sealerOf([{ id: 'new', secret: SECRET_A }, { id: 'old', secret: SECRET_B }])
  fc.assert(fc.property(
    keyArb, versionArb, plaintextArb, fc.nat(), fc.integer({ min: 1, max: 255 }),
    (key, version, plaintext, where, mask) => {
      const envelope = sealEntry(sealer, key, version, plaintext)
      const i = where % envelope.length
      envelope[i] = (envelope[i] as number) ^ mask
      return isCorrupt(thrown(() => openEntry(sealer, key, version, envelope)))
    }
  ))
  t.pass('every single-byte change is detected')
})

t.test('truncated and foreign envelopes are refused with a reason', async (t) => {
  const sealer = sealerOf(SECRET_A)
  const aad = entryAad('k', 1)
  const envelope = sealer.seal(Buffer.from('value'), aad)
  for (let n = 0; n < envelope.length; n++) {
    const err = thrown(() => sealer.open(envelope.subarray(0, n), aad))
    t.ok(isCorrupt(err), `a ${n}-byte prefix does not open`)
  }
  t.match(thrown(() => sealer.open(Buffer.alloc(3), aad)), { code: CORRUPT, message: /shorter than the 31-byte minimum/ })

  const v2 = Buffer.from(envelope)
  v2[0] = 2
  t.match(thrown(() => sealer.open(v2, aad, 'sess')), {
    code: CORRUPT,
    statusCode: 500,
    message: 'Entry "sess" could not be opened: unknown envelope format version 2 (this code reads version 1)'
  })

  const longId = Buffer.from(envelope)
  longId[1] = 200
  t.match(thrown(() => sealer.open(longId, aad)), { message: /too short for its 200-byte key id/ })

  const badId = Buffer.from(envelope)
  badId[2] = 0x0a // a newline: must not be echoed into a log line
  t.match(thrown(() => sealer.open(badId, aad)), { message: /malformed key id/ })
})

t.test('rotation: old envelopes open after a new key goes in front, then fail once it is dropped', async (t) => {
  const before = sealerOf([{ id: 'k1', secret: SECRET_A }])
  const aad = entryAad('{p7}:abc:sess', 3)
  const old = before.seal(Buffer.from('old value'), aad)
  t.equal(before.openedWith(old), 'k1')

  const during = sealerOf([{ id: 'k2', secret: SECRET_B }, { id: 'k1', secret: SECRET_A }])
  t.equal(during.currentId, 'k2')
  t.same(during.open(old, aad), Buffer.from('old value'), 'the retiring key still opens')
  const fresh = during.seal(Buffer.from('new value'), aad)
  t.equal(during.openedWith(fresh), 'k2', 'new seals use the new key')
  t.same(during.open(fresh, aad), Buffer.from('new value'))
  t.match(thrown(() => before.open(fresh, aad)), { code: CORRUPT, message: /key id k2 which is not in this key ring/ },
    'an instance not yet updated cannot open the new key (so deploy the new secret in second place first)')

  const after = sealerOf([{ id: 'k2', secret: SECRET_B }])
  t.same(after.open(fresh, aad), Buffer.from('new value'))
  t.match(thrown(() => after.open(old, aad, 'cart')), {
    code: CORRUPT,
    message: 'Entry "cart" could not be opened: sealed with key id k1 which is not in this key ring: ' +
      "another cluster's secret or a retired key"
  })
  t.equal(after.openedWith(old), 'k1', 'openedWith peeks without the key')
  t.equal(after.openedWith(Buffer.alloc(5)), undefined)
})

t.test('different purposes derive unrelated keys', async (t) => {
  const ring = new KeyRing(SECRET_A)
  const entries = new Sealer(ring)
  const tls = new Sealer(ring, 'tls-session')
  t.equal(entries.purpose, 'entry')
  const envelope = entries.seal(Buffer.from('x'), Buffer.alloc(0))
  t.match(thrown(() => tls.open(envelope, Buffer.alloc(0))), { code: CORRUPT, message: /authentication failed/ })
  t.match(thrown(() => new Sealer(ring, '')), { code: INVALID, message: /"purpose"/ })
  t.match(thrown(() => ring.derive('p'.repeat(1025))), { code: INVALID, message: /at most 1024 bytes/ })
})

t.test('secret validation', async (t) => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['short string', 'too short', /the secret is 9 bytes long; each secret must be at least 32 bytes/],
    ['short Buffer', Buffer.alloc(31), /the secret is 31 bytes long/],
    // 'é' is 2 bytes of UTF-8: 15 of them are 15 characters but 30 bytes, still too short.
    ['UTF-8 bytes count', 'é'.repeat(15), /30 bytes long; .*a string counts its UTF-8 bytes/],
    ['short ring entry', [{ id: 'a', secret: SECRET_A }, { id: 'b', secret: 'x' }],
      /the secret of key id "b" is 1 bytes long/],
    ['empty ring', [], /the key ring is empty/],
    ['duplicate ids', [{ id: 'a', secret: SECRET_A }, { id: 'a', secret: SECRET_B }], /key id "a" appears more than once/],
    ['bad id characters', [{ id: 'a b', secret: SECRET_A }], /entry 0 has id "a b"; an id is 1 to 32 characters/],
    ['empty id', [{ id: '', secret: SECRET_A }], /entry 0 has id ""/],
    ['id too long', [{ id: 'x'.repeat(33), secret: SECRET_A }], /1 to 32 characters/],
    ['not a secret', 42, /must be a string, a Buffer or an array/],
    ['entry not an object', [null], /entry 0 must be an object/],
    ['secret not a string', [{ id: 'a', secret: 7 }], /must be a string or a Buffer, got number/]
  ]
  for (const [name, input, message] of cases) {
    const err = thrown(() => new KeyRing(input as SecretInput))
    t.match(err, { code: INVALID, message }, name)
    t.ok(isHandoffError(err, INVALID), `${name}: FST_HANDOFF_INVALID_OPTION`)
    t.match(err, { message: /^Invalid option "secret": / }, `${name}: names the option`)
  }
  t.doesNotThrow(() => new KeyRing('é'.repeat(16)), '32 UTF-8 bytes are enough')
  t.doesNotThrow(() => new KeyRing([{ id: 'x'.repeat(32), secret: SECRET_A }]), '32-character id')

  const short = 'p@ss-word-p@ss-word'
  t.notMatch(String(thrown(() => new KeyRing(short))), short, 'the secret is not echoed')
})

t.test('derive() is deterministic and separates purposes and secrets', async (t) => {
  const ring = new KeyRing([{ id: 'b', secret: SECRET_B }, { id: 'a', secret: SECRET_A }])
  const cookie = ring.derive('cookie')
  t.equal(cookie.length, 2, 'one subkey per secret')
  t.ok(cookie.every((k) => k.length === 32), '32 bytes each')
  t.same(ring.derive('cookie'), cookie, 'deterministic')
  t.same(new KeyRing([{ id: 'other-ids', secret: SECRET_B }]).derive('cookie')[0], cookie[0],
    'depends on the secret, not on its id: every instance derives the same key')
  t.same(new KeyRing(SECRET_A).derive('cookie')[0], cookie[1], 'newest first')
  t.notSame(cookie[0], cookie[1], 'different secrets, different subkeys')
  const all = ['cookie', 'tls-ticket', 'cart-digest', 'entry'].flatMap((p) => ring.derive(p).map((k) => k.toString('hex')))
  t.equal(new Set(all).size, all.length, 'no subkey repeats across purposes and secrets')
  t.notOk(all.includes(SECRET_B.toString('hex')), 'no subkey is the secret itself')

  const first = ring.derive('cookie')[0] as Buffer
  first.fill(0)
  t.same(ring.derive('cookie'), cookie, 'callers may zero what they got')
  t.match(thrown(() => ring.derive('')), { code: INVALID })
  t.same(ring.deriveOldest('cookie'), cookie[1], 'deriveOldest: the oldest secret\'s subkey')
  t.same(new KeyRing([{ id: 'new', secret: SECRET_C }, { id: 'b', secret: SECRET_B }, { id: 'a', secret: SECRET_A }]).deriveOldest('cookie'),
    cookie[1], 'unchanged when a new secret is put in front (the first step of a rotation)')
  t.equal(ring.oldestId, 'a')
  t.match(thrown(() => ring.deriveOldest('')), { code: INVALID })
})

t.test('lone secrets get an id derived from the secret', async (t) => {
  const a = new KeyRing(SECRET_A)
  t.match(a.currentId, /^[0-9a-f]{8}$/)
  t.same(a.ids, [a.currentId])
  t.equal(a.size, 1)
  t.equal(new KeyRing(SECRET_A).currentId, a.currentId, 'stable across instances')
  t.equal(new KeyRing(Buffer.from(SECRET_A)).currentId, a.currentId, 'string and its bytes are the same secret')
  t.not(new KeyRing(SECRET_C).currentId, a.currentId)
  t.notOk(Buffer.from(SECRET_A).toString('hex').includes(a.currentId), 'not a slice of the secret')
  fc.assert(fc.property(secretArb, secretArb, (x, y) =>
    x.equals(y) || new KeyRing(x).currentId !== new KeyRing(y).currentId))
})

t.test('the ring never shows its secrets and keeps its own copy', async (t) => {
  const secret = Buffer.from(SECRET_B)
  const ring = new KeyRing([{ id: 'main', secret }, { id: 'old', secret: SECRET_A }])
  const sealer = new Sealer(ring)
  for (const shown of [inspect(ring, { depth: 5, showHidden: true }), JSON.stringify(ring), inspect(sealer, { depth: 5 })]) {
    t.notOk(shown.includes(SECRET_A), 'string secret hidden')
    t.notOk(shown.includes(SECRET_B.toString('hex')) || shown.includes('b0, b0'), 'Buffer secret hidden')
  }
  const envelope = sealer.seal(Buffer.from('v'), Buffer.alloc(0))
  secret.fill(0)
  t.same(new Sealer(ring).open(envelope, Buffer.alloc(0)), Buffer.from('v'), 'zeroing the input does not affect the ring')
})

t.test('error messages carry neither plaintext nor key names', async (t) => {
  const sealer = sealerOf(SECRET_A)
  const key = 'handoff:{p12}:SESSION-ID-BEARER-TOKEN:sess'
  const envelope = sealEntry(sealer, key, 1, Buffer.from('PLAINTEXT-CARD-TOKEN'))
  const err = thrown(() => openEntry(sealer, key, 2, envelope))
  t.ok(isCorrupt(err))
  const message = String((err as Error).message)
  t.notMatch(message, 'SESSION-ID-BEARER-TOKEN')
  t.notMatch(message, 'PLAINTEXT')
  t.match(message, `Entry "${entryLabel(key)}" could not be opened: authentication failed`)
  t.match(entryLabel(key), /^key sha256:[0-9a-f]{12}$/)
})

t.test('entryAad encodes key and version unambiguously', async (t) => {
  t.same(entryAad('ab', 258), Buffer.from([0, 0, 0, 0, 0, 0, 1, 2, 0x61, 0x62]))
  t.same(entryAad('k', Number.MAX_SAFE_INTEGER).subarray(0, 8), Buffer.from('001fffffffffffff', 'hex'))
  t.same(entryAad('', 0), Buffer.alloc(8))
  fc.assert(fc.property(keyArb, keyArb, versionArb, versionArb, (k1, k2, v1, v2) =>
    (k1 === k2 && v1 === v2) === entryAad(k1, v1).equals(entryAad(k2, v2))))
  for (const bad of [-1, 1.5, Number.NaN, Number.MAX_SAFE_INTEGER + 1]) {
    t.match(thrown(() => entryAad('k', bad)), { code: INVALID, message: /"version": must be a non-negative safe integer/ })
  }
})
