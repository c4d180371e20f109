import { ClosedError } from '../errors.js'
import { partitionOfKey, sequenceKeyOf } from '../partitions.js'
import { newEpoch } from './epoch.js'
import type {
  CasResult, InvalidationListener, Repository, StoredEntry, Subscription, SubscriptionScope
} from './types.js'

export interface MemoryRepositoryOptions {
  /** How often expired entries are swept out, in ms. Default: 1000. Expired entries are never returned either way. */
  sweepIntervalMs?: number
  /** Clock, for tests. Default: Date.now. */
  now?: () => number
}

interface Slot extends StoredEntry {}

/**
 * The embedded repository: one process, no Redis. It is the default when no Redis is configured, and it keeps the
 * exact semantics of RedisRepository (versions, tombstones, per-partition sequences, invalidations), so several
 * TieredStores in one process stay coherent and every plugin behaves the same in development and production.
 */
export class MemoryRepository implements Repository {
  readonly kind = 'memory'
  private readonly entries = new Map<string, Slot>()
  private readonly sequences = new Map<string, number>()
  private readonly listeners = new Set<{ scope: SubscriptionScope, listener: InvalidationListener }>()
  private readonly now: () => number
  private readonly sweeper: NodeJS.Timeout
  private closed = false
  /** One epoch for the process (its data lives and dies with it); `wipe()` starts a new one. */
  private epoch = newEpoch()

  constructor (opts: MemoryRepositoryOptions = {}) {
    this.now = opts.now ?? Date.now
    this.sweeper = setInterval(() => this.sweep(), opts.sweepIntervalMs ?? 1000)
    this.sweeper.unref()
  }

  async connect (): Promise<void> { this.assertOpen() }

  async get (key: string): Promise<StoredEntry | null> {
    this.assertOpen()
    const e = this.live(key)
    return e === undefined ? null : { ...e }
  }

  async compareAndSet (key: string, expectedVersion: number | null, value: Buffer, ttlMs: number, expectedEpoch?: string): Promise<CasResult> {
    this.assertOpen()
    const seqKey = sequenceKeyOf(key) // a key without a partition tag is refused before anything is stored
    const cur = this.live(key)
    const refused = expectedVersion === null
      ? cur !== undefined
      : (cur?.version ?? 0) !== expectedVersion || (cur !== undefined && expectedEpoch !== undefined && cur.epoch !== expectedEpoch)
    if (refused) return { ok: false, current: cur === undefined ? null : { ...cur } }
    const version = (cur?.version ?? 0) + 1
    const expiresAt = this.now() + ttlMs
    this.entries.set(key, { value, version, expiresAt, epoch: this.epoch })
    this.publish(key, seqKey, version)
    return { ok: true, version, expiresAt, epoch: this.epoch }
  }

  async take (key: string, tombstoneTtlMs: number): Promise<StoredEntry | null> {
    this.assertOpen()
    const seqKey = sequenceKeyOf(key)
    const cur = this.live(key)
    if (cur?.value == null) return null // taking nothing changes nothing
    this.tombstone(key, seqKey, cur, tombstoneTtlMs)
    return { ...cur }
  }

  async delete (key: string, tombstoneTtlMs: number): Promise<number> {
    this.assertOpen()
    return this.tombstone(key, sequenceKeyOf(key), this.live(key), tombstoneTtlMs)
  }

  async touch (key: string, ttlMs: number, expectedEpoch?: string): Promise<boolean> {
    this.assertOpen()
    const cur = this.live(key)
    if (cur?.value == null || (expectedEpoch !== undefined && cur.epoch !== expectedEpoch)) return false
    cur.expiresAt = this.now() + ttlMs
    return true
  }

  async subscribe (scope: SubscriptionScope, listener: InvalidationListener): Promise<Subscription> {
    this.assertOpen()
    const sub = { scope, listener }
    this.listeners.add(sub)
    // In one process nothing can be missed, but a new subscriber starts from an unknown state like a Redis one.
    listener.onResync()
    listener.onWitness?.('memory', this.epoch)
    return { reliable: true, transport: 'in-process', close: async () => { this.listeners.delete(sub) } }
  }

  /**
   * Forget everything, as a Redis FLUSHALL or an empty restart would (for tests and demos): versions start again at
   * 1 under a new epoch, and subscribers are told at once (in one process, the witness is the epoch itself).
   */
  wipe (): void {
    this.assertOpen()
    this.entries.clear()
    this.sequences.clear()
    this.epoch = newEpoch()
    for (const { listener } of this.listeners) {
      try { listener.onWitness?.('memory', this.epoch) } catch { /* a listener's bug must not fail the caller */ }
    }
  }

  async close (): Promise<void> {
    this.closed = true
    clearInterval(this.sweeper)
    this.entries.clear()
    this.listeners.clear()
  }

  private tombstone (key: string, seqKey: string, cur: Slot | undefined, ttlMs: number): number {
    const version = (cur?.version ?? 0) + 1
    this.entries.set(key, { value: null, version, expiresAt: this.now() + ttlMs, epoch: this.epoch })
    this.publish(key, seqKey, version)
    return version
  }

  private live (key: string): Slot | undefined {
    const e = this.entries.get(key)
    if (e === undefined) return undefined
    if (e.expiresAt <= this.now()) {
      this.entries.delete(key)
      return undefined
    }
    return e
  }

  /** `seqKey` is sequenceKeyOf(key), taken before the write: it also proves the key has a partition tag. */
  private publish (key: string, seqKey: string, version: number): void {
    const partition = partitionOfKey(key)
    const sequence = (this.sequences.get(seqKey) ?? 0) + 1
    this.sequences.set(seqKey, sequence)
    for (const { scope, listener } of this.listeners) {
      if (!key.startsWith(scope.prefix) || partition >= scope.partitions) continue
      try {
        listener.onInvalidation({ key, version, partition, sequence, epoch: this.epoch })
      } catch {
        // a listener's bug must not fail the writer, whose write is already stored
      }
    }
  }

  private sweep (): void {
    const now = this.now()
    for (const [k, e] of this.entries) if (e.expiresAt <= now) this.entries.delete(k)
  }

  private assertOpen (): void {
    if (this.closed) throw new ClosedError('MemoryRepository')
  }
}
