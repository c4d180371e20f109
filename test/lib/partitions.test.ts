import { randomBytes } from 'node:crypto'
import t from 'tap'
import fc from 'fast-check'
import { buzhash32 } from '../../lib/buzhash.js'
import {
  MAX_PARTITIONS,
  Rendezvous,
  assertPartitionCount,
  assertPrefix,
  channelName,
  channelOf,
  entryKey,
  epochKey,
  isPartitionKey,
  partitionOf,
  partitionOfChannel,
  partitionOfKey,
  partitionTag,
  sequenceKey,
  sequenceKeyOf,
  witnessKey
} from '../../lib/partitions.js'

const invalidOption = { code: 'FST_HANDOFF_INVALID_OPTION' }

function chiSquare (counts: ArrayLike<number>, total: number): number {
  const expected = total / counts.length
  let sum = 0
  for (let i = 0; i < counts.length; i++) sum += (counts[i]! - expected) ** 2 / expected
  return sum
}

/**
 * Bounds of a chi-square statistic with `df` degrees of freedom at +-5 standard normal deviations (Wilson-Hilferty),
 * about 3e-7 on each side. Plain mean +- 5 sd would do for df = 1023, but at df = 15 the distribution is skewed
 * enough that mean + 5 sd is exceeded once in about 5,000 runs: a flaky test.
 */
function chiSquareBounds (df: number): { low: number, high: number } {
  const a = 2 / (9 * df)
  const at = (z: number): number => df * Math.max(0, 1 - a + z * Math.sqrt(a)) ** 3
  return { low: at(-5), high: at(5) }
}

t.test('assertPartitionCount accepts powers of two from 1 to 16384 only', async (t) => {
  for (let p = 1; p <= MAX_PARTITIONS; p *= 2) t.doesNotThrow(() => assertPartitionCount(p), String(p))
  for (const p of [0, -2, 3, 1000, 1.5, 32768, Number.NaN, Number.POSITIVE_INFINITY]) {
    t.throws(() => assertPartitionCount(p), invalidOption, String(p))
  }
  t.throws(() => assertPartitionCount(3), /Invalid option "partitions": must be a power of two between 1 and 16384/)
})

t.test('partitionOf is the masked BUZhash, in range, and nests when P doubles', async (t) => {
  t.equal(partitionOf('q7T2kLm9ZxR4vB8nW1cY6pHs3JdF0gEa', 1024), buzhash32('q7T2kLm9ZxR4vB8nW1cY6pHs3JdF0gEa') & 1023)
  t.equal(partitionOf('anything', 1), 0)
  fc.assert(fc.property(fc.string(), fc.integer({ min: 0, max: 13 }), (id, log2) => {
    const p = 2 ** log2
    const part = partitionOf(id, p)
    // Doubling P splits every partition in two: resharding never mixes ids of unrelated partitions.
    return Number.isInteger(part) && part >= 0 && part < p && partitionOf(id, 2 * p) % p === part
  }))
  t.pass('in range and nested for arbitrary ids')
})

t.test('1,000,000 random session ids spread evenly over 16 and 1,024 partitions', async (t) => {
  const ids = 1_000_000
  const small = new Uint32Array(16)
  const large = new Uint32Array(1024)
  const perChunk = 65_536
  for (let done = 0; done < ids; done += perChunk) {
    const n = Math.min(perChunk, ids - done)
    // 24 random bytes are exactly 32 base64url characters: the shape of a real session id, made in bulk.
    const text = randomBytes(24 * n).toString('base64url')
    for (let i = 0; i < n; i++) {
      const id = text.slice(32 * i, 32 * i + 32)
      large[partitionOf(id, 1024)]!++
      small[partitionOf(id, 16)]!++
    }
  }
  for (const counts of [small, large]) {
    const df = counts.length - 1
    const x2 = chiSquare(counts, ids)
    const { low, high } = chiSquareBounds(df)
    t.ok(x2 < high, `P = ${counts.length}: chi-square ${x2.toFixed(1)} < ${high.toFixed(1)} (df ${df})`)
    t.ok(x2 > low, `P = ${counts.length}: chi-square ${x2.toFixed(1)} > ${low.toFixed(1)}, not suspiciously even`)
  }
})

