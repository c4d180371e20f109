import type { FastifyInstance, FastifyPluginAsync, FastifyReply } from 'fastify'
import fp from 'fastify-plugin'
import { Redis, Cluster, type RedisOptions, type ClusterNode, type ClusterOptions } from 'ioredis'
import { InvalidOptionError, isHandoffError } from '../lib/errors.js'
import { compileOptions, type OptionsCheck } from '../lib/options.js'
import { MemoryRepository } from '../lib/repository/memory.js'
import { RedisRepository, type RedisClient } from '../lib/repository/redis.js'
import { ShardedRepository } from '../lib/repository/sharded.js'
import type { Repository } from '../lib/repository/types.js'
import { KeyRing, type SecretInput } from '../lib/seal.js'
import { TieredStore, type TieredStoreOptions } from '../lib/tiered-store.js'

/** How to reach Redis: a URL, ioredis options (Sentinel: `sentinels` + `name`), a client, or Cluster nodes. */
export type RedisConnection =
  | string
  | RedisOptions
  | RedisClient
  | { cluster: ClusterNode[], options?: ClusterOptions }
  /** Several standalone nodes without Cluster: partitions spread by rendezvous hashing (see ShardedRepository). */
  | { shards: string[] }

export interface HandoffStoreOptions extends Omit<TieredStoreOptions, 'repository' | 'secret' | 'logger'> {
  /**
   * The cluster secret: at least 32 bytes, the same on every instance, or a key ring `[{ id, secret }]` newest
   * first for rotation. Seals every entry and derives the cookie-signing and ticket keys. Required.
   */
  secret: SecretInput | KeyRing
  /** Redis to share state through. Default: none, the embedded in-process repository (one instance only). */
  redis?: RedisConnection
  /** A ready-made Repository (advanced; overrides `redis`). Not closed by this plugin. */
  repository?: Repository
  /** Command timeout for Redis, ms (see RedisRepository). Default: 1000. */
  commandTimeoutMs?: number
  /** How long registration waits for Redis before failing with FST_HANDOFF_UNAVAILABLE, ms. Default: 5000. */
  connectTimeoutMs?: number
  /**
   * Send the Redis commands of one event-loop turn in one socket write per connection (see RedisRepository's
   * `coalesceWrites`). Adds no wait beyond the current turn. Default: true.
   */
  coalesceWrites?: boolean
  /**
   * `Retry-After` (seconds) added to every 503 answered for a FST_HANDOFF_* error; auth-session uses it too unless
   * given its own `retryAfterSeconds`. Default: 1.
   */
  retryAfterSeconds?: number
}

export interface HandoffDecorator {
  store: TieredStore
  keyRing: KeyRing
  repository: Repository
  /** The `Retry-After` seconds every 503 of the suite carries (the `retryAfterSeconds` option). */
  retryAfterSeconds: number
}

declare module 'fastify' {
  interface FastifyInstance {
    handoff: HandoffDecorator
  }
}

function isShardsSpec (r: RedisConnection): r is { shards: string[] } {
  return typeof r === 'object' && r !== null && Array.isArray((r as { shards?: unknown }).shards)
}

function isClusterSpec (r: RedisConnection): r is { cluster: ClusterNode[], options?: ClusterOptions } {
  return typeof r === 'object' && r !== null && Array.isArray((r as { cluster?: unknown }).cluster)
}

