import { readFileSync } from 'node:fs'
import { Redis, Cluster, type RedisOptions } from 'ioredis'
import clusterKeySlot from 'cluster-key-slot'
import { CorruptEntryError, UnavailableError, ClosedError } from '../errors.js'
import { channelOf, epochKeyOf, sequenceKeyOf } from '../partitions.js'
import { entryLabel } from '../seal.js'
import { GuardsByNode } from './deadline.js'
import { WriteCoalescer, type CorkableStream } from './coalesce.js'
import { newEpoch } from './epoch.js'
import type { CasResult, InvalidationListener, Repository, StoredEntry, Subscription, SubscriptionScope } from './types.js'
import { RedisSubscriber } from './redis-subscriber.js'
import { ClusterSubscription } from './cluster-subscriber.js'
import { TrackingSubscriber } from './tracking-subscriber.js'

const lua = (name: string): string => readFileSync(new URL(`./${name}.lua`, import.meta.url), 'utf8')
const SCRIPTS = { cas: lua('cas'), remove: lua('remove'), touch: lua('touch') }

type Reply = Array<number | Buffer | null>

/** The commands defineCommand adds; ioredis cannot type them itself. */
interface Scripted {
  handoffCasBuffer: (entry: string, seq: string, epochKey: string, expected: string, data: Buffer, ttl: number, now: number,
    channel: string, expectedEpoch: string, epochCandidate: string) => Promise<Reply>
  handoffRemoveBuffer: (entry: string, seq: string, epochKey: string, ttl: number, now: number, channel: string,
    returnOld: string, epochCandidate: string) => Promise<Reply>
  handoffTouch: (entry: string, ttl: number, now: number, expectedEpoch: string) => Promise<number>
}

export type RedisClient = Redis | Cluster

export interface RedisRepositoryOptions {
  /**
   * An ioredis client (Redis, including Sentinel, or Cluster) you created. It is used as is and not closed by
   * close(). Its offline queue should be off (`enableOfflineQueue: false`) so that commands fail fast while it is
   * disconnected; the command timeout bounds them either way.
   */
  client?: RedisClient
  /** Close `client` on close() although it was passed in (the plugins set this for clients they built). Default: false. */
  ownsClient?: boolean
  /** A redis:// or rediss:// URL for a connection this repository creates. Default: redis://127.0.0.1:6379. */
  url?: string
  /** ioredis options for the connections this repository creates (e.g. `sentinels` and `name` for Sentinel). */
  redisOptions?: RedisOptions
  /**
   * Every command fails with FST_HANDOFF_UNAVAILABLE when Redis has not answered within this many ms, also when
   * Redis accepted the command and then froze. Default: 1000.
   */
  commandTimeoutMs?: number
  /**
   * While a node's breaker is tripped by a timeout, PING that node this often, in ms (on Cluster, also re-read the
   * slot map at most once a second, so that slots failed over to another primary are served again). Default: 100.
   */
  probeIntervalMs?: number
  /** How long connect() waits for the first ready connection, in ms (well under Fastify's pluginTimeout). Default: 5000. */
  connectTimeoutMs?: number
  /**
   * ioredis options overriding those of the invalidation subscriber's connection (by default a duplicate of the
   * command connection), e.g. to reach Redis through another route. Default: none.
   */
  subscriberOptions?: RedisOptions
  /** PING the subscriber this often, ms; each answer renews the lease of local reads. Default: 50. */
  heartbeatIntervalMs?: number
  /** A heartbeat unanswered this long (a path gone silent) drops and re-opens the subscriber connection. Default: 3000. */
  subscriberDeadAfterMs?: number
  /**
   * Send the commands issued in one event-loop turn in one socket write per Redis connection (the socket is corked
   * from the turn's first command to the end of the turn). Saves a write system call per command on the server and a
   * read per command on Redis under load; adds no wait beyond the current turn. Default: true.
   */
  coalesceWrites?: boolean
  /** Called on state changes worth a log line (tripped, recovered). Never given a secret. */
  onEvent?: (event: RepositoryEvent) => void
}

