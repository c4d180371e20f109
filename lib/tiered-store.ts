import { Collection, type CollectionOptions } from './collection.js'
import { LocalTier, type LocalTierCounters } from './local-tier.js'
import { ReplicaWait, type Durability } from './durability.js'
import { EntryCodec } from './entry-codec.js'
import { RepositoryCalls, type RepositoryOp } from './repository-calls.js'
import { ConflictError, InvalidOptionError, intOption, TooLargeError, isHandoffError } from './errors.js'
import { assertPartitionCount, assertPrefix, entryKey, partitionOf, partitionOfKey } from './partitions.js'
import type { CasResult, CoherenceTransport, Repository, StoredEntry, Subscription } from './repository/types.js'
import { KeyRing, entryLabel, type SecretInput } from './seal.js'

export type { Durability } from './durability.js'

/**
 * A JSON value as the store keeps it (the store's type parameter may be any JSON-serializable type). Values handed
 * out are deeply frozen: they are shared with the local tier.
 */
export type StoreValue = null | boolean | number | string | readonly StoreValue[] | { readonly [k: string]: StoreValue | undefined }

export interface StoreEntry<T> {
  value: T
  version: number
  /** Absolute expiry, ms since the epoch. */
  expiresAt: number
  /** 'local': answered by this instance's local tier; 'repository': read from Redis (or the embedded repository). */
  source: 'local' | 'repository'
  /** True when the repository was unreachable and a local copy was served anyway (it may be stale). */
  degraded: boolean
  /**
   * The repository epoch the entry was written in: versions count within one epoch. It changes only when the
   * repository lost its data (FLUSHALL, empty restart, failover to an empty replica), after which versions start
   * again at 1: a version floor from another epoch says nothing about this entry. '' for entries written before
   * epochs existed.
   */
  epoch: string
}

export interface UpdateInfo {
  /** The version `current` was read at; 0 when the key never existed (or expired). */
  version: number
  /** True when the key holds a tombstone: it was deleted (logout, take) and must not silently come back. */
  deleted: boolean
  /** Which attempt this is, from 0: mutate runs again after every lost compare-and-set. */
  attempt: number
}

/** Return the new value, or undefined to write nothing. Must not modify `current` (it is frozen) and must be pure. */
export type Mutator<T> = (current: T | undefined, info: UpdateInfo) => T | undefined

export interface UpdateOptions {
  /** Time to live of the written entry, ms. Default: the store's defaultTtlMs. */
  ttlMs?: number
  /** Do not start from a local copy older than this version (the client's version floor). */
  minVersion?: number
  /**
   * Refuse values whose JSON is larger than this many bytes (FST_HANDOFF_TOO_LARGE, 413), on top of the store's
   * maxValueBytes: a per-kind limit checked on the JSON the store writes anyway, so callers need not serialize twice.
   */
  maxBytes?: number
  /** What the value is, for the FST_HANDOFF_TOO_LARGE message ("Session", "Cart"). Default: 'Stored value'. */
  label?: string
  /**
   * Replicas to wait for before this write counts as done, instead of the store's `durability` (e.g. orders waited
   * for even when sessions are not). `false`: do not wait. Default: the store's.
   */
  durability?: Durability | false
}

export interface UpdateResult<T> {
  value: T | undefined
  version: number
  /** The epoch `version` counts in (see StoreEntry.epoch). */
  epoch: string
  /** False when mutate returned undefined: nothing was written. */
  written: boolean
  /** How many compare-and-set attempts were lost before this one won. */
  conflicts: number
}

export interface Logger {
  warn: (obj: object, msg?: string) => void
  info?: (obj: object, msg?: string) => void
  error?: (obj: object, msg?: string) => void
}

