/**
 * LocalTier under client tracking, against a model of what one redis-server sends one instance: random interleavings
 * of this instance's reads and writes (sent, run by Redis in order, answered in order), other instances' writes,
 * tracking-table evictions, and the invalidations Redis pushes on the redirect connection (in the order it ran the
 * commands, but arriving at any point relative to the replies on the command connection). The same key throughout,
 * as on a hot cart or session. After every step the copy the tier would answer must be one that is allowed:
 *
 * - never older than this instance's own acknowledged writes (read your writes), never newer than Redis;
 * - never older than a write whose invalidation has arrived;
 * - whenever no invalidation is on its way, the current version (a write this instance was not told of, because
 *   Redis had evicted the key from its tracking table, may not leave a copy: the eviction said so first).
 *
 * test/lib/local-tier-echo.test.ts drives the named orders one by one; this one searches the rest.
 */
import t from 'tap'
import fc from 'fast-check'
import { LocalTier, type FillTicket } from '../../lib/local-tier.js'

type Step =
  | { kind: 'sendRead' }
  | { kind: 'sendWrite', ok: boolean }
  | { kind: 'run' }
  | { kind: 'reply' }
  | { kind: 'message' }
  | { kind: 'foreignWrite' }
  | { kind: 'evict' }

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.constant({ kind: 'sendRead' as const }),
  fc.boolean().map(ok => ({ kind: 'sendWrite' as const, ok })),
  fc.constant({ kind: 'run' as const }),
  fc.constant({ kind: 'reply' as const }),
  fc.constant({ kind: 'message' as const }),
  fc.constant({ kind: 'foreignWrite' as const }),
  fc.constant({ kind: 'evict' as const })
)

interface Command { op: 'read' | 'write', ok: boolean, ticket: FillTicket }
interface Reply { op: 'read' | 'write', ok: boolean, ticket: FillTicket, version: number }

/** Replays `steps`; returns the first violation, or undefined. */
function replay (steps: Step[]): string | undefined {
  const tier = new LocalTier({ partitions: 1, stripes: 1, maxBytes: 1 << 20, ttlMs: 60_000, leaseMs: 60_000, reliable: false, now: Date.now, repository: 'model' })
  tier.onHeartbeat(performance.now())
  let version = 1 // the key exists at v1
  let tracked = false // whether Redis's tracking table holds the key for this instance
  const sent: Command[] = [] // sent, not yet run
  const replies: Reply[] = [] // run, answer not yet arrived
  /** Invalidations on their way, in the order Redis sent them: the version whose write sent it (0: an eviction). */
  const messages: number[] = []
  let arrived = 0 // the newest version whose write's invalidation has arrived
  let acknowledged = 0 // the newest version of this instance's own acknowledged writes

  const write = (): void => {
    version++
    if (tracked) messages.push(version)
    tracked = false // an invalidation ends the tracking of the key for that instance
  }

  for (const [i, s] of steps.entries()) {
    switch (s.kind) {
      case 'sendRead':
        sent.push({ op: 'read', ok: true, ticket: tier.open('k', 0) })
        break
      case 'sendWrite':
        sent.push({ op: 'write', ok: s.ok, ticket: tier.open('k', 0, true) })
        break
      case 'run': {
        const c = sent.shift()
        if (c === undefined) break
        tracked = true // both scripts and reads begin with a read of the key: it is tracked from here
        if (c.op === 'write' && c.ok) {
          write() // the script's HSET: its echo, if tracked (it is)
          tracked = true // and its HEXISTS reads it again
        }
        replies.push({ op: c.op, ok: c.ok, ticket: c.ticket, version })
        break
      }
      case 'reply': {
        const r = replies.shift()
        if (r === undefined) break
        if (r.op === 'write' && !r.ok) { tier.release(r.ticket); break }
        tier.fill(r.ticket, { value: { v: r.version }, version: r.version, epoch: 'e', expiresAt: Date.now() + 60_000, bytes: 8 })
        if (r.op === 'write') acknowledged = Math.max(acknowledged, r.version)
        break
      }
      case 'message': {
        const v = messages.shift()
        if (v === undefined) break
        arrived = Math.max(arrived, v)
        tier.onInvalidation({ key: 'k', version: Number.POSITIVE_INFINITY, partition: 0, sequence: 0, epoch: '' })
        break
      }
      case 'foreignWrite':
        write()
        break
      case 'evict':
        // Redis evicts the key from a full tracking table: it says so with an invalidation, nothing changed.
        if (tracked) { messages.push(0); tracked = false }
        break
    }
    const copy = tier.get('k', 0, 0)
    if (copy === undefined) continue
    const at = `step ${i} (${s.kind}): copy v${copy.version}, Redis v${version}`
    if (copy.version < acknowledged) return `${at}: older than this instance's acknowledged v${acknowledged}`
    if (copy.version > version) return `${at}: newer than anything written`
    if (copy.version < arrived) return `${at}: kept after the invalidation of v${arrived} arrived`
    if (messages.length === 0 && copy.version < version) return `${at}: nothing more is on its way to drop it`
  }
  return undefined
}

