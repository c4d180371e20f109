import { UnavailableError } from '../errors.js'

interface Pending {
  startedAt: number
  reject: (err: Error) => void
}

export interface CommandGuardOptions {
  /** A command not answered within this many ms fails with FST_HANDOFF_UNAVAILABLE. */
  timeoutMs: number
  /** Called when the first command times out while the guard was healthy (the circuit opens). */
  onTrip?: (reason: string) => void
  /** Clock, for tests. Default: performance.now. */
  now?: () => number
}

/**
 * Bounds every repository command in time without a timer per command: measured on the peer stack, a timer object
 * per command cost about 1.5x throughput through garbage collection. Commands on one connection are answered in
 * order, so the oldest pending command is the first to expire: one shared interval checks the head of an
 * insertion-ordered Set and stops at the first command that is still young.
 *
 * After a timeout the guard "trips": new commands fail at once (nothing queues without bound behind a frozen Redis)
 * until `reset()` is called, which the repository does when a probe PING is answered or the client is ready again.
 */
export class CommandGuard {
  private readonly pending = new Set<Pending>()
  private readonly timeoutMs: number
  private readonly now: () => number
  private readonly onTrip: ((reason: string) => void) | undefined
  private timer: NodeJS.Timeout | undefined
  private trippedReason: string | undefined

  constructor (opts: CommandGuardOptions) {
    this.timeoutMs = opts.timeoutMs
    this.now = opts.now ?? (() => performance.now())
    this.onTrip = opts.onTrip
  }

  get tripped (): boolean { return this.trippedReason !== undefined }

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
      this.arm()
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
    this.disarm()
  }

  private arm (): void {
    if (this.timer !== undefined) return
    const every = Math.max(5, Math.min(50, Math.floor(this.timeoutMs / 4)))
    this.timer = setInterval(() => this.check(), every)
    this.timer.unref()
  }

  private disarm (): void {
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
  }

  private check (): void {
    const limit = this.now() - this.timeoutMs
    for (const p of this.pending) {
      if (p.startedAt > limit) return
      this.pending.delete(p)
      const reason = `no answer within ${this.timeoutMs} ms`
      this.trip(reason)
      p.reject(new UnavailableError(reason))
    }
    if (this.pending.size === 0) this.disarm()
  }
}
