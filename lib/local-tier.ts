import { LRUCache } from 'lru-cache'
import type { Invalidation, InvalidationListener } from './repository/types.js'

/** A copy of a repository entry held by this instance. */
export interface LocalCopy {
  readonly value: unknown
  readonly version: number
  /** The repository epoch the entry was written in ('' for entries written before epochs). */
  readonly epoch: string
  expiresAt: number
  readonly size: number
  /** The lease generation its read or write started in: a copy from before a lapse never answers as fresh. */
  readonly generation: number
}

/** What the local tier hears from the repository and does about it; mirrored into the store's counters. */
export interface LocalTierCounters {
  invalidations: number
  gapsRepaired: number
  resyncs: number
  leaseSuspensions: number
  fillsSkipped: number
  /** Epoch changes seen: a partition or a node of the repository lost its data (FLUSHALL, empty restart, empty failover). */
  resets: number
  /** Witness reads that failed or went unanswered: the node could not confirm it kept its data. */
  witnessErrors: number
}

export interface LocalTierLogger {
  warn: (obj: object, msg?: string) => void
}

export interface LocalTierOptions {
  partitions: number
  /** Power of two, at most `partitions`; each stripe is an LRU with its share of `maxBytes`. */
  stripes: number
  /** Upper bound in bytes; 0 keeps nothing. */
  maxBytes: number
  /** How long a copy may answer without asking the repository, ms; 0 keeps nothing. */
  ttlMs: number
  /** Follow invalidations with this lease (ms), or undefined: no coherence, copies answer until `ttlMs`. */
  leaseMs: number | undefined
  /** True when delivery cannot be lost (in-process repository): no lease needed. */
  reliable: boolean
  /** Clock of entry expiry (ms since the epoch). */
  now: () => number
  /** Monotonic clock of the lease. Default: performance.now. */
  clock?: () => number
  logger?: LocalTierLogger | undefined
  /** Names the repository in the reset warning. */
  repository: string
}

/** A read or write in flight: whether its result may still fill the local tier when it returns. */
export interface FillTicket {
  readonly key: string
  readonly partition: number
  readonly flushes: number
  readonly partitionFlushes: number
  readonly generation: number
  maxNotified: number
  refs: number
  /**
   * A write under client tracking (version-less invalidations, no NOLOOP): its own echo is one of the invalidations
   * of the key it will hear, so one alone does not void the fill; see `fill`. False once the ticket is shared.
   */
  echo: boolean
  /** Version-less invalidations of the key heard while open. */
  heard: number
}

/** What a repository reply says about a key, to fill the local tier with (value undefined: nothing to keep). */
export interface Fill {
  value: unknown
  version: number
  epoch: string
  expiresAt: number
  /** Sealed size, for the byte bound. */
  bytes: number
}

const KEY_OVERHEAD = 96
const RESET_LOG_INTERVAL_MS = 60_000

/**
 * One instance's local tier (striped lru-cache) and what keeps it coherent with the repository:
 * - invalidations drop copies older than the notified version, or from another epoch;
 * - a per-partition sequence gap (lost message) or a resync (reconnect) flushes the affected copies: repair by
 *   negative acknowledgement, as Hazelcast's near cache does;
 * - an epoch change (seen in an invalidation or a node's witness on the heartbeat) is a reset: the
 *   repository forgot, versions restart at 1, and every copy of the affected partitions is dropped;
 * - a lease renewed by heartbeats: copies answer only while it is held; after a renewal that follows a lapse, copies
 *   from before it never answer as fresh again (messages may have been lost meanwhile), so staleness stays bounded
 *   by the lease on a silently dead network;
 * - fill tickets stop a reply from filling a version that an invalidation, which overtook the reply on the other
 *   connection, already superseded, or that a flush made while it was in flight voided.
 */
