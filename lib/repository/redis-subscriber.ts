import type { Redis, RedisOptions } from 'ioredis'
import { channelName, partitionOfChannel } from '../partitions.js'
import { isEpoch } from './epoch.js'
import type { InvalidationListener, SubscriptionScope } from './types.js'
import { RetryStreak } from './retry-streak.js'
import { WitnessCheck } from './witness.js'

export interface RedisSubscriberOptions {
  /** PING the subscriber connection this often, in ms; each answer renews the reader's lease. Default: 50. */
  heartbeatIntervalMs?: number | undefined
  /**
   * A heartbeat unanswered this long means the connection is dead without a reset (silent network): it is
   * dropped and re-established, which counts as a resync. Default: 3000.
   */
  deadAfterMs?: number | undefined
  /** Overrides for the subscriber connection's options. */
  redisOptions?: RedisOptions | undefined
  /** Subscribe to these partitions only (a Cluster shard's share). Default: every partition of the scope. */
  partitions?: readonly number[] | undefined
  onEvent?: (e: SubscriberEvent) => void
}

export type SubscriberEvent =
  | { type: 'error', error: Error }
  /** Re-subscribing after a reconnect was refused (ACL, OOM, ...): the lease stays void, retried with backoff. Once per streak. */
  | { type: 'subscribe-failed', node: string, reason: string }
  /** Subscribed again after 'subscribe-failed'. */
  | { type: 'subscribed', node: string }

/**
 * Follows the invalidation shard channels of every partition on a dedicated RESP2 connection (ioredis 6 speaks
 * RESP3 by default and drops push messages it does not expect; RESP2 is the known-good setting). ioredis
 * re-subscribes after a reconnect, but what was published during the gap is gone: every close or reconnect is
 * reported as a resync. A PING answered on this connection proves every message published before it was delivered,
 * which is what the reader's lease is built on.
 */
export class RedisSubscriber {
  private conn: Redis | undefined
  private timer: NodeJS.Timeout | undefined
  private pingInFlight = false
  private pingSentAt = 0
  /** This node's witness for this store, read on the command connection `client` (see WitnessCheck). */
  private readonly witness: WitnessCheck
  private started = false
  private closed = false
  private readonly heartbeatIntervalMs: number
  /**
   * performance.now() when the SSUBSCRIBEs of the live subscription were sent (+Infinity: not subscribed). Only a
   * PING sent after them proves delivery: a PING answered on a connection whose subscription failed proves nothing.
   */
  private subscribedFrom = Number.POSITIVE_INFINITY
  private readonly node: string
  private readonly retries: RetryStreak

  constructor (
    /** A standalone (or Sentinel) connection; the subscriber opens a duplicate of it. */
    private readonly client: Redis,
    private readonly scope: SubscriptionScope,
    private readonly listener: InvalidationListener,
    private readonly opts: RedisSubscriberOptions = {}
  ) {
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs ?? 50
    // A node that lost its data may still hold the subscriber connection open (behind a proxy): drop it, its 'close'
    // resyncs and the reconnect subscribes again on whatever server answers now.
    this.witness = new WitnessCheck(scope, listener, opts.partitions, this.heartbeatIntervalMs, opts.deadAfterMs ?? 3000,
      () => this.conn?.disconnect(true))
    this.node = `${client.options.host ?? ''}:${client.options.port ?? ''}`
    this.retries = new RetryStreak(this.node, opts.onEvent)
  }

  async start (): Promise<void> {
    const conn = this.client.duplicate(subscriberConnection('fastify-handoff:subscriber', this.opts.redisOptions))
    this.conn = conn
    conn.on('error', (error: Error) => this.opts.onEvent?.({ type: 'error', error }))
    conn.on('smessageBuffer', (channel: Buffer, message: Buffer) => this.onMessage(channel.toString(), message.toString()))
    // The one place a lost connection becomes a resync: however it ends (dropped, killed, given up by beat()).
    conn.on('close', () => {
      // A PING sent on the old connection must not renew the lease once replayed on the new one.
      this.pingInFlight = false
      this.pingSentAt = 0
      this.subscribedFrom = Number.POSITIVE_INFINITY
      this.retries.cancel()
      if (this.started && !this.closed) this.listener.onResync()
    })
    conn.on('ready', () => {
      if (!this.started || this.closed) return
      // A reconnect: 'close' already resynced (what was published meanwhile is gone). Re-subscribe; a later PING,
      // answered after the SSUBSCRIBEs on this connection, proves it active again.
      this.resubscribe(conn)
    })
    await conn.connect()
    const sentAt = performance.now()
    await this.subscribeAll(conn)
    this.subscribedFrom = sentAt
    this.started = true
    this.listener.onResync()
    this.beat()
    this.timer = setInterval(() => this.beat(), this.heartbeatIntervalMs)
    this.timer.unref()
  }