t.test('no interleaving of replies and invalidations leaves a copy that may not answer', async t => {
  let checked = 0
  fc.assert(fc.property(fc.array(step, { minLength: 1, maxLength: 80 }), steps => {
    checked++
    const violation = replay(steps)
    if (violation !== undefined) throw new Error(violation)
  }), { numRuns: 3000 })
  t.equal(checked, 3000, 'every generated history was replayed')
})

t.test('the model catches a tier that keeps copies: it is not vacuous', async t => {
  // A write acknowledged at v2, then another instance's write (v3) whose invalidation arrives: a tier that kept v2
  // would be wrong. Replaying with the invalidation left out of the tier shows the check fires.
  const steps: Step[] = [{ kind: 'sendWrite', ok: true }, { kind: 'run' }, { kind: 'message' }, { kind: 'reply' },
    { kind: 'foreignWrite' }, { kind: 'message' }]
  t.equal(replay(steps), undefined, 'the real tier drops v2 when v3\'s invalidation arrives')
  const original = LocalTier.prototype.onInvalidation
  LocalTier.prototype.onInvalidation = function () {}
  try {
    t.match(replay(steps), /kept after the invalidation of v3 arrived/, 'a tier ignoring invalidations is caught')
  } finally {
    LocalTier.prototype.onInvalidation = original
  }
})

t.test('histories that exercise the echo counts occur: copies survive back-to-back writes', async t => {
  // Two writes in a row, each echo arriving after the next write was sent: the tier keeps the newest copy.
  const tier = new LocalTier({ partitions: 1, stripes: 1, maxBytes: 1 << 20, ttlMs: 60_000, leaseMs: 60_000, reliable: false, now: Date.now, repository: 'model' })
  tier.onHeartbeat(performance.now())
  const w1 = tier.open('k', 0, true)
  tier.fill(w1, { value: 1, version: 2, epoch: '', expiresAt: Date.now() + 60_000, bytes: 8 })
  const w2 = tier.open('k', 0, true)
  tier.onInvalidation({ key: 'k', version: Number.POSITIVE_INFINITY, partition: 0, sequence: 0, epoch: '' })
  tier.fill(w2, { value: 2, version: 3, epoch: '', expiresAt: Date.now() + 60_000, bytes: 8 })
  t.equal(tier.get('k', 0, 0)?.version, 3, 'the second write\'s copy is held')
  t.equal(replay([{ kind: 'sendWrite', ok: true }, { kind: 'run' }, { kind: 'reply' }, { kind: 'sendWrite', ok: true },
    { kind: 'message' }, { kind: 'run' }, { kind: 'reply' }]), undefined, 'and the model allows it')
})