export class LocalTier implements InvalidationListener {
  readonly counters: LocalTierCounters = { invalidations: 0, gapsRepaired: 0, resyncs: 0, leaseSuspensions: 0, fillsSkipped: 0, resets: 0, witnessErrors: 0 }
  private readonly stripes: Array<LRUCache<string, LocalCopy>>
  private readonly stripeMask: number
  private readonly ttlMs: number
  private readonly partitions: number
  /** Follow invalidations with this lease (ms), or undefined: no coherence. */
  readonly leaseMs: number | undefined
  private reliable: boolean
  private readonly now: () => number
  private readonly clock: () => number
  private readonly logger: LocalTierLogger | undefined
  private readonly repository: string
  private readonly lastSequence: Float64Array
  /** The epoch each partition is known to be in (undefined: not learned yet, or reset). */
  private readonly epochs: Array<string | undefined>
  private readonly witnesses = new Map<string, string>()
  /** Flush counters: a ticket opened before a flush of its partition (or of everything) may not fill. */
  private flushes = 0
  private readonly partitionFlushes: Uint32Array
  private readonly tickets = new Map<string, FillTicket>()
  /**
   * Client tracking, per key: how many of this instance's own acknowledged writes have an echo not heard yet (a lower
   * bound: never more than are still on their way). While it is above zero, the next invalidation heard was sent
   * before one of those writes' echoes, so it tells of nothing newer than that write; see `onInvalidation`.
   */
  private readonly echoes = new Map<string, { pending: number, partition: number, generation: number }>()
  /**
   * The lease, per partition: when the newest heartbeat that covers it was sent. A node's heartbeat covers the
   * partitions it serves, so one node's lapse or resync suspends only its own partitions' copies.
   */
  private readonly leaseFrom: Float64Array
  /** The newest answered heartbeat per partition, which a resync does not void: it dates what copies of this generation may know. */
  private readonly heardFrom: Float64Array
  /**
   * Per partition, +1 each time its lease is renewed after a lapse: messages may have been lost meanwhile, so copies
   * whose read or write started before are not served as fresh any more. They are not flushed: while the repository
   * is unreachable they may still answer, flagged degraded.
   */
  private readonly generation: Uint32Array
  private lapseCounted = false
  private readonly allPartitions: readonly number[]
  private resetLoggedAt = Number.NEGATIVE_INFINITY
  private resetsUnlogged = 0

  constructor (opts: LocalTierOptions) {
    this.partitions = opts.partitions
    this.stripeMask = opts.stripes - 1
    this.ttlMs = opts.ttlMs
    this.leaseMs = opts.leaseMs
    this.reliable = opts.reliable
    this.now = opts.now
    this.clock = opts.clock ?? (() => performance.now())
    this.logger = opts.logger
    this.repository = opts.repository
    this.lastSequence = new Float64Array(opts.partitions)
    this.epochs = new Array<string | undefined>(opts.partitions)
    this.partitionFlushes = new Uint32Array(opts.partitions)
    this.leaseFrom = new Float64Array(opts.partitions).fill(Number.NEGATIVE_INFINITY)
    this.heardFrom = new Float64Array(opts.partitions).fill(Number.NEGATIVE_INFINITY)
    this.generation = new Uint32Array(opts.partitions)
    this.allPartitions = Array.from({ length: opts.partitions }, (_, p) => p)
    this.stripes = []
    if (opts.maxBytes === 0 || opts.ttlMs === 0) return
    const perStripe = Math.max(1, Math.floor(opts.maxBytes / opts.stripes))
    for (let i = 0; i < opts.stripes; i++) {
      this.stripes.push(new LRUCache<string, LocalCopy>({
        maxSize: perStripe,
        sizeCalculation: c => c.size,
        ttl: opts.ttlMs,
        ttlAutopurge: false,
        updateAgeOnGet: false
      }))
    }
  }

  /** Whether invalidations are followed (coherence on). */
  get coherent (): boolean { return this.leaseMs !== undefined }

  /** Whether delivery can be lost, as the subscription reports it once it exists: unreliable waits for a heartbeat. */
  setReliable (reliable: boolean): void {
    if (reliable === this.reliable) return
    this.reliable = reliable
    if (!reliable) this.leaseFrom.fill(Number.NEGATIVE_INFINITY)
  }

  /**
   * May local copies answer now? True while the lease is held (or coherence is off, or delivery is reliable): for
   * `partition`, or, without one, for every partition.
   */
  readable (partition?: number): boolean {
    if (this.leaseMs === undefined || this.reliable) return true
    const from = partition === undefined ? this.oldest(this.leaseFrom) : (this.leaseFrom[partition] ?? Number.NEGATIVE_INFINITY)
    return this.clock() - from <= this.leaseMs
  }

  /** Ms since the oldest partition's newest answered heartbeat was sent (0 when no lease is needed, Infinity before the first). */
  get leaseAge (): number {
    return this.leaseMs === undefined || this.reliable ? 0 : this.clock() - this.oldest(this.leaseFrom)
  }

