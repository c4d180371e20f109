/**
 * BUZhash (a cyclic polynomial hash) with a 64-bit state, used to spread server-generated random ids (session ids,
 * TLS session ids, cart ids) over partitions: `h = rotl1(h) ^ T[byte]` per input byte.
 *
 * Why this hash: it is a table lookup, a rotate and an XOR per byte, so it runs in plain JS with no allocation, and its output is evenly spread when the input already is (random ids).
 * The 64-bit state is kept in two 32-bit halves (`hi`, `lo`) so the hot path needs no BigInt.
 *
 * Documented limits (it is a spreading function, not a general-purpose or keyed hash):
 * - Equal characters 64 positions apart cancel: the earlier one has been rotated by 64 more, which is the identity on
 *   a 64-bit state, so `p + 'x' + m + 'x' + q` and `p + 'y' + m + 'y' + q` collide whenever `m` is 63 bytes long.
 * - It is linear under XOR: for equal-length parts, `h(a+c) ^ h(a+d) ^ h(b+c) ^ h(b+d) === 0`, so related keys
 *   cancel and whoever knows three of them knows the fourth hash.
 * - It is not keyed: anyone can compute it, so an attacker who chooses the strings can pile them onto one
 *   partition. Never partition user-chosen strings (user names, e-mail addresses, client-sent ids) with it.
 * - A UTF-16 code unit below 256 is one byte, any other is two (low, high), so `'\u0100'` and `'\u0000\u0001'`
 *   collide; irrelevant for ASCII ids.
 */

/** Fixed seed: the table, and with it every hash and every key's partition, must never change between releases. */
const TABLE_SEED = 0x5eed_b0a7

/** murmur3's fmix32 finalizer: a bijection on 32 bits in which every input bit affects every output bit. */
export function fmix32 (x: number): number {
  let h = x | 0
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b)
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35)
  return (h ^ (h >>> 16)) >>> 0
}

/** splitmix32: a small, well-mixed deterministic PRNG in 32-bit math (a Weyl sequence through fmix32), used only to build the table. */
function splitmix32 (seed: number): () => number {
  let state = seed | 0
  return () => {
    state = (state + 0x9e3779b9) | 0
    return fmix32(state)
  }
}

/**
 * Builds the 256 x 64-bit table so that every bit column holds exactly 128 ones: for each bit position a column of
 * 128 ones and 128 zeros is shuffled (Fisher-Yates) with the seeded PRNG. Balanced columns mean each output bit is
 * flipped by exactly half of the byte values, so no bit of the hash is biased toward 0 or 1.
 */
function buildTable (seed: number): { hi: Uint32Array, lo: Uint32Array } {
  const next = splitmix32(seed)
  const hi = new Uint32Array(256)
  const lo = new Uint32Array(256)
  const column = new Uint8Array(256)
  for (let bit = 0; bit < 64; bit++) {
    for (let i = 0; i < 256; i++) column[i] = i < 128 ? 1 : 0
    for (let i = 255; i > 0; i--) {
      // Multiply-high maps a 32-bit draw onto 0..i; its bias (< 2^-24) is irrelevant to a fixed table.
      const j = Math.floor((next() / 0x1_0000_0000) * (i + 1))
      const t = column[i]!
      column[i] = column[j]!
      column[j] = t
    }
    const target = bit < 32 ? lo : hi
    const mask = (1 << (bit & 31)) >>> 0
    for (let i = 0; i < 256; i++) {
      if (column[i] === 1) target[i] = (target[i]! | mask) >>> 0
    }
  }
  return { hi, lo }
}

const TABLE = buildTable(TABLE_SEED)
const TABLE_HI = TABLE.hi
const TABLE_LO = TABLE.lo

/**
 * A copy of the table (entry `i` is `hi[i] * 2^32 + lo[i]`), exported for tests. Writing to it does not change the
 * hash: the hot path reads a private copy.
 */
export const BUZHASH_TABLE: Readonly<{ hi: Uint32Array, lo: Uint32Array }> = Object.freeze({
  hi: TABLE_HI.slice(),
  lo: TABLE_LO.slice()
})

/** High half of the state left by the last `run`, so `buzhash64` can read it without `run` allocating. */
let lastHi = 0

/** The hash loop; returns the low half (signed) and leaves the high half in `lastHi`. */
function run (s: string): number {
  let hi = 0
  let lo = 0
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    let t = hi
    if (c < 256) {
      hi = ((hi << 1) | (lo >>> 31)) ^ TABLE_HI[c]!
      lo = ((lo << 1) | (t >>> 31)) ^ TABLE_LO[c]!
    } else {
      const low = c & 0xff
      const high = c >>> 8
      hi = ((hi << 1) | (lo >>> 31)) ^ TABLE_HI[low]!
      lo = ((lo << 1) | (t >>> 31)) ^ TABLE_LO[low]!
      t = hi
      hi = ((hi << 1) | (lo >>> 31)) ^ TABLE_HI[high]!
      lo = ((lo << 1) | (t >>> 31)) ^ TABLE_LO[high]!
    }
  }
  lastHi = hi
  return lo
}

/** The full 64-bit BUZhash of `s`, as two unsigned 32-bit halves. */
export function buzhash64 (s: string): { hi: number, lo: number } {
  const lo = run(s)
  return { hi: lastHi >>> 0, lo: lo >>> 0 }
}

/** The low 32 bits of `buzhash64(s)`, unsigned. Allocates nothing: this is what partitioning calls per request. */
export function buzhash32 (s: string): number {
  return run(s) >>> 0
}
