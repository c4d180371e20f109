import { isHandoffError, SessionEndedError } from '../errors.js'
import type { StoreEntry, StoreValue, UpdateInfo } from '../tiered-store.js'
import { newSessionId, type SessionCookie } from './cookie.js'
import { applyOps, assertFieldName, isObject, type Op, type StoredDevice, type StoredSession } from './model.js'
import type { Sessions } from './sessions.js'
import type { DebugLogger, FieldKey, HandoffSession, NumericField, SessionData, SessionDescription, SessionPolicy, SessionUser } from './types.js'

/** What the request's cookie named when the request started. */
export type CookieAtStart =
  | { readonly kind: 'none' }
  /** Not a cookie of ours: tampered, signed with a key no longer in the ring, malformed. */
  | { readonly kind: 'rejected' }
  /** A valid cookie whose session was gone (expired, logged out, unknown, unreadable) when the request started. */
  | { readonly kind: 'gone', readonly id: string }
  /** A live session. `regressed`: the store answered below the cookie's version floor (Redis lost writes). */
  | { readonly kind: 'live', readonly id: string, readonly renew: boolean, readonly regressed: boolean }

/** The stored session this request is on. */
export interface CurrentSession {
  readonly id: string
  readonly base: StoredSession
  readonly version: number
  readonly expiresAt: number
}

/** What the response does with the session cookie. */
export type CookieDecision =
  | { readonly action: 'set', readonly id: string, readonly version: number, readonly maxAgeS: number }
  | { readonly action: 'clear' }
  /** No cookie; extend the session's idle expiry (one store touch, in the background). */
  | { readonly action: 'touch', readonly id: string, readonly ttlMs: number }
  | { readonly action: 'none' }

export interface CookieInputs {
  readonly start: CookieAtStart
  readonly current: CurrentSession | undefined
  /** This request stored a new version of `current`. */
  readonly wrote: boolean
  /** This request ended the session it started on (destroy, regenerate). */
  readonly endedHere: boolean
}

const NONE: CookieDecision = Object.freeze({ action: 'none' })
const CLEAR: CookieDecision = Object.freeze({ action: 'clear' })
const NO_COOKIE: CookieAtStart = Object.freeze({ kind: 'none' })

/**
 * The one cookie decision, from what the cookie named when the request started and the session the request is on
 * now. Without a session now, the cookie is cleared only when it named none when the request started, or when this
 * request ended it: a session that ended under the request (logout elsewhere, a login in another tab) leaves the
 * cookie alone, since by the time this response arrives the client may hold a newer one, which a clear would delete.
 * The next request that starts with the dead cookie clears it.
 */
export function decideCookie (s: CookieInputs, policy: SessionPolicy, now = Date.now()): CookieDecision {
  const cur = s.current
  if (cur !== undefined) {
    const start = s.start
    // A read that finds a newer version than the cookie's sets nothing: the floor only has to cover this client's
    // own writes, and their responses carried it. (Re-issuing it on reads would cost an HMAC per request for clients
    // that do not keep cookies.)
    if (s.wrote || start.kind !== 'live' || start.id !== cur.id || start.renew || start.regressed) {
      return { action: 'set', id: cur.id, version: cur.version, maxAgeS: Math.max(1, Math.ceil((cur.base.c + policy.absoluteTimeoutMs - now) / 1000)) }
    }
    // More than `refreshAfter` of the idle window has passed since the last write or refresh, and it would extend.
    const want = Math.min(now + policy.idleTimeoutMs, cur.base.c + policy.absoluteTimeoutMs)
    if (want - cur.expiresAt > policy.idleTimeoutMs * policy.refreshAfter) {
      return { action: 'touch', id: cur.id, ttlMs: Math.min(policy.idleTimeoutMs, cur.base.c + policy.absoluteTimeoutMs - now) }
    }
    return NONE
  }
  const start = s.start.kind
  return start === 'rejected' || start === 'gone' || (start === 'live' && s.endedHere) ? CLEAR : NONE
}

/** The state of `request.session`, created when the session is loaded or first used. */
export class SessionState implements HandoffSession {
  private start: CookieAtStart = NO_COOKIE
  private current: CurrentSession | undefined
  private ops: Op[] = []
  /** Ops of a write in flight: still part of this request's view until the write settles. */
  private inflight: readonly Op[] = []
  /** undefined: no change; null: sign out; else the new user. */
  private userChange: SessionUser | null | undefined
  private chain: Promise<void> = Promise.resolve()
  /** This request stored a new version: the client gets a cookie naming it (its new floor). */
  private wrote = false
  /** This request ended the session it started on (destroy, regenerate). */
  private endedHere = false
  /** Loaded from an unconfirmed local copy while the store was unreachable. */
  degraded = false
  /** A save failed: onSend runs again for the error response, and then only the cookie is decided. */
  private failed = false

  /** `describe`: what to record about the device when this request creates or signs in a session (none: nothing). */
  constructor (private readonly rt: Sessions, private readonly log: DebugLogger,
    private readonly describe?: () => SessionDescription | undefined) {}