/** Builds the repository the options describe; `owned` tells whether closing it is ours to do. */
export function createRepository (opts: Pick<HandoffStoreOptions, 'redis' | 'repository' | 'commandTimeoutMs' | 'connectTimeoutMs' | 'coalesceWrites'>,
  onEvent?: (msg: string, fields: object) => void): { repository: Repository, owned: boolean } {
  if (opts.repository !== undefined) return { repository: opts.repository, owned: false }
  if (opts.redis === undefined) return { repository: new MemoryRepository(), owned: true }
  const r = opts.redis
  const common = {
    commandTimeoutMs: opts.commandTimeoutMs,
    connectTimeoutMs: opts.connectTimeoutMs,
    coalesceWrites: opts.coalesceWrites,
    // One event per Redis node (a Cluster primary, a shard): only the partitions it serves are affected.
    onEvent: (e: { type: string, reason?: string, node?: string, error?: Error }) => {
      if (e.type === 'unavailable') onEvent?.('fastify-handoff: Redis unavailable', { reason: e.reason, node: e.node })
      else if (e.type === 'recovered') onEvent?.('fastify-handoff: Redis available again', { node: e.node })
      else if (e.type === 'subscribe-failed') {
        onEvent?.('fastify-handoff: invalidation subscription refused; local copies of this node\'s partitions are not trusted, retrying', { reason: e.reason, node: e.node })
      } else if (e.type === 'subscribed') onEvent?.('fastify-handoff: invalidation subscription restored', { node: e.node })
    }
  }
  if (r instanceof Redis || r instanceof Cluster) {
    return { repository: new RedisRepository({ ...common, client: r }), owned: true }
  }
  if (typeof r === 'string') return { repository: new RedisRepository({ ...common, url: r }), owned: true }
  if (isShardsSpec(r)) {
    const urls = r.shards
    return {
      repository: new ShardedRepository(urls.map(url => ({ id: new URL(url).host, repository: new RedisRepository({ ...common, url }) }))),
      owned: true
    }
  }
  if (isClusterSpec(r)) {
    const client = new Cluster(r.cluster, {
      enableOfflineQueue: false,
      ...r.options,
      redisOptions: { maxRetriesPerRequest: 0, ...r.options?.redisOptions }
    })
    return { repository: new RedisRepository({ ...common, client, ownsClient: true }), owned: true }
  }
  if (typeof r === 'object' && r !== null) return { repository: new RedisRepository({ ...common, redisOptions: r }), owned: true }
  throw new InvalidOptionError('redis', 'expected a redis:// URL, ioredis options, an ioredis client, { cluster: [...] } or { shards: [...] }')
}

const integerAtLeast = (minimum: number): { type: 'integer', minimum: number } => ({ type: 'integer', minimum })

/** The options' schema: types and ranges (lib/options.ts applies it the same way in every plugin). */
export const STORE_OPTIONS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['secret'],
  properties: {
    // The key ring checks the secret itself (length, entries), before anything is opened.
    secret: { description: 'the cluster secret (>= 32 bytes, identical on every instance) or a key ring [{ id, secret }]' },
    redis: {
      anyOf: [{ type: 'string', pattern: '^(rediss?://|/)' }, { type: 'object' }],
      description: 'a redis:// URL, ioredis options, an ioredis client, { cluster: [...] } or { shards: [...] }'
    },
    repository: { type: 'object', required: ['kind'], description: 'a Repository (RedisRepository, MemoryRepository, ShardedRepository)' },
    commandTimeoutMs: integerAtLeast(1),
    connectTimeoutMs: integerAtLeast(1),
    coalesceWrites: { type: 'boolean' },
    retryAfterSeconds: integerAtLeast(0),
    // TieredStore's own options: their finer rules (powers of two, key prefix characters) are its constructor's.
    prefix: { type: 'string' },
    partitions: { type: 'integer', minimum: 1, maximum: 16384 },
    stripes: integerAtLeast(1),
    maxLocalBytes: integerAtLeast(0),
    localTtlMs: integerAtLeast(0),
    coherence: {
      anyOf: [{ const: false }, {
        type: 'object',
        additionalProperties: false,
        properties: { leaseMs: integerAtLeast(1), transport: { enum: ['pubsub', 'tracking'] } }
      }],
      description: "false or { leaseMs } (optionally with transport: 'pubsub' | 'tracking')"
    },
    defaultTtlMs: integerAtLeast(1),
    tombstoneTtlMs: integerAtLeast(1),
    maxAttempts: integerAtLeast(1),
    maxValueBytes: integerAtLeast(1),
    durability: {
      type: 'object',
      additionalProperties: false,
      required: ['replicas'],
      properties: { replicas: integerAtLeast(1), timeoutMs: integerAtLeast(1) }
    },
    maxDegradedMs: integerAtLeast(0),
    now: { typeof: 'function' },
    observe: { typeof: 'function' }
  }
} as const