  /**
   * performance.now() of the newest answered heartbeat that covers `partition` (without one: the oldest partition's),
   * also after a resync voided the lease (copies of the current generation knew every message sent until then): now
   * with reliable (in-process) delivery, which has nothing to lose; never without coherence (no heartbeat proves
   * anything then).
   */
  heardAt (partition?: number): number {
    if (this.reliable) return this.clock()
    if (this.leaseMs === undefined) return Number.NEGATIVE_INFINITY
    return partition === undefined ? this.oldest(this.heardFrom) : (this.heardFrom[partition] ?? Number.NEGATIVE_INFINITY)
  }

  /** The copy of `key` that may answer now: readable, unexpired, at or above `minVersion`, of the known epoch. */
  get (key: string, partition: number, minVersion: number): LocalCopy | undefined {
    if (!this.readable(partition)) {
      if (!this.lapseCounted) { this.lapseCounted = true; this.counters.leaseSuspensions++ }
      return undefined
    }
    const copy = this.stripeOf(partition)?.get(key)
    if (copy === undefined || copy.generation !== this.generation[partition] || copy.version < minVersion || copy.expiresAt <= this.now()) return undefined
    return copy
  }

  /** The copy of `key`, if any, whatever the lease says (for answers while the repository is unreachable). */
  peek (key: string, partition: number): LocalCopy | undefined {
    const copy = this.stripeOf(partition)?.peek(key)
    if (copy === undefined || copy.expiresAt <= this.now()) return undefined
    return copy
  }

  /**
   * The copy that may answer while the repository is unreachable (flagged degraded), whatever the lease says: only one
   * of the current generation, since an older one may predate a message missed during a lapse (a logout).
   */
  peekCurrent (key: string, partition: number): LocalCopy | undefined {
    const copy = this.peek(key, partition)
    return copy !== undefined && copy.generation === this.generation[partition] ? copy : undefined
  }

  /**
   * Drop the copy of `key`, and void the fill of any read or write of it in flight: one sent before this instance's
   * delete or take ran before it on the command connection, so its reply (which may come after the drop) tells of
   * what the delete or take removed.
   */
  drop (key: string, partition: number): void {
    this.stripeOf(partition)?.delete(key)
    const t = this.tickets.get(key)
    if (t !== undefined) t.maxNotified = Number.POSITIVE_INFINITY
  }

  /** The entry's expiry moved (touch): keep the copy's in step. */
  extend (key: string, partition: number, expiresAt: number): void {
    const copy = this.stripeOf(partition)?.peek(key)
    if (copy !== undefined) copy.expiresAt = expiresAt
  }

  /**
   * Call before a repository read or write whose reply may fill the local tier; then `fill` or `release` it. `echo`:
   * a write whose invalidations carry no version and reach the writer too (client tracking).
   */
  open (key: string, partition: number, echo = false): FillTicket {
    let t = this.tickets.get(key)
    if (t === undefined) {
      t = {
        key,
        partition,
        flushes: this.flushes,
        partitionFlushes: this.partitionFlushes[partition] ?? 0,
        generation: this.generation[partition] ?? 0,
        maxNotified: 0,
        refs: 0,
        echo,
        heard: 0
      }
      this.tickets.set(key, t)
    } else {
      t.echo = false // shared with another read or write: any invalidation voids it, as for reads
    }
    t.refs++
    return t
  }

  /** The operation failed or its reply fills nothing. */
  release (t: FillTicket): void {
    if (--t.refs === 0) this.tickets.delete(t.key)
  }