export interface TieredStoreOptions {
  /** Where entries live: a RedisRepository or the embedded MemoryRepository. */
  repository: Repository
  /** Cluster secret (or key ring, newest first) sealing every entry at rest. Same on every instance. */
  secret: SecretInput | KeyRing
  /** Prefix of every key. No braces. Default: 'handoff:'. */
  prefix?: string
  /** Partitions (power of two, 1..16384): one Redis Cluster slot and one invalidation channel each. Default: 1024. */
  partitions?: number
  /** Local tier stripes (power of two, at most `partitions`), each an LRU with its share of maxLocalBytes. Default: 16. */
  stripes?: number
  /** Upper bound of the local tier, in bytes (sealed size + key + bookkeeping). 0 disables the local tier. Default: 64 MiB. */
  maxLocalBytes?: number
  /**
   * How long a local copy may answer without asking the repository, ms. With coherence on, invalidations keep copies
   * fresh and this only bounds memory held by idle entries. Default: 300000 with coherence, 1000 without.
   */
  localTtlMs?: number
  /**
   * Follow invalidations from the repository (other instances' writes). `leaseMs`: local reads are suspended when
   * the subscriber has not been heard from within it. `transport` (Redis): 'tracking', Redis client-side caching
   * (CLIENT TRACKING) tells only the instances that read the key, so a write costs the same whatever the fleet size;
   * 'pubsub', every write is published to every instance (for a Redis or proxy that refuses CLIENT TRACKING; see
   * docs/scaling.md). Default: { leaseMs: 250, transport: 'tracking' }, or HANDOFF_COHERENCE_TRANSPORT.
   */
  coherence?: false | { leaseMs?: number, transport?: CoherenceTransport }
  /**
   * How long after the repository was last confirmed (with coherence, the last answered invalidation heartbeat; without,
   * the last answered call) a local copy may still answer while the repository is unreachable, ms; such answers are
   * flagged `degraded`, and only copies of the current lease generation give them. Past it,
   * reads fail as writes do (FST_HANDOFF_UNAVAILABLE, 503). The trade-off: longer keeps serving signed-in users
   * through a longer outage, but an instance cut off from Redis also keeps honouring what other instances changed
   * meanwhile (a logout, an emptied cart) for that long. 0: never answer from an unconfirmed copy. Default: 30000.
   */
  maxDegradedMs?: number
  /** Default entry TTL for update, ms. Default: 86400000 (24 h). */
  defaultTtlMs?: number
  /** How long tombstones left by delete/take stay, ms. Default: 60000. */
  tombstoneTtlMs?: number
  /** Compare-and-set attempts before update gives up with FST_HANDOFF_CONFLICT. Default: 64. */
  maxAttempts?: number
  /** Largest serialized value, bytes; larger updates fail with FST_HANDOFF_TOO_LARGE (413). Default: 1 MiB. */
  maxValueBytes?: number
  /** Wait for Redis replicas before a write counts as done. Default: none. */
  durability?: Durability
  /** Structured logger (fastify.log fits). Default: none. */
  logger?: Logger
  /** Clock for entry expiry, for tests. Default: Date.now. */
  now?: () => number
  /** Called after every repository call with its duration (for latency metrics). Default: none. */
  observe?: (op: RepositoryOp, ms: number, ok: boolean) => void
}

export type { RepositoryOp } from './repository-calls.js'

export interface StoreHealth {
  /** 'degraded': some node of the repository failed its last call; its writes fail with 503 and known local copies answer. */
  status: 'ok' | 'degraded'
  repository: string
  /**
   * The nodes ("host:port", a shard's id; the repository kind for a single node) whose last call failed, or whose
   * breaker is open: only the partitions they serve are unavailable. Empty while every node answers.
   */
  unavailableNodes: string[]
  /** Local reads allowed now (the invalidation lease is held, or coherence is off). */
  localReads: boolean
  /** Milliseconds since the newest answered heartbeat was sent (0 without coherence or in-process). */
  leaseAgeMs: number
  /** How invalidations arrive: 'pubsub', 'tracking', 'in-process', or 'off' (coherence: false). */
  coherence: CoherenceTransport | 'in-process' | 'off'
  localEntries: number
  localBytes: number
}

export interface StoreCounters extends LocalTierCounters {
  localHits: number
  localMisses: number
  repositoryReads: number
  repositoryHits: number
  writes: number
  conflicts: number
  conflictsExhausted: number
  repositoryErrors: number
  corrupt: number
  degradedReads: number
  takes: number
  deletes: number
  touches: number
  durabilityFailures: number
  /** Entries read while sealed with an older key of the ring, rewritten under the newest (see get). */
  resealed: number
}

