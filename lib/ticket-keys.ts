import { createHash, randomBytes } from 'node:crypto'
import { InvalidOptionError, intOption } from './errors.js'
import type { TieredStore } from './tiered-store.js'

/**
 * TLS session ticket keys shared by every instance of a cluster, one per epoch.
 *
 * Node's `server.setTicketKeys()` holds exactly one key, so a ticket only resumes on an instance holding the key that
 * encrypted it. Every instance therefore derives the same epoch from the wall clock, `e = floor(now / periodMs)`,
 * and uses the same random key for it: whichever instance asks first creates it (create-if-absent in the shared
 * store, sealed at rest), the others read it. The key of the next epoch is read `leadMs` before its boundary and
 * kept in memory, so the switch itself is a synchronous `apply` run by a timer at the boundary and does not depend
 * on the repository answering at that moment.
 *
 * Clock skew: each instance switches when its own clock reaches the boundary. With a skew of s ms, tickets issued
 * within s ms of a boundary by an instance on the other side of it fall back to one full handshake (never an error).
 * A retired key is deleted `maxClockSkewMs` after its epoch ended, so an instance whose clock lags can still read
 * it; the deletion leaves a tombstone, and while it lasts a straggler cannot create that epoch's key again. A wall
 * clock stepping back never returns an instance to an older key.
 *
 * Repository unreachable: an instance that prepared the next key still switches at the boundary; one that could not
 * stays on its current key. Either way the schedule reports one 'unavailable' event per outage, retries every
 * `retryMs`, and makes a missed switch as soon as the key can be read. Key material is never part of an event.
 *
 * Repository wiped (FLUSHALL, restarted empty): the instances still hold the epoch's key in memory, but an instance
 * that starts now finds nothing and creates another. So every `checkMs` each instance reads the stored key again
 * (one GET): when it is missing, the instance writes its own back (create-if-absent, so the first to notice wins);
 * when it differs, the instance adopts the stored one. Within about `checkMs` every instance serves one key again.
 * The replaced key is kept for decryption (`decryptionKeys`) until its epoch's key would have been deleted, so a
 * server that can take several keys (the ticket-key callback) resumes tickets issued under either.
 */

/** Node's ticket keys: 16 bytes key name, 16 bytes HMAC secret, 16 bytes AES key. */
export const TICKET_KEY_BYTES = 48

/**
 * A short id of a ticket key for logs and metrics: the first 32 bits of SHA-256 over the key's 16-byte name, as an
 * unsigned integer. The name travels in clear at the start of every ticket, so this reveals nothing about the HMAC
 * or AES parts; two instances serving the same id serve the same key.
 */
export function ticketKeyId (key: Buffer): number {
  return createHash('sha256').update(key.subarray(0, 16)).digest().readUInt32BE(0)
}

/** Where the keys live. `TieredTicketKeyStore` is the one on the shared store. */
export interface TicketKeyStore {
  /**
   * The key of `epoch`, created (random) when absent, kept `ttlMs` from creation. undefined when an entry exists but
   * must not be used or replaced: deleted (retired) or sealed under another cluster secret. Throws when unreachable.
   */
  obtain: (epoch: number, ttlMs: number) => Promise<Buffer | undefined>
  /**
   * The key of `epoch` as the repository holds it now (never a cached copy); when nothing is stored (a wiped
   * repository), `key` is written (create-if-absent) and whatever is stored afterwards is returned, with `written`
   * true when it was this call's write. undefined like `obtain`. Throws when unreachable.
   */
  confirm: (epoch: number, ttlMs: number, key: Buffer) => Promise<{ key: Buffer, written: boolean } | undefined>
  /** Delete the key of a retired epoch. Throws when unreachable. */
  remove: (epoch: number) => Promise<void>
}

/** Timers and wall clock, injectable for tests. */
export interface Clock {
  now: () => number
  setTimeout: (fn: () => void, ms: number) => unknown
  clearTimeout: (handle: unknown) => void
}

