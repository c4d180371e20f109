/**
 * The Repository is the shared, authoritative tier: Redis in production, an in-process map when no Redis is
 * configured. It stores opaque bytes (sealed by the TieredStore) under a version that grows by one per write.
 * Every mutating operation is atomic and publishes an invalidation for its partition (see local-tier.ts).
 *
 * Keys are full names built by `partitions.ts` (`<prefix>{p<n>}:<id>:<kind>`); the `{p<n>}` hash tag names the
 * partition, so an entry, its partition's sequence counter and its invalidation channel share one Cluster slot.
 */

/** What the repository holds under a key. `value === null` is a tombstone left by `delete` or `take`. */
export interface StoredEntry {
  value: Buffer | null
  /** Integer, +1 per write, delete or take; never reused while the key (or its tombstone) exists. */
  version: number
  /** Absolute expiry, milliseconds since the epoch. */
  expiresAt: number
  /**
   * The repository generation the entry was written in (its partition's epoch, a random id minted once per partition
   * and again after the repository lost its data). '' for entries written before epochs existed.
   */
  epoch: string
}

export type CasResult =
  /** `epoch`: the generation the entry was written in. */
  | { ok: true, version: number, expiresAt: number, epoch: string }
  /** The write was refused; `current` is what the key holds now (null: absent), saving the caller a read. */
  | { ok: false, current: StoredEntry | null }

/** Published after every write, delete and take, in the same atomic step as the write itself. */
export interface Invalidation {
  key: string
  /**
   * The version the key holds after the write (a tombstone's version after delete/take). Infinity when the transport
   * does not say (client tracking names only the key): newer than any copy or fill in flight.
   */
  version: number
  partition: number
  /** Per-partition sequence number, +1 per published invalidation: a gap means a lost message. 0: not counted (tracking). */
  sequence: number
  /** The partition's epoch the write was made in; a change means the repository forgot (FLUSHALL, empty restart). '' from writers older than epochs. */
  epoch: string
}

export interface InvalidationListener {
  onInvalidation: (msg: Invalidation) => void
  /**
   * The subscription was (re)established or lost, or messages may have been lost (reconnect, failover): every local
   * copy of the listed partitions (all when undefined) must be treated as stale, and the lease is void until the
   * next heartbeat.
   */
  onResync: (partitions?: readonly number[]) => void
  /**
   * Proof of life: every invalidation published before the heartbeat sent at `sentAt` (performance.now() of this
   * process) has been delivered, for the listed partitions (the node's that sent it; all when undefined).
   */
  onHeartbeat?: (sentAt: number, partitions?: readonly number[]) => void
  /**
   * A node's witness (a marker key minted once with SET NX, checked with every heartbeat) holds `value`. A value
   * other than the last one seen under `name` means that node lost its data: every partition it serves (`partitions`,
   * all when undefined) was reset, even if nobody writes to it.
   */
  onWitness?: (name: string, value: string, partitions?: readonly number[]) => void
  /**
   * A witness read failed or went unanswered (the node's `partitions`, all when undefined). Heartbeats of that node
   * stop renewing the lease once its witness has not been read for a lease interval: a node that cannot confirm it
   * kept its data does not confirm local copies either.
   */
  onWitnessError?: (name: string, reason: string, partitions?: readonly number[]) => void
}

export interface SubscriptionScope {
  prefix: string
  partitions: number
  /**
   * Check each node's witness at most this often, ms: half the reader's lease keeps reset detection within about
   * the lease at a fraction of the heartbeats' cost. Default: with every heartbeat.
   */
  witnessIntervalMs?: number
  /**
   * How invalidations reach this instance, where the repository offers a choice (Redis): 'pubsub', every write is
   * published on its partition's channel and every instance hears it; 'tracking', Redis client-side caching tells
   * only the instances that read the key. Default here: 'pubsub' (TieredStore always says which; its default is
   * 'tracking').
   */
  transport?: CoherenceTransport
}

export type CoherenceTransport = 'pubsub' | 'tracking'

export interface Subscription {
  /** True when delivery cannot be lost or delayed (in-process): readers need no lease. */
  readonly reliable: boolean
  /** How invalidations arrive: 'pubsub', 'tracking', or 'in-process' (the embedded repository). */
  readonly transport?: CoherenceTransport | 'in-process'
  close: () => Promise<void>
}

export interface Repository {
  /** A short name for logs and metrics: 'memory', 'redis', 'redis-cluster', ... */
  readonly kind: string
  /** Resolves once the repository can take commands. Safe to call more than once. */
  connect: () => Promise<void>
  get: (key: string) => Promise<StoredEntry | null>
  /**
   * Store `value` as version `expectedVersion + 1` if the key is at `expectedVersion` now (a tombstone counts, its
   * version included; an absent key is version 0). `expectedVersion === null` means "create if absent": it writes
   * version 1 when nothing (not even a tombstone) is there, and otherwise returns the current entry unchanged.
   * `expectedEpoch`, when given, must also match the stored entry's epoch (a base read before the repository lost its
   * data is refused even if the version number happens to match again); '' matches entries written before epochs.
   */
  compareAndSet: (key: string, expectedVersion: number | null, value: Buffer, ttlMs: number, expectedEpoch?: string) => Promise<CasResult>
  /** Read and delete atomically; leaves a tombstone (version + 1) for `tombstoneTtlMs`. Null when absent. */
  take: (key: string, tombstoneTtlMs: number) => Promise<StoredEntry | null>
  /**
   * Replace whatever is there by a tombstone with the next version, kept `tombstoneTtlMs`, so that a write still in
   * flight (it expects the old version) fails instead of bringing the entry back. Returns the tombstone's version.
   */
  delete: (key: string, tombstoneTtlMs: number) => Promise<number>
  /**
   * Extend the expiry of a live entry without rewriting it or changing its version. False when absent, or when
   * `expectedEpoch` is given and the entry is from another epoch (the entry the caller knew is gone).
   */
  touch: (key: string, ttlMs: number, expectedEpoch?: string) => Promise<boolean>
  /**
   * Optional: wait until `replicas` replicas acknowledged every write made so far on the connection that owns
   * `key`, at most `timeoutMs`. Returns how many did. Repositories without replication leave it undefined.
   */
  waitForReplicas?: (key: string, replicas: number, timeoutMs: number) => Promise<number>
  /** Optional: problems with the server's configuration worth a warning at start (eviction policy, version). */
  checkServer?: () => Promise<string[]>
  /**
   * Optional: the nodes whose breaker is open now (a command timed out and no probe has been answered since):
   * commands for the partitions they serve fail at once with FST_HANDOFF_UNAVAILABLE, while the other nodes serve.
   */
  unavailableNodes?: () => string[]
  /**
   * Optional: the name of the node a command on `key` goes to now (as `unavailableNodes` names it), so that the store
   * keeps its outage state per node. Without it, the repository is one node.
   */
  nodeOf?: (key: string) => string
  /** Follow the invalidations of every partition of `scope` (the channels named by partitions.ts). */
  subscribe: (scope: SubscriptionScope, listener: InvalidationListener) => Promise<Subscription>
  close: () => Promise<void>
}
