import { InvalidOptionError } from '../errors.js'
import { Rendezvous, partitionOfKey } from '../partitions.js'
import type {
  CasResult, InvalidationListener, Repository, StoredEntry, Subscription, SubscriptionScope
} from './types.js'

export interface ShardNode {
  /** A stable name for the node ("redis-a:6379"): partitions are assigned by rendezvous hashing of these ids. */
  id: string
  repository: Repository
}

/**
 * Several standalone Redis nodes without Redis Cluster, for providers that offer no cluster mode: each partition
 * lives on one node, chosen by rendezvous (highest random weight) hashing, so adding a node moves only about 1/n of
 * the partitions. Trade-offs, compared with Redis Cluster: no automatic failover or resharding — entries of
 * partitions that move to a new node are not migrated (those sessions start over), and a node that is down makes
 * its partitions unavailable (writes fail with 503) while the others go on.
 */
export class ShardedRepository implements Repository {
  readonly kind = 'redis-sharded'
  private readonly rendezvous: Rendezvous
  private readonly byId: Map<string, Repository>
  private readonly owners = new Map<number, Repository>()

  constructor (readonly nodes: readonly ShardNode[]) {
    if (!Array.isArray(nodes) || nodes.length === 0) throw new InvalidOptionError('nodes', 'at least one { id, repository }')
    this.rendezvous = new Rendezvous(nodes.map(n => n.id))
    this.byId = new Map(nodes.map(n => [n.id, n.repository]))
  }

  /** The repository that owns `key`'s partition. */
  nodeFor (key: string): Repository {
    const p = partitionOfKey(key)
    if (p < 0) throw new InvalidOptionError('key', 'an entry key must contain a {p<n>} partition hash tag')
    let r = this.owners.get(p)
    if (r === undefined) {
      r = this.byId.get(this.rendezvous.nodeFor(p)) as Repository
      this.owners.set(p, r)
    }
    return r
  }

  async connect (): Promise<void> { await Promise.all(this.nodes.map(async n => await n.repository.connect())) }
  async get (key: string): Promise<StoredEntry | null> { return await this.nodeFor(key).get(key) }
  async compareAndSet (key: string, expected: number | null, value: Buffer, ttlMs: number, expectedEpoch?: string): Promise<CasResult> {
    return await this.nodeFor(key).compareAndSet(key, expected, value, ttlMs, expectedEpoch)
  }

  async take (key: string, ttlMs: number): Promise<StoredEntry | null> { return await this.nodeFor(key).take(key, ttlMs) }
  async delete (key: string, ttlMs: number): Promise<number> { return await this.nodeFor(key).delete(key, ttlMs) }
  async touch (key: string, ttlMs: number, expectedEpoch?: string): Promise<boolean> {
    return await this.nodeFor(key).touch(key, ttlMs, expectedEpoch)
  }

  async waitForReplicas (key: string, replicas: number, timeoutMs: number): Promise<number> {
    const node = this.nodeFor(key)
    if (node.waitForReplicas === undefined) return 0
    return await node.waitForReplicas(key, replicas, timeoutMs)
  }

  async checkServer (): Promise<string[]> {
    const all = await Promise.all(this.nodes.map(async n => await (n.repository.checkServer?.() ?? Promise.resolve([]))))
    return all.flat()
  }

  /** The id of the node that owns `key`'s partition. */
  nodeOf (key: string): string {
    const p = partitionOfKey(key)
    if (p < 0) throw new InvalidOptionError('key', 'an entry key must contain a {p<n>} partition hash tag')
    return this.rendezvous.nodeFor(p)
  }

  /** The ids of the nodes whose repository has a breaker open now: only their partitions fail. */
  unavailableNodes (): string[] {
    return this.nodes.filter(n => (n.repository.unavailableNodes?.().length ?? 0) > 0).map(n => n.id)
  }

  /**
   * One subscription per node (a partition's invalidations come only from its owner). Each node's heartbeats lease
   * only the partitions it serves, and its resync (a reconnect) voids only theirs: one node's subscriber dropping
   * leaves the copies of the other nodes' partitions answering.
   */
  async subscribe (scope: SubscriptionScope, listener: InvalidationListener): Promise<Subscription> {
    const subs = await Promise.all(this.nodes.map(async n => {
      // The node's partitions, computed once (rendezvous over every partition per heartbeat would cost more than it).
      const owned = this.partitionsOf(n.id, scope.partitions)
      return await n.repository.subscribe(scope, {
        onInvalidation: msg => listener.onInvalidation(msg),
        // Every node has a witness of the same name: tell them apart, and a wipe resets only that node's partitions.
        onWitness: (name, value) => listener.onWitness?.(`${n.id} ${name}`, value, owned),
        onWitnessError: (name, reason) => listener.onWitnessError?.(`${n.id} ${name}`, reason, owned),
        onResync: partitions => listener.onResync(partitions ?? owned),
        onHeartbeat: sentAt => listener.onHeartbeat?.(sentAt, owned)
      })
    }))
    return {
      reliable: subs.every(s => s.reliable),
      ...(subs[0]?.transport === undefined ? {} : { transport: subs[0].transport }),
      close: async () => { await Promise.all(subs.map(async s => await s.close())) }
    }
  }

  async close (): Promise<void> { await Promise.all(this.nodes.map(async n => await n.repository.close())) }

  private partitionsOf (id: string, partitions: number): number[] {
    const owned: number[] = []
    for (let p = 0; p < partitions; p++) if (this.rendezvous.nodeFor(p) === id) owned.push(p)
    return owned
  }
}