export type TicketKeyEvent =
  /** A shared key is in use now. `rotation`: it replaced the previous epoch's shared key. */
  | { type: 'applied', epoch: number, rotation: boolean }
  /** The repository failed; reported once per outage. The current key (if any) stays in use. */
  | { type: 'unavailable', epoch: number, reason: string }
  /** The repository answers again after an 'unavailable'. */
  | { type: 'recovered', epoch: number }
  /** The key of `epoch` exists but cannot be used (another cluster secret, or already retired). Once per epoch. */
  | { type: 'unusable', epoch: number }
  /** The key of a retired epoch was deleted from the repository. */
  | { type: 'removed', epoch: number }
  /** The repository had lost the key of `epoch` (wiped); this instance wrote the one it holds back. */
  | { type: 'restored', epoch: number, keyId: number }
  /**
   * The repository holds another key for `epoch` than this instance did (another instance created one after a wipe):
   * this instance switched to it. `prepared`: the next epoch's key held ahead, not the one in use.
   */
  | { type: 'adopted', epoch: number, from: number, to: number, prepared: boolean }
  /** Something other than the repository failed (e.g. `apply` threw). Retried like a repository failure. */
  | { type: 'error', epoch: number, reason: string }

export interface TicketKeyScheduleOptions {
  store: TicketKeyStore
  /** Installs a key (e.g. `server.setTicketKeys`). Called at start, at every boundary and by `reapply()`. */
  apply: (key: Buffer, epoch: number) => void
  /** Epoch length, ms. At least 1000. Required (the plugin's default is 12 h). */
  periodMs: number
  /**
   * Largest clock difference between instances tolerated, ms: retired keys are deleted this long after their epoch
   * ended. At most periodMs / 4. Default: 5000 capped at periodMs / 4.
   */
  maxClockSkewMs?: number
  /** How long before a boundary the next key is read, ms. Default: min(periodMs / 4, 60000). */
  leadMs?: number
  /** Retry interval while the repository fails, ms. Default: periodMs / 20 clamped to 100..5000. */
  retryMs?: number
  /**
   * How often the key in use (and the next one, once prepared) is read again from the repository, ms, so that all
   * instances converge on one key after the repository lost it. 1 to periodMs. Default: leadMs.
   */
  checkMs?: number
  /** Longest single timer, ms, so that a wall-clock step is noticed. Default: 60000. */
  maxTimerMs?: number
  clock?: Clock
  onEvent?: (event: TicketKeyEvent) => void
}

export interface TicketKeyCounters {
  /** Switches from one shared key to the next. */
  rotations: number
  /** Keys read or created. */
  obtained: number
  /** Reads, creations or deletions that failed (repository unreachable). */
  errors: number
  /** Retired keys deleted. */
  removed: number
  /** Keys written back after the repository had lost them. */
  restored: number
  /** Switches to another key for the same epoch (the repository held another one). */
  adopted: number
}

const systemClock: Clock = {
  now: Date.now,
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms)
    // The schedule must never keep a process alive that has nothing else to do.
    t.unref()
    return t
  },
  clearTimeout: (h) => { clearTimeout(h as NodeJS.Timeout) }
}

/** The longest setTimeout delay Node honours; longer ones fire after 1 ms. */
const MAX_TIMER = 2 ** 31 - 1

export class TicketKeySchedule {
  readonly periodMs: number
  readonly maxClockSkewMs: number
  readonly leadMs: number
  readonly retryMs: number
  readonly checkMs: number
  readonly counters: TicketKeyCounters = { rotations: 0, obtained: 0, errors: 0, removed: 0, restored: 0, adopted: 0 }
  private readonly store: TicketKeyStore
  private readonly applyKey: (key: Buffer, epoch: number) => void
  private readonly clock: Clock
  private readonly maxTimerMs: number
  private readonly onEvent: ((e: TicketKeyEvent) => void) | undefined
  private current: { epoch: number, key: Buffer } | undefined
  private next: { epoch: number, key: Buffer } | undefined
  /** Keys no longer issued that still decrypt (a retired epoch until its deletion; a key replaced within its epoch). */
  private previous: Array<{ epoch: number, key: Buffer, until: number }> = []
  /** When the keys held are next compared with the repository's. */
  private checkAt = 0
  /** Retired epochs whose key still has to be deleted from the store. */
  private readonly retired = new Set<number>()
  /** Epochs reported unusable, so each is reported once. */
  private readonly unusable = new Set<number>()
  private failing = false
  private timer: unknown
  private running: Promise<void> | undefined
  private rerun = false
  private stopped = false

