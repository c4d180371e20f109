import { DurabilityError, InvalidOptionError, intOption } from './errors.js'
import type { Repository } from './repository/types.js'

export interface Durability {
  /** Replicas that must acknowledge a write before update/delete resolve. */
  replicas: number
  /** How long to wait for them, ms. Default: 100. */
  timeoutMs?: number
}

/** Runs one repository call through the store's wrapper (timing, outage state). */
export type CallRepository = <R>(op: 'waitForReplicas', key: string, work: () => Promise<R>) => Promise<R>

/**
 * The positive acknowledgement of `durability: { replicas }`: after a write, WAIT until that many Redis replicas have
 * it, or fail the write clearly (FST_HANDOFF_DURABILITY) so that nothing a failover could lose is acknowledged.
 */
export class ReplicaWait {
  private readonly replicas: number
  private readonly timeoutMs: number
  private readonly wait: (key: string, replicas: number, timeoutMs: number) => Promise<number>

  /** Undefined when no durability is asked for; throws when the repository has no replicas to wait for. */
  static from (opts: Durability | undefined, repository: Repository, counters: { durabilityFailures: number }, call: CallRepository): ReplicaWait | undefined {
    if (opts === undefined) return undefined
    const replicas = intOption('durability.replicas', opts.replicas, 1, 1)
    const timeoutMs = intOption('durability.timeoutMs', opts.timeoutMs, 100, 1)
    if (repository.waitForReplicas === undefined) {
      throw new InvalidOptionError('durability', `the ${repository.kind} repository has no replicas to wait for`)
    }
    return new ReplicaWait(replicas, timeoutMs, repository.waitForReplicas.bind(repository), counters, call)
  }

  private constructor (
    replicas: number,
    timeoutMs: number,
    wait: (key: string, replicas: number, timeoutMs: number) => Promise<number>,
    private readonly counters: { durabilityFailures: number },
    private readonly call: CallRepository
  ) {
    this.replicas = replicas
    this.timeoutMs = timeoutMs
    this.wait = wait
  }

  /** Resolves once enough replicas acknowledged the writes made so far on `key`'s connection; throws otherwise. */
  async await (key: string): Promise<void> {
    // Through the store's wrapper, as every repository call: its latency is observed, and a failure opens the outage state.
    const acked = await this.call('waitForReplicas', key, async () => await this.wait(key, this.replicas, this.timeoutMs))
    if (acked < this.replicas) {
      this.counters.durabilityFailures++
      throw new DurabilityError(acked, this.replicas)
    }
  }
}
