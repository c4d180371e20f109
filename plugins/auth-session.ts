import { createHmac, randomBytes } from 'node:crypto'
import type { FastifyInstance, FastifyPluginCallback, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Signer } from '@fastify/cookie'
import { InvalidOptionError, isHandoffError, SessionEndedError, SessionDisabledError } from '../lib/errors.js'
import type { StoreEntry, StoreValue, TieredStore, UpdateInfo } from '../lib/tiered-store.js'
import { compileOptions, cookieSchema, optionPath, resolveCookie, type CookieOptions, type OptionsCheck } from '../lib/options.js'

/**
 * Your session fields. Empty here: add yours by declaration merging, e.g.
 * `declare module 'fastify-handoff' { interface SessionData { theme: string, views: number } }`.
 * Values must be JSON (they are sealed and stored as JSON).
 */
export interface SessionData {}

/** The signed-in principal in `session.user`. Add fields (roles, tenant...) by declaration merging; JSON only. */
export interface SessionUser {
  id: string
}

type FieldKey = Extract<keyof SessionData, string>
/** The fields whose type is a number: the ones `increment` accepts. */
export type NumericField = { [K in FieldKey]-?: NonNullable<SessionData[K]> extends number ? K : never }[FieldKey]

/** `request.session`. Reads are synchronous (the session is loaded before the handler runs). */
export interface HandoffSession {
  /** The session id; undefined for a visitor who has nothing stored yet (an id is made on the first save). */
  readonly id: string | undefined
  /** True until the session is stored for the first time (after `regenerate()` or `destroy()` too). */
  readonly isNew: boolean
  /**
   * Version of the stored session this request sees (0 when new). Grows by one per write, within one store epoch
   * (a cookie's version floor only ever names this session id, which is never re-created after the store lost it).
   */
  readonly version: number
  /**
   * True when the store could not be reached and this instance answered from its own copy, unconfirmed for up to the
   * store's `maxDegradedMs`: it may miss a logout or change made elsewhere meanwhile. Refuse sensitive actions.
   */
  readonly degraded: boolean
  /** When the session was first stored (ms since the epoch); the absolute timeout counts from here. */
  readonly createdAt: number | undefined
  /** True when this request has changes that are not stored yet. */
  readonly changed: boolean
  /** The signed-in principal, undefined when anonymous. Assign to sign in (after `regenerate()`), `undefined` to sign out. */
  user: SessionUser | undefined
  /** A field as stored plus this request's changes. Values read from the store are deep-frozen: set a new value to change one. */
  get: <K extends FieldKey>(key: K) => SessionData[K] | undefined
  /** Record a new value for one field (last writer wins for that field; other fields merge). */
  set: <K extends FieldKey>(key: K, value: SessionData[K]) => void
  /** Record the removal of one field. */
  delete: (key: FieldKey) => void
  /**
   * Add `by` (default 1) to a numeric field, applied to the newest stored value under compare-and-set: concurrent
   * increments from any instance all count. Returns this request's view of the new value.
   */
  increment: <K extends NumericField>(key: K, by?: number) => number
  /**
   * New id, old one destroyed at once (a tombstone): call it on login and on every privilege change, so that an id
   * an attacker planted before the login is worthless after it. Keeps only the fields named in `keep`; the user is
   * cleared. The new session is stored when the response is sent (if it holds anything).
   */
  regenerate: (keep?: FieldKey[]) => Promise<void>
  /**
   * Destroy the session now (a tombstone: a request still in flight cannot bring it back) and continue with a fresh
   * anonymous one. The cookie is cleared unless something is stored in the fresh session.
   */
  destroy: () => Promise<void>
  /** Store pending changes now instead of when the response is sent (e.g. before a long operation). */
  save: () => Promise<void>
}

/** The session cookie's attributes: the one cookie options shape of the suite (the cart's anchor cookie takes it too). */
export type SessionCookieOptions = CookieOptions

export interface AuthSessionOptions {
  /** Cookie attributes and name. Defaults: see SessionCookieOptions (HttpOnly, Secure, SameSite=Lax, Path=/). */
  cookie?: SessionCookieOptions
  /** Sliding idle timeout, ms: a session unused this long ends. Default: 1800000 (30 min). */
  idleTimeoutMs?: number
  /** Absolute timeout from creation (login), ms, however active the session is. Default: 43200000 (12 h). */
  absoluteTimeoutMs?: number
  /**
   * Refresh the idle expiry (one store.touch, no rewrite) on a read only when more than this fraction of the idle
   * window has passed since the last write or refresh. The effective idle timeout is then between
   * (1 - refreshAfter) x idleTimeoutMs and idleTimeoutMs. Between 0 (exclusive) and 1. Default: 0.25.
   */
  refreshAfter?: number
  /** Largest stored session (JSON bytes); a save above it fails with FST_HANDOFF_TOO_LARGE (413). Default: 16384. */
  maxBytes?: number
  /**
   * Sessions one user may hold at once (the per-user index for "log out everywhere"). When a login goes beyond it,
   * the sessions closest to their absolute expiry are destroyed. Default: 100.
   */
  maxSessionsPerUser?: number
}