  constructor (opts: TicketKeyScheduleOptions) {
    if (opts === null || typeof opts !== 'object' || typeof opts.apply !== 'function' || opts.store === undefined) {
      throw new InvalidOptionError('ticketKeys', 'a TicketKeySchedule needs { store, apply, periodMs }')
    }
    if (opts.periodMs === undefined) throw new InvalidOptionError('ticketKeyPeriodMs', 'is required')
    this.periodMs = intOption('ticketKeyPeriodMs', opts.periodMs, 0, 1000, 366 * 86_400_000)
    const quarter = Math.floor(this.periodMs / 4)
    this.maxClockSkewMs = intOption('maxClockSkewMs', opts.maxClockSkewMs, Math.min(5000, quarter), 0, quarter)
    this.leadMs = intOption('leadMs', opts.leadMs, Math.min(quarter, 60_000), 1, quarter)
    this.retryMs = intOption('retryMs', opts.retryMs, Math.min(5000, Math.max(100, Math.floor(this.periodMs / 20))), 1, this.periodMs)
    this.checkMs = intOption('checkMs', opts.checkMs, this.leadMs, 1, this.periodMs)
    this.maxTimerMs = intOption('maxTimerMs', opts.maxTimerMs, 60_000, 1, MAX_TIMER)
    this.store = opts.store
    this.applyKey = opts.apply
    this.clock = opts.clock ?? systemClock
    this.onEvent = opts.onEvent
  }

  epochOf (time: number): number {
    return Math.floor(time / this.periodMs)
  }

  /** Start of `epoch`, ms since the Unix epoch. */
  boundaryOf (epoch: number): number {
    return epoch * this.periodMs
  }

  /** Epoch of the shared key in use; undefined while none could be read (the server's own random key is in use). */
  get currentEpoch (): number | undefined {
    return this.current?.epoch
  }

  /** Epoch whose key is held ready for the next boundary, if any. */
  get preparedEpoch (): number | undefined {
    return this.next?.epoch
  }

  /** ticketKeyId() of the key in use; undefined while none could be read. */
  get currentKeyId (): number | undefined {
    return this.current === undefined ? undefined : ticketKeyId(this.current.key)
  }

  /**
   * Every key that should still decrypt a ticket: the one in use first, then keys replaced recently (the previous
   * epoch's until its deletion, one replaced within its epoch until that epoch's end plus maxClockSkewMs).
   */
  decryptionKeys (): Buffer[] {
    const now = this.clock.now()
    const keys = this.current === undefined ? [] : [this.current.key]
    for (const p of this.previous) if (p.until > now) keys.push(p.key)
    return keys
  }

  /** True while the repository fails (since the last success). */
  get degraded (): boolean {
    return this.failing
  }

  /** Reads (or creates) the current epoch's key and applies it, then keeps to the schedule. Never rejects. */
  async start (): Promise<void> {
    this.stopped = false
    await this.run()
  }

  /** Applies the current key again: after something replaced the TLS context (setSecureContext) and with it the keys. */
  reapply (): void {
    if (this.current !== undefined) this.applyKey(this.current.key, this.current.epoch)
  }