  /**
   * The reply came: keep it (or, with `fill.value` undefined, drop the copy: the key is absent or deleted) unless a
   * flush happened or a newer version was notified while it was in flight. The reply's epoch describes that entry
   * only: a late reply from before a reset, or an entry that outlived its partition's epoch key, must not switch the
   * partition back or count a reset (only invalidations and witnesses do). An entry of another epoch than the
   * partition's known one is not kept.
   */
  fill (t: FillTicket, fill: Fill): void {
    this.release(t)
    const ok = t.flushes === this.flushes &&
      t.partitionFlushes === (this.partitionFlushes[t.partition] ?? 0) &&
      t.maxNotified <= fill.version
    if (!ok) { this.counters.fillsSkipped++; return }
    const stripe = this.stripeOf(t.partition)
    if (stripe === undefined) return
    const known = this.epochs[t.partition]
    if (fill.epoch !== '' && known !== undefined && fill.epoch !== known) {
      this.counters.fillsSkipped++
      stripe.delete(t.key)
      return
    }
    // A partition not heard of yet takes the reply's epoch, so that its first invalidation from a later epoch counts
    // as the reset it is; that is no switch (nothing was known), and the tier was not flushed since the ticket opened.
    if (fill.epoch !== '' && known === undefined) this.epochs[t.partition] = fill.epoch
    const ttl = Math.min(this.ttlMs, fill.expiresAt - this.now())
    if (fill.value === undefined || ttl <= 0) { stripe.delete(t.key); return }
    const cur = stripe.peek(t.key)
    if (cur !== undefined && cur.epoch === fill.epoch && cur.generation === t.generation && cur.version > fill.version) return
    stripe.set(t.key, {
      value: fill.value,
      version: fill.version,
      epoch: fill.epoch,
      expiresAt: fill.expiresAt,
      size: fill.bytes + t.key.length + KEY_OVERHEAD,
      generation: t.generation
    }, { ttl })
    // A write's own echo was sent when it ran (the script read the key, so this connection tracked it when it was
    // written): if no invalidation of the key was heard while the write was in flight, its echo is still on its way,
    // and everything sent after the write comes after that echo. Counted only for a copy kept in the generation the
    // write began in: a lapse or a flush may have lost messages, and a count too low is safe, one too high is not.
    if (t.echo && t.heard === 0) {
      const e = this.echoes.get(t.key)
      if (e !== undefined && e.generation === t.generation) e.pending++
      else this.echoes.set(t.key, { pending: 1, partition: t.partition, generation: t.generation })
    }
  }

  onHeartbeat (sentAt: number, partitions?: readonly number[]): void {
    const leaseMs = this.leaseMs
    if (leaseMs === undefined) return
    for (const p of partitions ?? this.allPartitions) {
      const from = this.leaseFrom[p]
      if (from === undefined || sentAt <= from) continue
      this.leaseFrom[p] = sentAt
      if (sentAt > (this.heardFrom[p] as number)) this.heardFrom[p] = sentAt
      // A renewal after a lapse: messages may have been lost while nothing was heard. Copies from before (and replies
      // still in flight) stop answering as fresh; see `generation`.
      if (sentAt - from > leaseMs) {
        this.lapseCounted = false
        this.generation[p] = ((this.generation[p] as number) + 1) >>> 0
      }
    }
  }

  onResync (partitions?: readonly number[]): void {
    this.counters.resyncs++
    const lossless = this.reliable || this.leaseMs === undefined
    if (partitions === undefined) {
      this.lastSequence.fill(0)
      if (lossless) { this.flushAll(); return }
      // Void the lease: copies stop answering as fresh now. Until the lease is renewed they may still answer degraded
      // (the repository itself unreachable); the renewal starts a new generation, after which they never answer again.
      // Replies in flight may not fill.
      this.leaseFrom.fill(Number.NEGATIVE_INFINITY)
      this.flushes++
      this.echoes.clear()
      return
    }
    // The same for the partitions of one node (a shard that reconnected): the others keep their lease and copies.
    for (const [key, e] of this.echoes) if (partitions.includes(e.partition)) this.echoes.delete(key)
    for (const p of partitions) {
      if (p < 0 || p >= this.partitions) continue
      this.lastSequence[p] = 0
      if (lossless) { this.flushPartition(p); continue }
      this.leaseFrom[p] = Number.NEGATIVE_INFINITY
      this.partitionFlushes[p] = ((this.partitionFlushes[p] ?? 0) + 1) >>> 0
    }
  }

