import type { Collection } from './collection.js'
import { InvalidOptionError, SessionEndedError, intOption } from './errors.js'
import { isObject, reservedKeyOf } from './session/model.js'
import type { Logger, TieredStore } from './tiered-store.js'

/**
 * A store for @fastify/session (and express-session: same callback interface) backed by the TieredStore: the
 * migration path for applications that keep their @fastify/session code and want the local tier, sealed entries,
 * tombstones and the failure policy of fastify-handoff.
 *
 *   fastify.register(fastifySession, { secret, store: new TieredSessionStore(fastify.handoff.store) })
 *
 * What changes for the application: nothing in its code. What it gains: a warm session is read from this instance's
 * local tier (no Redis command), entries are sealed (AES-256-GCM, bound to their key), a session destroyed by one
 * request cannot be written back by another one still in flight, and Redis outages fail fast with 503.
 * What it does not gain (those need fastify-handoff/auth-session): @fastify/session saves the whole session object,
 * so two parallel requests that change different fields still overwrite each other (last writer wins), and its
 * cookie carries no version, so a read on another instance may see a copy up to the coherence lease old.
 *
 * Callbacks run on their own tick, outside the store's promises: an exception thrown by the caller's callback (e.g.
 * @fastify/session writing a header after an async handler sent the reply without `return reply`) can never become
 * an unhandled rejection that takes the process down. It is reported as the caller's (logged with its own stack
 * through `logger`, else as a process warning) and goes no further, as it would with @fastify/session's MemoryStore.
 *
 * Session field names follow auth-session's rule: `__proto__`, `constructor` and `prototype` are refused. A session
 * holding one at its top level is not saved (the set callback gets a TypeError), and a stored one that holds one is
 * treated as unreadable (no session): @fastify/session copies every stored field onto its Session object, where a
 * `__proto__` field would replace the object's prototype.
 *
 * Not implemented, on purpose: the optional `all`, `ids`, `length` and `clear` (express-session's MemoryStore has
 * them). Sessions are spread over every partition, i.e. every Redis Cluster slot, and the store keeps no index of
 * them; each call would be a SCAN of the whole keyspace of every node. See docs/auth-sessions.md.
 */

export type SessionStoreCallback = (err?: Error | null) => void
/**
 * `S` is the session type the framework's callback expects; with @fastify/session in TypeScript, create the store as
 * `new TieredSessionStore<Session>(...)` (`import type { Session } from 'fastify'`): its get callback takes that type.
 */
export type SessionStoreGetCallback<S extends object = Record<string, unknown>> = (err: Error | null, session?: S | null) => void

export interface TieredSessionStoreOptions {
  /** Kind part of the store key (`<prefix>{p<n>}:<session id>:<kind>`). Default: 'fsession'. */
  kind?: string
  /** Time to live of a session whose cookie has no expiry (no maxAge/expires), ms. Default: 86400000 (24 h). */
  ttlMs?: number
  /** Where an exception thrown by a caller's callback is reported (fastify.log fits). Default: process.emitWarning. */
  logger?: Logger
}

/** Longest session id accepted: @fastify/session's ids are 32 characters; anything far longer is not one. */
const MAX_ID_LENGTH = 256

interface CookieLike {
  expires?: unknown
  maxAge?: unknown
  originalMaxAge?: unknown
}

/** The stored shape: a plain object without the field names auth-session refuses. */
function parseSession (v: unknown): Record<string, unknown> {
  if (!isObject(v)) throw new TypeError('not a session object')
  const bad = reservedKeyOf(v)
  if (bad !== undefined) throw new TypeError(`session field "${bad}" is refused`)
  return v
}

export class TieredSessionStore<S extends object = Record<string, unknown>> {
  private readonly kind: string
  private readonly sessions: Collection<Record<string, unknown>>
  private readonly ttlMs: number
  private readonly logger: Logger | undefined

  constructor (store: TieredStore, opts: TieredSessionStoreOptions = {}) {
    if (store === null || typeof store !== 'object' || typeof store.update !== 'function') {
      throw new InvalidOptionError('store', 'a TieredStore is required (fastify.handoff.store)')
    }
    this.kind = opts.kind ?? 'fsession'
    if (typeof this.kind !== 'string' || !/^[A-Za-z0-9_-]{1,32}$/.test(this.kind)) {
      throw new InvalidOptionError('kind', `must be 1 to 32 characters of A-Z a-z 0-9 _ -, got ${String(opts.kind)}`)
    }
    this.ttlMs = intOption('ttlMs', opts.ttlMs, 86_400_000, 1)
    if (opts.logger !== undefined && (opts.logger === null || typeof opts.logger.warn !== 'function')) {
      throw new InvalidOptionError('logger', 'must have a warn(obj, msg) method (fastify.log fits)')
    }
    this.logger = opts.logger
    this.sessions = store.collection(this.kind, { parse: parseSession })
  }

