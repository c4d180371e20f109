// Framework-free core: usable without Fastify (import from 'fastify-handoff/store').
export { TieredStore } from './tiered-store.js'
export type {
  TieredStoreOptions, StoreEntry, StoreHealth, RepositoryOp, StoreValue, UpdateInfo, UpdateOptions, UpdateResult, Mutator, StoreCounters, Durability, Logger
} from './tiered-store.js'
export { MemoryRepository } from './repository/memory.js'
export type { MemoryRepositoryOptions } from './repository/memory.js'
export { RedisRepository } from './repository/redis.js'
export type { RedisRepositoryOptions, RedisClient, RepositoryEvent } from './repository/redis.js'
export { ShardedRepository } from './repository/sharded.js'
export type { ShardNode } from './repository/sharded.js'
export type { Repository, StoredEntry, CasResult, Invalidation, InvalidationListener, Subscription, SubscriptionScope } from './repository/types.js'
export { KeyRing, Sealer, entryAad } from './seal.js'
export type { SecretInput } from './seal.js'
export { buzhash32, buzhash64 } from './buzhash.js'
export { partitionOf, entryKey, Rendezvous } from './partitions.js'
export * from './errors.js'
export { TicketKeySchedule, TieredTicketKeyStore } from './ticket-keys.js'
export type { TicketKeyStore, TicketKeyScheduleOptions, TieredTicketKeyStoreOptions, Clock, TicketKeyEvent } from './ticket-keys.js'