export type RepositoryEvent =
  /** `node`: the Redis node ("host:port"; on Cluster one primary) whose commands now fail at once. */
  | { type: 'unavailable', reason: string, node: string }
  | { type: 'recovered', node: string }
  | { type: 'error', error: Error }
  /** The invalidation subscriber of `node` could not subscribe again after a reconnect: local copies of its partitions are not trusted until it does (retried with backoff). */
  | { type: 'subscribe-failed', node: string, reason: string }
  /** The subscriber of `node` subscribed again after a 'subscribe-failed'. */
  | { type: 'subscribed', node: string }

function isReplyError (err: unknown): err is Error {
  return err instanceof Error && err.name === 'ReplyError'
}

/**
 * The repository on Redis (standalone, Sentinel or Cluster through ioredis). Every mutation is one Lua script:
 * compare-and-set on the version, store value and expiry, bump the partition's sequence counter and SPUBLISH the
 * invalidation on the partition's shard channel. Entry, counter and channel share the partition's hash tag, so the
 * script stays in one Cluster slot.
 */
export class RedisRepository implements Repository {
  readonly kind: string
  readonly client: RedisClient
  private readonly scripted: Scripted
  private readonly ownsClient: boolean
  /** One breaker per Redis node: a frozen Cluster primary fails only the slots it serves. */
  private readonly guards: GuardsByNode
  /** The node name of a standalone or Sentinel client (a Cluster names its nodes "host:port"). */
  private readonly singleNode: string
  private readonly probeIntervalMs: number
  private readonly connectTimeoutMs: number
  private readonly onEvent: ((e: RepositoryEvent) => void) | undefined
  private probeTimer: NodeJS.Timeout | undefined
  private readonly probing = new Set<string>()
  private slotsRefreshedAt = Number.NEGATIVE_INFINITY
  private readonly slotsByTag = new Map<string, number>()
  private closed = false
  private readonly subscribers = new Set<RedisSubscriber | ClusterSubscription>()
  /** Client-tracking hubs, one per command connection (a Cluster has one per primary). */
  private readonly trackers = new Map<Redis, TrackingSubscriber>()
  private readonly subscriberOptions: RedisOptions | undefined
  private readonly heartbeatIntervalMs: number | undefined
  private readonly subscriberDeadAfterMs: number | undefined
  private readonly coalescer: WriteCoalescer | undefined

  constructor (opts: RedisRepositoryOptions = {}) {
    this.onEvent = opts.onEvent
    this.probeIntervalMs = opts.probeIntervalMs ?? 100
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 5000
    this.subscriberOptions = opts.subscriberOptions
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs
    this.subscriberDeadAfterMs = opts.subscriberDeadAfterMs
    this.coalescer = opts.coalesceWrites === false ? undefined : new WriteCoalescer()
    const base: RedisOptions = {
      // No auto-pipelining: ioredis runs one auto-pipeline per connection at a time, and a pipeline whose callback
      // never came (seen after a freeze or a restart with the offline queue off) held every later command forever.
      // The commands of one event-loop turn still leave in one socket write: see WriteCoalescer (coalesceWrites).
      enableAutoPipelining: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: (times: number) => Math.min(50 * times, 500),
      ...opts.redisOptions
    }
    if (opts.client !== undefined) {
      this.client = opts.client
      this.ownsClient = opts.ownsClient ?? false
    } else {
      this.client = opts.url !== undefined ? new Redis(opts.url, base) : new Redis(base)
      this.ownsClient = true
    }
    this.kind = this.client instanceof Cluster ? 'redis-cluster' : 'redis'
    this.client.defineCommand('handoffCas', { numberOfKeys: 3, lua: SCRIPTS.cas })
    this.client.defineCommand('handoffRemove', { numberOfKeys: 3, lua: SCRIPTS.remove })
    this.client.defineCommand('handoffTouch', { numberOfKeys: 1, lua: SCRIPTS.touch })
    this.scripted = this.client as unknown as Scripted
    // Without an error listener ioredis errors crash the process (measured on the peer stack).
    this.client.on('error', (error: Error) => this.onEvent?.({ type: 'error', error }))
    this.client.on('ready', () => this.recover())
    this.singleNode = this.client instanceof Cluster ? ANY_NODE : nodeName(this.client)
    this.guards = new GuardsByNode({
      timeoutMs: opts.commandTimeoutMs ?? 1000,
      onTrip: (node, reason) => {
        this.onEvent?.({ type: 'unavailable', reason: `${reason} (${node})`, node })
        this.startProbing()
      }
    })
  }