/** What an update decides on: the value it gives mutate, and where it came from. */
interface Base<T> {
  value: T | undefined
  version: number
  epoch: string
  deleted: boolean
  /**
   * 'stored': what the repository holds (read, or returned by a refused compare-and-set). 'local': a local copy,
   * which may trail an invalidation still in flight. 'assumed': nothing known, tried as "absent" to create in one
   * round trip.
   */
  from: 'stored' | 'local' | 'assumed'
}

const ASSUMED_ABSENT: Base<never> = Object.freeze({ value: undefined, version: 0, epoch: '', deleted: false, from: 'assumed' })

/**
 * The one primitive every plugin uses: a bounded local tier per instance (LocalTier: striped LRU, kept coherent by
 * invalidations) in front of a shared Repository, with sealed values and optimistic compare-and-set updates.
 * Nothing in the plugins talks to Redis except through this.
 */
export class TieredStore<T = unknown> {
  readonly repository: Repository
  readonly prefix: string
  readonly partitions: number
  readonly counters: StoreCounters
  readonly keyRing: KeyRing
  private readonly local: LocalTier
  private readonly codec: EntryCodec<T>
  private readonly defaultTtlMs: number
  private readonly tombstoneTtlMs: number
  private readonly maxAttempts: number
  private readonly maxValueBytes: number
  private readonly maxDegradedMs: number
  private readonly durability: ReplicaWait | undefined
  private readonly logger: Logger | undefined
  private readonly now: () => number
  private subscription: Subscription | undefined
  private readonly transport: CoherenceTransport
  private started: Promise<void> | undefined
  /** The one wrapper of every repository call: timing, error accounting, outage state per node. */
  private readonly calls: RepositoryCalls
  private readonly resealKinds = new Set<string>()

  constructor (opts: TieredStoreOptions) {
    if (opts === null || typeof opts !== 'object' || opts.repository === undefined) {
      throw new InvalidOptionError('repository', 'a Repository (RedisRepository or MemoryRepository) is required')
    }
    this.repository = opts.repository
    this.prefix = opts.prefix ?? 'handoff:'
    assertPrefix(this.prefix)
    this.partitions = opts.partitions ?? 1024
    assertPartitionCount(this.partitions)
    const stripes = opts.stripes ?? Math.min(16, this.partitions)
    if (!Number.isSafeInteger(stripes) || stripes < 1 || (stripes & (stripes - 1)) !== 0 || stripes > this.partitions) {
      throw new InvalidOptionError('stripes', `must be a power of two between 1 and partitions (${this.partitions}), got ${String(stripes)}`)
    }
    const maxLocalBytes = intOption('maxLocalBytes', opts.maxLocalBytes, 64 * 1024 * 1024, 0)
    const coherenceOn = opts.coherence !== false
    const localTtlMs = intOption('localTtlMs', opts.localTtlMs, coherenceOn ? 300_000 : 1000, 0)
    this.defaultTtlMs = intOption('defaultTtlMs', opts.defaultTtlMs, 86_400_000, 1)
    this.tombstoneTtlMs = intOption('tombstoneTtlMs', opts.tombstoneTtlMs, 60_000, 1)
    this.maxAttempts = intOption('maxAttempts', opts.maxAttempts, 64, 1)
    this.maxValueBytes = intOption('maxValueBytes', opts.maxValueBytes, 1024 * 1024, 1)
    this.maxDegradedMs = intOption('maxDegradedMs', opts.maxDegradedMs, 30_000, 0)
    const leaseMs = coherenceOn
      ? intOption('coherence.leaseMs', opts.coherence === false ? undefined : opts.coherence?.leaseMs, 250, 1)
      : undefined
    this.transport = coherenceTransport(opts.coherence === false ? undefined : opts.coherence?.transport)
    this.keyRing = opts.secret instanceof KeyRing ? opts.secret : new KeyRing(opts.secret)
    this.logger = opts.logger
    this.now = opts.now ?? Date.now
    this.local = new LocalTier({
      partitions: this.partitions,
      stripes,
      maxBytes: maxLocalBytes,
      ttlMs: localTtlMs,
      leaseMs,
      // Until start() subscribes and the subscription says whether delivery can be lost, the embedded repository is
      // taken as reliable (usable before start(), as in-process state is) and any other as not (no local reads
      // before the first heartbeat).
      reliable: this.repository.kind === 'memory',
      now: this.now,
      logger: this.logger,
      repository: this.repository.kind
    })
    this.counters = Object.assign(this.local.counters, {
      localHits: 0,
      localMisses: 0,
      repositoryReads: 0,
      repositoryHits: 0,
      writes: 0,
      conflicts: 0,
      conflictsExhausted: 0,
      repositoryErrors: 0,
      corrupt: 0,
      degradedReads: 0,
      takes: 0,
      deletes: 0,
      touches: 0,
      durabilityFailures: 0,
      resealed: 0
    })
    this.calls = new RepositoryCalls(this.repository, this.counters, this.logger, opts.observe)
    this.codec = new EntryCodec<T>(this.keyRing, this.counters, this.logger, this.now)
    this.durability = this.replicaWait(opts.durability, 'durability')
  }