  /** Stops every timer and wipes the keys held in memory. In-flight store calls finish but change nothing. */
  stop (): void {
    this.stopped = true
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer)
    this.timer = undefined
    this.current?.key.fill(0)
    this.next?.key.fill(0)
    for (const p of this.previous) p.key.fill(0)
    this.current = undefined
    this.next = undefined
    this.previous = []
  }

  /** Runs one evaluation now (also what the timers do). Serialized: a call during a run schedules one more run. */
  async run (): Promise<void> {
    if (this.stopped) return
    if (this.running !== undefined) {
      this.rerun = true
      await this.running
      return
    }
    this.running = (async () => {
      do {
        this.rerun = false
        try {
          await this.evaluate()
        } catch (err) {
          // Timers call run() without awaiting it: nothing may escape, or the process dies on an unhandled rejection.
          this.onEvent?.({ type: 'error', epoch: this.epochOf(this.clock.now()), reason: err instanceof Error ? err.message : String(err) })
          if (!this.stopped) this.timer = this.clock.setTimeout(() => { this.run().catch(() => {}) }, this.retryMs)
        }
      } while (this.rerun && !this.stopped)
    })()
    try {
      await this.running
    } finally {
      this.running = undefined
    }
  }

  private async evaluate (): Promise<void> {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer)
    this.timer = undefined
    let retryAt: number | undefined
    const now = this.clock.now()
    // Never go back to an older epoch, should the wall clock step backwards: that key may already be deleted.
    const epoch = Math.max(this.epochOf(now), this.current?.epoch ?? -Infinity)

    // 1. The switch. Synchronous when the key was prepared ahead, which is the normal case at a boundary.
    if (this.current?.epoch !== epoch) {
      let key = this.next?.epoch === epoch ? this.next.key : undefined
      if (key === undefined) {
        const got = await this.obtain(epoch, now)
        if (this.stopped) { got?.fill(0); return }
        key = got
        if (key === undefined && !this.unusable.has(epoch)) retryAt = now + this.retryMs
      }
      // Just read from the repository (now, or when prepared): nothing to compare it with before the next check.
      if (key !== undefined) { this.install(epoch, key); this.checkAt = now + this.checkMs }
    } else if (now >= this.checkAt) {
      // 1b. Still the same epoch: is the key in use still the repository's? (A wipe, then another instance's start.)
      const ok = await this.check(epoch, now)
      if (this.stopped) return
      this.checkAt = this.clock.now() + (ok ? this.checkMs : this.retryMs)
    }

    // 2. Prepare the next epoch's key ahead of its boundary.
    const nextBoundary = this.boundaryOf(epoch + 1)
    const prepareAt = nextBoundary - this.leadMs
    if (now >= prepareAt && this.next?.epoch !== epoch + 1 && !this.unusable.has(epoch + 1)) {
      const got = await this.obtain(epoch + 1, now)
      if (this.stopped) { got?.fill(0); return }
      if (got !== undefined) {
        this.next?.key.fill(0)
        this.next = { epoch: epoch + 1, key: got }
      } else if (!this.unusable.has(epoch + 1)) {
        retryAt = Math.min(retryAt ?? Infinity, this.clock.now() + this.retryMs)
      }
    }

    // 3. Delete retired keys once every instance, clocks skewed by up to maxClockSkewMs, has moved past them.
    let removeAt: number | undefined
    for (const r of [...this.retired]) {
      const due = this.boundaryOf(r + 1) + this.maxClockSkewMs
      if (this.clock.now() < due) { removeAt = Math.min(removeAt ?? Infinity, due); continue }
      try {
        await this.store.remove(r)
        this.retired.delete(r)
        this.counters.removed++
        this.succeeded(epoch)
        this.onEvent?.({ type: 'removed', epoch: r })
      } catch (err) {
        this.failed(epoch, err)
        removeAt = Math.min(removeAt ?? Infinity, this.clock.now() + this.retryMs)
      }
      if (this.stopped) return
    }

    // Keys kept for decryption only are wiped when their time is up.
    const nowWipe = this.clock.now()
    let wipeAt: number | undefined
    this.previous = this.previous.filter(p => {
      if (p.until > nowWipe) { wipeAt = Math.min(wipeAt ?? Infinity, p.until); return true }
      p.key.fill(0)
      return false
    })

    // 4. One timer, for whichever comes first: the boundary, the preparation, a retry, a deletion or a check.
    const after = this.clock.now()
    let wakeAt = nextBoundary
    if (this.next?.epoch !== epoch + 1 && prepareAt > after) wakeAt = Math.min(wakeAt, prepareAt)
    if (retryAt !== undefined) wakeAt = Math.min(wakeAt, retryAt)
    if (removeAt !== undefined) wakeAt = Math.min(wakeAt, removeAt)
    if (wipeAt !== undefined) wakeAt = Math.min(wakeAt, wipeAt)
    if (this.current?.epoch === epoch) wakeAt = Math.min(wakeAt, Math.max(this.checkAt, after + 1))
    const delay = Math.min(Math.max(1, wakeAt - after), this.maxTimerMs)
    if (!this.stopped) this.timer = this.clock.setTimeout(() => { this.run().catch(() => {}) }, delay)
  }

  private install (epoch: number, key: Buffer): void {
    const previous = this.current
    this.applyKey(key, epoch)
    this.current = { epoch, key }
    if (this.next?.epoch === epoch) this.next = undefined
    const rotation = previous !== undefined
    if (previous !== undefined) {
      this.counters.rotations++
      this.retired.add(previous.epoch)
      // Decrypts until it is deleted from the repository too: tickets issued just before the boundary still resume.
      this.keep(previous.epoch, previous.key)
    }
    this.onEvent?.({ type: 'applied', epoch, rotation })
  }

  private keep (epoch: number, key: Buffer): void {
    this.previous.push({ epoch, key, until: this.boundaryOf(epoch + 1) + this.maxClockSkewMs })
  }

  /**
   * Compares the key in use, and the next one if prepared, with the repository's; writes ours back where the
   * repository has none, adopts the repository's where it differs. False when the repository failed.
   */
  private async check (epoch: number, now: number): Promise<boolean> {
    for (const which of ['current', 'next'] as const) {
      const held = this[which]
      if (held === undefined || (which === 'current' ? held.epoch !== epoch : held.epoch !== epoch + 1)) continue
      let got: { key: Buffer, written: boolean } | undefined
      try {
        got = await this.store.confirm(held.epoch, this.ttlFor(held.epoch, now), Buffer.from(held.key))
      } catch (err) {
        this.failed(epoch, err)
        return false
      }
      this.succeeded(epoch)
      if (this.stopped) { got?.key.fill(0); return true }
      // Unusable (tombstone, another secret): keep what we hold; an 'unusable' event is about obtaining, not this.
      if (got === undefined) continue
      if (got.written) {
        this.counters.restored++
        this.onEvent?.({ type: 'restored', epoch: held.epoch, keyId: ticketKeyId(held.key) })
      }
      // The instance may have moved on (or stopped) while the repository answered.
      if (this[which] !== held || got.key.equals(held.key)) { got.key.fill(0); continue }
      const from = ticketKeyId(held.key)
      if (which === 'current') {
        this.applyKey(got.key, held.epoch)
        this.current = { epoch: held.epoch, key: got.key }
        this.keep(held.epoch, held.key)
      } else {
        this.next = { epoch: held.epoch, key: got.key }
        held.key.fill(0)
      }
      this.counters.adopted++
      this.onEvent?.({ type: 'adopted', epoch: held.epoch, from, to: ticketKeyId(got.key), prepared: which === 'next' })
    }
    return true
  }

  /** Kept until the planned deletion and a little beyond: the TTL only matters when no instance lived to delete it. */
  private ttlFor (epoch: number, now: number): number {
    return Math.max(1000, this.boundaryOf(epoch + 1) + 2 * this.maxClockSkewMs + this.leadMs - now)
  }

  private async obtain (epoch: number, now: number): Promise<Buffer | undefined> {
    const ttlMs = this.ttlFor(epoch, now)
    let got: Buffer | undefined
    try {
      got = await this.store.obtain(epoch, ttlMs)
    } catch (err) {
      this.failed(epoch, err)
      return undefined
    }
    this.succeeded(epoch)
    if (got === undefined || got.length !== TICKET_KEY_BYTES) {
      if (!this.unusable.has(epoch)) {
        this.unusable.add(epoch)
        this.onEvent?.({ type: 'unusable', epoch })
      }
      return undefined
    }
    this.counters.obtained++
    return got
  }

  private failed (epoch: number, err: unknown): void {
    this.counters.errors++
    if (!this.failing) {
      this.failing = true
      // Only the message: an error never carries key material, but keep what reaches a log line small.
      this.onEvent?.({ type: 'unavailable', epoch, reason: err instanceof Error ? err.message : String(err) })
    }
  }

  private succeeded (epoch: number): void {
    if (this.failing) {
      this.failing = false
      this.onEvent?.({ type: 'recovered', epoch })
    }
  }
}

