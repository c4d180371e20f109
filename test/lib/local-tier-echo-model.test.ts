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

/*
 * The same model, widened to the other events the brief of the review named (review of b64b234): this instance's
 * touch, delete and take (lib/repository/touch.lua, remove.lua) and other instances' touches and deletes (each
 * modifies the key, so each sends one invalidation to a holder that tracks it, and ends that tracking: touch.lua and
 * remove.lua do not read the key again after writing it); writes that time out (the ticket released while the script
 * may still run); refused writes (released, the copy dropped, as TieredStore.update does); FLUSHALL (the null message,
 * in order; Redis empties its tracking table); a lost connection (messages in flight and the tracking state lost,
 * commands not yet run may still run after the reconnect, untracked until CLIENT TRACKING is on again, replies of
 * commands that ran lost); heartbeats (a PING answered on the redirect connection after every message sent before it,
 * sent only while tracking is confirmed) and lease lapses (the clock jumps past the lease; the next renewal starts a
 * new generation).
 */
type FullStep =
  | Step
  | { kind: 'sendTouch' }
  | { kind: 'sendRemove', take: boolean }
  | { kind: 'timeout' }
  | { kind: 'foreignTouch' }
  | { kind: 'foreignRemove' }
  | { kind: 'flushall' }
  | { kind: 'disconnect' }
  | { kind: 'enableTracking' }
  | { kind: 'ping' }
  | { kind: 'lapse' }

// The rarer events (a lost connection, a lapse, FLUSHALL) leave the lease void until a heartbeat renews it: kept
// rare, so that most of a history runs with the lease held and copies answering.
const fullStep: fc.Arbitrary<FullStep> = fc.oneof(
  { arbitrary: fc.constant({ kind: 'sendRead' as const }), weight: 4 },
  { arbitrary: fc.boolean().map(ok => ({ kind: 'sendWrite' as const, ok })), weight: 6 },
  { arbitrary: fc.constant({ kind: 'run' as const }), weight: 6 },
  { arbitrary: fc.constant({ kind: 'reply' as const }), weight: 6 },
  { arbitrary: fc.constant({ kind: 'message' as const }), weight: 6 },
  { arbitrary: fc.constant({ kind: 'foreignWrite' as const }), weight: 3 },
  { arbitrary: fc.constant({ kind: 'evict' as const }), weight: 2 },
  { arbitrary: fc.constant({ kind: 'sendTouch' as const }), weight: 2 },
  { arbitrary: fc.boolean().map(take => ({ kind: 'sendRemove' as const, take })), weight: 2 },
  { arbitrary: fc.constant({ kind: 'timeout' as const }), weight: 1 },
  { arbitrary: fc.constant({ kind: 'foreignTouch' as const }), weight: 2 },
  { arbitrary: fc.constant({ kind: 'foreignRemove' as const }), weight: 2 },
  { arbitrary: fc.constant({ kind: 'flushall' as const }), weight: 1 },
  { arbitrary: fc.constant({ kind: 'disconnect' as const }), weight: 1 },
  { arbitrary: fc.constant({ kind: 'enableTracking' as const }), weight: 3 },
  { arbitrary: fc.constant({ kind: 'ping' as const }), weight: 3 },
  { arbitrary: fc.constant({ kind: 'lapse' as const }), weight: 1 }
)

const LEASE_MS = 1000

interface FullCommand { op: 'read' | 'write' | 'touch' | 'remove' | 'take', ok: boolean, ticket?: FillTicket, released: boolean }
interface FullReply extends FullCommand { version: number, deleted: boolean, applied: boolean }
type Message = { kind: 'inv', version: number } | { kind: 'null', version: number } | { kind: 'pong', sentAt: number }