  get (sessionId: string, callback: SessionStoreGetCallback<S>): void {
    if (!this.validId(sessionId)) { callback(null, null); return }
    this.sessions.get(sessionId).then(entry => {
      // The store hands out frozen values shared with its local tier; @fastify/session mutates what it gets.
      const session = entry === undefined ? null : structuredClone(entry.value) as S
      this.settle(() => { callback(null, session) })
    }, (err: unknown) => { this.settle(() => { callback(asError(err)) }) })
  }

  set (sessionId: string, session: object, callback: SessionStoreCallback): void {
    if (!this.validId(sessionId)) { callback(new InvalidOptionError('sessionId', 'must be a non-empty string of at most 256 characters')); return }
    let plain: Record<string, unknown>
    try {
      // Own enumerable fields plus cookie.toJSON(): what connect-redis stores too.
      plain = parseSession(JSON.parse(JSON.stringify(session)))
    } catch (err) {
      callback(asError(err))
      return
    }
    const ttlMs = this.ttlOf((session as { cookie?: CookieLike }).cookie)
    if (ttlMs <= 0) { this.destroy(sessionId, callback); return }
    // A blind overwrite, as every @fastify/session store does, except over a tombstone: a session destroyed while
    // this request ran (logout in another tab) stays destroyed instead of being written back, and the caller is told
    // so (FST_HANDOFF_SESSION_ENDED, 409) rather than acknowledged for a write that was not stored.
    this.sessions.update(sessionId, (_cur, info) => info.deleted ? undefined : plain, { ttlMs }).then(
      r => { this.settle(() => { if (r.written) callback(); else callback(new SessionEndedError()) }) },
      (err: unknown) => { this.settle(() => { callback(asError(err)) }) })
  }

  destroy (sessionId: string, callback: SessionStoreCallback): void {
    if (!this.validId(sessionId)) { callback(); return }
    this.sessions.delete(sessionId).then(() => { this.settle(() => { callback() }) }, (err: unknown) => { this.settle(() => { callback(asError(err)) }) })
  }

  /** express-session calls this on reads with `resave: false`; extends the expiry without rewriting. */
  touch (sessionId: string, session: object, callback: SessionStoreCallback): void {
    if (!this.validId(sessionId)) { callback(); return }
    const ttlMs = this.ttlOf((session as { cookie?: CookieLike }).cookie)
    if (ttlMs <= 0) { callback(); return }
    this.sessions.touch(sessionId, ttlMs).then(() => { this.settle(() => { callback() }) }, (err: unknown) => { this.settle(() => { callback(asError(err)) }) })
  }

  /** Runs the caller's callback on its own tick, outside the store's promise chain; what it throws is theirs. */
  private settle (run: () => void): void {
    process.nextTick(() => {
      try {
        run()
      } catch (err) {
        this.reportCallerError(err)
      }
    })
  }

  private reportCallerError (err: unknown): void {
    const msg = 'fastify-handoff: the session framework\'s callback threw (its error, not the store\'s; with @fastify/session, ' +
      'often an async handler that called reply.send() without `return reply`); the store operation itself completed'
    const e = asError(err)
    if (this.logger !== undefined) {
      (this.logger.error ?? this.logger.warn)({ err: e }, msg)
    } else {
      process.emitWarning(`${msg}: ${e.stack ?? e.message}`, { code: 'FST_HANDOFF_CALLER_CALLBACK_THREW' })
    }
  }

  private validId (sessionId: unknown): sessionId is string {
    return typeof sessionId === 'string' && sessionId !== '' && sessionId.length <= MAX_ID_LENGTH
  }

  /** The cookie's expiry decides the entry's, like connect-redis; without one, the default TTL. */
  private ttlOf (cookie: CookieLike | undefined): number {
    const expires = cookie?.expires
    if (expires !== undefined && expires !== null) {
      const at = expires instanceof Date ? expires.getTime() : new Date(String(expires)).getTime()
      if (Number.isFinite(at)) return Math.min(at - Date.now(), 2_147_483_647)
    }
    return this.ttlMs
  }
}

function asError (err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}