export interface SessionMetrics {
  /** Sessions stored for the first time (new visitors who stored something, logins after regenerate). */
  created: number
  /** Sessions loaded from this instance's local tier (no Redis command). */
  loadedLocal: number
  /** Sessions loaded from Redis (cold instance, or newer version required by the cookie). */
  loadedRemote: number
  /** Sessions served from a local copy while Redis was unreachable. */
  loadedDegraded: number
  /** Writes stored (each one compare-and-set). */
  saved: number
  /** Lost compare-and-set rounds, re-run on the newer value (parallel requests on one session). */
  conflicts: number
  /** Sessions destroyed (destroy(), regenerate()'s old id, destroyAllFor, per-user cap). */
  destroyed: number
  regenerated: number
  /** Lazy idle-expiry refreshes sent. */
  touched: number
  /** Cookies refused: bad signature (tampered, retired key), malformed. */
  rejectedCookies: number
  /** Valid cookies whose session is gone (idle or absolute timeout, logged out, unknown, unreadable). */
  notFound: number
  /** Writes refused because the session was destroyed while the request ran (answered 409). */
  ended: number
  /** Requests answered 503 because the store was unavailable. */
  unavailable: number
}

export interface DestroyAllOptions {
  /** Keep this session id (the "log out my other devices" button). */
  except?: string
}

/** `fastify.handoffSessions`. */
export interface HandoffSessions {
  /**
   * Log a user out everywhere: destroy (tombstone) every session in the user's index, on every instance. Returns how
   * many session ids were destroyed.
   */
  destroyAllFor: (userId: string, opts?: DestroyAllOptions) => Promise<number>
  /**
   * Fields every `regenerate()` carries over to the new id, on top of its `keep` argument: for plugins that keep
   * something in the session across a login (the cart plugin, its anonymous cart id). Call it at registration.
   */
  keepOnRegenerate: (...fields: FieldKey[]) => void
  /** Counters since start. */
  readonly metrics: Readonly<SessionMetrics>
  /** The cookie name in use. */
  readonly cookieName: string
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The auth session (fastify-handoff/auth-session). Throws on routes with `config: { handoffSession: false }`. */
    session: HandoffSession
  }
  interface FastifyInstance {
    handoffSessions: HandoffSessions
  }
  interface FastifyContextConfig {
    /** false: this route neither loads nor saves the session (no cookie check, no store read). Default: true. */
    handoffSession?: boolean
  }
}

export { SessionEndedError, SessionDisabledError }

const ID_BYTES = 24
const ID_LENGTH = 32 // base64url of 24 bytes
const ID_PATTERN = /^[A-Za-z0-9_-]{32}$/
const VERSION_PATTERN = /^(?:0|[1-9][0-9]{0,14})$/
/** A signed cookie is id (32) + '.' + version (<= 15) + '.' + signature (43): anything longer is not ours. */
const MAX_COOKIE_LENGTH = 128
const SESSION_KIND = 'session'
const INDEX_KIND = 'user-sessions'

/** What the store holds under `<id>:session`. Short names: it is sealed and stored for every session. */
interface StoredSession {
  /** Fields. */
  d: Record<string, StoreValue>
  /** Created at, ms. */
  c: number
  /** User, when signed in. */
  u?: SessionUser
  /** Id of the ring key the user index entry was made with (re-registered after a rotation). */
  x?: string
}

/** The per-user index: session id -> its absolute deadline (ms). */
interface StoredIndex {
  s: Record<string, number>
}

type Op =
  | { t: 'set', k: string, v: StoreValue }
  | { t: 'del', k: string }
  | { t: 'inc', k: string, by: number }

interface ResolvedOptions {
  cookieName: string
  cookie: { path: string, domain: string | undefined, secure: boolean | 'auto', httpOnly: boolean, sameSite: 'lax' | 'strict' | 'none', partitioned: boolean }
  idleTimeoutMs: number
  absoluteTimeoutMs: number
  refreshAfter: number
  maxBytes: number
  maxSessionsPerUser: number
}

