import { ClosedError } from '../errors.js'
import { partitionOfKey, sequenceKeyOf } from '../partitions.js'
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

  async compareAndSet (key: string, expectedVersion: number | null, value: Buffer, ttlMs: number): Promise<CasResult> {
    this.assertOpen()
    const seqKey = sequenceKeyOf(key) // a key without a partition tag is refused before anything is stored
    const cur = this.live(key)
    if (expectedVersion === null ? cur !== undefined : (cur?.version ?? 0) !== expectedVersion) {
      return { ok: false, current: cur === undefined ? null : { ...cur } }
    }
    const version = (cur?.version ?? 0) + 1
    const expiresAt = this.now() + ttlMs
    this.entries.set(key, { value, version, expiresAt })
    this.publish(key, seqKey, version)
    return { ok: true, version, expiresAt }
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

  async touch (key: string, ttlMs: number): Promise<boolean> {
    this.assertOpen()
    const cur = this.live(key)
    if (cur?.value == null) return false
    cur.expiresAt = this.now() + ttlMs
    return true
  }

  async subscribe (scope: SubscriptionScope, listener: InvalidationListener): Promise<Subscription> {
    this.assertOpen()
    const sub = { scope, listener }
    this.listeners.add(sub)
    // In one process nothing can be missed, but a new subscriber starts from an unknown state like a Redis one.
    listener.onResync()
    return { reliable: true, close: async () => { this.listeners.delete(sub) } }
  }

  async close (): Promise<void> {
    this.closed = true
    clearInterval(this.sweeper)
    this.entries.clear()
    this.listeners.clear()
  }

  private tombstone (key: string, seqKey: string, cur: Slot | undefined, ttlMs: number): number {
    const version = (cur?.version ?? 0) + 1
    this.entries.set(key, { value: null, version, expiresAt: this.now() + ttlMs })
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
        listener.onInvalidation({ key, version, partition, sequence })
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
