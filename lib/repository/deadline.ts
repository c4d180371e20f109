import { UnavailableError } from '../errors.js'

interface Pending {
  startedAt: number
  reject: (err: Error) => void
}

/**
 * One interval for every guard of a repository (one per Redis node in a Cluster): each tick checks the head of each
 * busy guard's pending set, and the interval stops while nothing is pending anywhere.
 */
export class GuardTicker {
  private readonly busy = new Set<CommandGuard>()
  private timer: NodeJS.Timeout | undefined

  /** `everyMs`: the check period; a command fails between timeoutMs and timeoutMs + everyMs after it started. */
  constructor (private readonly everyMs: number) {}

  /** A quarter of the timeout, within 5..50 ms: precise enough, and cheap. */
  static periodFor (timeoutMs: number): number {
    return Math.max(5, Math.min(50, Math.floor(timeoutMs / 4)))
  }

  watch (guard: CommandGuard): void {
    this.busy.add(guard)
    if (this.timer !== undefined) return
    this.timer = setInterval(() => this.tick(), this.everyMs)
    this.timer.unref()
  }

  stop (): void {
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
    this.busy.clear()
  }

  private tick (): void {
    for (const guard of this.busy) if (!guard.expire()) this.busy.delete(guard)
    if (this.busy.size === 0) this.stop()
  }
}

export interface CommandGuardOptions {
  /** A command not answered within this many ms fails with FST_HANDOFF_UNAVAILABLE. */
  timeoutMs: number
  /** Called when the first command times out while the guard was healthy (the circuit opens). */
  onTrip?: (reason: string) => void
  /** Clock, for tests. Default: performance.now. */
  now?: () => number
  /** The interval that checks this guard, shared with the repository's other guards. Default: one of its own. */
  ticker?: GuardTicker
}

/**
 * Bounds every repository command in time without a timer per command: measured on the peer stack, a timer object
 * per command cost about 1.5x throughput through garbage collection. Commands on one connection are answered in
 * order, so the oldest pending command is the first to expire: a shared interval checks the head of an
 * insertion-ordered Set and stops at the first command that is still young.
 *
 * After a timeout the guard "trips": new commands fail at once (nothing queues without bound behind a frozen Redis)
 * until `reset()` is called, which the repository does when a probe PING is answered or the client is ready again.
 * A repository keeps one guard per Redis node, so a frozen node trips only the guard of the partitions it serves.
 */
export class CommandGuard {
  private readonly pending = new Set<Pending>()
  private readonly timeoutMs: number
  private readonly now: () => number
  private readonly onTrip: ((reason: string) => void) | undefined
  private readonly ticker: GuardTicker
  private trippedReason: string | undefined

  constructor (opts: CommandGuardOptions) {
    this.timeoutMs = opts.timeoutMs
    this.now = opts.now ?? (() => performance.now())
    this.onTrip = opts.onTrip
    this.ticker = opts.ticker ?? new GuardTicker(GuardTicker.periodFor(opts.timeoutMs))
  }

  get tripped (): boolean { return this.trippedReason !== undefined }

  /** Commands started and not yet settled. */
  get pendingCount (): number { return this.pending.size }

  /** Reject at once when tripped; otherwise settle with `work` or fail when it outlives the timeout. */
  run<T> (work: () => Promise<T>): Promise<T> {
    if (this.trippedReason !== undefined) {
      return Promise.reject(new UnavailableError(this.trippedReason))
    }
    return this.bound(work)
  }

  /** Like run, but also while tripped: for the probe that decides whether to reset. */
  bound<T> (work: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { startedAt: this.now(), reject }
      this.pending.add(p)
      this.ticker.watch(this)
      let promise: Promise<T>
      try {
        promise = work()
      } catch (err) {
        this.pending.delete(p)
        reject(err instanceof Error ? err : new Error(String(err)))
        return
      }
      promise.then(
        v => { if (this.pending.delete(p)) resolve(v) },
        (err: unknown) => { if (this.pending.delete(p)) reject(err instanceof Error ? err : new Error(String(err))) }
      )
    })
  }

  trip (reason: string): void {
    if (this.trippedReason === undefined) {
      this.trippedReason = reason
      this.onTrip?.(reason)
    }
  }

  reset (): void {
    this.trippedReason = undefined
  }

  /** Fail everything still pending (on close or on a known-dead connection). */
  failAll (reason: string): void {
    const err = new UnavailableError(reason)
    for (const p of this.pending) p.reject(err)
    this.pending.clear()
  }

  /**
   * Fail (and trip on) the commands older than the timeout; the ticker calls this. Returns whether commands are
   * still pending, i.e. whether the ticker must keep checking this guard.
   */
  expire (): boolean {
    const limit = this.now() - this.timeoutMs
    for (const p of this.pending) {
      if (p.startedAt > limit) return true
      this.pending.delete(p)
      const reason = `no answer within ${this.timeoutMs} ms`
      this.trip(reason)
      p.reject(new UnavailableError(reason))
    }
    return false
  }
}

export interface GuardsByNodeOptions {
  timeoutMs: number
  /** Called when a node's guard trips. */
  onTrip: (node: string, reason: string) => void
  /** Clock, for tests. Default: performance.now. */
  now?: () => number
}

/**
 * One CommandGuard per Redis node, created on first use and driven by one shared ticker. The repository picks the
 * guard by the node a command goes to, so a frozen node fails only its own commands and the others keep serving.
 */
export class GuardsByNode {
  private readonly guards = new Map<string, CommandGuard>()
  private readonly ticker: GuardTicker

  constructor (private readonly opts: GuardsByNodeOptions) {
    this.ticker = new GuardTicker(GuardTicker.periodFor(opts.timeoutMs))
  }

  /** The guard of `node` ("host:port", or any stable name), created healthy on first use. */
  of (node: string): CommandGuard {
    let guard = this.guards.get(node)
    if (guard === undefined) {
      guard = new CommandGuard({
        timeoutMs: this.opts.timeoutMs,
        now: this.opts.now,
        ticker: this.ticker,
        onTrip: reason => this.opts.onTrip(node, reason)
      })
      this.guards.set(node, guard)
    }
    return guard
  }

  /** The nodes whose guard is tripped now. */
  tripped (): string[] {
    const out: string[] = []
    for (const [node, guard] of this.guards) if (guard.tripped) out.push(node)
    return out
  }

  /** Forget a node that left the topology: nothing routes to it any more. Its pending commands fail. */
  drop (node: string, reason: string): void {
    this.guards.get(node)?.failAll(reason)
    this.guards.delete(node)
  }

  resetAll (): void {
    for (const guard of this.guards.values()) guard.reset()
  }

  failAll (reason: string): void {
    for (const guard of this.guards.values()) guard.failAll(reason)
    this.ticker.stop()
  }
}