  /**
   * `durability` with its defaults applied; refused (FST_HANDOFF_INVALID_OPTION naming `name`) when malformed or when
   * this store's repository has no replicas to wait for. For callers that pass `durability` to update.
   */
  checkDurability (durability: Durability, name = 'durability'): Required<Durability> {
    const wait = this.replicaWait(durability, name)
    if (wait === undefined) throw new InvalidOptionError(name, 'must be an object { replicas, timeoutMs? }')
    return wait.settings
  }

  /**
   * Entries of these kinds are re-sealed under the newest key of the ring when a read finds them sealed with an older
   * one (one compare-and-set write, only while the ring holds more than one key; counted in `resealed`). For
   * long-lived kinds (carts, orders) that cannot simply wait out their TTL before the old key is dropped.
   */
  resealOnRead (...kinds: string[]): void {
    for (const k of kinds) this.resealKinds.add(k)
  }

  private replicaWait (durability: Durability | undefined, name: string): ReplicaWait | undefined {
    return ReplicaWait.from(durability, this.repository, this.counters,
      async (op, key, work) => await this.calls.run(op, key, work), name)
  }

  /** The local tier's invalidation listener, when coherence is on (benchmarks hook into it). */
  get coherence (): LocalTier | undefined {
    return this.local.coherent ? this.local : undefined
  }

  /** Connects the repository, checks the server and subscribes to invalidations. Idempotent. */
  async start (): Promise<void> {
    this.started ??= this.doStart().catch(async (err: unknown) => {
      this.started = undefined // a transient failure must not be permanent: start() may be called again
      throw err
    })
    await this.started
  }

  private async doStart (): Promise<void> {
    await this.repository.connect()
    if (this.repository.checkServer !== undefined) {
      for (const w of await this.repository.checkServer()) this.logger?.warn({ repository: this.repository.kind }, w)
    }
    if (this.local.coherent) {
      const leaseMs = this.local.leaseMs
      this.subscription = await this.repository.subscribe({
        prefix: this.prefix,
        partitions: this.partitions,
        transport: this.transport,
        ...(leaseMs === undefined ? {} : { witnessIntervalMs: leaseMs / 2 })
      }, this.local)
      this.local.setReliable(this.subscription.reliable)
      // Resolve once the first heartbeat proves the subscription live, so local copies are usable from the start.
      const deadline = performance.now() + 3000
      while (!this.local.readable()) {
        if (performance.now() > deadline) {
          this.logger?.warn({ repository: this.repository.kind }, 'fastify-handoff: invalidation subscriber not live yet; local reads stay suspended until it is')
          break
        }
        await new Promise(resolve => setTimeout(resolve, 5))
      }
    }
  }

  /** The full key of `id` (server-generated, random) for `kind`; all kinds of one id share a partition. */
  key (id: string, kind: string): string {
    return entryKey(this.prefix, partitionOf(id, this.partitions), id, kind)
  }

  /**
   * One kind of value, typed: `get`/`update`/`delete`/`take`/`touch` by id, values checked by `parse` (a value that
   * does not parse is handled as a corrupt entry: absent, counted, logged). See lib/collection.ts.
   */
  collection<V> (kind: string, opts: CollectionOptions<V>): Collection<V> {
    return new Collection<V>(this as TieredStore<unknown>, kind, opts, (key, err) => { this.codec.corrupt(key, err) })
  }