t.test('key names', async (t) => {
  t.equal(partitionTag(7), '{p7}')
  t.equal(entryKey('hs:', 7, 'abc', 'session'), 'hs:{p7}:abc:session')
  t.equal(entryKey('', 0, 'abc', 'tls'), '{p0}:abc:tls')
  t.equal(sequenceKey('hs:', 7), 'hs:{p7}:seq')
  t.equal(channelName('hs:', 7), 'hs:{p7}:inv')
  t.equal(sequenceKeyOf('hs:{p7}:abc:session'), 'hs:{p7}:seq')
  t.equal(channelOf('hs:{p7}:abc:session'), 'hs:{p7}:inv')
  t.equal(partitionOfKey('hs:{p16383}:abc:cart'), 16383)
  t.equal(partitionOfChannel('hs:{p7}:inv'), 7)
})

t.test('keys round trip: the tag, sequence key and channel come back from any entry key', async (t) => {
  const prefix = fc.string({ maxLength: 64 }).filter((s) => !s.includes('{') && !s.includes('}'))
  const partition = fc.integer({ min: 0, max: MAX_PARTITIONS - 1 })
  // Ids and kinds may contain anything, braces too: Redis only looks at the first '{', which is the tag's.
  fc.assert(fc.property(prefix, partition, fc.string(), fc.string(), (prefix, p, id, kind) => {
    assertPrefix(prefix)
    const key = entryKey(prefix, p, id, kind)
    return key.startsWith(prefix + partitionTag(p)) &&
      partitionOfKey(key) === p &&
      sequenceKeyOf(key) === sequenceKey(prefix, p) &&
      channelOf(key) === channelName(prefix, p) &&
      partitionOfKey(sequenceKey(prefix, p)) === p &&
      partitionOfChannel(channelName(prefix, p)) === p &&
      partitionOfChannel(sequenceKey(prefix, p)) === -1
  }))
  t.pass('round trip holds')
})

t.test('keys without a usable {p<n>} tag', async (t) => {
  const notTagged = ['', 'abc', 'hs:p7:abc', '{x1}:a', '{p}:a', '{p01}:a', '{p-1}:a', '{p1', '{p16384}:a',
    '{p99999999999}:a', 'hs:{q}{p1}:a', '{}{p1}:a', 'hs:{P1}:a']
  for (const key of notTagged) {
    t.equal(partitionOfKey(key), -1, JSON.stringify(key))
    t.equal(partitionOfChannel(key + ':inv'), -1, JSON.stringify(key + ':inv'))
  }
  for (const channel of ['hs:{p7}:seq', 'hs:{p7}:inv:x', 'hs:{p7}:abc:inv', 'hs:{p7}inv', '{p7}']) {
    t.equal(partitionOfChannel(channel), -1, JSON.stringify(channel))
  }
  const secret = 'hs:session-id-that-must-not-be-logged:session'
  for (const fn of [sequenceKeyOf, channelOf]) {
    t.throws(() => fn(secret), invalidOption)
    try {
      fn(secret)
    } catch (err) {
      t.notMatch((err as Error).message, 'session-id-that-must-not-be-logged', 'the key stays out of the message')
    }
  }
})

t.test('assertPrefix', async (t) => {
  for (const prefix of ['', 'hs:', 'a'.repeat(64), 'app:prod:handoff:']) {
    t.doesNotThrow(() => assertPrefix(prefix), JSON.stringify(prefix))
  }
  for (const prefix of ['a'.repeat(65), 'a{b', 'a}', '{p1}', 'x{']) {
    t.throws(() => assertPrefix(prefix), invalidOption, JSON.stringify(prefix))
  }
  t.throws(() => assertPrefix(42 as unknown as string), invalidOption, 'not a string')
  t.throws(() => assertPrefix('a{'), /Invalid option "prefix"/)
})

const FOUR = ['redis-a:6379', 'redis-b:6379', 'redis-c:6379', 'redis-d:6379']
const GOLDEN_FIRST_8 = ['redis-c:6379', 'redis-d:6379', 'redis-a:6379', 'redis-d:6379',
  'redis-b:6379', 'redis-d:6379', 'redis-d:6379', 'redis-d:6379']