  async connect (): Promise<void> {
    this.assertOpen()
    if (this.client.status === 'ready') return
    if (this.client.status === 'wait') this.client.connect().catch(() => {})
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.client.off('ready', onReady)
        reject(new UnavailableError(`Redis not ready within ${this.connectTimeoutMs} ms (status ${this.client.status})`))
      }, this.connectTimeoutMs)
      const onReady = (): void => { clearTimeout(timer); resolve() }
      this.client.once('ready', onReady)
    })
  }

  async get (key: string): Promise<StoredEntry | null> {
    const r = await this.run(key, () => this.client.hmgetBuffer(key, 'v', 'd', 'e', 'g'))
    return parseEntry(key, r[0] ?? null, r[1] ?? null, r[2] ?? null, r[3] ?? null)
  }

  async compareAndSet (key: string, expectedVersion: number | null, value: Buffer, ttlMs: number, expectedEpoch?: string): Promise<CasResult> {
    const r = await this.run(key, () => this.scripted.handoffCasBuffer(
      key, sequenceKeyOf(key), epochKeyOf(key), expectedVersion === null ? '' : String(expectedVersion), value, ttlMs,
      Date.now(), channelOf(key), expectedEpoch ?? '*', newEpoch()))
    if (r[0] === 1) return { ok: true, version: Number(r[1]), expiresAt: Number(r[2]), epoch: text(r[3]) }
    const version = Number(r[1])
    if (version === 0) return { ok: false, current: null }
    return { ok: false, current: { version, value: bufferOrNull(r[2]), expiresAt: Number(r[3]), epoch: text(r[4]) } }
  }

  async take (key: string, tombstoneTtlMs: number): Promise<StoredEntry | null> {
    const r = await this.run(key, () => this.scripted.handoffRemoveBuffer(
      key, sequenceKeyOf(key), epochKeyOf(key), tombstoneTtlMs, Date.now(), channelOf(key), '1', newEpoch()))
    const value = bufferOrNull(r[2])
    if (value === null) return null
    return { value, version: Number(r[1]), expiresAt: Number(r[3]), epoch: text(r[4]) }
  }

  async delete (key: string, tombstoneTtlMs: number): Promise<number> {
    const r = await this.run(key, () => this.scripted.handoffRemoveBuffer(
      key, sequenceKeyOf(key), epochKeyOf(key), tombstoneTtlMs, Date.now(), channelOf(key), '0', newEpoch()))
    return Number(r[0])
  }

  async touch (key: string, ttlMs: number, expectedEpoch?: string): Promise<boolean> {
    const r = await this.run(key, () => this.scripted.handoffTouch(key, ttlMs, Date.now(), expectedEpoch ?? '*'))
    return r === 1
  }

  async subscribe (scope: SubscriptionScope, listener: InvalidationListener): Promise<Subscription> {
    this.assertOpen()
    const opts = {
      onEvent: (e: RepositoryEvent) => this.onEvent?.(e),
      redisOptions: this.subscriberOptions,
      heartbeatIntervalMs: this.heartbeatIntervalMs,
      deadAfterMs: this.subscriberDeadAfterMs
    }
    const transport = scope.transport ?? 'pubsub'
    if (transport === 'tracking') {
      // One tracking hub per command connection (a connection redirects to one client), shared by every store.
      const hub = (client: Redis): TrackingSubscriber => {
        let h = this.trackers.get(client)
        // A closed hub (its start failed, e.g. a shard refused CLIENT TRACKING) is replaced, never started again.
        if (h === undefined || h.isClosed) { h = new TrackingSubscriber(client, opts); this.trackers.set(client, h) }
        return h
      }
      const stop = async (client: Redis, leave: () => Promise<void>): Promise<void> => {
        await leave()
        if (this.trackers.get(client)?.size === 0) this.trackers.delete(client)
      }
      if (this.client instanceof Cluster) {
        const sub = new ClusterSubscription(this.client, scope, listener, opts, (node, partitions, shardListener) => {
          let leave: (() => Promise<void>) | undefined
          return {
            start: async () => { leave = await hub(node).add(scope, shardListener, partitions) },
            close: async () => { if (leave !== undefined) await stop(node, leave) }
          }
        })
        this.subscribers.add(sub)
        await sub.start()
        return { reliable: false, transport, close: async () => { this.subscribers.delete(sub); await sub.close() } }
      }
      const client = this.client
      const leave = await hub(client).add(scope, listener).catch(async (err: unknown) => {
        if (this.trackers.get(client)?.size === 0) this.trackers.delete(client)
        throw err
      })
      return { reliable: false, transport, close: async () => { await stop(client, leave) } }
    }
    const sub = this.client instanceof Cluster
      ? new ClusterSubscription(this.client, scope, listener, opts)
      : new RedisSubscriber(this.client, scope, listener, opts)
    this.subscribers.add(sub)
    await sub.start()
    return {
      reliable: false,
      transport,
      close: async () => {
        this.subscribers.delete(sub)
        await sub.close()
      }
    }
  }

  /** WAIT on the connection that made the writes: how many replicas acknowledged them within `timeoutMs`. */
  async waitForReplicas (key: string, replicas: number, timeoutMs: number): Promise<number> {
    return await this.run(key, async () => {
      if (this.client instanceof Cluster) return await waitOnClusterNode(this.client, key, replicas, timeoutMs)
      return await this.client.wait(replicas, timeoutMs)
    })
  }

  /**
   * Redis >= 7 is required (SPUBLISH in the write scripts). Any eviction policy but noeviction may drop entries
   * before they expire: every entry has a TTL, so volatile-* policies evict them too, silently ending a session or
   * emptying a cart. Returns the warnings; throws when the server cannot work at all.
   */
  async checkServer (): Promise<string[]> {
    const nodes: Array<Redis> = this.client instanceof Cluster ? this.client.nodes('master') : [this.client]
    const warnings: string[] = []
    for (const node of nodes) {
      const on = this.client instanceof Cluster ? nodeName(node) : this.singleNode
      const info = await this.runOn(on, '(info)', async () => await node.info('server'))
      const mem = await this.runOn(on, '(info)', async () => await node.info('memory'))
      const version = /redis_version:(\S+)/.exec(info)?.[1] ?? '0'
      const major = Number(version.split('.')[0])
      const where = `${node.options.host ?? '?'}:${node.options.port ?? '?'}`
      if (!(major >= 7)) {
        throw new UnavailableError(`Redis ${version} at ${where} is too old: fastify-handoff needs Redis >= 7 (SPUBLISH)`)
      }
      const policy = /maxmemory_policy:(\S+)/.exec(mem)?.[1] ?? 'noeviction'
      const maxmemory = Number(/maxmemory:(\d+)/.exec(mem)?.[1] ?? '0')
      if (policy !== 'noeviction') {
        warnings.push(`Redis at ${where} has maxmemory-policy ${policy}` +
          (maxmemory === 0 ? ' (no maxmemory set yet)' : '') +
          ': when memory fills, sessions and carts can be evicted before they expire. Use noeviction; ' +
          'writes then fail with FST_HANDOFF_UNAVAILABLE instead of data silently disappearing.')
      }
    }
    return warnings
  }

  /** Run a raw command under the same timeout (for INFO, WAIT, CONFIG GET and tests). */
  async command<T> (work: (client: RedisClient) => Promise<T>): Promise<T> {
    return await this.runOn(this.singleNode, '(command)', () => work(this.client))
  }

  /**
   * The nodes whose breaker is open now ("host:port"): commands for the partitions they serve fail at once with
   * FST_HANDOFF_UNAVAILABLE until a probe PING is answered. Empty while every node answers.
   */
  unavailableNodes (): string[] {
    return this.guards.tripped()
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.probeTimer !== undefined) clearInterval(this.probeTimer)
    this.probeTimer = undefined
    await Promise.all([...this.subscribers].map(async s => await s.close()))
    this.subscribers.clear()
    await Promise.all([...this.trackers.values()].map(async t => await t.close()))
    this.trackers.clear()
    if (this.ownsClient) {
      // QUIT lets in-flight replies arrive; bounded, since a frozen Redis would never answer it.
      if (this.client.status === 'ready') await this.guards.of(this.singleNode).bound(async () => await this.client.quit()).catch(() => {})
      this.client.disconnect()
    }
    this.guards.failAll('repository closed')
  }

  private async run<T> (key: string, work: () => Promise<T>): Promise<T> {
    return await this.runOn(this.nodeOf(key), key, work)
  }

  private async runOn<T> (node: string, key: string, work: () => Promise<T>): Promise<T> {
    if (this.closed) throw new ClosedError('RedisRepository')
    if (this.coalescer !== undefined) this.coalescer.hold(this.streamOf(node))
    try {
      return await this.guards.of(node).run(work)
    } catch (err) {
      throw mapError(key, err)
    }
  }

  /**
   * The socket a command for `node` is written to now, as ioredis picks it (the connection of a Cluster node is the
   * pool's instance of that slot's primary); undefined when that connection would not write it at once.
   */
  private streamOf (node: string): CorkableStream | undefined {
    let conn: Redis | undefined
    if (this.client instanceof Cluster) {
      if (node === ANY_NODE || this.client.status !== 'ready') return undefined
      conn = (this.client as unknown as ClusterInternals).connectionPool.getInstanceByKey(node)
    } else {
      conn = this.client
    }
    return conn?.status === 'ready' ? (conn as unknown as { stream?: CorkableStream }).stream : undefined
  }

  /** The node a command on `key` goes to, as ioredis routes it: the primary of the key's slot in its slot map. */
  nodeOf (key: string): string {
    if (!(this.client instanceof Cluster)) return this.singleNode
    return this.client.slots[this.slotOf(key)]?.[0] ?? ANY_NODE
  }

  /**
   * A key's Cluster slot, remembered per hash tag (entries share a few thousand `{p<n>}` tags): CRC16 over the key
   * on every command cost about 4.5x a tag lookup here, on top of ioredis computing it once more.
   */
  private slotOf (key: string): number {
    const open = key.indexOf('{')
    const close = open < 0 ? -1 : key.indexOf('}', open + 1)
    // Redis hashes only the tag when it is non-empty; otherwise the whole key.
    if (close <= open + 1) return clusterKeySlot(key)
    const tag = key.slice(open + 1, close)
    let slot = this.slotsByTag.get(tag)
    if (slot === undefined) {
      slot = clusterKeySlot(tag)
      if (this.slotsByTag.size < MAX_REMEMBERED_TAGS) this.slotsByTag.set(tag, slot)
    }
    return slot
  }

  private startProbing (): void {
    if (this.probeTimer !== undefined || this.closed) return
    this.probeTimer = setInterval(() => this.probe(), this.probeIntervalMs)
    this.probeTimer.unref()
  }

  /** PING each tripped node itself (not whichever node a keyless PING would reach); reset its guard on an answer. */
  private probe (): void {
    const tripped = this.guards.tripped()
    if (tripped.length === 0 || this.closed) {
      if (this.probeTimer !== undefined) clearInterval(this.probeTimer)
      this.probeTimer = undefined
      return
    }
    const cluster = this.client instanceof Cluster ? this.client : undefined
    // While a primary is frozen its commands fail here before ioredis could see a MOVED: re-read the slot map
    // ourselves, so that slots failed over to a replica route (and are guarded) by their new primary.
    if (cluster !== undefined && performance.now() - this.slotsRefreshedAt >= SLOTS_REFRESH_MS) {
      this.slotsRefreshedAt = performance.now()
      cluster.refreshSlotsCache()
    }
    for (const node of tripped) {
      if (this.probing.has(node)) continue
      let target: Redis | Cluster = this.client
      if (cluster !== undefined && node !== ANY_NODE) {
        const primary = cluster.nodes('master').find(n => nodeName(n) === node)
        if (primary === undefined) {
          // No longer a primary (failed over, or gone): no command routes to it, so its breaker has nothing to guard.
          this.guards.drop(node, `${node} is no longer a primary`)
          this.onEvent?.({ type: 'recovered', node })
          continue
        }
        target = primary
      }
      this.probing.add(node)
      this.guards.of(node).bound(async () => await target.ping())
        .then(() => this.recoverNode(node), () => {})
        .finally(() => { this.probing.delete(node) })
    }
  }

  private recoverNode (node: string): void {
    const guard = this.guards.of(node)
    if (guard.tripped) {
      guard.reset()
      this.onEvent?.({ type: 'recovered', node })
    }
  }

  /** The client (re)connected as a whole: every connection is new, so every breaker starts closed. */
  private recover (): void {
    for (const node of this.guards.tripped()) this.recoverNode(node)
  }

  private assertOpen (): void {
    if (this.closed) throw new ClosedError('RedisRepository')
  }
}

