import type { FastifyInstance, FastifyPluginCallback, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { InvalidOptionError, SessionEndedError, SessionDisabledError } from '../lib/errors.js'
import { compileOptions, cookieSchema, optionPath, resolveCookie, type CookieOptions, type OptionsCheck } from '../lib/options.js'
import { assertFieldName } from '../lib/session/model.js'
import { Sessions } from '../lib/session/sessions.js'
import { SessionState } from '../lib/session/state.js'
import type { DestroyAllOptions, FieldKey, HandoffSession, ListSessionsOptions, SessionDescription, SessionInfo, SessionMetrics, SessionPolicy } from '../lib/session/types.js'
import { unavailableReply } from './store.js'

export type {
  SessionData, SessionUser, NumericField, HandoffSession, SessionMetrics, DestroyAllOptions, SessionDescription, SessionInfo, ListSessionsOptions
} from '../lib/session/types.js'

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
  /**
   * What to record about the device of a signed-in session, for `handoffSessions.list()` ("your devices"): called
   * with the request that creates or signs in the session, e.g.
   * `(request) => ({ userAgent: request.headers['user-agent'], address: request.ip })`. The values are stored (sealed)
   * with the session. Default: none, nothing is recorded (list() still gives the times).
   */
  describe?: (request: FastifyRequest) => SessionDescription | undefined
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
  /**
   * The user's live sessions ("your devices"): created, last seen, expiry and what `describe` recorded, on any
   * instance, read through the user's index (no scan). Expired and destroyed sessions are not listed.
   */
  list: (userId: string, opts?: ListSessionsOptions) => Promise<SessionInfo[]>
  /**
   * End one of the user's sessions, named by the `handle` list() gave: revoked on every instance, as a logout is.
   * False when the user has no such live session.
   */
  destroy: (userId: string, handle: string) => Promise<boolean>
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

interface ResolvedOptions extends SessionPolicy {
  cookieName: string
  cookie: { path: string, domain: string | undefined, secure: boolean | 'auto', httpOnly: boolean, sameSite: 'lax' | 'strict' | 'none', partitioned: boolean }
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
    maxSessionsPerUser: { type: 'integer', minimum: 1 },
    describe: { typeof: 'function', description: 'a function (request) => ({ userAgent?, address? })' }
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
  let opts: ResolvedOptions
  let rt: Sessions
  try {
    opts = resolveOptions(options)
    rt = new Sessions(fastify.handoff.store, fastify.handoff.keyRing, opts)
  } catch (err) {
    done(err as Error)
    return
  }
  const { metrics } = rt
  const name = opts.cookieName
  const c = opts.cookie
  const cookieBase: { path: string, domain?: string, secure: boolean | 'auto', httpOnly: boolean, sameSite: 'lax' | 'strict' | 'none', partitioned?: boolean } =
    { path: c.path, secure: c.secure, httpOnly: c.httpOnly, sameSite: c.sameSite }
  if (c.domain !== undefined) cookieBase.domain = c.domain
  if (c.partitioned) cookieBase.partitioned = true

  const describe = options.describe
  const newState = describe === undefined
    ? (request: FastifyRequest) => new SessionState(rt, request.log)
    : (request: FastifyRequest) => new SessionState(rt, request.log, () => describe(request))

  fastify.decorate('handoffSessions', {
    destroyAllFor: async (userId: string, o?: DestroyAllOptions) => await rt.index.destroyAllFor(userId, o),
    list: async (userId: string, o?: ListSessionsOptions) => await rt.list(userId, o),
    destroy: async (userId: string, handle: string) => await rt.destroy(userId, handle),
    keepOnRegenerate: (...fields: FieldKey[]) => {
      for (const f of fields as unknown[]) {
        if (typeof f !== 'string' || f === '') throw new InvalidOptionError('keepOnRegenerate', 'field names must be non-empty strings')
        assertFieldName(f)
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
        const fresh = newState(this)
        setSlot(this, fresh)
        return fresh
      }
      if (s === OPTED_OUT) throw new SessionDisabledError()
      throw s.error
    }
  })

  fastify.addHook('onRequest', (request, _reply, next) => {
    const jar = request.cookies
    const raw = jar === null || jar === undefined
      ? parseCookieHeader(fastify, request.headers.cookie, name)
      : jar[name]
    // Routes that never touch the session pay nothing when there is no cookie: no store read, no object.
    if (raw === undefined || raw === '') { next(); return }
    if (optedOut(request)) { setSlot(request, OPTED_OUT); next(); return }
    const state = newState(request)
    setSlot(request, state)
    const cookie = rt.cookie.decode(raw)
    if (cookie === undefined) {
      // Tampered, signed with a key no longer in the ring, or not ours: a fresh anonymous session, never a 500.
      state.rejected()
      next()
      return
    }
    // The cookie's version is the floor: never answer from a local copy older than what this client last wrote.
    // A warm session is answered synchronously by the local tier: no Redis command, not even a promise.
    const warm = rt.stored.getLocal(cookie.id, { minVersion: cookie.version })
    if (warm !== undefined) {
      state.loaded(cookie, warm)
      next()
      return
    }
    // During an outage the store itself answers with a known copy, flagged degraded (counted in loaded()).
    rt.stored.get(cookie.id, { minVersion: cookie.version }).then(entry => {
      state.loaded(cookie, entry)
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
    s.finish().then(d => {
      if (d.action === 'set') {
        reply.setCookie(name, rt.cookie.encode(d.id, d.version), { ...cookieBase, maxAge: d.maxAgeS })
      } else if (d.action === 'clear') {
        reply.clearCookie(name, { path: cookieBase.path, domain: cookieBase.domain })
      }
      next(null, payload)
    }, (err: unknown) => {
      if (err instanceof Error && (err as { statusCode?: unknown }).statusCode === 503) {
        metrics.unavailable++
        request.log.debug({ err }, 'fastify-handoff: session not saved, store unavailable')
        next(null, unavailableReply(reply, payload, err))
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