  onInvalidation (msg: Invalidation): void {
    const p = msg.partition
    if (p < 0 || p >= this.partitions) return
    this.counters.invalidations++
    const last = this.lastSequence[p] ?? 0
    // A new epoch is a reset (flushed inside); otherwise a gap means something was published that we never saw.
    if (!this.learnEpoch(p, msg.epoch) && last !== 0 && msg.sequence !== last + 1) {
      this.counters.gapsRepaired++
      this.flushPartition(p)
    }
    this.lastSequence[p] = msg.sequence
    const versionless = msg.version === Number.POSITIVE_INFINITY
    if (versionless) {
      const echo = this.echoes.get(msg.key)
      if (echo !== undefined) {
        if (--echo.pending === 0) this.echoes.delete(msg.key)
        // Sent before the echo of an acknowledged write of this instance (it is that echo, or older): it tells of
        // nothing newer than that write. Every copy of the key since (that write's or a later read's) and every
        // ticket open now began after the write was acknowledged, so they are at least as new: all stay.
        if (echo.generation === (this.generation[p] ?? 0)) return
      }
    }
    const t = this.tickets.get(msg.key)
    // An open write's first version-less invalidation may be its own echo (decided in `fill`); any other voids it.
    if (t !== undefined && !(t.echo && versionless && ++t.heard < 2) && msg.version > t.maxNotified) t.maxNotified = msg.version
    const stripe = this.stripeOf(p)
    const copy = stripe?.peek(msg.key, { allowStale: true })
    if (copy === undefined) return
    // From another epoch, a copy is another value whatever its version; writers older than epochs send none.
    const stale = msg.epoch === '' ? copy.version < msg.version : copy.epoch !== msg.epoch || copy.version < msg.version
    if (stale) stripe?.delete(msg.key)
  }

  /**
   * A refused compare-and-set found the entry in another epoch than a local copy it started from: the repository
   * forgot that partition (a reset no message told of yet), so every copy of it is dropped, not only this key's.
   */
  onRefusedFromOtherEpoch (partition: number): void {
    if (partition < 0 || partition >= this.partitions) return
    this.reset([partition], 'epoch')
  }

  onWitness (name: string, value: string, partitions?: readonly number[]): void {
    const before = this.witnesses.get(name)
    this.witnesses.set(name, value)
    if (before === undefined || before === value) return
    this.reset(partitions, 'witness')
  }

  onWitnessError (): void {
    // Counted only: the subscriber withholds the node's heartbeats meanwhile, which is what suspends its copies.
    this.counters.witnessErrors++
  }

  /** Drop every copy (tests, or an operator after restoring Redis from a backup). */
  clear (): void {
    this.flushAll()
  }

  get bytes (): number {
    let n = 0
    for (const s of this.stripes) n += s.calculatedSize
    return n
  }

  get entries (): number {
    let n = 0
    for (const s of this.stripes) n += s.size
    return n
  }

  /**
   * Records the epoch an invalidation shows for `partition`. True when it differs from the one known: a reset of
   * that partition, whose copies are dropped.
   */
  private learnEpoch (partition: number, epoch: string): boolean {
    if (epoch === '') return false
    const known = this.epochs[partition]
    this.epochs[partition] = epoch
    if (known === undefined || known === epoch) return false
    this.reset([partition], 'epoch')
    this.epochs[partition] = epoch
    return true
  }

  private reset (partitions: readonly number[] | undefined, seenBy: 'epoch' | 'witness'): void {
    this.counters.resets++
    if (partitions === undefined) {
      this.epochs.fill(undefined)
      this.lastSequence.fill(0)
      this.flushAll()
    } else {
      for (const p of partitions) {
        this.epochs[p] = undefined
        this.lastSequence[p] = 0
        this.flushPartition(p)
      }
    }
    // One line a minute at most: a FLUSHALL seen partition by partition must not flood the logs.
    const now = this.now()
    if (now - this.resetLoggedAt < RESET_LOG_INTERVAL_MS) { this.resetsUnlogged++; return }
    this.logger?.warn({
      repository: this.repository,
      seenBy,
      partitions: partitions === undefined ? 'all' : partitions.length,
      suppressedSinceLast: this.resetsUnlogged
    }, 'fastify-handoff: the repository lost its data (FLUSHALL, empty restart or failover to an empty replica); local copies dropped, versions start again')
    this.resetLoggedAt = now
    this.resetsUnlogged = 0
  }

  private oldest (times: Float64Array): number {
    let min = Number.POSITIVE_INFINITY
    for (const x of times) if (x < min) min = x
    return min
  }

  private flushPartition (p: number): void {
    this.partitionFlushes[p] = ((this.partitionFlushes[p] ?? 0) + 1) >>> 0
    this.stripeOf(p)?.clear()
  }

  private flushAll (): void {
    this.flushes++
    this.echoes.clear()
    for (const s of this.stripes) s.clear()
  }

  private stripeOf (partition: number): LRUCache<string, LocalCopy> | undefined {
    return this.stripes[partition & this.stripeMask]
  }
}
