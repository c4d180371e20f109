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

export type FieldKey = Extract<keyof SessionData, string>
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

/** The session policy the plugin resolved from its options (defaults applied). */
export interface SessionPolicy {
  idleTimeoutMs: number
  absoluteTimeoutMs: number
  refreshAfter: number
  maxBytes: number
  maxSessionsPerUser: number
}

/** Where the session code logs what it does not throw (request.log fits). */
export interface DebugLogger {
  debug: (obj: object, msg?: string) => void
}

/**
 * What the `describe` option records about the device a session is used from, when the session is created or
 * signed in. Strings only; user agents are cut at 256 characters, addresses at 64.
 */
export interface SessionDescription {
  userAgent?: string
  address?: string
}

/** One of a user's live sessions ("your devices"). */
export interface SessionInfo {
  /**
   * A handle naming this session for `destroy(userId, handle)`: a one-way hash of the session id, never the id
   * itself (the id is the bearer secret the HttpOnly cookie protects; a handle can be shown in a page).
   */
  handle: string
  /** When the session was created (the login), ms since the epoch. */
  createdAt: number
  /**
   * When the session was last used, ms since the epoch: known to within the lazy refresh (refreshAfter x
   * idleTimeoutMs); in the last idleTimeoutMs before the absolute timeout, its last write.
   */
  lastSeenAt: number
  /** When it ends unless used again (idle timeout, capped by the absolute one), ms since the epoch. */
  expiresAt: number
  /** As `describe` recorded it; absent when it recorded none. */
  userAgent?: string
  address?: string
  /** True for the session named by `list`'s `current` option (the request's own: request.session.id). */
  current: boolean
}

export interface ListSessionsOptions {
  /** The session id to mark `current: true` (pass request.session.id). */
  current?: string
}