  private async subscribeAll (conn: Redis): Promise<void> {
    const partitions = this.opts.partitions ?? Array.from({ length: this.scope.partitions }, (_, p) => p)
    const channels = partitions.map(p => channelName(this.scope.prefix, p))
    // One channel per SSUBSCRIBE: a Cluster node refuses channels of different slots in one command (CROSSSLOT).
    // ioredis pipelines them, so this is still one round trip's worth of waiting.
    await Promise.all(channels.map(async c => await conn.ssubscribe(c)))
  }

  /**
   * Subscribes again after a reconnect. A refusal (an ACL without the channels, OOM, a proxy in the way) must not be
   * swallowed while PINGs go on answering: the lease stays void (subscribedFrom) and the attempt is retried with
   * jittered backoff on the same connection, reported once per streak.
   */
  private resubscribe (conn: Redis): void {
    const sentAt = performance.now()
    this.subscribeAll(conn).then(() => {
      if (this.closed || conn !== this.conn || conn.status !== 'ready') return
      this.subscribedFrom = sentAt
      this.retries.succeeded()
    }, (err: unknown) => {
      // A connection lost meanwhile re-subscribes on its next 'ready'.
      if (this.closed || conn !== this.conn || conn.status !== 'ready') return
      this.retries.failed(err, () => this.resubscribe(conn))
    })
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.timer !== undefined) clearInterval(this.timer)
    this.retries.cancel()
    // disconnect, not quit: a blackholed connection would never answer QUIT.
    this.conn?.disconnect()
  }

  private beat (): void {
    const conn = this.conn
    if (conn === undefined || conn.status !== 'ready') return
    // One PING at a time: behind a silent network they would only pile up. One unanswered for too long means the
    // connection is dead without anyone having said so: drop it, ioredis reconnects and re-subscribes.
    if (this.pingInFlight) {
      if (performance.now() - this.pingSentAt > (this.opts.deadAfterMs ?? 3000)) {
        this.pingInFlight = false
        this.pingSentAt = 0
        conn.disconnect(true) // its 'close' resyncs
      }
      return
    }
    this.pingInFlight = true
    const sentAt = performance.now()
    this.pingSentAt = sentAt
    const settle = (): boolean => {
      if (this.pingSentAt !== sentAt) return false // a ping abandoned by a reconnect
      this.pingInFlight = false
      return true
    }
    conn.ping().then(
      () => { if (settle() && !this.closed && this.proves(sentAt)) this.listener.onHeartbeat?.(sentAt) },
      () => { settle() }
    )
    this.witness.check(this.client, () => this.closed)
  }

  /**
   * Whether a PING sent at `sentAt` and answered proves that nothing published before it was missed and that the
   * node still holds what it held: sent on a live subscription, and not more than a lease interval into a streak of
   * witness reads that failed (see WitnessCheck.proves).
   */
  private proves (sentAt: number): boolean {
    return sentAt >= this.subscribedFrom && this.witness.proves(sentAt)
  }

  private onMessage (channel: string, message: string): void {
    // "<version> <sequence> <epoch> <key>", written by the Lua scripts; "<version> <sequence> <key>" from writers
    // older than epochs (a key always holds a '{', an epoch never does).
    const a = message.indexOf(' ')
    const b = message.indexOf(' ', a + 1)
    if (a < 0 || b < 0) return
    const version = Number(message.slice(0, a))
    const sequence = Number(message.slice(a + 1, b))
    let epoch = ''
    let key = message.slice(b + 1)
    const c = message.indexOf(' ', b + 1)
    if (c > 0 && isEpoch(message.slice(b + 1, c))) {
      epoch = message.slice(b + 1, c)
      key = message.slice(c + 1)
    }
    const partition = partitionOfChannel(channel)
    if (!Number.isSafeInteger(version) || !Number.isSafeInteger(sequence) || partition < 0) return
    this.listener.onInvalidation({ key, version, partition, sequence, epoch })
  }
}

/** Options of a connection that receives invalidations (pub/sub or tracking redirect), over `overrides`. */
export function subscriberConnection (connectionName: string, overrides?: RedisOptions): RedisOptions {
  return {
    protocol: 2,
    enableOfflineQueue: true,
    maxRetriesPerRequest: null,
    // We re-subscribe ourselves: ioredis' own re-subscription leaves its SSUBSCRIBE promises unhandled, and a
    // connection closed while it runs (shutdown, another drop) then crashes the process with unhandled rejections.
    autoResubscribe: false,
    // Cluster pool connections come without a retry strategy; a subscriber must always come back.
    retryStrategy: (times: number) => Math.min(50 * times, 500),
    lazyConnect: true,
    connectionName,
    ...overrides
  }
}
