import type { Cluster, Redis } from 'ioredis'
import clusterKeySlot from 'cluster-key-slot'
import { channelName } from '../partitions.js'
import { RedisSubscriber, type RedisSubscriberOptions } from './redis-subscriber.js'
import type { Invalidation, InvalidationListener, SubscriptionScope } from './types.js'

/**
 * Invalidations on Redis Cluster: SPUBLISH delivers a message only on the shard that owns the channel's slot, so
 * one subscriber per primary follows the partitions that primary owns, each with its own heartbeat. A shard's
 * heartbeats lease only its partitions and its reconnect resyncs only them: one silent primary suspends the local
 * reads of its own slots, not the other shards'. A partition without a subscriber is never leased.
 * The topology is re-read every REPLAN_INTERVAL_MS and whenever ioredis refreshes it; when a partition's owner
 * changed (failover, slot migration), the affected subscribers are rebuilt and everything resyncs.
 */
/** How often the topology is re-read besides ioredis' own refreshes, ms. */
const REPLAN_INTERVAL_MS = 500

/** What follows one primary's share of the partitions: a pub/sub subscriber, or a client-tracking hub's entry. */
export interface ShardSubscriber {
  start: () => Promise<void>
  close: () => Promise<void>
}

export type ShardFactory = (node: Redis, partitions: number[], listener: InvalidationListener) => ShardSubscriber

/**
 * What a shard passes on of its invalidations. A version-less one (client tracking) of a partition the shard does not
 * own in the current plan comes from a slot that is moving (MIGRATE and ASK) or moved before the plan caught up: the
 * key's messages then arrive on two redirect connections with no order between them, so what the local tier counted
 * of its own writes' echoes on the old owner's connection (LocalTier.echoes) cannot be matched against this one. The
 * partition is resynced first: its counts are dropped and its copies stop answering until its owner's next heartbeat.
 */
export function fromOwner (owned: ReadonlySet<number>, listener: InvalidationListener): (msg: Invalidation) => void {
  return msg => {
    if (msg.version === Number.POSITIVE_INFINITY && !owned.has(msg.partition)) listener.onResync([msg.partition])
    listener.onInvalidation(msg)
  }
}

export class ClusterSubscription {
  private readonly shards = new Map<string, { sub: ShardSubscriber, partitions: number[] }>()
  private timer: NodeJS.Timeout | undefined
  private closed = false
  private replanning: Promise<void> | undefined
  private readonly onRefresh = (): void => { this.replan().catch(() => {}) }
  /** A channel's slot never changes; only which primary owns it does. */
  private readonly channelSlots: number[]

  constructor (
    private readonly cluster: Cluster,
    private readonly scope: SubscriptionScope,
    private readonly listener: InvalidationListener,
    private readonly opts: RedisSubscriberOptions = {},
    /** Default: a RedisSubscriber (SSUBSCRIBE) per primary. */
    private readonly makeShard?: ShardFactory
  ) {
    this.channelSlots = Array.from({ length: scope.partitions }, (_, p) => clusterKeySlot(channelName(scope.prefix, p)))
  }

  async start (): Promise<void> {
    await this.replan()
    this.listener.onResync()
    this.cluster.on('refresh', this.onRefresh)
    this.timer = setInterval(this.onRefresh, REPLAN_INTERVAL_MS)
    this.timer.unref()
  }

  async close (): Promise<void> {
    this.closed = true
    if (this.timer !== undefined) clearInterval(this.timer)
    this.cluster.off('refresh', this.onRefresh)
    await Promise.all([...this.shards.values()].map(async s => await s.sub.close()))
    this.shards.clear()
  }

  /** Partitions per primary ("host:port"), from ioredis' slot table. */
  private plan (): Map<string, number[]> {
    const slots = (this.cluster as unknown as { slots: Array<string[] | undefined> }).slots
    const plan = new Map<string, number[]>()
    for (let p = 0; p < this.scope.partitions; p++) {
      const owner = slots[this.channelSlots[p] as number]?.[0]
      if (owner === undefined) continue
      const list = plan.get(owner) ?? []
      list.push(p)
      plan.set(owner, list)
    }
    return plan
  }

  private async replan (): Promise<void> {
    if (this.closed) return
    if (this.replanning !== undefined) return await this.replanning
    this.replanning = this.doReplan().finally(() => { this.replanning = undefined })
    return await this.replanning
  }

  private async doReplan (): Promise<void> {
    const plan = this.plan()
    let changed = false
    for (const [node, shard] of this.shards) {
      const want = plan.get(node)
      if (want === undefined || want.join() !== shard.partitions.join()) {
        this.shards.delete(node)
        await shard.sub.close()
        changed = true
      }
    }
    const masters = new Map(this.cluster.nodes('master').map(n => [`${n.options.host ?? ''}:${n.options.port ?? ''}`, n]))
    for (const [node, partitions] of plan) {
      if (this.shards.has(node)) continue
      const client = masters.get(node)
      if (client === undefined) continue
      changed = true
      const shard = { sub: undefined as unknown as ShardSubscriber, partitions }
      shard.sub = this.makeShard?.(client as Redis, partitions, this.shardListener(shard)) ??
        new RedisSubscriber(client as Redis, this.scope, this.shardListener(shard), {
          ...this.opts,
          partitions,
          redisOptions: { ...this.opts.redisOptions, connectionName: 'fastify-handoff:subscriber' }
        })
      this.shards.set(node, shard)
      try {
        await shard.sub.start()
      } catch {
        // The node may be going away; the next replan tries again. Meanwhile the lease stays void.
        this.shards.delete(node)
        await shard.sub.close()
      }
    }
    // A partition without a live subscriber leaves the lease void until one exists.
    if (changed) this.listener.onResync()
  }

  private shardListener (shard: { partitions: readonly number[] }): InvalidationListener {
    return {
      onInvalidation: fromOwner(new Set(shard.partitions), this.listener),
      onResync: (partitions?: readonly number[]) => this.listener.onResync(partitions ?? shard.partitions),
      onWitness: (name: string, value: string, partitions?: readonly number[]) => {
        this.listener.onWitness?.(name, value, partitions)
      },
      onWitnessError: (name: string, reason: string, partitions?: readonly number[]) => {
        this.listener.onWitnessError?.(name, reason, partitions)
      },
      onHeartbeat: (sentAt: number) => this.listener.onHeartbeat?.(sentAt, shard.partitions)
    }
  }
}