/** Replays `steps` of the widened model; returns the first violation, or undefined. */
function replayFull (steps: FullStep[]): string | undefined {
  let clock = 10_000
  const tier = new LocalTier({ partitions: 1, stripes: 1, maxBytes: 1 << 20, ttlMs: 600_000, leaseMs: LEASE_MS, reliable: false, now: Date.now, clock: () => clock, repository: 'model' })
  tier.onHeartbeat(clock)
  let version = 1 // the key exists at v1
  let deleted = false // a tombstone (or nothing) is stored
  let tracked = false // whether Redis's tracking table holds the key for this instance's command connection
  let trackingOn = true // CLIENT TRACKING is on for the current command connection (confirmed)
  const sent: FullCommand[] = []
  const replies: FullReply[] = []
  const messages: Message[] = []
  let arrived = 0
  let acknowledged = 0 // this instance's newest acknowledged write or delete
  const farFuture = (): number => Date.now() + 600_000

  const modify = (): void => { // any modification of the key: one message to this instance if it tracks the key
    if (tracked) messages.push({ kind: 'inv', version })
    tracked = false
  }
  const track = (): void => { if (trackingOn) tracked = true }
  const release = (c: FullCommand): void => {
    if (c.released) return
    c.released = true
    if (c.ticket !== undefined) tier.release(c.ticket)
  }

  for (const [i, s] of steps.entries()) {
    switch (s.kind) {
      case 'sendRead':
        sent.push({ op: 'read', ok: true, ticket: tier.open('k', 0), released: false })
        break
      case 'sendWrite':
        sent.push({ op: 'write', ok: s.ok, ticket: tier.open('k', 0, true), released: false })
        break
      case 'sendTouch':
        sent.push({ op: 'touch', ok: true, released: false })
        break
      case 'sendRemove':
        tier.drop('k', 0) // delete and take drop the copy before their round trip
        sent.push({ op: s.take ? 'take' : 'remove', ok: true, released: false })
        break
      case 'run': {
        const c = sent.shift()
        if (c === undefined) break
        track() // every script and read begins with a read of the key
        let applied = false
        if (c.op === 'write' && c.ok) {
          version++
          deleted = false
          modify() // HSET: the echo; PEXPIRE finds the key untracked
          track() // HEXISTS reads it again
          applied = true
        } else if (c.op === 'touch' && !deleted) {
          modify() // HSET e; PEXPIRE finds it untracked; not read again
          applied = true
        } else if ((c.op === 'remove') || (c.op === 'take' && !deleted)) {
          version++
          deleted = true
          modify() // HDEL; HSET and PEXPIRE find it untracked; not read again
          applied = true
        }
        replies.push({ ...c, version, deleted, applied })
        break
      }
      case 'reply': {
        const r = replies.shift()
        if (r === undefined || r.released) break
        r.released = true
        if (r.op === 'read') {
          tier.fill(r.ticket as FillTicket, r.deleted
            ? { value: undefined, version: r.version, epoch: 'e', expiresAt: 0, bytes: 0 }
            : { value: { v: r.version }, version: r.version, epoch: 'e', expiresAt: farFuture(), bytes: 8 })
        } else if (r.op === 'write') {
          if (!r.ok) { tier.release(r.ticket as FillTicket); tier.drop('k', 0); break } // refused: TieredStore.update
          tier.fill(r.ticket as FillTicket, { value: { v: r.version }, version: r.version, epoch: 'e', expiresAt: farFuture(), bytes: 8 })
          acknowledged = Math.max(acknowledged, r.version)
        } else if (r.op === 'touch') {
          if (r.applied) tier.extend('k', 0, farFuture())
          else tier.drop('k', 0)
        } else {
          if (r.op === 'remove') tier.drop('k', 0)
          if (r.applied) acknowledged = Math.max(acknowledged, r.version)
        }
        break
      }
      case 'timeout': {
        // The oldest write not answered yet fails on its deadline: released, the copy kept (coherence on).
        const c = [...replies, ...sent].find(c => c.op === 'write' && !c.released)
        if (c !== undefined) release(c)
        break
      }
      case 'message': {
        const m = messages.shift()
        if (m === undefined) break
        if (m.kind === 'pong') { tier.onHeartbeat(m.sentAt); break }
        arrived = Math.max(arrived, m.version)
        if (m.kind === 'null') tier.onResync()
        else tier.onInvalidation({ key: 'k', version: Number.POSITIVE_INFINITY, partition: 0, sequence: 0, epoch: '' })
        break
      }
      case 'foreignWrite':
        version++
        deleted = false
        modify()
        break
      case 'foreignTouch':
        if (!deleted) modify()
        break
      case 'foreignRemove': // another instance's delete or take, or the entry expiring in Redis
        if (!deleted) { version++; deleted = true; modify() }
        break
      case 'evict':
        if (tracked) { messages.push({ kind: 'inv', version: 0 }); tracked = false }
        break
      case 'flushall':
        version++
        deleted = true
        if (trackingOn) messages.push({ kind: 'null', version })
        tracked = false
        break
      case 'disconnect':
        // Either connection lost: what was on its way is lost, the tracking state too; replies of commands that ran
        // are lost (the calls fail); commands not run yet may run after the reconnect. The hub resyncs at once.
        messages.length = 0
        tracked = false
        trackingOn = false
        for (const r of replies) release(r)
        replies.length = 0
        tier.onResync()
        break
      case 'enableTracking':
        trackingOn = true
        break
      case 'ping':
        if (trackingOn) messages.push({ kind: 'pong', sentAt: clock })
        break
      case 'lapse':
        clock += LEASE_MS + 1
        break
    }
    clock += 1
    const copy = tier.get('k', 0, 0)
    if (copy === undefined) continue
    const pending = messages.some(m => m.kind !== 'pong')
    const at = `step ${i} (${s.kind}): copy v${copy.version}, Redis v${version}${deleted ? ' (deleted)' : ''}`
    if (copy.version < acknowledged) return `${at}: older than this instance's acknowledged v${acknowledged}`
    if (copy.version > version) return `${at}: newer than anything written`
    if (copy.version < arrived) return `${at}: kept after the invalidation of v${arrived} arrived`
    if (!pending && copy.version < version) return `${at}: nothing more is on its way to drop it`
  }
  return undefined
}

t.test('widened model (touch, delete, take, timeouts, refusals, FLUSHALL, reconnects, lapses): no copy that may not answer', async t => {
  let checked = 0
  fc.assert(fc.property(fc.array(fullStep, { minLength: 1, maxLength: 40, size: 'max' }), steps => {
    checked++
    const violation = replayFull(steps)
    if (violation !== undefined) throw new Error(violation)
  }), { numRuns: 20000 })
  t.equal(checked, 20000, 'every generated history was replayed')
})