  /**
   * The local tier alone, synchronously: the entry when a valid local copy at or above `minVersion` may answer now,
   * else undefined (then call get). Lets hot paths skip a promise on a warm hit.
   */
  getLocal (key: string, opts?: { minVersion?: number }): StoreEntry<T> | undefined {
    const copy = this.local.get(key, this.partitionOf(key), opts?.minVersion ?? 0)
    if (copy === undefined || copy.value === undefined) return undefined
    this.counters.localHits++
    return { value: copy.value as T, version: copy.version, expiresAt: copy.expiresAt, source: 'local', degraded: false, epoch: copy.epoch }
  }

  async get (key: string, opts?: { minVersion?: number }): Promise<StoreEntry<T> | undefined> {
    const hit = this.getLocal(key, opts)
    if (hit !== undefined) return hit
    const minVersion = opts?.minVersion ?? 0
    const partition = this.partitionOf(key)
    this.counters.localMisses++
    const ticket = this.local.open(key, partition)
    let stored: StoredEntry | null
    try {
      this.counters.repositoryReads++
      stored = await this.calls.run('get', key, async () => await this.repository.get(key))
    } catch (err) {
      this.local.release(ticket)
      if (isHandoffError(err, 'FST_HANDOFF_CORRUPT_ENTRY')) {
        this.codec.corrupt(key, err)
        return undefined
      }
      // Keep serving what is known: a copy within its local TTL and its expiry, at or above the floor, of the current
      // lease generation, for as long as the repository was heard from recently enough (maxDegradedMs); past that, an
      // unconfirmed copy is no answer. Looked up now, not before the call: an invalidation may have come meanwhile.
      const known = this.local.peekCurrent(key, partition)
      if (known !== undefined && known.value !== undefined && known.version >= minVersion && this.unconfirmedMsOf(partition) <= this.maxDegradedMs) {
        this.counters.degradedReads++
        return { value: known.value as T, version: known.version, expiresAt: known.expiresAt, source: 'local', degraded: true, epoch: known.epoch }
      }
      throw err
    }
    const decoded = stored === null ? undefined : this.codec.decode(key, stored)
    if (stored !== null && decoded !== undefined) stored = await this.resealIfOld(key, stored, decoded)
    this.local.fill(ticket, {
      value: decoded,
      version: stored?.version ?? 0,
      epoch: stored?.epoch ?? '',
      expiresAt: stored?.expiresAt ?? 0,
      bytes: stored?.value?.length ?? 0
    })
    if (stored === null || stored.value === null || decoded === undefined) return undefined
    this.counters.repositoryHits++
    return { value: decoded, version: stored.version, expiresAt: stored.expiresAt, source: 'repository', degraded: false, epoch: stored.epoch }
  }

