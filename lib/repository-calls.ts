import { isHandoffError } from './errors.js'
import type { Repository } from './repository/types.js'

export type RepositoryOp = 'get' | 'compareAndSet' | 'take' | 'delete' | 'touch' | 'waitForReplicas'

export interface OutageLogger {
  warn: (obj: object, msg?: string) => void
  info?: (obj: object, msg?: string) => void
}

export type Observer = (op: RepositoryOp, ms: number, ok: boolean) => void

/**
 * The one wrapper of every repository call the store makes: latency for the observer, error accounting, and the
 * outage state kept per node (a Cluster primary, a `{ shards }` node; the repository names the node of a key, as its
 * breakers do). A failure other than a corrupt entry opens that node's outage, an answer from it closes it: one warning
 * when it starts and one line with its duration when it ends, however much traffic goes to it or to the other nodes
 * meanwhile. (One store-wide flag flapped with every call when one node was down and another answered.)
 */
export class RepositoryCalls {
  /** The node of each open outage, with performance.now() of its first failure. */
  private readonly outages = new Map<string, number>()
  /** performance.now() of the newest answered call, whichever node answered. */
  answeredAt = Number.NEGATIVE_INFINITY

  constructor (
    private readonly repository: Repository,
    private readonly counters: { repositoryErrors: number },
    private readonly logger: OutageLogger | undefined,
    public observe: Observer | undefined
  ) {}

  async run<R> (op: RepositoryOp, key: string, work: () => Promise<R>): Promise<R> {
    const observe = this.observe
    const started = observe === undefined ? 0 : performance.now()
    let result: R
    try {
      result = await work()
    } catch (err) {
      observe?.(op, performance.now() - started, false)
      if (!isHandoffError(err, 'FST_HANDOFF_CORRUPT_ENTRY')) this.failed(key, err)
      throw err
    }
    observe?.(op, performance.now() - started, true)
    this.answeredAt = performance.now()
    if (this.outages.size > 0) this.answered(key)
    return result
  }

  /** True while some node's outage is open. */
  get failing (): boolean { return this.outages.size > 0 }

  /** The nodes whose last call failed (their outage is open), in the order the outages started. */
  failingNodes (): string[] {
    return [...this.outages.keys()]
  }

  private nodeOf (key: string): string {
    try {
      return this.repository.nodeOf?.(key) ?? this.repository.kind
    } catch {
      return this.repository.kind
    }
  }

  private failed (key: string, err: unknown): void {
    this.counters.repositoryErrors++
    const node = this.nodeOf(key)
    if (this.outages.has(node)) return
    this.outages.set(node, performance.now())
    this.logger?.warn({ repository: this.repository.kind, node, err: err instanceof Error ? err.message : String(err) },
      'fastify-handoff: repository unavailable; writes fail with 503 until it answers again, known local copies are still served')
  }

  private answered (key: string): void {
    const node = this.nodeOf(key)
    const since = this.outages.get(node)
    if (since === undefined) return
    this.outages.delete(node)
    this.logger?.info?.({ repository: this.repository.kind, node, durationMs: Math.round(performance.now() - since) },
      'fastify-handoff: repository answers again')
  }
}