/** The stored form of one epoch's key (sealed at rest by the store). */
interface StoredTicketKey {
  /** 48 bytes, base64. */
  key: string
  epoch: number
  createdAt: number
}

function asStoredKey (v: unknown, epoch: number): StoredTicketKey | undefined {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return undefined
  const o = v as Partial<Record<keyof StoredTicketKey, unknown>>
  if (typeof o.key !== 'string' || o.epoch !== epoch || typeof o.createdAt !== 'number') return undefined
  return { key: o.key, epoch, createdAt: o.createdAt }
}

export interface TieredTicketKeyStoreOptions {
  /**
   * Part of every key's id, separating clusters that share one Redis and prefix but not their secret: without it,
   * whichever cluster created an epoch's key first would leave the other unable to use it. Not secret. Default: the
   * id of the oldest secret of the store's key ring (stable while a newer secret is put in front, not when the oldest
   * is dropped: the tls-sessions plugin passes the namespace the cluster stored when it first started instead).
   */
  namespace?: string
  /** Clock for `createdAt` (kept with the key for operators: when and by whose clock it was made). Default: Date.now. */
  now?: () => number
}

/**
 * Ticket keys in the TieredStore: one entry per epoch, id `tls-ticket-epoch-<e>-<namespace>`, kind `ticketkey`,
 * sealed by the store under the cluster secret. Creation is create-if-absent: the mutator writes only when nothing,
 * not even a tombstone or an entry it cannot open, is there, so no instance ever replaces a key another one may be
 * using, and a retired (deleted) key is never created again.
 */
