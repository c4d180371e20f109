import { createHmac } from 'node:crypto'
import { InvalidOptionError } from './errors.js'
import type { Mutator, StoreEntry, TieredStore, UpdateOptions, UpdateResult } from './tiered-store.js'

export interface CollectionOptions<T> {
  /**
   * Validates a stored value and returns it typed; throws when the shape is not T. A stored value that does not parse
   * is treated like an entry that cannot be opened: absent for get/take, `undefined` for update's mutate (which may
   * overwrite it), counted in the store's `corrupt` counter and logged (at most once a minute). Required.
   */
  parse: (value: unknown) => T
  /**
   * Key for ids chosen by people (user ids, emails): such an id names its entry only through an HMAC-SHA256 with this
   * key (24 bytes, base64url), so nobody can pick ids that pile up on one partition, and the raw id never appears in
   * a Redis key. Leave it out for ids the server generates at random (session ids). Default: none (ids used as is).
   */
  idKey?: Buffer
}

/** Reports a value that did not parse (the store's corrupt-entry handling). */
export type CorruptReporter = (key: string, err: unknown) => void

/**
 * One kind of stored value, typed: ids in, parsed values out. Built by `store.collection<T>(kind, { parse })`; the
 * only place a caller's id becomes a store key (hashed when the collection has an `idKey`), so no caller builds keys
 * or casts stored values by hand.
 */
export class Collection<T> {
  readonly kind: string
  private readonly parse: (value: unknown) => T
  private readonly idKey: Buffer | undefined

  constructor (private readonly store: TieredStore, kind: string, opts: CollectionOptions<T>, private readonly reportCorrupt: CorruptReporter) {
    if (typeof kind !== 'string' || !/^[A-Za-z0-9_-]{1,32}$/.test(kind)) {
      throw new InvalidOptionError('kind', `must be 1 to 32 characters of A-Z a-z 0-9 _ -, got ${String(kind)}`)
    }
    if (opts === null || typeof opts !== 'object' || typeof opts.parse !== 'function') {
      throw new InvalidOptionError('parse', 'a function (value: unknown) => T that validates the stored shape is required')
    }
    if (opts.idKey !== undefined && (!Buffer.isBuffer(opts.idKey) || opts.idKey.length < 16)) {
      throw new InvalidOptionError('idKey', 'must be a Buffer of at least 16 bytes (a subkey from keyRing.derive)')
    }
    this.kind = kind
    this.parse = opts.parse
    this.idKey = opts.idKey
  }

  /** The store key of `id` in this collection (hashed with `idKey` when the collection has one). */
  key (id: string): string {
    if (typeof id !== 'string' || id === '') throw new InvalidOptionError('id', 'must be a non-empty string')
    if (this.idKey === undefined) return this.store.key(id, this.kind)
    const hashed = createHmac('sha256', this.idKey).update(id, 'utf8').digest().subarray(0, 24).toString('base64url')
    return this.store.key(hashed, this.kind)
  }

  /** The local tier alone, synchronously (see TieredStore.getLocal); a copy that does not parse counts as absent. */
  getLocal (id: string, opts?: { minVersion?: number }): StoreEntry<T> | undefined {
    const key = this.key(id)
    return this.entry(key, this.store.getLocal(key, opts))
  }

  async get (id: string, opts?: { minVersion?: number }): Promise<StoreEntry<T> | undefined> {
    const key = this.key(id)
    return this.entry(key, await this.store.get(key, opts))
  }

  /**
   * Compare-and-set update (see TieredStore.update). `mutate` gets the parsed current value, or undefined when there
   * is none or it does not parse (`info.version` still says what is stored, so a write replaces it).
   */
  async update (id: string, mutate: Mutator<T>, opts?: UpdateOptions): Promise<UpdateResult<T>> {
    const key = this.key(id)
    const res = await this.store.update(key, (current, info) => mutate(this.parsed(key, current), info), opts)
    return { ...res, value: this.parsed(key, res.value) }
  }

  /** Delete, leaving a tombstone (see TieredStore.delete). Returns the tombstone's version. */
  async delete (id: string): Promise<number> {
    return await this.store.delete(this.key(id))
  }

  /** Read and delete atomically (see TieredStore.take). */
  async take (id: string): Promise<StoreEntry<T> | undefined> {
    const key = this.key(id)
    return this.entry(key, await this.store.take(key))
  }

  /** Extend the expiry without rewriting (see TieredStore.touch). */
  async touch (id: string, ttlMs: number): Promise<boolean> {
    return await this.store.touch(this.key(id), ttlMs)
  }

  private entry (key: string, e: StoreEntry<unknown> | undefined): StoreEntry<T> | undefined {
    if (e === undefined) return undefined
    const value = this.parsed(key, e.value)
    return value === undefined ? undefined : { ...e, value }
  }

  private parsed (key: string, value: unknown): T | undefined {
    if (value === undefined) return undefined
    try {
      return this.parse(value)
    } catch (err) {
      this.reportCorrupt(key, err)
      return undefined
    }
  }
}