function isObject (v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

/** The options' schema: types and ranges (lib/options.ts applies it the same way in every plugin). */
export const AUTH_SESSION_OPTIONS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    cookie: cookieSchema,
    idleTimeoutMs: { type: 'integer', minimum: 1000 },
    absoluteTimeoutMs: { type: 'integer', minimum: 1000 },
    refreshAfter: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1, description: 'a number between 0 and 1 (exclusive)' },
    maxBytes: { type: 'integer', minimum: 64 },
    maxSessionsPerUser: { type: 'integer', minimum: 1 }
  }
} as const

/** Refuses invalid auth-session options (unknown keys with a did-you-mean, types, ranges), naming the option. */
export const checkAuthSessionOptions: OptionsCheck = compileOptions(AUTH_SESSION_OPTIONS_SCHEMA)

/** Defaults in one place; every invalid option is refused here, naming it (under `path`: 'session.cookie.name'). */
export function resolveOptions (opts: AuthSessionOptions = {}, path = ''): ResolvedOptions {
  checkAuthSessionOptions(opts, path)
  const { name: cookieName, ...cookie } = resolveCookie(opts.cookie, 'handoff.sid', optionPath(path, 'cookie'))
  const idleTimeoutMs = opts.idleTimeoutMs ?? 1_800_000
  const absoluteTimeoutMs = opts.absoluteTimeoutMs ?? 43_200_000
  if (absoluteTimeoutMs < idleTimeoutMs) {
    throw new InvalidOptionError(optionPath(path, 'absoluteTimeoutMs'), `must be >= idleTimeoutMs (${idleTimeoutMs}), got ${absoluteTimeoutMs}`)
  }
  return {
    cookieName,
    cookie,
    idleTimeoutMs,
    absoluteTimeoutMs,
    refreshAfter: opts.refreshAfter ?? 0.25,
    maxBytes: opts.maxBytes ?? 16_384,
    maxSessionsPerUser: opts.maxSessionsPerUser ?? 100
  }
}

/** Fields of a stored value we can trust the shape of; anything else counts as no session. */
function asStoredSession (v: unknown): StoredSession | undefined {
  if (!isObject(v) || !isObject(v.d) || typeof v.c !== 'number') return undefined
  if (v.u !== undefined && !(isObject(v.u) && typeof v.u.id === 'string')) return undefined
  return v as unknown as StoredSession
}

function asStoredIndex (v: unknown): StoredIndex | undefined {
  return isObject(v) && isObject(v.s) ? v as unknown as StoredIndex : undefined
}

function is503 (err: unknown): err is Error & { code?: string } {
  return err instanceof Error && (err as { statusCode?: unknown }).statusCode === 503
}

interface ParsedCookie { id: string, version: number, renew: boolean, key: string }

/**
 * Verified cookies remembered per instance. The HMAC check is the largest cost of a warm read (about 2 us of a
 * request's 12); a cookie that verified once verifies for the life of this process (the key ring is fixed at
 * registration), so remembering it changes no answer. Only cookies that passed are kept, so junk cannot fill it.
 */
const VERIFIED_CACHE_SIZE = 10_000

/** Everything one registration shares between requests. */
class Runtime {
  readonly metrics: SessionMetrics = {
    created: 0,
    loadedLocal: 0,
    loadedRemote: 0,
    loadedDegraded: 0,
    saved: 0,
    conflicts: 0,
    destroyed: 0,
    regenerated: 0,
    touched: 0,
    rejectedCookies: 0,
    notFound: 0,
    ended: 0,
    unavailable: 0
  }

  private readonly signer: Signer
  private readonly indexKeys: Array<{ id: string, key: Buffer }>
  private readonly touching = new Set<string>()
  private readonly verified = new Map<string, ParsedCookie>()
  /** Fields regenerate() always keeps (keepOnRegenerate). */
  readonly keptOnRegenerate = new Set<string>()
  readonly cookieBase: { path: string, domain?: string, secure: boolean | 'auto', httpOnly: boolean, sameSite: 'lax' | 'strict' | 'none', partitioned?: boolean }

  constructor (readonly store: TieredStore, readonly opts: ResolvedOptions, readonly fastify: FastifyInstance) {
    const ring = fastify.handoff.keyRing
    // Per-purpose subkeys: the cookie key says nothing about the entry-sealing key. Newest signs, all verify.
    this.signer = new Signer(ring.derive('cookie'))
    const idx = ring.derive('user-index')
    this.indexKeys = ring.ids.map((id, i) => ({ id, key: idx[i] as Buffer }))
    const c = opts.cookie
    this.cookieBase = { path: c.path, secure: c.secure, httpOnly: c.httpOnly, sameSite: c.sameSite }
    if (c.domain !== undefined) this.cookieBase.domain = c.domain
    if (c.partitioned) this.cookieBase.partitioned = true
  }