  /** The request's cookie is not one of ours: a fresh anonymous session, never a 500. */
  rejected (): void {
    this.rt.metrics.rejectedCookies++
    this.start = { kind: 'rejected' }
  }

  /** The request's cookie `c`, and what the store answered for it. */
  loaded (c: SessionCookie, entry: StoreEntry<StoredSession> | undefined): void {
    const rt = this.rt
    if (entry === undefined || entry.value.c + rt.policy.absoluteTimeoutMs <= Date.now()) {
      rt.metrics.notFound++
      this.start = { kind: 'gone', id: c.id }
      return
    }
    this.degraded = entry.degraded
    if (entry.degraded) rt.metrics.loadedDegraded++
    else if (entry.source === 'local') rt.metrics.loadedLocal++
    else rt.metrics.loadedRemote++
    this.start = { kind: 'live', id: c.id, renew: c.renew, regressed: entry.version < c.version }
    this.current = { id: c.id, base: entry.value, version: entry.version, expiresAt: entry.expiresAt }
  }

  get id (): string | undefined { return this.current?.id }
  get isNew (): boolean { return this.current === undefined }
  get version (): number { return this.current?.version ?? 0 }
  get createdAt (): number | undefined { return this.current?.base.c }
  get changed (): boolean { return this.ops.length > 0 || this.userChange !== undefined }

  get user (): SessionUser | undefined {
    if (this.userChange !== undefined) return this.userChange ?? undefined
    return this.current?.base.u
  }

  set user (u: SessionUser | undefined) {
    if (u !== undefined && (!isObject(u) || typeof u.id !== 'string' || u.id === '')) {
      throw new TypeError('session.user must be an object with a non-empty string id, or undefined')
    }
    this.userChange = u ?? null
  }

  get<K extends FieldKey> (key: K): SessionData[K] | undefined {
    assertFieldName(key)
    // Own fields only: a name missing from the stored object is undefined, never something it inherits.
    const d = this.current?.base.d
    let v: StoreValue | undefined = d !== undefined && Object.hasOwn(d, key) ? d[key] : undefined
    for (const op of this.inflight.length === 0 ? this.ops : [...this.inflight, ...this.ops]) {
      if (op.k !== key) continue
      if (op.t === 'set') v = op.v
      else if (op.t === 'del') v = undefined
      else v = (typeof v === 'number' ? v : 0) + op.by
    }
    return v as SessionData[K] | undefined
  }

  set<K extends FieldKey> (key: K, value: SessionData[K]): void {
    assertFieldName(key)
    if (value === undefined) this.ops.push({ t: 'del', k: key })
    else this.ops.push({ t: 'set', k: key, v: value as StoreValue })
  }

  delete (key: FieldKey): void {
    assertFieldName(key)
    this.ops.push({ t: 'del', k: key })
  }

  increment<K extends NumericField> (key: K, by = 1): number {
    if (typeof by !== 'number' || !Number.isFinite(by)) throw new TypeError('session.increment: by must be a finite number')
    const cur: unknown = this.get(key)
    if (cur !== undefined && typeof cur !== 'number') throw new TypeError(`session.increment: field "${key}" holds a ${typeof cur}, not a number`)
    this.ops.push({ t: 'inc', k: key, by })
    return (cur ?? 0) + by
  }

  async regenerate (keep: FieldKey[] = []): Promise<void> {
    const names = this.rt.keptOnRegenerate.size === 0 ? keep : [...new Set([...keep, ...this.rt.keptOnRegenerate as Set<FieldKey>])]
    const kept = names.map(k => [k, this.get(k)] as const)
    await this.serial(async () => {
      await this.end()
      this.rt.metrics.regenerated++
    })
    for (const [k, v] of kept) if (v !== undefined) this.ops.push({ t: 'set', k, v: v as StoreValue })
  }

  async destroy (): Promise<void> {
    await this.serial(async () => await this.end())
  }

  async save (): Promise<void> {
    await this.serial(async () => await this.write())
  }

  /** The cookie decision as things stand now. */
  cookie (): CookieDecision {
    return decideCookie({ start: this.start, current: this.current, wrote: this.wrote, endedHere: this.endedHere }, this.rt.policy)
  }

  /** True when onSend has anything to do: the read path stops here. */
  get pending (): boolean {
    return this.ops.length > 0 || this.userChange !== undefined || this.cookie() !== NONE
  }

  /**
   * onSend: store what changed, then decide the cookie (a touch is sent here, in the background). After a failed
   * save, onSend runs again for the error response: no second attempt, only the cookie.
   */
  async finish (): Promise<CookieDecision> {
    if (!this.failed) {
      try {
        await this.serial(async () => await this.write())
      } catch (err) {
        this.failed = true
        throw err
      }
    }
    const d = this.cookie()
    if (d.action === 'touch') this.rt.touchLater(d.id, d.ttlMs, this.log)
    return d
  }