  /**
   * Optimistic read-modify-write: `mutate` runs on the current value and its result is stored if nobody wrote in
   * between (compare-and-set on the version and its epoch); otherwise `mutate` runs again on the newer value, with
   * jittered backoff, up to maxAttempts. Starting from a local copy, an uncontended update is one round trip.
   *
   * Bases that are not what is stored (a local copy, or "absent" assumed to create in one round trip) follow one
   * rule, `decisionStands`: a refusal or a decline counts only when it stands on its base; otherwise it is re-made on
   * the stored value. A write on such a base is safe as is: the compare-and-set refuses it when the base is stale,
   * from another epoch included, and returns the stored value to re-decide on.
   */
  async update (key: string, mutate: Mutator<T>, opts?: UpdateOptions): Promise<UpdateResult<T>> {
    const ttlMs = intOption('ttlMs', opts?.ttlMs, this.defaultTtlMs, 1)
    const durability = opts?.durability === undefined ? this.durability : opts.durability === false ? undefined : this.replicaWait(opts.durability, 'durability')
    const maxBytes = opts?.maxBytes === undefined ? undefined : intOption('maxBytes', opts.maxBytes, 0, 1)
    const partition = this.partitionOf(key)
    const copy = this.local.get(key, partition, opts?.minVersion ?? 0)
    let base: Base<T> = copy === undefined
      ? ASSUMED_ABSENT
      : { value: copy.value as T | undefined, version: copy.version, epoch: copy.epoch, deleted: copy.value === undefined, from: 'local' }
    let conflicts = 0
    // attempt counts compare-and-set rounds lost to other writers. A re-read of the stored entry is not one: it
    // happens at most once per update, since it leaves the base stored.
    let attempt = 0
    while (attempt < this.maxAttempts) {
      let next: T | undefined
      try {
        next = mutate(base.value, { version: base.version, deleted: base.deleted, attempt })
      } catch (err) {
        if (decisionStands(base, 'refuses')) throw err
        base = await this.readBase(key)
        continue
      }
      if (next === undefined) {
        if (decisionStands(base, 'declines')) return { value: base.value, version: base.version, epoch: base.epoch, written: false, conflicts }
        base = await this.readBase(key)
        continue
      }
      const encoded = this.codec.encode(next)
      const plain = encoded.plain
      // Both limits are about the value made from what is stored: a local copy may trail a write that made the value
      // smaller, and "absent" may not be what is stored.
      const tooLarge = plain.length > this.maxValueBytes
        ? new TooLargeError('Stored value', `${plain.length} bytes`, `${this.maxValueBytes} bytes`)
        : maxBytes !== undefined && plain.length > maxBytes
          ? new TooLargeError(opts?.label ?? 'Stored value', `${plain.length} bytes`, `${maxBytes} bytes`)
          : undefined
      if (tooLarge !== undefined) {
        if (decisionStands(base, 'refuses')) throw tooLarge
        base = await this.readBase(key)
        continue
      }
      const expected = base.from === 'assumed' ? null : base.version
      const version = base.version + 1
      const sealed = this.codec.seal(key, version, plain)
      const ticket = this.local.open(key, partition, this.coherenceTransport === 'tracking')
      let res: CasResult
      try {
        res = await this.calls.run('compareAndSet', key, async () => await this.repository.compareAndSet(key, expected, sealed, ttlMs, base.epoch))
      } catch (err) {
        this.local.release(ticket)
        // The write may or may not have been applied. With coherence, a stored write's invalidation drops the local
        // copy (the same script publishes it), and while nothing is heard local copies only answer as degraded: so
        // keep the copy for degraded reads during an outage. Without coherence nothing would correct it: drop it.
        if (!this.local.coherent || isHandoffError(err, 'FST_HANDOFF_CORRUPT_ENTRY')) this.local.drop(key, partition)
        throw err
      }
      if (res.ok) {
        this.counters.writes++
        // What every other instance will read: the JSON round trip, frozen (never the caller's own object).
        const frozen = this.codec.frozen(encoded)
        this.local.fill(ticket, { value: frozen, version: res.version, epoch: res.epoch, expiresAt: res.expiresAt, bytes: sealed.length })
        await durability?.await(key)
        return { value: frozen, version: res.version, epoch: res.epoch, written: true, conflicts }
      }
      this.local.release(ticket)
      conflicts++
      this.counters.conflicts++
      this.local.drop(key, partition)
      const currentEpoch = res.current?.epoch ?? ''
      if (base.from === 'local' && base.epoch !== '' && currentEpoch !== '' && currentEpoch !== base.epoch) {
        this.local.onRefusedFromOtherEpoch(partition)
      }
      base = this.stored(key, res.current)
      if (attempt >= 1) await backoff(attempt)
      attempt++
    }
    this.counters.conflictsExhausted++
    throw new ConflictError(entryLabel(key), this.maxAttempts)
  }

  /** Read and delete atomically (single-use values). Leaves a tombstone. */
  async take (key: string): Promise<StoreEntry<T> | undefined> {
    this.local.drop(key, this.partitionOf(key))
    let stored: StoredEntry | null
    try {
      stored = await this.calls.run('take', key, async () => await this.repository.take(key, this.tombstoneTtlMs))
    } catch (err) {
      if (isHandoffError(err, 'FST_HANDOFF_CORRUPT_ENTRY')) { this.codec.corrupt(key, err); return undefined }
      throw err
    }
    this.counters.takes++
    if (stored === null) return undefined
    const value = this.codec.decode(key, stored)
    if (value === undefined) return undefined
    return { value, version: stored.version, expiresAt: stored.expiresAt, source: 'repository', degraded: false, epoch: stored.epoch }
  }