/** Refuses invalid store options (unknown keys with a did-you-mean, types, ranges), naming the option. */
export const checkStoreOptions: OptionsCheck = compileOptions(STORE_OPTIONS_SCHEMA)

const storePlugin: FastifyPluginAsync<HandoffStoreOptions> = async (fastify: FastifyInstance, opts) => {
  // Everything is checked before anything is opened: a Redis client made first would be left reconnecting by the
  // failed boot.
  checkStoreOptions(opts)
  const keyRing = opts.secret instanceof KeyRing ? opts.secret : new KeyRing(opts.secret)
  const commandTimeoutMs = opts.commandTimeoutMs ?? 1000
  if (opts.durability?.timeoutMs !== undefined && opts.durability.timeoutMs >= commandTimeoutMs) {
    // WAIT runs under the command timeout: a longer wait would trip the breaker and fail every command.
    throw new InvalidOptionError('durability.timeoutMs', `must be below commandTimeoutMs (${commandTimeoutMs}), got ${opts.durability.timeoutMs}`)
  }
  const retryAfterS = opts.retryAfterSeconds ?? 1
  const retryAfter = String(retryAfterS)
  const { repository, owned } = createRepository(opts, (msg, fields) => fastify.log.warn(fields, msg))
  const { redis: _r, repository: _repo, commandTimeoutMs: _t, connectTimeoutMs: _c, coalesceWrites: _cw, retryAfterSeconds: _ra, ...storeOpts } = opts
  let store: TieredStore
  try {
    store = new TieredStore({ ...storeOpts, secret: keyRing, repository, logger: fastify.log })
    if (repository.kind === 'memory') {
      if (process.env.NODE_ENV === 'production') {
        // In production this is almost always a missing or misspelt `redis`: say what it costs, loudly.
        fastify.log.warn('fastify-handoff: no Redis configured (NODE_ENV=production): each instance keeps its own in-process store, ' +
          'so instances will not share state (sessions, carts, TLS sessions); set the `redis` option')
      } else {
        fastify.log.info('fastify-handoff: no Redis configured, using the embedded in-process repository (one instance only)')
      }
    }
    await store.start()
  } catch (err) {
    // No onClose hook exists yet: close what was opened, or ioredis would go on reconnecting after a failed boot.
    if (owned) await repository.close().catch(() => {})
    throw err
  }
  // Every 503 of ours tells the client when to come back (the store answers again within a command timeout).
  fastify.addHook('onError', async (_request, reply, err) => {
    if (isHandoffError(err) && err.statusCode === 503 && !reply.hasHeader('retry-after')) reply.header('retry-after', retryAfter)
  })
  fastify.decorate('handoff', { store, keyRing: store.keyRing, repository, retryAfterSeconds: retryAfterS })
  fastify.addHook('onClose', async () => {
    await store.close()
    if (owned) await repository.close()
  })
}

/** Builds the shared TieredStore and decorates `fastify.handoff`. The other plugins depend on it. */
export const handoffStore = fp(storePlugin, { fastify: '5.x', name: 'fastify-handoff/store' })
export default handoffStore

/**
 * The store's 503, for errors met in onSend (where the error handler would log every request of an outage; the store
 * logs the outage once): status, `Retry-After` (the `retryAfterSeconds` option) and the JSON body the error handler
 * would give. Returns the payload to send instead of `payload`, which is released.
 */
export function unavailableReply (reply: FastifyReply, payload: unknown, err: Error): string {
  if (payload !== null && typeof payload === 'object' && typeof (payload as { destroy?: unknown }).destroy === 'function') {
    (payload as { destroy: () => void }).destroy()
  }
  reply.code(503)
  reply.header('retry-after', String(reply.server.handoff.retryAfterSeconds))
  reply.header('content-type', 'application/json; charset=utf-8')
  return JSON.stringify({
    statusCode: 503,
    code: isHandoffError(err) ? err.code : 'FST_HANDOFF_UNAVAILABLE',
    error: 'Service Unavailable',
    message: err.message
  })
}
