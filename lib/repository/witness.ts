import type { Redis } from 'ioredis'
import { witnessKey } from '../partitions.js'
import { newEpoch } from './epoch.js'
import type { InvalidationListener, SubscriptionScope } from './types.js'

/**
 * One store's witness on one node, for both transports (RedisSubscriber per subscription, TrackingSubscriber per
 * store registration): confirms with a heartbeat, every `scope.witnessIntervalMs` at most, that the node still holds
 * the data it held. One read of one witness key per node (O(1), whatever the partition count; GETEX, a command nothing
 * else sends, so it can be told apart from the data path in INFO commandstats). A FLUSHALL or an empty restart loses
 * the witness; the next check mints a new one (SET NX GET: whoever comes first wins), and the listener sees another
 * value: a reset, detected without any write. It runs on the command connection (a subscribed connection takes no
 * GET); one read at a time.
 * - a read unanswered for a lease interval, or a command connection that is not ready, is reported with
 *   onWitnessError; a heartbeat sent more than a lease interval into a streak of failed reads proves nothing (a
 *   witness that cannot be read is a node that cannot say it did not lose its data);
 * - a changed value is reported, then `onChange` drops the connection that receives invalidations: the node lost its
 *   data, maybe without that connection noticing (restarted behind a proxy that kept it open, an empty failover the
 *   connection survived), so it may not be subscribed or tracking on the server that answers now. Its 'close'
 *   resyncs and the reconnect subscribes (sets tracking up) again.
 */
export class WitnessCheck {
  readonly name: string
  private inFlight = false
  private checkedAt = Number.NEGATIVE_INFINITY
  /** Send time of the first read of a failing streak (+Infinity while the latest read was answered). */
  private failingSince = Number.POSITIVE_INFINITY
  /** The read in flight went unanswered for a lease and was counted as failed already (one count per read). */
  private lateCounted = false
  /** The value last read; a change means the node lost its data. */
  private value: string | undefined

  constructor (
    private readonly scope: SubscriptionScope,
    private readonly listener: InvalidationListener,
    /** The node's partitions, passed to the listener (all when undefined); the first one names the witness key. */
    private readonly partitions: readonly number[] | undefined,
    private readonly heartbeatIntervalMs: number,
    private readonly deadAfterMs: number,
    private readonly onChange: () => void
  ) {
    this.name = witnessKey(scope.prefix, partitions?.[0] ?? 0)
  }

  /** Witnesses are read twice per lease: the lease interval the scope implies. */
  private get leaseIntervalMs (): number {
    return 2 * (this.scope.witnessIntervalMs ?? this.heartbeatIntervalMs)
  }

  /** Read the witness at the next check, whatever the interval (Redis said it flushed its data). */
  due (): void {
    if (!this.inFlight) this.checkedAt = Number.NEGATIVE_INFINITY
  }

  /** Whether a heartbeat sent at `sentAt` may renew this store's lease as far as the witness goes. */
  proves (sentAt: number): boolean {
    return sentAt - this.failingSince <= this.leaseIntervalMs
  }

  /**
   * Called with every heartbeat; reads the witness on `client` (the command connection) when due. Returns whether it
   * sent a read; `answered` is told the read's send time once its answer is handled and shows no reset (the tracking
   * hub counts it as proof that `client` is alive), `refused` once it failed instead (it proved nothing: the hub asks
   * `client` again).
   */
  check (client: Redis, closed: () => boolean, answered?: (sentAt: number) => void, refused?: (sentAt: number) => void): boolean {
    if (this.listener.onWitness === undefined) return false
    const now = performance.now()
    if (this.inFlight) {
      // Unanswered for a lease: a failure (the lease stops being renewed by itself, see proves()). Given up after
      // deadAfterMs, so that one lost read cannot stop every later check.
      const age = now - this.checkedAt
      if (age > this.leaseIntervalMs && !this.lateCounted) {
        this.lateCounted = true
        this.failed(`witness read unanswered for ${Math.round(age)} ms`, this.checkedAt, closed)
      }
      if (age > this.deadAfterMs) this.inFlight = false
      return false
    }
    if (client.status !== 'ready') {
      if (now - this.checkedAt >= this.leaseIntervalMs) {
        this.checkedAt = now
        this.failed(`command connection ${client.status}`, now, closed)
      }
      return false
    }
    if (now - this.checkedAt < (this.scope.witnessIntervalMs ?? 0)) return false
    this.checkedAt = now
    this.inFlight = true
    this.lateCounted = false
    const sentAt = now
    readWitness(client, this.name).then(value => {
      if (this.checkedAt === sentAt) this.inFlight = false
      if (sentAt >= this.failingSince) this.failingSince = Number.POSITIVE_INFINITY
      if (closed()) return
      const before = this.value
      this.value = value
      this.listener.onWitness?.(this.name, value, this.partitions)
      // A node that lost its data proves nothing of the connection's tracking state (gone with it, maybe): no answer.
      if (before !== undefined && before !== value) { this.onChange(); return }
      answered?.(sentAt)
    }, (err: unknown) => {
      if (this.checkedAt !== sentAt) return // given up on already
      this.inFlight = false
      if (!this.lateCounted) this.failed(err instanceof Error ? err.message : String(err), sentAt, closed)
      refused?.(sentAt)
    })
    return true
  }

  private failed (reason: string, since: number, closed: () => boolean): void {
    this.failingSince = Math.min(this.failingSince, since)
    if (!closed()) this.listener.onWitnessError?.(this.name, reason, this.partitions)
  }
}

function asText (x: unknown): string {
  return Buffer.isBuffer(x) ? x.toString() : String(x)
}

/** A node's witness value (GETEX), minted with SET NX GET when missing: whoever comes first wins. */
export async function readWitness (client: Redis, name: string): Promise<string> {
  const value = await client.call('GETEX', name)
  if (value !== null) return asText(value)
  const candidate = newEpoch()
  const previous = await client.call('SET', name, candidate, 'NX', 'GET')
  return previous === null ? candidate : asText(previous)
}