  /** Delete, leaving a versioned tombstone so that a write still in flight cannot bring the entry back. */
  async delete (key: string): Promise<number> {
    const partition = this.partitionOf(key)
    this.local.drop(key, partition)
    const version = await this.calls.run('delete', key, async () => await this.repository.delete(key, this.tombstoneTtlMs))
    this.counters.deletes++
    this.local.drop(key, partition)
    await this.durability?.await(key)
    return version
  }

  /** Extend an entry's expiry without rewriting it. Call it lazily (e.g. when half the idle time is used up). */
  async touch (key: string, ttlMs: number): Promise<boolean> {
    // A foreign key is refused before any round trip, as by every other method.
    const partition = this.partitionOf(key)
    // The copy this instance holds names the entry it means: one from another epoch is not extended.
    const epoch = this.local.peek(key, partition)?.epoch
    const ok = await this.calls.run('touch', key, async () => await this.repository.touch(key, ttlMs, epoch))
    this.counters.touches++
    if (ok) this.local.extend(key, partition, this.now() + ttlMs)
    else this.local.drop(key, partition)
    return ok
  }

  /** Replace the latency observer (the metrics plugin sets one). */
  setObserver (observe: ((op: RepositoryOp, ms: number, ok: boolean) => void) | undefined): void {
    this.calls.observe = observe
  }

  /** True while some node of the repository is failing: its writes answer 503, known local copies are served flagged degraded. */
  get degraded (): boolean { return this.calls.failing }

  /** The nodes whose last call failed or whose breaker is open (see StoreHealth.unavailableNodes). */
  unavailableNodes (): string[] {
    const nodes = new Set(this.calls.failingNodes())
    for (const n of this.repository.unavailableNodes?.() ?? []) nodes.add(n)
    return [...nodes]
  }

  /** Ms since the newest answered invalidation heartbeat was sent; 0 without coherence or with reliable delivery, -1 before the first. */
  get leaseAgeMs (): number {
    const leaseAge = this.local.leaseAge
    return Number.isFinite(leaseAge) ? Math.round(leaseAge) : -1
  }

  /**
   * Ms since local copies were last confirmed, which bounds degraded reads (maxDegradedMs). With coherence: since the
   * newest answered heartbeat of the invalidation lease (with several nodes, the oldest node's), as only that proves
   * no invalidation for them was missed; an answered call, maybe to another node, proves nothing about them. Without
   * coherence: since the newest answered repository call. 0 with the in-process repository.
   */
  get unconfirmedMs (): number {
    return this.unconfirmedMsOf(undefined)
  }

  /** unconfirmedMs of the copies of one partition: its node's heartbeats date them, not the other nodes'. */
  private unconfirmedMsOf (partition: number | undefined): number {
    const now = performance.now()
    const heardAt = this.local.heardAt(partition)
    if (this.local.coherent) return Math.max(0, now - heardAt)
    return Math.max(0, Math.min(now - this.calls.answeredAt, now - heardAt))
  }

  /** For health endpoints. (Metrics read the getters each gauge needs.) */
  health (): StoreHealth {
    return {
      status: this.calls.failing ? 'degraded' : 'ok',
      repository: this.repository.kind,
      unavailableNodes: this.unavailableNodes(),
      localReads: this.local.readable(),
      leaseAgeMs: this.leaseAgeMs,
      coherence: this.coherenceTransport,
      localEntries: this.localEntries,
      localBytes: this.localBytes
    }
  }

  /**
   * How invalidations reach this instance: the subscription's transport once started ('in-process' for the embedded
   * repository), the configured one before, 'off' without coherence.
   */
  get coherenceTransport (): CoherenceTransport | 'in-process' | 'off' {
    if (!this.local.coherent) return 'off'
    return this.subscription?.transport ?? (this.repository.kind === 'memory' ? 'in-process' : this.transport)
  }

  /** Bytes and entries held by the local tier now. */
  get localBytes (): number { return this.local.bytes }

  get localEntries (): number { return this.local.entries }

