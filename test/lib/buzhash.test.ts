import t from 'tap'
import fc from 'fast-check'
import { BUZHASH_TABLE, buzhash32, buzhash64 } from '../../lib/buzhash.js'

const MASK64 = (1n << 64n) - 1n

/** The bytes BUZhash consumes: a code unit below 256 is one byte, any other is two (low, high). */
function bytesOf (s: string): number[] {
  const out: number[] = []
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 256) out.push(c)
    else out.push(c & 0xff, c >>> 8)
  }
  return out
}

function entry (i: number): bigint {
  return (BigInt(BUZHASH_TABLE.hi[i]!) << 32n) | BigInt(BUZHASH_TABLE.lo[i]!)
}

/** Slow, obviously correct BigInt version of the same hash, to check the two-halves arithmetic against. */
function reference (s: string): bigint {
  let h = 0n
  for (const b of bytesOf(s)) {
    h = ((h << 1n) | (h >> 63n)) & MASK64
    h ^= entry(b)
  }
  return h
}

function as64 (h: { hi: number, lo: number }): bigint {
  return (BigInt(h.hi) << 32n) | BigInt(h.lo)
}

/** Strings whose code units are all below 256, so each is exactly one byte (one position) of the hash. */
const latin1 = (length: number): fc.Arbitrary<string> =>
  fc.array(fc.integer({ min: 0, max: 255 }), { minLength: length, maxLength: length })
    .map((codes) => String.fromCharCode(...codes))

const anyString = fc.oneof(fc.string(), fc.string({ unit: 'binary' }), latin1(32))

t.test('golden vectors: a change to the table or the algorithm changes every partition', async (t) => {
  const vectors: Array<[string, number, number]> = [
    ['', 0x00000000, 0x00000000],
    ['a', 0xb7869e54, 0x773d067b],
    ['ab', 0x8a138903, 0x3f467eff],
    ['hello world', 0xc0631ddc, 0xb91929bf],
    ['q7T2kLm9ZxR4vB8nW1cY6pHs3JdF0gEa', 0x4c06e537, 0xbb7c83df],
    ['Grüße, 世界 😀', 0xae490938, 0x3ed18125],
    ['x'.repeat(100), 0x189c784a, 0xf6fbbe50]
  ]
  for (const [input, hi, lo] of vectors) {
    t.same(buzhash64(input), { hi, lo }, `buzhash64(${JSON.stringify(input)})`)
    t.equal(buzhash32(input), lo, `buzhash32(${JSON.stringify(input)})`)
  }
})

t.test('table: every bit column holds exactly 128 ones, entries are distinct', async (t) => {
  t.equal(BUZHASH_TABLE.hi.length, 256)
  t.equal(BUZHASH_TABLE.lo.length, 256)
  const wrong: number[] = []
  for (let bit = 0; bit < 64; bit++) {
    const half = bit < 32 ? BUZHASH_TABLE.lo : BUZHASH_TABLE.hi
    let ones = 0
    for (let i = 0; i < 256; i++) ones += (half[i]! >>> (bit & 31)) & 1
    if (ones !== 128) wrong.push(bit)
  }
  t.same(wrong, [], 'bit columns without exactly 128 ones')
  const entries = new Set<bigint>()
  for (let i = 0; i < 256; i++) entries.add(entry(i))
  t.equal(entries.size, 256)
})

t.test('the exported table is a copy: writing to it does not change the hash', async (t) => {
  const before = buzhash32('a')
  const saved = BUZHASH_TABLE.lo[97]!
  BUZHASH_TABLE.lo[97] = saved ^ 1
  try {
    t.equal(buzhash32('a'), before)
  } finally {
    BUZHASH_TABLE.lo[97] = saved
  }
})

t.test('matches a BigInt reference implementation (rotation across the halves, two-byte code units)', async (t) => {
  t.equal(as64(buzhash64('a')), entry(97), 'one byte: the table entry itself')
  t.equal(as64(buzhash64('\u0100')), reference('\u0000\u0001'), 'a code unit >= 256 is its low then high byte')
  fc.assert(fc.property(anyString, (s) => as64(buzhash64(s)) === reference(s)))
  t.pass('buzhash64 equals the BigInt reference on arbitrary strings')
})

t.test('buzhash32 is the low half of buzhash64, unsigned and deterministic', async (t) => {
  fc.assert(fc.property(anyString, (s) => {
    const h = buzhash64(s)
    const low = buzhash32(s)
    return low === h.lo && low === buzhash32(s) &&
      Number.isInteger(low) && low >= 0 && low < 2 ** 32 &&
      Number.isInteger(h.hi) && h.hi >= 0 && h.hi < 2 ** 32
  }))
  t.pass('property holds on arbitrary strings')
})

t.test('documented limit: equal characters 64 positions apart cancel', async (t) => {
  // 'x' at two positions 64 apart contributes rotl(T[x], k) ^ rotl(T[x], k + 64) = 0, and so does 'y'.
  const middle = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_' // 64 chars
  const gap63 = middle.slice(0, 63)
  t.equal(gap63.length, 63)
  const a = 'a' + 'x' + gap63 + 'x' + 'b'
  const b = 'a' + 'y' + gap63 + 'y' + 'b'
  t.not(a, b)
  t.same(buzhash64(a), buzhash64(b), 'the pair cancels: which character it is does not matter')
  t.equal(buzhash32(a), buzhash32(b))

  // 63 or 65 positions apart is no special distance: the same swap changes the hash.
  for (const gap of [middle.slice(0, 62), middle]) {
    t.not(buzhash32('a' + 'x' + gap + 'x' + 'b'), buzhash32('a' + 'y' + gap + 'y' + 'b'), `${gap.length + 1} apart`)
  }

  fc.assert(fc.property(
    fc.string(), latin1(63), fc.string(), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }),
    (prefix, gap, suffix, x, y) => {
      const cx = String.fromCharCode(x)
      const cy = String.fromCharCode(y)
      return buzhash32(prefix + cx + gap + cx + suffix) === buzhash32(prefix + cy + gap + cy + suffix)
    }
  ))
  t.pass('any pair of equal bytes 64 positions apart cancels, whatever surrounds it')
})

t.test('documented limit: related keys cancel under XOR', async (t) => {
  fc.assert(fc.property(latin1(12), latin1(12), latin1(20), latin1(20), (p, q, r, s) => {
    const x = buzhash64(p + r)
    const y = buzhash64(p + s)
    const z = buzhash64(q + r)
    const w = buzhash64(q + s)
    return ((x.hi ^ y.hi ^ z.hi ^ w.hi) | (x.lo ^ y.lo ^ z.lo ^ w.lo)) === 0
  }))
  t.pass('h(p+r) ^ h(p+s) ^ h(q+r) ^ h(q+s) === 0 for equal-length parts')
})