  sessionKey (id: string): string {
    return this.store.key(id, SESSION_KIND)
  }

  /** Id of the ring key new index entries are made with. */
  get indexKeyId (): string {
    return (this.indexKeys[0] as { id: string }).id
  }

  /**
   * The user index is keyed by an HMAC of the user id: user ids are chosen by people (emails), and the partition
   * hash is not keyed, so raw ids could be picked to pile up on one partition. 24 bytes -> 32 base64url characters.
   */
  indexKey (userId: string, keyIndex = 0): string {
    const k = this.indexKeys[keyIndex] as { key: Buffer }
    const id = createHmac('sha256', k.key).update(userId, 'utf8').digest().subarray(0, 24).toString('base64url')
    return this.store.key(id, INDEX_KIND)
  }

  sign (id: string, version: number): string {
    return this.signer.sign(`${id}.${version}`)
  }

  readCookie (raw: string): ParsedCookie | undefined {
    const known = this.verified.get(raw)
    if (known !== undefined) return known
    // Cheap shape checks first: no HMAC for junk.
    if (raw.length > MAX_COOKIE_LENGTH || raw.charCodeAt(ID_LENGTH) !== 46) return undefined
    const r = this.signer.unsign(raw)
    if (!r.valid) return undefined
    const value = r.value
    const id = value.slice(0, ID_LENGTH)
    const v = value.slice(ID_LENGTH + 1)
    if (!ID_PATTERN.test(id) || !VERSION_PATTERN.test(v)) return undefined
    const parsed: ParsedCookie = Object.freeze({ id, version: Number(v), renew: r.renew, key: this.sessionKey(id) })
    if (this.verified.size >= VERIFIED_CACHE_SIZE) {
      // Oldest first (Map keeps insertion order): a cheap FIFO is enough for a cache of one HMAC each.
      const oldest = this.verified.keys().next()
      if (oldest.done !== true) this.verified.delete(oldest.value)
    }
    this.verified.set(raw, parsed)
    return parsed
  }

  newId (): string {
    return randomBytes(ID_BYTES).toString('base64url')
  }

  /** Lazy sliding expiry: one TTL extension per session and instance at a time, in the background. */
  touchLater (id: string, ttlMs: number, log: FastifyRequest['log']): void {
    const key = this.sessionKey(id)
    if (this.touching.has(key)) return
    this.touching.add(key)
    this.metrics.touched++
    this.store.touch(key, ttlMs).then(
      () => { this.touching.delete(key) },
      (err: unknown) => {
        this.touching.delete(key)
        // The store logs the outage once; the session simply keeps its current expiry.
        log.debug({ err }, 'fastify-handoff: idle refresh of a session failed')
      }
    )
  }

  /**
   * Adds a session to its user's index, before the session itself is written: a "log out everywhere" that reads
   * the index after this point sees the id, and its tombstone then stops the session write. Sessions pushed out by
   * the per-user cap are destroyed. Index entries live as long as the longest a session can (absoluteTimeoutMs).
   */
  async register (userId: string, sid: string, deadline: number): Promise<void> {
    let evicted: string[] = []
    const now = Date.now()
    const res = await this.store.update(this.indexKey(userId), (cur) => {
      evicted = []
      const s: Record<string, number> = {}
      for (const [id, d] of Object.entries(asStoredIndex(cur)?.s ?? {})) if (d > now) s[id] = d
      s[sid] = deadline
      const ids = Object.keys(s)
      if (ids.length > this.opts.maxSessionsPerUser) {
        ids.sort((a, b) => (s[a] as number) - (s[b] as number))
        for (const id of ids.slice(0, ids.length - this.opts.maxSessionsPerUser)) {
          if (id === sid) continue
          evicted.push(id)
          delete s[id]
        }
      }
      return { s }
    }, { ttlMs: this.opts.absoluteTimeoutMs })
    this.metrics.conflicts += res.conflicts
    if (evicted.length > 0) {
      await Promise.all(evicted.map(async id => await this.store.delete(this.sessionKey(id))))
      this.metrics.destroyed += evicted.length
    }
  }

