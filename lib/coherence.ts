import type { Invalidation, InvalidationListener } from './repository/types.js'

/** What Coherence needs from the local tier it keeps fresh. */
export interface LocalTier {
  /** Drop the local copy of `key` if it is older than `version`. */
  dropOlder: (key: string, partition: number, version: number) => void
  /** Drop every local copy of a partition (its whole stripe is acceptable). */
  flushPartition: (partition: number) => void
  flushAll: () => void
}

export interface CoherenceCounters {
  invalidations: number
  gapsRepaired: number
  resyncs: number
  leaseSuspensions: number
  fillsSkipped: number
}

export interface CoherenceOptions {
  partitions: number
  /** Local reads are suspended when no heartbeat was answered within this many ms. Default: 250. */
  leaseMs: number
  /** True when delivery cannot be lost (in-process repository): no lease, no heartbeat needed. */
  reliable: boolean
  now?: () => number
}

/** A read or write in flight: whether its result may still fill the local tier when it returns. */
export interface FillTicket {
  readonly key: string
  readonly partition: number
  readonly globalEpoch: number
  readonly partitionEpoch: number
  maxNotified: number
  refs: number
}

/**
 * Keeps one instance's local tier coherent with the repository:
 * - invalidations drop local copies older than the notified version;
 * - a per-partition sequence gap (lost message) or a resync (reconnect) flushes the affected copies: repair by
 *   negative acknowledgement, as Hazelcast's near cache does;
 * - a lease renewed by heartbeats suspends local reads when the subscriber has gone quiet, and flushes everything
 *   before local reads resume, so staleness stays bounded by the lease even on a silently dead network;
 * - fill tickets stop a read (or write) reply from filling the local tier with a version that an invalidation,
 *   which overtook the reply on the other connection, already superseded.
 */
export class Coherence implements InvalidationListener {
  readonly counters: CoherenceCounters = { invalidations: 0, gapsRepaired: 0, resyncs: 0, leaseSuspensions: 0, fillsSkipped: 0 }
  private readonly lastSequence: Float64Array
  private readonly partitionEpochs: Uint32Array
  private globalEpoch = 0
  private leaseFrom = Number.NEGATIVE_INFINITY
  private suspended = true
  private reliable: boolean
  private readonly tickets = new Map<string, FillTicket>()
  private readonly now: () => number
  private tier: LocalTier | undefined

  constructor (private readonly opts: CoherenceOptions) {
    this.lastSequence = new Float64Array(opts.partitions)
    this.partitionEpochs = new Uint32Array(opts.partitions)
    this.now = opts.now ?? (() => performance.now())
    this.reliable = opts.reliable
    if (opts.reliable) this.suspended = false
  }

  /** Whether delivery can be lost, as the subscription reports it (Subscription.reliable) once it exists. */
  setReliable (reliable: boolean): void {
    if (reliable === this.reliable) return
    this.reliable = reliable
    // Unreliable from now on: local reads wait for a heartbeat, as at start.
    this.suspended = !reliable
  }

  attach (tier: LocalTier): void { this.tier = tier }

  /**
   * May local copies be served now? False while the lease is lapsed. The first call after the lease is regained
   * flushes every local copy (messages may have been lost while the subscriber was quiet) and then says true.
   */
  readable (): boolean {
    if (this.reliable) return true
    const held = this.now() - this.leaseFrom <= this.opts.leaseMs
    if (held) {
      if (this.suspended) {
        this.suspended = false
        this.flushAll()
      }
      return true
    }
    if (!this.suspended) {
      this.suspended = true
      this.counters.leaseSuspensions++
    }
    return false
  }

  /** Milliseconds since the newest answered heartbeat was sent (Infinity before the first). */
  get leaseAge (): number { return this.reliable ? 0 : this.now() - this.leaseFrom }

  onHeartbeat (sentAt: number): void {
    if (sentAt > this.leaseFrom) this.leaseFrom = sentAt
  }

  onResync (partitions?: readonly number[]): void {
    this.counters.resyncs++
    if (partitions === undefined) {
      this.lastSequence.fill(0)
      if (this.reliable) {
        this.flushAll()
        return
      }
      // Void the lease: local copies stop answering now and are flushed when the lease is regained. Until then they
      // stay, so that they can still answer in degraded mode if the repository itself is down.
      this.leaseFrom = Number.NEGATIVE_INFINITY
      this.globalEpoch++
      if (!this.suspended) { this.suspended = true; this.counters.leaseSuspensions++ }
      return
    }
    for (const p of partitions) {
      this.lastSequence[p] = 0
      this.flushPartition(p)
    }
  }

  onInvalidation (msg: Invalidation): void {
    const p = msg.partition
    if (p < 0 || p >= this.opts.partitions) return
    this.counters.invalidations++
    const last = this.lastSequence[p] ?? 0
    if (last !== 0 && msg.sequence !== last + 1) {
      // A gap: something was published that we never saw. Below last: the counter restarted (Redis lost it).
      this.counters.gapsRepaired++
      this.flushPartition(p)
    }
    this.lastSequence[p] = msg.sequence
    const t = this.tickets.get(msg.key)
    if (t !== undefined && msg.version > t.maxNotified) t.maxNotified = msg.version
    this.tier?.dropOlder(msg.key, p, msg.version)
  }

  /** Call before a repository read or write whose result may fill the local tier. */
  open (key: string, partition: number): FillTicket {
    let t = this.tickets.get(key)
    if (t === undefined) {
      t = { key, partition, globalEpoch: this.globalEpoch, partitionEpoch: this.partitionEpochs[partition] ?? 0, maxNotified: 0, refs: 0 }
      this.tickets.set(key, t)
    }
    t.refs++
    return t
  }

  /**
   * Call when the operation returned: true when `version` may fill the local tier, i.e. no flush happened and no
   * newer version was notified while it was in flight. A copy filled while the lease is lapsed is not served from
   * the local tier (readable() says no) and is flushed when the lease is regained; until then it can still answer
   * in degraded mode, when the repository itself is unreachable.
   */
  close (t: FillTicket, version: number): boolean {
    if (--t.refs === 0) this.tickets.delete(t.key)
    const ok = t.globalEpoch === this.globalEpoch &&
      t.partitionEpoch === (this.partitionEpochs[t.partition] ?? 0) &&
      t.maxNotified <= version
    if (!ok) this.counters.fillsSkipped++
    return ok
  }

  private flushPartition (p: number): void {
    this.partitionEpochs[p] = ((this.partitionEpochs[p] ?? 0) + 1) >>> 0
    this.tier?.flushPartition(p)
  }

  private flushAll (): void {
    this.globalEpoch++
    this.tier?.flushAll()
  }
}