  /** Local hits / (hits + misses) since start. */
  get localHitRatio (): number {
    const total = this.counters.localHits + this.counters.localMisses
    return total === 0 ? 0 : this.counters.localHits / total
  }

  /** Drop every local copy (tests, or an operator after restoring Redis from a backup). */
  clearLocal (): void {
    this.local.clear()
  }

  /** Unsubscribe. The repository is left to its owner (it may be shared by several stores). */
  async close (): Promise<void> {
    const sub = this.subscription
    this.subscription = undefined
    await sub?.close()
    this.clearLocal()
  }

  /**
   * An entry of a kind registered with resealOnRead, sealed with an older key of the ring, is written back unchanged
   * under the newest (compare-and-set on its version), so that what is read while a rotation overlaps ([k2, k1])
   * still opens once the old key is dropped. Best effort: a lost race or a failed write leaves the entry as it was.
   */
  private async resealIfOld (key: string, stored: StoredEntry, value: T): Promise<StoredEntry> {
    if (stored.value === null || this.keyRing.ids.length < 2 || !this.resealKinds.has(key.slice(key.lastIndexOf(':') + 1))) return stored
    if (this.codec.sealedWith(stored.value) === this.keyRing.ids[0]) return stored
    const ttlMs = Math.floor(stored.expiresAt - this.now())
    if (ttlMs < 1) return stored
    const sealed = this.codec.seal(key, stored.version + 1, this.codec.encode(value).plain)
    try {
      const res = await this.calls.run('compareAndSet', key, async () => await this.repository.compareAndSet(key, stored.version, sealed, ttlMs, stored.epoch))
      if (!res.ok) return stored
      this.counters.resealed++
      return { value: sealed, version: res.version, expiresAt: res.expiresAt, epoch: res.epoch }
    } catch {
      return stored
    }
  }

  private async readBase (key: string): Promise<Base<T>> {
    this.counters.repositoryReads++ // update's reads count as get's do
    return this.stored(key, await this.calls.run('get', key, async () => await this.repository.get(key)))
  }

  private stored (key: string, entry: StoredEntry | null): Base<T> {
    if (entry === null) return { value: undefined, version: 0, epoch: '', deleted: false, from: 'stored' }
    return { value: this.codec.decode(key, entry), version: entry.version, epoch: entry.epoch, deleted: entry.value === null, from: 'stored' }
  }

  private partitionOf (key: string): number {
    const p = partitionOfKey(key)
    if (p < 0 || p >= this.partitions) {
      throw new InvalidOptionError('key', `not a key of this store (build keys with store.key(id, kind); ${this.partitions} partitions)`)
    }
    return p
  }
}

/**
 * The transport option, else HANDOFF_COHERENCE_TRANSPORT (switch a deployment, or run a test suite on either,
 * without changing code), else 'tracking'.
 */
function coherenceTransport (option: unknown): CoherenceTransport {
  const env = process.env.HANDOFF_COHERENCE_TRANSPORT
  const [name, value] = option !== undefined ? ['coherence.transport', option] : ['HANDOFF_COHERENCE_TRANSPORT', env === '' ? undefined : env]
  if (value === undefined) return 'tracking'
  if (value !== 'pubsub' && value !== 'tracking') throw new InvalidOptionError(name, `must be 'pubsub' or 'tracking', got ${JSON.stringify(value)}`)
  return value
}

/**
 * The one rule for a decision made on a base that may not be what is stored (a local copy that may trail an
 * invalidation in flight, or "absent" assumed to create in one round trip): does it count as made, or must it be
 * re-made on the stored value? A refusal (mutate throws, a value too large) counts only on the stored value. A
 * decline (mutate returns undefined) writes nothing, which is as right on a local copy as on the stored value; but
 * declining to create must see what is there. Writes need no rule: the compare-and-set checks their base.
 */
function decisionStands (base: Base<unknown>, decision: 'refuses' | 'declines'): boolean {
  return decision === 'refuses' ? base.from === 'stored' : base.from !== 'assumed'
}

async function backoff (attempt: number): Promise<void> {
  // Jittered and capped, so that writers racing on one key spread out instead of retrying in lockstep.
  const cap = Math.min(64, 2 ** Math.min(attempt, 6))
  await new Promise(resolve => setTimeout(resolve, Math.random() * cap))
}