/** What ioredis's Cluster does not type: its pool of node connections, keyed "host:port" as in its slot map. */
interface ClusterInternals {
  connectionPool: { getInstanceByKey: (key: string) => Redis | undefined }
}

/** The guard of commands that ioredis sends to any node of a Cluster (no key, or a slot not mapped yet). */
const ANY_NODE = '(any node)'
/** While a Cluster breaker is open, re-read the slot map at most this often, ms. */
const SLOTS_REFRESH_MS = 1000
/** As many hash tags as a store can have partitions: foreign tags beyond it are hashed each time, not remembered. */
const MAX_REMEMBERED_TAGS = 16384

function nodeName (client: Redis): string {
  if (client.options.sentinels != null && client.options.name !== undefined) return `sentinel:${client.options.name}`
  return `${client.options.host ?? ''}:${client.options.port ?? ''}`
}

async function waitOnClusterNode (cluster: Cluster, key: string, replicas: number, timeoutMs: number): Promise<number> {
  // WAIT has no key, so ioredis would send it anywhere: send it to the primary that owns the key's slot.
  const slot = clusterKeySlot(key)
  const owners = (cluster as unknown as { slots: string[][] }).slots[slot]
  const nodeKey = owners?.[0]
  const node = cluster.nodes('master').find(n => `${n.options.host ?? ''}:${n.options.port ?? ''}` === nodeKey)
  if (node === undefined) throw new UnavailableError(`no primary known for slot ${slot}`)
  return await node.wait(replicas, timeoutMs)
}