  private async serial (work: () => Promise<void>): Promise<void> {
    // A 503 thrown from here gets its Retry-After from the store plugin's onError hook, like every 503 of the suite.
    const run = this.chain.then(work)
    this.chain = run.catch(() => {})
    await run
  }

  /** Forget the session this request was on and everything it had not stored: the one reset of session state. */
  private reset (): void {
    this.current = undefined
    this.ops = []
    this.userChange = undefined
    this.wrote = false
  }

  /** Tombstone the current id (if stored), take it out of its user's index, continue as a new anonymous session. */
  private async end (): Promise<void> {
    const rt = this.rt
    const cur = this.current
    if (cur !== undefined) {
      await rt.stored.delete(cur.id)
      rt.metrics.destroyed++
      const user = cur.base.u
      if (user !== undefined) {
        await rt.index.unregister(user.id, cur.id, cur.base.x).catch((err: unknown) => {
          this.log.debug({ err }, 'fastify-handoff: could not remove a destroyed session from its user index')
        })
      }
    }
    this.reset()
    this.endedHere = true
  }

  private async write (): Promise<void> {
    if (this.ops.length === 0 && this.userChange === undefined) return
    // Swap the pending changes out: what a handler records while this write is in flight goes to the next one.
    const ops = this.ops
    const userChange = this.userChange
    this.ops = []
    this.userChange = undefined
    this.inflight = ops
    try {
      await this.writeOps(ops, userChange)
    } catch (err) {
      // Still pending (a later save() may succeed), unless the session ended under us: then they are void.
      if (!isHandoffError(err, 'FST_HANDOFF_SESSION_ENDED')) {
        this.ops = ops.concat(this.ops)
        if (this.userChange === undefined) this.userChange = userChange
      }
      throw err
    } finally {
      this.inflight = []
    }
  }

  private async writeOps (ops: readonly Op[], userChange: SessionUser | null | undefined): Promise<void> {
    const rt = this.rt
    const policy = rt.policy
    const now = Date.now()
    const cur = this.current
    const isNew = cur === undefined
    const base = cur?.base
    if (isNew) {
      // saveUninitialized: false. A visitor who stores nothing gets no write and no cookie.
      const probe = applyOps({ d: {}, c: now }, ops, userChange)
      if (Object.keys(probe.d).length === 0 && probe.u === undefined) return
    }
    const id = cur?.id ?? newSessionId()
    const created = base?.c ?? now
    const deadline = created + policy.absoluteTimeoutMs
    const ttlMs = Math.min(policy.idleTimeoutMs, deadline - now)
    if (ttlMs <= 0) throw this.ended()
    const user = userChange === undefined ? base?.u : userChange ?? undefined
    const signsIn = userChange != null && userChange.id !== base?.u?.id
    // Recorded for signed-in sessions only (the ones `list` shows), when they are created or signed in.
    const device = user !== undefined && (isNew || signsIn) ? deviceOf(this.describe?.()) : undefined
    let indexedWith: string | undefined
    if (user !== undefined && (isNew || signsIn || base?.x !== rt.index.keyId)) {
      await rt.index.register(user.id, id, deadline)
      indexedWith = rt.index.keyId
    }
    let sawDeleted = false
    const res = await rt.stored.update(id, (stored, info: UpdateInfo) => {
      sawDeleted = info.deleted
      if (info.deleted) return undefined
      if (stored === undefined) {
        // Absent: create it if it is ours to create; a stored session that vanished (expiry, lost by Redis) stays gone.
        return isNew ? applyOps({ d: {}, c: created }, ops, userChange, indexedWith, device) : undefined
      }
      if (stored.c + policy.absoluteTimeoutMs <= Date.now()) return undefined
      return applyOps(stored, ops, userChange, indexedWith, device)
    }, { ttlMs, minVersion: cur?.version ?? 0, maxBytes: policy.maxBytes, label: 'Session' })
    rt.metrics.conflicts += res.conflicts
    if (!res.written || res.value === undefined) {
      if (sawDeleted || !isNew) throw this.ended()
      return
    }
    rt.metrics.saved++
    if (isNew) rt.metrics.created++
    this.current = { id, base: res.value, version: res.version, expiresAt: Date.now() + ttlMs }
    this.wrote = true
  }

  /** The session was destroyed or expired under this request: forget it, refuse the changes. */
  private ended (): Error {
    this.rt.metrics.ended++
    this.reset()
    return new SessionEndedError()
  }
}

/** What `describe` gave, as stored: strings only, bounded; undefined when it gave nothing usable. */
function deviceOf (d: SessionDescription | undefined): StoredDevice | undefined {
  if (!isObject(d)) return undefined
  const m: { a?: string, i?: string } = {}
  if (typeof d.userAgent === 'string' && d.userAgent !== '') m.a = d.userAgent.slice(0, 256)
  if (typeof d.address === 'string' && d.address !== '') m.i = d.address.slice(0, 64)
  return m.a === undefined && m.i === undefined ? undefined : m
}