  /** Best effort: an id left behind is harmless (its tombstone or expiry makes it dead) and pruned later. */
  async unregister (userId: string, sid: string, keyId: string | undefined): Promise<void> {
    const i = Math.max(0, this.indexKeys.findIndex(k => k.id === keyId))
    await this.store.update(this.indexKey(userId, i), (cur) => {
      const idx = asStoredIndex(cur)
      if (idx === undefined || !(sid in idx.s)) return undefined
      const s = { ...idx.s }
      delete s[sid]
      return { s }
    }, { ttlMs: this.opts.absoluteTimeoutMs })
  }

  async destroyAllFor (userId: string, opts: DestroyAllOptions = {}): Promise<number> {
    if (typeof userId !== 'string' || userId === '') throw new InvalidOptionError('userId', 'must be a non-empty string')
    const victims = new Set<string>()
    // Every key of the ring: entries made before a rotation are still in the older index.
    for (let i = 0; i < this.indexKeys.length; i++) {
      let found: string[] = []
      await this.store.update(this.indexKey(userId, i), (cur) => {
        found = []
        const idx = asStoredIndex(cur)
        if (idx === undefined) return undefined
        const keep: Record<string, number> = {}
        for (const [id, d] of Object.entries(idx.s)) {
          if (id === opts.except) keep[id] = d
          else found.push(id)
        }
        return found.length === 0 ? undefined : { s: keep }
      }, { ttlMs: this.opts.absoluteTimeoutMs })
      for (const id of found) victims.add(id)
    }
    await Promise.all([...victims].map(async id => await this.store.delete(this.sessionKey(id))))
    this.metrics.destroyed += victims.size
    return victims.size
  }
}

/** The state of `request.session`, created when the session is loaded or first used. */
class SessionState implements HandoffSession {
  /** Session id; undefined until a new session is first saved. */
  private sid: string | undefined
  private base: StoredSession | undefined
  private baseVersion = 0
  private baseExpiresAt = 0
  /** The id came from a stored session (loaded), as opposed to a new one. */
  private existed = false
  private ops: Op[] = []
  /** Ops of a write in flight: still part of this request's view until the write settles. */
  private inflight: readonly Op[] = []
  /** undefined: no change; null: sign out; else the new user. */
  private userChange: SessionUser | null | undefined
  private chain: Promise<void> = Promise.resolve()

  /** From the request's cookie: what it named, so onSend knows whether to set or clear it. */
  cookieId: string | undefined
  renewCookie = false
  /** The request brought a cookie that names no usable session: clear it unless a new session replaces it. */
  staleCookie = false
  /** This request saw a version below its cookie's floor (Redis lost writes): re-issue the cookie. */
  regressed = false
  /** Loaded from an unconfirmed local copy while the store was unreachable. */
  degraded = false
  /** This request stored a new version: the client gets a cookie naming it (its new floor). */
  private wrote = false
  failed = false

  constructor (private readonly rt: Runtime, private readonly request: FastifyRequest) {}

  /** Loaded from the store (entry at `version`, expiring at `expiresAt`). */
  adopt (id: string, stored: StoredSession, version: number, expiresAt: number): void {
    this.sid = id
    this.base = stored
    this.baseVersion = version
    this.baseExpiresAt = expiresAt
    this.existed = true
  }

  get id (): string | undefined { return this.sid }
  get isNew (): boolean { return !this.existed }
  get version (): number { return this.baseVersion }
  get createdAt (): number | undefined { return this.base?.c }
  get changed (): boolean { return this.ops.length > 0 || this.userChange !== undefined }

  get user (): SessionUser | undefined {
    if (this.userChange !== undefined) return this.userChange ?? undefined
    return this.base?.u
  }

  set user (u: SessionUser | undefined) {
    if (u !== undefined && (!isObject(u) || typeof u.id !== 'string' || u.id === '')) {
      throw new TypeError('session.user must be an object with a non-empty string id, or undefined')
    }
    this.userChange = u ?? null
  }

  get<K extends FieldKey> (key: K): SessionData[K] | undefined {
    let v: StoreValue | undefined = this.base?.d[key]
    for (const op of this.inflight.length === 0 ? this.ops : [...this.inflight, ...this.ops]) {
      if (op.k !== key) continue
      if (op.t === 'set') v = op.v
      else if (op.t === 'del') v = undefined
      else v = (typeof v === 'number' ? v : 0) + op.by
    }
    return v as SessionData[K] | undefined
  }

  set<K extends FieldKey> (key: K, value: SessionData[K]): void {
    if (value === undefined) this.ops.push({ t: 'del', k: key })
    else this.ops.push({ t: 'set', k: key, v: value as StoreValue })
  }