t.test('rendezvous: deterministic, independent of listing order, balanced', async (t) => {
  const r = new Rendezvous(FOUR)
  const assignment = r.assignment(1024)
  t.equal(assignment.length, 1024)
  t.same(new Rendezvous(FOUR).assignment(1024), assignment, 'same nodes, same assignment')
  t.same(new Rendezvous([...FOUR].reverse()).assignment(1024), assignment, 'listing order does not matter')
  for (const p of [0, 1, 511, 1023]) t.equal(r.nodeFor(p), assignment[p])
  // Golden: a change of the weight function would move data between nodes on upgrade.
  t.same(assignment.slice(0, 8), GOLDEN_FIRST_8)

  const counts = FOUR.map((node) => assignment.filter((n) => n === node).length)
  const { low, high } = chiSquareBounds(FOUR.length - 1)
  const x2 = chiSquare(counts, 1024)
  t.ok(x2 > low && x2 < high, `node loads ${counts.join(', ')}: chi-square ${x2.toFixed(2)} < ${high.toFixed(1)}`)

  t.same(new Rendezvous(['only']).assignment(16), new Array(16).fill('only'))
})

t.test('rendezvous: adding a 5th node moves about 1/5 of the partitions, all to the new node', async (t) => {
  const before = new Rendezvous(FOUR).assignment(1024)
  const after = new Rendezvous([...FOUR, 'redis-e:6379']).assignment(1024)
  let moved = 0
  let elsewhere = 0
  for (let p = 0; p < 1024; p++) {
    if (before[p] === after[p]) continue
    moved++
    if (after[p] !== 'redis-e:6379') elsewhere++
  }
  const fraction = moved / 1024
  t.ok(fraction > 0.12 && fraction < 0.28, `moved ${moved} of 1024 (${fraction.toFixed(3)})`)
  t.equal(elsewhere, 0, 'every moved partition moved to the new node')
})

t.test('rendezvous: removing a node moves only that node\'s partitions', async (t) => {
  const before = new Rendezvous(FOUR).assignment(1024)
  const gone = 'redis-b:6379'
  const after = new Rendezvous(FOUR.filter((n) => n !== gone)).assignment(1024)
  let kept = 0
  for (let p = 0; p < 1024; p++) {
    if (before[p] === gone) t.not(after[p], gone)
    else if (before[p] === after[p]) kept++
  }
  t.equal(kept, before.filter((n) => n !== gone).length, 'partitions of the remaining nodes stay put')
})

t.test('rendezvous: invalid nodes and partitions are refused', async (t) => {
  const bad: unknown[] = [[], ['redis-a:6379', ''], ['redis-a:6379', 'redis-a:6379'], [1], 'redis-a:6379']
  for (const nodes of bad) {
    t.throws(() => new Rendezvous(nodes as readonly string[]), invalidOption, JSON.stringify(nodes))
  }
  t.throws(() => new Rendezvous(['x', 'x']), /Invalid option "nodes": node id "x" is listed twice/)
  const r = new Rendezvous(FOUR)
  for (const p of [-1, 1.5, MAX_PARTITIONS, Number.NaN]) t.throws(() => r.nodeFor(p), invalidOption, String(p))
  t.throws(() => r.assignment(1000), invalidOption)
})

t.test('isPartitionKey: the sequence, epoch and witness keys, never an entry (whatever its id and kind)', async t => {
  for (const p of [0, 7, MAX_PARTITIONS - 1]) {
    t.ok(isPartitionKey(sequenceKey('app:', p)))
    t.ok(isPartitionKey(epochKey('app:', p)))
    t.ok(isPartitionKey(witnessKey('app:', p)))
    t.notOk(isPartitionKey(channelName('app:', p)), 'a channel is not a key')
    for (const [id, kind] of [['seq', 'x'], ['a', 'seq'], ['epoch', 'witness'], ['s1', 'session']]) {
      t.notOk(isPartitionKey(entryKey('app:', p, id as string, kind as string)), `entry ${id}:${kind}`)
    }
  }
  t.notOk(isPartitionKey('no-tag:seq'), 'no partition tag')
})