export class TieredTicketKeyStore implements TicketKeyStore {
  readonly namespace: string
  private readonly store: TieredStore
  private readonly now: () => number

  constructor (store: TieredStore, opts: TieredTicketKeyStoreOptions = {}) {
    this.store = store
    this.namespace = opts.namespace ?? store.keyRing.oldestId
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(this.namespace)) {
      throw new InvalidOptionError('namespace', 'must be 1 to 64 characters of A-Z a-z 0-9 . _ -')
    }
    this.now = opts.now ?? Date.now
  }

  keyOf (epoch: number): string {
    return this.store.key(`tls-ticket-epoch-${epoch}-${this.namespace}`, 'ticketkey')
  }

  async obtain (epoch: number, ttlMs: number): Promise<Buffer | undefined> {
    // Read first, from the repository (a local copy may outlive a retirement): a read re-seals a key sealed with an
    // older secret of the ring (the tls-sessions plugin registers the kind), so it still opens once that is dropped.
    const seen = asStoredKey((await this.store.get(this.keyOf(epoch), { minVersion: Number.MAX_SAFE_INTEGER }))?.value, epoch)
    if (seen !== undefined) return decodeKey(seen, false)?.key
    let fresh: Buffer | undefined
    const res = await this.store.update(this.keyOf(epoch), (current, info) => {
      // Present: use it, write nothing (returning it would rewrite it, bumping its version and TTL).
      if (current !== undefined) return undefined
      // A tombstone (retired and deleted) or an entry sealed under another secret: leave it alone.
      if (info.version > 0) return undefined
      fresh ??= randomBytes(TICKET_KEY_BYTES)
      const value: StoredTicketKey = { key: fresh.toString('base64'), epoch, createdAt: this.now() }
      return value
    }, { ttlMs })
    // Whatever happened, the bytes now live in `res.value` (or nowhere): do not leave a second copy around.
    fresh?.fill(0)
    const stored = asStoredKey(res.value, epoch)
    if (stored === undefined) return undefined
    const key = Buffer.from(stored.key, 'base64')
    if (key.length !== TICKET_KEY_BYTES) { key.fill(0); return undefined }
    return key
  }

  async confirm (epoch: number, ttlMs: number, key: Buffer): Promise<{ key: Buffer, written: boolean } | undefined> {
    const id = this.keyOf(epoch)
    // A minimum version no entry reaches makes get() skip the local tier: a local copy would still show a key that a
    // wiped repository no longer holds.
    const seen = await this.store.get(id, { minVersion: Number.MAX_SAFE_INTEGER })
    const stored = seen === undefined ? undefined : asStoredKey(seen.value, epoch)
    if (stored !== undefined) return decodeKey(stored, false)
    // Nothing readable: write ours back, unless something is there after all (a tombstone, an entry sealed under
    // another secret, or another instance's key written just now), which create-if-absent leaves alone.
    const encoded = key.toString('base64')
    key.fill(0)
    const res = await this.store.update(id, (current, info) => {
      if (current !== undefined || info.version > 0) return undefined
      const value: StoredTicketKey = { key: encoded, epoch, createdAt: this.now() }
      return value
    }, { ttlMs })
    const after = asStoredKey(res.value, epoch)
    return after === undefined ? undefined : decodeKey(after, res.written)
  }

  async remove (epoch: number): Promise<void> {
    await this.store.delete(this.keyOf(epoch))
  }
}

function decodeKey (stored: StoredTicketKey, written: boolean): { key: Buffer, written: boolean } | undefined {
  const key = Buffer.from(stored.key, 'base64')
  if (key.length !== TICKET_KEY_BYTES) { key.fill(0); return undefined }
  return { key, written }
}