  delete (key: FieldKey): void {
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

  /** True when onSend has anything to do: the read path stops here. */
  get pending (): boolean {
    return this.ops.length > 0 || this.userChange !== undefined || this.staleCookie || this.renewCookie || this.regressed ||
      this.wrote || this.sid !== this.cookieId || (this.existed && this.shouldTouch())
  }

  /** onSend: store what changed, then set, renew or clear the cookie. */
  async finish (reply: FastifyReply): Promise<void> {
    // After a failed save, onSend runs again for the error response: no second attempt, only the cookie.
    if (!this.failed) {
      try {
        await this.serial(async () => await this.write())
      } catch (err) {
        this.failed = true
        throw err
      }
    }
    this.applyCookie(reply)
  }

  private applyCookie (reply: FastifyReply): void {
    const rt = this.rt
    if (this.existed && this.sid !== undefined && this.base !== undefined) {
      // A read that finds a newer version than the cookie's sets nothing: the floor only has to cover this client's
      // own writes, and their responses carried it. (Re-issuing it on reads would cost an HMAC per request for
      // clients that do not keep cookies.)
      if (this.wrote || this.regressed || this.renewCookie || this.sid !== this.cookieId) {
        const maxAge = Math.max(1, Math.ceil((this.base.c + rt.opts.absoluteTimeoutMs - Date.now()) / 1000))
        reply.setCookie(rt.opts.cookieName, rt.sign(this.sid, this.baseVersion), { ...rt.cookieBase, maxAge })
      } else if (this.shouldTouch()) {
        rt.touchLater(this.sid, this.ttlMs(this.base), this.request.log)
      }
    } else if (this.cookieId !== undefined || this.staleCookie) {
      reply.clearCookie(rt.opts.cookieName, { path: rt.cookieBase.path, domain: rt.cookieBase.domain })
    }
  }

  /** More than `refreshAfter` of the idle window has passed since the last write or refresh, and it would extend. */
  private shouldTouch (): boolean {
    const base = this.base
    if (base === undefined) return false
    const want = Math.min(Date.now() + this.rt.opts.idleTimeoutMs, base.c + this.rt.opts.absoluteTimeoutMs)
    return want - this.baseExpiresAt > this.rt.opts.idleTimeoutMs * this.rt.opts.refreshAfter
  }

  private ttlMs (base: StoredSession): number {
    return Math.min(this.rt.opts.idleTimeoutMs, base.c + this.rt.opts.absoluteTimeoutMs - Date.now())
  }

  private async serial (work: () => Promise<void>): Promise<void> {
    // A 503 thrown from here gets its Retry-After from the store plugin's onError hook, like every 503 of the suite.
    const run = this.chain.then(work)
    this.chain = run.catch(() => {})
    await run
  }

  /** Tombstone the current id (if stored), take it out of its user's index, continue as a new anonymous session. */
  private async end (): Promise<void> {
    const rt = this.rt
    const id = this.sid
    const user = this.base?.u
    const keyId = this.base?.x
    if (id !== undefined && this.existed) {
      await rt.store.delete(rt.sessionKey(id))
      rt.metrics.destroyed++
      if (user !== undefined) {
        await rt.unregister(user.id, id, keyId).catch((err: unknown) => {
          this.request.log.debug({ err }, 'fastify-handoff: could not remove a destroyed session from its user index')
        })
      }
    }
    this.sid = undefined
    this.base = undefined
    this.baseVersion = 0
    this.baseExpiresAt = 0
    this.existed = false
    this.ops = []
    this.userChange = undefined
    this.regressed = false
    this.renewCookie = false
    this.wrote = false
  }

  /** Apply this request's deltas to `cur`, the newest stored value: pure, re-run after every lost compare-and-set. */
  private apply (cur: StoredSession, ops: readonly Op[], userChange: SessionUser | null | undefined, indexedWith?: string): StoredSession {
    const d: Record<string, StoreValue> = { ...cur.d }
    for (const op of ops) {
      if (op.t === 'set') d[op.k] = op.v
      else if (op.t === 'del') delete d[op.k]
      else {
        const v = d[op.k]
        d[op.k] = (typeof v === 'number' ? v : 0) + op.by
      }
    }
    const next: StoredSession = { d, c: cur.c }
    const u = userChange === undefined ? cur.u : userChange ?? undefined
    if (u !== undefined) {
      next.u = u
      // Which ring key the user's index entry was made with; a rotation is noticed and re-registered on a write.
      const x = indexedWith ?? cur.x
      if (x !== undefined) next.x = x
    }
    return next
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
    const now = Date.now()
    const isNew = !this.existed
    const base = this.base
    if (isNew) {
      // saveUninitialized: false. A visitor who stores nothing gets no write and no cookie.
      const probe = this.apply({ d: {}, c: now }, ops, userChange)
      if (Object.keys(probe.d).length === 0 && probe.u === undefined) return
    }
    const id = this.sid ?? rt.newId()
    const created = base?.c ?? now
    const deadline = created + rt.opts.absoluteTimeoutMs
    const ttlMs = Math.min(rt.opts.idleTimeoutMs, deadline - now)
    if (ttlMs <= 0) throw this.ended()
    const user = userChange === undefined ? base?.u : userChange ?? undefined
    let indexedWith: string | undefined
    if (user !== undefined && (isNew || (userChange != null && userChange.id !== base?.u?.id) || base?.x !== rt.indexKeyId)) {
      await rt.register(user.id, id, deadline)
      indexedWith = rt.indexKeyId
    }
    let sawDeleted = false
    const res = await rt.store.update(rt.sessionKey(id), (current, info: UpdateInfo) => {
      sawDeleted = info.deleted
      if (info.deleted) return undefined
      const cur = asStoredSession(current)
      if (cur === undefined) {
        // Absent: create it if it is ours to create; a stored session that vanished (expiry, lost by Redis) stays gone.
        return isNew ? this.apply({ d: {}, c: created }, ops, userChange, indexedWith) : undefined
      }
      if (cur.c + rt.opts.absoluteTimeoutMs <= Date.now()) return undefined
      return this.apply(cur, ops, userChange, indexedWith)
    }, { ttlMs, minVersion: this.existed ? this.baseVersion : 0, maxBytes: rt.opts.maxBytes, label: 'Session' })
    rt.metrics.conflicts += res.conflicts
    if (!res.written) {
      if (sawDeleted || !isNew) throw this.ended()
      return
    }
    rt.metrics.saved++
    if (isNew) rt.metrics.created++
    this.sid = id
    this.base = asStoredSession(res.value)
    this.baseVersion = res.version
    this.baseExpiresAt = Date.now() + ttlMs
    this.existed = true
    this.regressed = false
    this.wrote = true
  }

  /** The session was destroyed or expired under this request: forget it, clear the cookie, refuse the changes. */
  private ended (): Error {
    this.rt.metrics.ended++
    this.sid = undefined
    this.base = undefined
    this.existed = false
    this.ops = []
    this.userChange = undefined
    this.wrote = false
    this.staleCookie = true
    return new SessionEndedError()
  }
}

interface Unavailable { error: Error }
type Slot = SessionState | Unavailable | typeof OPTED_OUT | null

const OPTED_OUT = Symbol('handoffSession: false')
const kSlot = Symbol('fastify-handoff.session')

interface RequestWithSlot { [kSlot]: Slot }

function slotOf (request: FastifyRequest): Slot {
  return (request as unknown as RequestWithSlot)[kSlot]
}

function setSlot (request: FastifyRequest, s: Slot): void {
  (request as unknown as RequestWithSlot)[kSlot] = s
}

const plugin: FastifyPluginCallback<AuthSessionOptions> = (fastify, options, done) => {
  let rt: Runtime
  try {
    rt = new Runtime(fastify.handoff.store, resolveOptions(options), fastify)
  } catch (err) {
    done(err as Error)
    return
  }
  const { metrics, opts } = rt
  const name = opts.cookieName

  fastify.decorate('handoffSessions', {
    destroyAllFor: async (userId: string, o?: DestroyAllOptions) => await rt.destroyAllFor(userId, o),
    keepOnRegenerate: (...fields: FieldKey[]) => {
      for (const f of fields as unknown[]) {
        if (typeof f !== 'string' || f === '') throw new InvalidOptionError('keepOnRegenerate', 'field names must be non-empty strings')
        rt.keptOnRegenerate.add(f)
      }
    },
    metrics,
    cookieName: name
  })
  fastify.decorateRequest(kSlot, null)
  fastify.decorateRequest('session', {
    getter (this: FastifyRequest): HandoffSession {
      const s = slotOf(this)
      if (s instanceof SessionState) return s
      if (s === null) {
        // No cookie (the onRequest hook stopped before looking at the route): opted out here too.
        if (optedOut(this)) throw new SessionDisabledError()
        // A fresh anonymous session, made only when a handler looks at it.
        const fresh = new SessionState(rt, this)
        setSlot(this, fresh)
        return fresh
      }
      if (s === OPTED_OUT) throw new SessionDisabledError()
      throw s.error
    }
  })

  function loaded (state: SessionState, c: ParsedCookie, entry: StoreEntry<unknown> | undefined): void {
    const stored = entry === undefined ? undefined : asStoredSession(entry.value)
    if (entry === undefined || stored === undefined || stored.c + opts.absoluteTimeoutMs <= Date.now()) {
      metrics.notFound++
      state.staleCookie = true
      state.renewCookie = false
      return
    }
    state.degraded = entry.degraded
    if (entry.degraded) metrics.loadedDegraded++
    else if (entry.source === 'local') metrics.loadedLocal++
    else metrics.loadedRemote++
    state.adopt(c.id, stored, entry.version, entry.expiresAt)
    if (entry.version < c.version) state.regressed = true
  }

  fastify.addHook('onRequest', (request, _reply, next) => {
    const jar = request.cookies
    const raw = jar === null || jar === undefined
      ? parseCookieHeader(fastify, request.headers.cookie, name)
      : jar[name]
    // Routes that never touch the session pay nothing when there is no cookie: no store read, no object.
    if (raw === undefined || raw === '') { next(); return }
    if (optedOut(request)) { setSlot(request, OPTED_OUT); next(); return }
    const state = new SessionState(rt, request)
    setSlot(request, state)
    const c = rt.readCookie(raw)
    if (c === undefined) {
      // Tampered, signed with a key no longer in the ring, or not ours: a fresh anonymous session, never a 500.
      metrics.rejectedCookies++
      state.staleCookie = true
      next()
      return
    }
    state.cookieId = c.id
    state.renewCookie = c.renew
    // The cookie's version is the floor: never answer from a local copy older than what this client last wrote.
    // A warm session is answered synchronously by the local tier: no Redis command, not even a promise.
    const warm = rt.store.getLocal(c.key, { minVersion: c.version })
    if (warm !== undefined) {
      loaded(state, c, warm)
      next()
      return
    }
    // During an outage the store itself answers with a known copy, flagged degraded (counted in loaded()).
    rt.store.get(c.key, { minVersion: c.version }).then(entry => {
      loaded(state, c, entry)
      next()
    }, (err: unknown) => {
      // Unknown locally and the store is down: routes that use the session get 503 (with the store plugin's
      // Retry-After), the others still work.
      setSlot(request, { error: err instanceof Error ? err : new Error(String(err)) })
      next()
    })
  })

  fastify.addHook('onSend', (request, reply, payload, next) => {
    const s = slotOf(request)
    if (!(s instanceof SessionState) || !s.pending) { next(); return }
    s.finish(reply).then(() => { next(null, payload) }, (err: unknown) => {
      if (is503(err)) {
        // Answered here rather than through the error handler, which would log every request of an outage;
        // the store logs the outage once.
        metrics.unavailable++
        request.log.debug({ err }, 'fastify-handoff: session not saved, store unavailable')
        next(null, unavailablePayload(reply, payload, err, fastify.handoff.retryAfterSeconds))
        return
      }
      next(err as Error)
    })
  })

  done()
}

/** The route says `config: { handoffSession: false }`: it neither loads nor saves the session. */
function optedOut (request: FastifyRequest): boolean {
  return request.routeOptions.config.handoffSession === false
}

function parseCookieHeader (fastify: FastifyInstance, header: string | undefined, name: string): string | undefined {
  if (header === undefined || !header.includes(name)) return undefined
  return fastify.parseCookie(header)[name]
}

function unavailablePayload (reply: FastifyReply, payload: unknown, err: Error & { code?: string }, retryAfter: number): string {
  if (isObject(payload) && typeof (payload as { destroy?: unknown }).destroy === 'function') {
    (payload as { destroy: () => void }).destroy()
  }
  reply.code(503)
  reply.header('retry-after', String(retryAfter))
  reply.header('content-type', 'application/json; charset=utf-8')
  return JSON.stringify({
    statusCode: 503,
    code: isHandoffError(err) ? err.code : 'FST_HANDOFF_UNAVAILABLE',
    error: 'Service Unavailable',
    message: err.message
  })
}

/**
 * Server-side auth sessions on the tiered store: signed cookie with id and version, field deltas merged under
 * compare-and-set, idle and absolute timeouts, regenerate/destroy with tombstones, logout everywhere.
 * Needs fastify-handoff/store and @fastify/cookie registered first (as @fastify/session needs @fastify/cookie).
 */
export const authSession = fp(plugin, {
  fastify: '5.x',
  name: 'fastify-handoff/auth-session',
  dependencies: ['fastify-handoff/store', '@fastify/cookie']
})
export default authSession