function bufferOrNull (x: number | Buffer | null | undefined): Buffer | null {
  return Buffer.isBuffer(x) ? x : null
}

/** A string reply field; '' for a missing one (an entry written before epochs has no `g`). */
function text (x: number | Buffer | null | undefined): string {
  return Buffer.isBuffer(x) ? x.toString() : ''
}

function parseEntry (key: string, v: Buffer | null, d: Buffer | null, e: Buffer | null, g: Buffer | null): StoredEntry | null {
  if (v === null) return null
  const version = Number(v.toString())
  if (!Number.isSafeInteger(version) || version < 1) {
    throw new CorruptEntryError(entryLabel(key), 'the version field is not a positive integer: not a fastify-handoff entry')
  }
  return { version, value: d, expiresAt: e === null ? 0 : Number(e.toString()), epoch: text(g) }
}

function mapError (key: string, err: unknown): Error {
  if (typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'string' &&
    (err as { code: string }).code.startsWith('FST_HANDOFF_')) return err as Error
  if (isReplyError(err)) {
    if (err.message.startsWith('WRONGTYPE')) {
      return new CorruptEntryError(entryLabel(key), 'Redis holds another data type under this key: not a fastify-handoff entry')
    }
    return new UnavailableError(`Redis refused the command: ${err.message}`)
  }
  const msg = err instanceof Error ? err.message : String(err)
  return new UnavailableError(msg)
}
