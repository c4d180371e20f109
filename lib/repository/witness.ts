import type { Redis } from 'ioredis'
import { witnessKey } from '../partitions.js'
import { readWitness } from './redis-subscriber.js'
import type { InvalidationListener, SubscriptionScope } from './types.js'

/**
 * One store's witness on one node, for the tracking transport: the same rules as RedisSubscriber's own checks
 * (read every `scope.witnessIntervalMs` on the command connection; a read unanswered for a lease interval, or a
 * command connection that is not ready, is reported with onWitnessError; a heartbeat sent more than a lease
 * interval into a streak of failed reads proves nothing; a changed value is reported and `onChange` drops the redirect
 * connection, which resyncs and sets tracking up again on whatever server answers now).
 */
export class WitnessCheck {
  readonly name: string
  private inFlight = false
  private checkedAt = Number.NEGATIVE_INFINITY
  /** Send time of the first read of a failing streak (+Infinity while the latest read was answered). */
  private failingSince = Number.POSITIVE_INFINITY
  private lateCounted = false
  private value: string | undefined

  constructor (
    private readonly scope: SubscriptionScope,
    private readonly listener: InvalidationListener,
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
   * Called with every heartbeat; reads the witness when due. Returns whether it sent a read; `answered` is told the
   * read's send time once its answer is handled (the hub counts it as proof that `client` is alive).
   */
  check (client: Redis, closed: () => boolean, answered?: (sentAt: number) => void): boolean {
    if (this.listener.onWitness === undefined) return false
    const now = performance.now()
    if (this.inFlight) {
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
      if (before !== undefined && before !== value) this.onChange()
      answered?.(sentAt)
    }, (err: unknown) => {
      if (this.checkedAt !== sentAt) return
      this.inFlight = false
      if (!this.lateCounted) this.failed(err instanceof Error ? err.message : String(err), sentAt, closed)
    })
    return true
  }

  private failed (reason: string, since: number, closed: () => boolean): void {
    this.failingSince = Math.min(this.failingSince, since)
    if (!closed()) this.listener.onWitnessError?.(this.name, reason, this.partitions)
  }
}
