import { constants, createHash, randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'
import tls, { type TLSSocket } from 'node:tls'
import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { clusterTlsNames } from '../lib/cluster-names.js'
import { scanClientHello, MAX_CLIENT_HELLO, TLS1_3 } from '../lib/client-hello.js'
import { addConnectionStage, readFirstBytes } from '../lib/connection-stages.js'
import { InvalidOptionError, intOption } from '../lib/errors.js'
import { compileOptions, optionPath, type OptionsCheck } from '../lib/options.js'
import { KeyRing, type SecretInput } from '../lib/seal.js'
import { TICKET_KEY_BYTES, TicketKeySchedule, TieredTicketKeyStore, ticketKeyId, type TicketKeyEvent } from '../lib/ticket-keys.js'
import type { TieredStore } from '../lib/tiered-store.js'

/**
 * TLS session failover: a client that lands on another instance resumes its TLS session instead of paying a full
 * handshake. Three things make that work across processes (see docs/tls-sessions.md):
 *
 * 1. One ticket key per epoch, shared by all instances through the store (lib/ticket-keys.ts).
 * 2. One `sessionIdContext` on all instances: Node's default is a hash of process.argv, so two instances started
 *    with different command lines silently refuse each other's sessions. Derived from the cluster secret.
 * 3. Optionally, a TLS 1.2 session cache (session ids, for clients without tickets) in the store.
 */

export interface TlsSessionsOptions {
  /**
   * Length of one ticket-key epoch, ms. Every instance switches to the next shared key at each multiple of it (wall
   * clock); each switch costs every client one full handshake. At least 1000. Default: 43200000 (12 h).
   */
  ticketKeyPeriodMs?: number
  /**
   * Largest clock difference between instances tolerated, ms: a retired key is deleted this long after its epoch
   * ended, so an instance whose clock lags can still read it. 0 to periodMs / 4. Default: 5000 (capped at periodMs / 4).
   */
  maxClockSkewMs?: number
  /**
   * How often each instance reads the epoch's ticket key from the store again, ms, to find out that Redis lost it
   * (wiped, restarted empty): the first instance to notice writes its key back, every other one adopts the stored
   * key, so instances that started before and after the wipe serve one key again. One GET per instance per check.
   * 100 to ticketKeyPeriodMs. Default: 60000 (capped at ticketKeyPeriodMs / 4).
   */
  ticketKeyCheckMs?: number
  /**
   * The session id context every instance must share, 1 to 32 characters. Default: the cluster's, stored when it
   * first started (then `sessionIdContextFor(secret)`, what `handoffHttpsOptions` puts in the `https` options; after a
   * key rotation the plugin replaces that with the stored one, so a rotation never changes the context).
   */
  sessionIdContext?: string
  /**
   * When the server still has Node's per-process default context, give it the shared one by re-creating its secure
   * context from its own options (nothing else changes; nothing is listening yet). false: refuse to start instead.
   * Default: true.
   */
  applySessionIdContext?: boolean
  /**
   * TLS 1.2 session cache in the store, for clients that do not use tickets: sessions are stored sealed for the
   * server's `sessionTimeout` and looked up on resumption. Costs one store lookup on most new connections (TLS 1.3
   * clients send a random session id), so it is off unless such clients matter. Default: false.
   */
  sessionCache?: boolean
  /**
   * Longest a session-cache lookup may hold a handshake, ms; after it the handshake goes on as a full one.
   * 1 to 5000. Default: 50.
   */
  sessionLookupTimeoutMs?: number
  /**
   * Session cache only: a cached session resumes once and is then deleted (read-and-delete), so a stolen session
   * id is useless after its owner resumed. Measured cost: a real https.Agent resumes only every other connection
   * (F R F R instead of F R R R). Default: false.
   */
  singleUse?: boolean
  /**
   * Issue a new ticket after every resumed handshake, so that clients that use each ticket once (browsers, curl with
   * many URLs; RFC 8446 C.4) resume on every reconnect instead of every other one. Node does not do this by itself:
   * it sends tickets after a full TLS 1.3 handshake only. Works through Node's internal ticket-key callback
   * (`enableTicketKeyCallback`, feature-detected; where it is missing the plugin keeps `setTicketKeys` and
   * `metrics.ticketRenewalActive` is 0). With it, tickets under the previous epoch's key (until it is deleted) and
   * under a key replaced after a Redis wipe still resume. Default: true.
   */
  ticketRenewal?: boolean
}

/** Per-instance counters, live. */
export interface TlsSessionMetrics {
  /** TLS handshakes completed ('secureConnection'). */
  handshakes: number
  /** Of those, resumed from a ticket or the session cache (`socket.isSessionReused()`). */
  resumed: number
  /** Handshakes that failed ('tlsClientError'), whatever the cause. A missing or retired key is NOT one of them. */
  handshakeErrors: number
  /** Switches from one epoch's shared ticket key to the next. */
  keyRotations: number
  /** Epoch of the shared ticket key in use; null while the server runs on its own (unshared) random key. */
  ticketKeyEpoch: number | null
  /**
   * A short, non-secret id of the ticket key in use (`ticketKeyId()`: 32 bits of SHA-256 over the key name, which
   * every ticket carries in clear); null like ticketKeyEpoch. Instances serving different ids do not resume each
   * other's tickets: compare it across the fleet.
   */
  ticketKeyId: number | null
  /** The store had lost the epoch's key (Redis wiped) and this instance wrote its own back. */
  ticketKeyRestores: number
  /** This instance switched to another key within an epoch, because the store held another one. */
  ticketKeyAdoptions: number
  /** When that key was applied, ms since the Unix epoch by this instance's clock; null like ticketKeyEpoch. */
  ticketKeyAppliedAt: number | null
  /** Ticket-key reads, creations or deletions that failed (repository unreachable). */
  ticketKeyErrors: number
  /** Session cache: lookups that found a session. */
  cacheHits: number
  /** Session cache: lookups that found nothing (TLS 1.2 ids not stored, or expired; TLS 1.3 ids are skipped, below). */
  cacheMisses: number
  /**
   * Session cache: lookups not made because the connection's ClientHello offered TLS 1.3 to a server that allows it:
   * its legacy session id is random, and a session id never resumes TLS 1.3 in Node (read before TLS starts; no
   * store access, and normally no session callbacks at all for that connection).
   */
  cacheLookupsSkipped: number
  /** Session cache: lookups cut short by sessionLookupTimeoutMs (a full handshake followed). */
  cacheTimeouts: number
  /** Session cache: lookups that failed (repository unreachable). */
  cacheErrors: number
  /** Session cache: sessions stored. */
  cacheWrites: number
  /** Session cache: sessions that could not be stored. */
  cacheWriteErrors: number
  /**
   * Session cache: TLS 1.3 sessions handed to 'newSession' and not stored, since Node never resumes TLS 1.3 from a
   * session id. Stays 0 where the ClientHello peek turns session callbacks off for TLS 1.3 connections.
   */
  cacheSkipped: number
  /** 1 when tickets are renewed after every resumption (the ticket-key callback is in place), else 0. */
  ticketRenewalActive: number
  /** Tickets accepted and answered with a new one (renewal mode only). */
  ticketsRenewed: number
  /** Tickets offered under a key this instance does not hold (another cluster, or retired): full handshake. Renewal mode only. */
  ticketsUnknownKey: number
}

export interface HandoffTlsDecorator {
  metrics: Readonly<TlsSessionMetrics>
  /** The options in force, defaults applied. */
  options: Readonly<Required<TlsSessionsOptions>>
}

declare module 'fastify' {
  interface FastifyInstance {
    handoffTls: HandoffTlsDecorator
  }
  interface FastifyRequest {
    /** True when this request's TLS connection was resumed rather than fully negotiated. */
    tlsResumed: boolean
  }
}

/** Defaults, in one place. */
export const TLS_SESSIONS_DEFAULTS: Readonly<Required<Omit<TlsSessionsOptions, 'sessionIdContext' | 'maxClockSkewMs' | 'ticketKeyCheckMs'>>> = Object.freeze({
  ticketKeyPeriodMs: 12 * 60 * 60 * 1000,
  applySessionIdContext: true,
  sessionCache: false,
  sessionLookupTimeoutMs: 50,
  singleUse: false,
  ticketRenewal: true
})
const DEFAULT_MAX_CLOCK_SKEW_MS = 5000
const DEFAULT_TICKET_KEY_CHECK_MS = 60_000
/** OpenSSL's SSL_MAX_SID_CTX_LENGTH. */
const MAX_SESSION_ID_CONTEXT = 32
/** OpenSSL's default session lifetime, which Node keeps when `sessionTimeout` is not given. */
const DEFAULT_SESSION_TIMEOUT_S = 300
/** Runs after the PROXY header stage (plugins/proxy-protocol.ts, rank 0): the ClientHello follows the header. */
export const CLIENT_HELLO_STAGE_RANK = 10
/**
 * Longest the ClientHello peek waits for a complete ClientHello before handing the connection to TLS as it is (the
 * lookup then happens as without the peek; Node's handshakeTimeout still applies). TLS cannot start without the
 * whole ClientHello either, so waiting for it delays nothing.
 */
export const CLIENT_HELLO_WAIT_MS = 5000

const SESSION_ID_CONTEXT_PURPOSE = 'tls-session-id-context'
const SESSION_CACHE_ID_NAMESPACE = 'fastify-handoff/v1\ntls-session-cache-id\n'

/**
 * The session id context derived from a key ring: 32 hex characters from its oldest secret (HKDF, own purpose),
 * different for every cluster. Not secret, but reveals nothing about the secret. The plugin stores the one derived
 * when the cluster first starts and keeps using it across key rotations (lib/cluster-names.ts).
 */
export function sessionIdContextFor (secret: SecretInput | KeyRing): string {
  const ring = secret instanceof KeyRing ? secret : new KeyRing(secret)
  const key = ring.deriveOldest(SESSION_ID_CONTEXT_PURPOSE)
  const ctx = key.toString('hex').slice(0, MAX_SESSION_ID_CONTEXT)
  key.fill(0)
  return ctx
}

/**
 * Fastify's `https` options with the cluster's sessionIdContext filled in, so the server is created right:
 * `fastify({ https: handoffHttpsOptions({ key, cert }, { secret }) })`. An explicit different context is refused.
 */
export function handoffHttpsOptions<T extends tls.TlsOptions> (https: T, opts: { secret: SecretInput | KeyRing }): T & { sessionIdContext: string } {
  if (https === null || typeof https !== 'object') throw new InvalidOptionError('https', 'must be an object of TLS server options')
  if (opts === null || typeof opts !== 'object' || opts.secret === undefined) {
    throw new InvalidOptionError('secret', 'handoffHttpsOptions(https, { secret }) needs the cluster secret given to the store plugin')
  }
  const sessionIdContext = sessionIdContextFor(opts.secret)
  if (https.sessionIdContext !== undefined && https.sessionIdContext !== sessionIdContext) {
    throw new InvalidOptionError('sessionIdContext', 'https.sessionIdContext is already set to another value; remove it, handoffHttpsOptions sets the cluster\'s')
  }
  return { ...https, sessionIdContext }
}

/** What Node uses when no sessionIdContext is given (tls.Server#setSecureContext, Node 12 to 24). */
function nodeDefaultSessionIdContext (): string {
  return createHash('sha1').update(process.argv.join(' ')).digest('hex').slice(0, 32)
}

/**
 * The options a tls.Server's secure context was built from. setSecureContext stores every option it passes to
 * tls.createSecureContext on the server itself and builds the context from those copies alone, so passing them back
 * rebuilds an identical context.
 */
const SECURE_CONTEXT_PROPERTIES = [
  'pfx', 'key', 'passphrase', 'cert', 'clientCertEngine', 'ca', 'minVersion', 'maxVersion', 'secureProtocol', 'crl',
  'sigalgs', 'ciphers', 'ecdhCurve', 'dhparam', 'honorCipherOrder', 'secureOptions', 'sessionTimeout', 'ticketKeys',
  'privateKeyIdentifier', 'privateKeyEngine'
] as const

function secureContextOptionsOf (server: tls.Server): tls.SecureContextOptions {
  const src = server as unknown as Record<string, unknown>
  const out: Record<string, unknown> = {}
  for (const p of SECURE_CONTEXT_PROPERTIES) if (src[p] !== undefined) out[p] = src[p]
  return out as tls.SecureContextOptions
}

/**
 * The protocol version of a DER-encoded SSL_SESSION (OpenSSL's SSL_SESSION_ASN1: SEQUENCE { INTEGER 1, INTEGER
 * ssl_version, ... }), or undefined when it does not look like one.
 */
export function sessionProtocolVersion (der: Buffer): number | undefined {
  let i = 0
  if (der[i++] !== 0x30) return undefined
  const len = der[i++]
  if (len === undefined) return undefined
  if ((len & 0x80) !== 0) i += len & 0x7f
  if (der[i++] !== 0x02) return undefined
  const versionLength = der[i++]
  if (versionLength === undefined || versionLength > 4) return undefined
  i += versionLength
  if (der[i++] !== 0x02) return undefined
  const protocolLength = der[i++]
  if (protocolLength === undefined || protocolLength < 1 || protocolLength > 2 || i + protocolLength > der.length) return undefined
  return protocolLength === 1 ? der[i] : der.readUInt16BE(i)
}

/** The options' schema: types and ranges (lib/options.ts applies it the same way in every plugin). */
export const TLS_SESSIONS_OPTIONS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    ticketKeyPeriodMs: { type: 'integer', minimum: 1000, maximum: 366 * 86_400_000 },
    // Its upper bound depends on ticketKeyPeriodMs: checked once that is known.
    maxClockSkewMs: { type: 'integer', minimum: 0 },
    sessionIdContext: { type: 'string', pattern: '^[\\x21-\\x7e]{1,32}$', description: `1 to ${MAX_SESSION_ID_CONTEXT} printable ASCII characters (OpenSSL's limit)` },
    applySessionIdContext: { type: 'boolean' },
    sessionCache: { type: 'boolean' },
    sessionLookupTimeoutMs: { type: 'integer', minimum: 1, maximum: 5000 },
    singleUse: { type: 'boolean' },
    // Its upper bound is ticketKeyPeriodMs: checked once that is known.
    ticketKeyCheckMs: { type: 'integer', minimum: 100 },
    ticketRenewal: { type: 'boolean' }
  }
} as const

const checkTlsSessionsSchema: OptionsCheck = compileOptions(TLS_SESSIONS_OPTIONS_SCHEMA)

/**
 * Refuses invalid TLS session options (unknown keys with a did-you-mean, types, ranges, contradictions), naming the
 * option under `path`.
 */
export function checkTlsSessionsOptions (opts: unknown, path = ''): void {
  checkTlsSessionsSchema(opts, path)
  const o = (opts ?? {}) as TlsSessionsOptions
  const quarter = Math.floor((o.ticketKeyPeriodMs ?? TLS_SESSIONS_DEFAULTS.ticketKeyPeriodMs) / 4)
  intOption(optionPath(path, 'maxClockSkewMs'), o.maxClockSkewMs, 0, 0, quarter)
  intOption(optionPath(path, 'ticketKeyCheckMs'), o.ticketKeyCheckMs, 100, 100, o.ticketKeyPeriodMs ?? TLS_SESSIONS_DEFAULTS.ticketKeyPeriodMs)
  if ((o.singleUse ?? TLS_SESSIONS_DEFAULTS.singleUse) && !(o.sessionCache ?? TLS_SESSIONS_DEFAULTS.sessionCache)) {
    throw new InvalidOptionError(optionPath(path, 'singleUse'), 'applies to the session cache only; set sessionCache: true as well (tickets cannot be single-use)')
  }
}

/** Checks every option and applies the defaults. Exported for tests and for the umbrella plugin. */
export function resolveTlsSessionsOptions (opts: TlsSessionsOptions, ring: KeyRing): Required<TlsSessionsOptions> {
  checkTlsSessionsOptions(opts)
  const ticketKeyPeriodMs = opts.ticketKeyPeriodMs ?? TLS_SESSIONS_DEFAULTS.ticketKeyPeriodMs
  const quarter = Math.floor(ticketKeyPeriodMs / 4)
  const maxClockSkewMs = opts.maxClockSkewMs ?? Math.min(DEFAULT_MAX_CLOCK_SKEW_MS, quarter)
  const ticketKeyCheckMs = opts.ticketKeyCheckMs ?? Math.min(DEFAULT_TICKET_KEY_CHECK_MS, quarter)
  const sessionLookupTimeoutMs = opts.sessionLookupTimeoutMs ?? TLS_SESSIONS_DEFAULTS.sessionLookupTimeoutMs
  const sessionCache = opts.sessionCache ?? TLS_SESSIONS_DEFAULTS.sessionCache
  const singleUse = opts.singleUse ?? TLS_SESSIONS_DEFAULTS.singleUse
  return {
    ticketKeyPeriodMs,
    maxClockSkewMs,
    ticketKeyCheckMs,
    sessionIdContext: opts.sessionIdContext ?? sessionIdContextFor(ring),
    applySessionIdContext: opts.applySessionIdContext ?? TLS_SESSIONS_DEFAULTS.applySessionIdContext,
    sessionCache,
    sessionLookupTimeoutMs,
    singleUse,
    ticketRenewal: opts.ticketRenewal ?? TLS_SESSIONS_DEFAULTS.ticketRenewal
  }
}

/** A TLS 1.2 session in the store (sealed at rest: it holds the master secret). */
interface CachedSession {
  /** DER session data, base64. */
  d: string
}

type SetSecureContext = (this: tls.Server, options: tls.SecureContextOptions) => void
interface ServerInternals { sessionIdContext?: unknown, sessionTimeout?: unknown }

/**
 * Makes the server's session id context the cluster's: checks it, sets it when the server still has Node's
 * per-process default (and that is allowed), and refuses to go on otherwise.
 */
function establishSessionIdContext (server: tls.Server, setSecureContext: SetSecureContext, o: Required<TlsSessionsOptions>, derived: string): 'already-set' | 'applied' {
  const internals = server as tls.Server & ServerInternals
  const current = internals.sessionIdContext
  if (current === o.sessionIdContext) return 'already-set'
  const fix = 'create Fastify with `https: handoffHttpsOptions({ key, cert, ... }, { secret })` (same secret as the store plugin), ' +
    'or give the same string as `https.sessionIdContext` and as this plugin\'s `sessionIdContext` option on every instance'
  if (typeof current !== 'string') {
    throw new InvalidOptionError('sessionIdContext', `cannot read the server's TLS session id context, so resumption across instances cannot be verified; ${fix}`)
  }
  // handoffHttpsOptions puts the context derived from the ring's oldest secret; after a rotation the cluster's stored
  // one differs, and replaces it like Node's default.
  if (current !== nodeDefaultSessionIdContext() && current !== derived) {
    throw new InvalidOptionError('sessionIdContext', 'the server\'s https.sessionIdContext differs from the one this plugin expects ' +
      `(its \`sessionIdContext\` option, by default derived from the cluster secret), so other instances could not resume its sessions; ${fix}`)
  }
  if (!o.applySessionIdContext) {
    throw new InvalidOptionError('sessionIdContext', 'the server has Node\'s default session id context, a hash of process.argv that differs ' +
      `between instances and silently prevents resumption across them (applySessionIdContext is false); ${fix}`)
  }
  setSecureContext.call(server, { ...secureContextOptionsOf(server), sessionIdContext: o.sessionIdContext })
  if (internals.sessionIdContext !== o.sessionIdContext) {
    throw new InvalidOptionError('sessionIdContext', `re-creating the server's secure context did not set the session id context; ${fix}`)
  }
  return 'applied'
}

/** What the ticket-key callback needs: the key to issue tickets under, the keys to accept, two counters. */
interface TicketKeySource {
  issuing: () => Buffer
  accepted: () => Buffer[]
  renewed: () => void
  unknown: () => void
}

/** Node's native SecureContext, as far as the ticket-key callback goes (internal: feature-detected). */
interface NativeSecureContext {
  enableTicketKeyCallback?: () => void
  onticketkeycallback?: (name: Buffer, iv: Buffer, encrypt: boolean) => unknown[]
}

const TICKET_PART = 16
const ZERO_PART = Buffer.alloc(TICKET_PART)

/**
 * Answers OpenSSL's ticket-key callback the way Node's native code expects (src/crypto/crypto_context.cc,
 * SecureContext::TicketKeyCallback): `[result, hmacKey, aesKey, keyName, iv]`, where result 1 means "use these",
 * 2 "use these and issue a new ticket" (renew), 0 "unknown ticket" (full handshake). The key layout is
 * setTicketKeys's: name, HMAC secret, AES key, 16 bytes each, so tickets interoperate with instances on either path.
 * Views, not copies: when the schedule wipes a key, nothing here keeps its bytes.
 */
export function ticketKeyCallback (keys: TicketKeySource): (name: Buffer, iv: Buffer, encrypt: boolean) => unknown[] {
  return (name, _iv, encrypt) => {
    try {
      if (encrypt) {
        const k = keys.issuing()
        return [1, k.subarray(16, 32), k.subarray(32, 48), k.subarray(0, 16), randomBytes(TICKET_PART)]
      }
      for (const k of [keys.issuing(), ...keys.accepted()]) {
        if (k.subarray(0, 16).equals(name)) {
          keys.renewed()
          return [2, k.subarray(16, 32), k.subarray(32, 48)]
        }
      }
      keys.unknown()
      return [0, ZERO_PART, ZERO_PART]
    } catch {
      // Called from inside OpenSSL: an exception would surface as an uncaught one. Decrypt: full handshake; encrypt:
      // Node reads a name and an IV even then, so give it some and let OpenSSL send no ticket.
      return [0, ZERO_PART, ZERO_PART, ZERO_PART, ZERO_PART]
    }
  }
}

/**
 * Puts the ticket-key callback on the server's current native context. Internal API (exercised by Node's own test
 * test-https-resume-after-renew), so detected rather than assumed: false when this Node does not have it.
 */
function enableTicketRenewal (server: tls.Server, keys: TicketKeySource): boolean {
  const context = (server as unknown as { _sharedCreds?: { context?: NativeSecureContext } })._sharedCreds?.context
  if (context === undefined || typeof context.enableTicketKeyCallback !== 'function') return false
  context.onticketkeycallback = ticketKeyCallback(keys)
  context.enableTicketKeyCallback()
  return true
}

/**
 * True when the server's current context may negotiate TLS 1.3: its highest protocol (read from the native context,
 * internal: feature-detected) is 1.3 and SSL_OP_NO_TLSv1_3 is not set. When unsure, false: every session id is then
 * looked up, as before the ClientHello peek.
 */
export function serverAllowsTls13 (server: tls.Server): boolean {
  const context = (server as unknown as { _sharedCreds?: { context?: { getMaxProto?: () => number } } })._sharedCreds?.context
  if (typeof context?.getMaxProto !== 'function') return false
  const secureOptions = (server as unknown as { secureOptions?: unknown }).secureOptions
  if (typeof secureOptions === 'number' && (secureOptions & constants.SSL_OP_NO_TLSv1_3) !== 0) return false
  try { return context.getMaxProto() >= TLS1_3 } catch { return false }
}

/**
 * Reads a new connection's ClientHello on the raw socket (after any PROXY header, see lib/connection-stages.ts) and
 * hands the socket on with every byte put back. `seen(hello)` is told what it offered; bytes that are no
 * ClientHello, too long, or too slow go on to TLS unchanged, which answers them as it always does.
 */
function clientHelloStage (opts: {
  active: () => boolean
  /** Told what a ClientHello offered; true when its handshake needs no session callbacks (TLS 1.3). */
  seen: (socket: Socket, sessionId: Buffer, offersTls13: boolean) => boolean
  /** Runs the hand-over so that Node's TLS socket starts without session callbacks. */
  withoutSessionCallbacks: (handOver: () => void) => void
}): (socket: Socket, next: () => void) => void {
  return (socket, next) => {
    if (!opts.active()) { next(); return }
    const handOn = (bytes: Buffer): void => {
      if (bytes.length > 0) socket.unshift(bytes)
      next()
    }
    readFirstBytes(socket, {
      timeoutMs: CLIENT_HELLO_WAIT_MS,
      onBytes: bytes => {
        const scan = scanClientHello(bytes)
        if (scan.kind === 'incomplete' && bytes.length <= MAX_CLIENT_HELLO_BYTES) return false
        if (scan.kind === 'hello' && opts.seen(socket, scan.hello.sessionId, scan.hello.offersTls13)) opts.withoutSessionCallbacks(() => { handOn(bytes) })
        else handOn(bytes)
        return true
      },
      onTimeout: handOn,
      // Gone before a ClientHello: no handshake can complete; nothing to hand on.
      onGone: () => { socket.destroy() }
    })
  }
}
/** Bytes read at most while waiting for a ClientHello: the message plus generous record framing. */
const MAX_CLIENT_HELLO_BYTES = MAX_CLIENT_HELLO + 1024

const tlsSessionsPlugin: FastifyPluginAsync<TlsSessionsOptions> = async (fastify: FastifyInstance, rawOpts) => {
  const server = fastify.server as unknown
  if (!(server instanceof tls.Server)) {
    throw new InvalidOptionError('https', 'fastify-handoff/tls-sessions needs an HTTPS server: create Fastify with the `https` option ' +
      '(or `http2: true` and `https`); this one serves plain HTTP, so there are no TLS sessions to share')
  }
  const handoff = fastify.handoff
  const store: TieredStore = handoff.store
  const resolved = resolveTlsSessionsOptions(rawOpts ?? {}, handoff.keyRing)
  const log = fastify.log
  // The context and ticket-key namespace the cluster stored when it first started: a key rotation changes neither.
  const derivedContext = sessionIdContextFor(handoff.keyRing)
  const cluster = await clusterTlsNames(store, { sessionIdContext: derivedContext, ticketNamespace: handoff.keyRing.oldestId })
  if (cluster.source === 'derived') {
    log.warn('fastify-handoff: the cluster\'s stored TLS names could not be read; using those derived from the oldest secret ' +
      '(instances started after a key rotation may not resume each other\'s sessions)')
  }
  const o: Required<TlsSessionsOptions> = rawOpts?.sessionIdContext === undefined ? { ...resolved, sessionIdContext: cluster.names.sessionIdContext } : resolved

  const metrics: TlsSessionMetrics = {
    handshakes: 0,
    resumed: 0,
    handshakeErrors: 0,
    // Live views of the schedule's counters (getters are enumerable in a literal, so a JSON dump includes them).
    get keyRotations (): number { return schedule.counters.rotations },
    get ticketKeyErrors (): number { return schedule.counters.errors },
    get ticketKeyRestores (): number { return schedule.counters.restored },
    get ticketKeyAdoptions (): number { return schedule.counters.adopted },
    ticketKeyEpoch: null,
    ticketKeyId: null,
    ticketKeyAppliedAt: null,
    cacheHits: 0,
    cacheMisses: 0,
    cacheLookupsSkipped: 0,
    cacheTimeouts: 0,
    cacheErrors: 0,
    cacheWrites: 0,
    cacheWriteErrors: 0,
    cacheSkipped: 0,
    ticketRenewalActive: 0,
    ticketsRenewed: 0,
    ticketsUnknownKey: 0
  }

  // Whatever setSecureContext is in place now (Node's, or someone's wrapper) is what we build on; put back on close.
  const previousDescriptor = Object.getOwnPropertyDescriptor(server, 'setSecureContext')
  const originalSetSecureContext = server.setSecureContext as SetSecureContext
  const how = establishSessionIdContext(server, originalSetSecureContext, o, derivedContext)
  if (how === 'applied') log.info('fastify-handoff: gave the TLS server the cluster session id context (it had Node\'s per-process default)')

  // Ticket keys. Never logged: events carry epochs and reasons only.
  const schedule = new TicketKeySchedule({
    store: new TieredTicketKeyStore(store, { namespace: cluster.names.ticketNamespace }),
    periodMs: o.ticketKeyPeriodMs,
    maxClockSkewMs: o.maxClockSkewMs,
    checkMs: o.ticketKeyCheckMs,
    apply: (key, epoch) => {
      // Also in renewal mode: should the callback ever be lost with a context, Node's own path has the right key.
      server.setTicketKeys(key)
      issuing = key
      metrics.ticketKeyEpoch = epoch
      metrics.ticketKeyId = ticketKeyId(key)
      metrics.ticketKeyAppliedAt = Date.now()
    },
    onEvent: (e: TicketKeyEvent) => {
      switch (e.type) {
        case 'applied':
          log.info({ epoch: e.epoch, rotation: e.rotation }, 'fastify-handoff: TLS ticket key of the epoch applied')
          break
        case 'unavailable':
          log.warn({ epoch: e.epoch, reason: e.reason, ticketKeyEpoch: metrics.ticketKeyEpoch },
            metrics.ticketKeyEpoch === null
              ? 'fastify-handoff: TLS ticket keys unreachable; this instance uses its own key (no resumption across instances) until they answer'
              : 'fastify-handoff: TLS ticket keys unreachable; keeping the current key until they answer')
          break
        case 'recovered':
          log.info({ epoch: e.epoch }, 'fastify-handoff: TLS ticket keys reachable again')
          break
        case 'unusable':
          log.warn({ epoch: e.epoch, ticketKeyEpoch: metrics.ticketKeyEpoch }, 'fastify-handoff: the TLS ticket key of this epoch exists but cannot be used ' +
            '(sealed under another cluster secret on the same Redis and prefix, or already retired); keeping the current key')
          break
        case 'removed':
          log.debug({ epoch: e.epoch }, 'fastify-handoff: retired TLS ticket key deleted')
          break
        case 'restored':
          log.warn({ epoch: e.epoch, ticketKeyId: e.keyId }, 'fastify-handoff: the TLS ticket key of this epoch was missing from the store ' +
            '(Redis wiped or restarted empty?); wrote this instance\'s key back so that every instance converges on it')
          break
        case 'adopted':
          log.warn({ epoch: e.epoch, from: e.from, to: e.to, prepared: e.prepared }, e.prepared
            ? 'fastify-handoff: the store holds another TLS ticket key for the next epoch than the one prepared; switching to the stored one'
            : 'fastify-handoff: the store holds another TLS ticket key for this epoch (created after a Redis wipe?); switching to it ' +
              '(with ticket renewal, tickets under the old key still resume here until the epoch ends)')
          break
        case 'error':
          log.error({ epoch: e.epoch, reason: e.reason }, 'fastify-handoff: TLS ticket key schedule failed; retrying')
          break
      }
    }
  })

  // setSecureContext (a certificate reload) builds a new native context: new random ticket keys and, without the
  // option, Node's per-process session id context. Both would silently end resumption across instances.
  const wrapped: SetSecureContext = function (this: tls.Server, options: tls.SecureContextOptions) {
    if (options !== null && typeof options === 'object' && options.sessionIdContext !== undefined && options.sessionIdContext !== o.sessionIdContext) {
      throw new InvalidOptionError('sessionIdContext', 'setSecureContext was given a session id context other than the cluster\'s; leave it out, ' +
        'fastify-handoff/tls-sessions fills it in')
    }
    originalSetSecureContext.call(this, options === null || typeof options !== 'object' ? options : { ...options, sessionIdContext: o.sessionIdContext })
    // A new native context: Node's random key and its own ticket path again. Both are put back.
    if (renewal) metrics.ticketRenewalActive = enableTicketRenewal(server, ticketKeys) ? 1 : 0
    reviewTls13()
    schedule.reapply()
  }
  Object.defineProperty(server, 'setSecureContext', { value: wrapped, configurable: true, writable: true, enumerable: false })

  const onSecureConnection = (socket: TLSSocket): void => {
    metrics.handshakes++
    if (socket.isSessionReused()) metrics.resumed++
  }
  const onClientError = (): void => { metrics.handshakeErrors++ }
  server.on('secureConnection', onSecureConnection)
  server.on('tlsClientError', onClientError)

  // The TLS 1.2 session cache.
  const pending = new Set<Promise<void>>()
  let onNewSession: ((id: Buffer, data: Buffer, cb: () => void) => void) | undefined
  let onResumeSession: ((id: Buffer, cb: (err: Error | null, data: Buffer | null) => void) => void) | undefined
  /** Legacy session ids of open connections whose ClientHello offered TLS 1.3 to a server that allows it. */
  const cannotHit = new Set<string>()
  let removeClientHelloStage: (() => void) | undefined
  /** Re-reads whether the server allows TLS 1.3 (after setSecureContext). */
  let reviewTls13 = (): void => {}
  if (o.sessionCache) {
    // Hashed id: ids come from clients (resumeSession) and travel in clear under TLS 1.2; the store key is a digest of
    // one, under a fixed namespace and no secret, so that a key rotation does not rename the cache.
    const keyOf = (id: Buffer): string => store.key(createHash('sha256').update(SESSION_CACHE_ID_NAMESPACE).update(id).digest('hex').slice(0, 32), 'tlssession')
    // Sessions stored before a rotation are re-sealed when resumed during its overlap.
    store.resealOnRead('tlssession')
    const internals = server as tls.Server & ServerInternals
    const ttlMs = (): number => {
      const s = typeof internals.sessionTimeout === 'number' && internals.sessionTimeout > 0 ? internals.sessionTimeout : DEFAULT_SESSION_TIMEOUT_S
      return Math.round(s * 1000)
    }
    let writeFailing = false

    onNewSession = (id, data, cb) => {
      // At once: the server holds all output to this client until the callback runs. The write goes on behind it.
      cb()
      if (sessionProtocolVersion(data) === TLS1_3) { metrics.cacheSkipped++; return }
      const value: CachedSession = { d: data.toString('base64') }
      const p = store.update(keyOf(id), () => value, { ttlMs: ttlMs() }).then(() => {
        metrics.cacheWrites++
        if (writeFailing) { writeFailing = false; log.info('fastify-handoff: TLS session cache writes succeed again') }
      }, (err: unknown) => {
        metrics.cacheWriteErrors++
        if (!writeFailing) {
          writeFailing = true
          log.warn({ reason: err instanceof Error ? err.message : String(err) },
            'fastify-handoff: TLS sessions cannot be stored; clients will do full handshakes on other instances until the store answers')
        }
      }).finally(() => { pending.delete(p) })
      pending.add(p)
    }

    onResumeSession = (id, cb) => {
      // A TLS 1.3 ClientHello's legacy id (RFC 8446 D.4): no session id resumes TLS 1.3 here, so no store lookup.
      if (cannotHit.size > 0 && cannotHit.delete(id.toString('latin1'))) {
        cb(null, null)
        return
      }
      let done = false
      const finish = (data: Buffer | null): void => {
        if (done) return
        done = true
        clearTimeout(timer)
        // Never cb(err): Node drops the connection on an error, where a full handshake is what the client needs.
        cb(null, data)
      }
      const timer = setTimeout(() => { metrics.cacheTimeouts++; finish(null) }, o.sessionLookupTimeoutMs)
      const key = keyOf(id)
      const lookup = o.singleUse ? store.take(key) : store.get(key)
      lookup.then(entry => {
        if (done) return
        const v = entry?.value
        const d = v !== null && typeof v === 'object' ? (v as Partial<CachedSession>).d : undefined
        if (typeof d === 'string') {
          metrics.cacheHits++
          finish(Buffer.from(d, 'base64'))
        } else {
          metrics.cacheMisses++
          finish(null)
        }
      }, () => {
        if (done) return
        metrics.cacheErrors++
        finish(null)
      })
    }
    server.on('newSession', onNewSession)
    server.on('resumeSession', onResumeSession)

    // Which connections offer TLS 1.3, read from their ClientHello before TLS starts (Node's resumeSession does not
    // say). Such a connection needs neither listener: a session id never resumes TLS 1.3 here, and TLS 1.3 sessions
    // are not stored. Node turns session callbacks on for a new TLS socket when the server has a listener for either
    // event (TLSSocket#_init asks server.listenerCount, synchronously, inside the 'connection' emit), so for the
    // length of that emit the server reports none: no ClientHello pause, no lookup, no session serialised. Where
    // that is not possible (someone else listens too), the id is remembered and answered at once without a lookup.
    let tls13 = serverAllowsTls13(server)
    reviewTls13 = () => { tls13 = serverAllowsTls13(server) }
    const onlyOurs = (): boolean => {
      const n = server.rawListeners('newSession')
      const r = server.rawListeners('resumeSession')
      return n.length === 1 && n[0] === onNewSession && r.length === 1 && r[0] === onResumeSession
    }
    const ownListenerCount = Object.getOwnPropertyDescriptor(server, 'listenerCount')
    const listenerCount = server.listenerCount
    let quiet = false
    const quietListenerCount = function (this: tls.Server, event: string | symbol, ...rest: unknown[]): number {
      if (quiet && (event === 'newSession' || event === 'resumeSession')) return 0
      return (listenerCount as (e: string | symbol, ...r: unknown[]) => number).call(this, event, ...rest)
    }
    Object.defineProperty(server, 'listenerCount', { value: quietListenerCount, configurable: true, writable: true, enumerable: false })
    const removeStage = addConnectionStage(server, {
      rank: CLIENT_HELLO_STAGE_RANK,
      accept: clientHelloStage({
        active: () => tls13,
        seen: (socket, sessionId, offersTls13) => {
          if (!offersTls13) return false
          if (sessionId.length > 0) metrics.cacheLookupsSkipped++
          if (onlyOurs()) return true // handed over synchronously (this stage runs last), so Node asks no listener
          if (sessionId.length === 0) return false
          // Fallback, when another listener needs the callbacks. Ids are the client's (a TLS 1.2 id travels in
          // clear), so a connection could name another client's id: that one then does a full handshake while the
          // first is open, nothing worse. Bounded by the open connections: each takes its entry with it.
          const key = sessionId.toString('latin1')
          cannotHit.add(key)
          socket.once('close', () => { cannotHit.delete(key) })
          return false
        },
        withoutSessionCallbacks: handOver => {
          quiet = true
          try { handOver() } finally { quiet = false }
        }
      })
    })
    removeClientHelloStage = () => {
      removeStage()
      if (server.listenerCount === quietListenerCount) {
        if (ownListenerCount !== undefined) Object.defineProperty(server, 'listenerCount', ownListenerCount)
        else Reflect.deleteProperty(server, 'listenerCount')
      }
    }
  }

  // Ticket renewal. Until a shared key is read, tickets use the key Node gave this server (as without renewal).
  let issuing: Buffer = server.getTicketKeys()
  const ticketKeys: TicketKeySource = {
    issuing: () => issuing,
    accepted: () => schedule.decryptionKeys(),
    renewed: () => { metrics.ticketsRenewed++ },
    unknown: () => { metrics.ticketsUnknownKey++ }
  }
  const renewal = o.ticketRenewal
  if (renewal) {
    metrics.ticketRenewalActive = enableTicketRenewal(server, ticketKeys) ? 1 : 0
    if (metrics.ticketRenewalActive === 0) {
      log.warn('fastify-handoff: this Node version has no TLS ticket-key callback; tickets are not renewed after a resumption ' +
        '(clients that use each ticket once resume every other connection)')
    }
  }

  // Reads (or creates) this epoch's key before the server listens, so the first clients already get shared tickets.
  await schedule.start()
  if (metrics.ticketKeyEpoch === null) {
    log.warn('fastify-handoff: no shared TLS ticket key yet; this instance uses its own until one can be read')
  }

  fastify.decorate('handoffTls', { metrics, options: Object.freeze({ ...o }) })
  fastify.decorateRequest('tlsResumed', {
    getter (this: FastifyRequest): boolean {
      // Under HTTP/2 raw.socket is a proxy of the session's TLS socket; isSessionReused works through it.
      const socket = this.raw.socket as Partial<TLSSocket> | null | undefined
      return typeof socket?.isSessionReused === 'function' ? socket.isSessionReused() : false
    }
  })

  fastify.addHook('onClose', async () => {
    // A handshake still in flight must not issue a ticket under a key being wiped: a throwaway key from here on.
    issuing = randomBytes(TICKET_KEY_BYTES)
    schedule.stop()
    server.off('secureConnection', onSecureConnection)
    server.off('tlsClientError', onClientError)
    if (onNewSession !== undefined) server.off('newSession', onNewSession)
    if (onResumeSession !== undefined) server.off('resumeSession', onResumeSession)
    removeClientHelloStage?.()
    cannotHit.clear()
    if (server.setSecureContext === wrapped) {
      if (previousDescriptor !== undefined) Object.defineProperty(server, 'setSecureContext', previousDescriptor)
      else delete (server as { setSecureContext?: unknown }).setSecureContext
    }
    // Write-behinds still in flight: each is bounded by the store's command timeout.
    await Promise.allSettled([...pending])
  })
}

/**
 * Shares TLS sessions across instances: cluster ticket keys on an epoch schedule, one session id context, and an
 * optional TLS 1.2 session cache. Needs Fastify's `https` option and the fastify-handoff/store plugin.
 */
export const tlsSessions = fp(tlsSessionsPlugin, {
  fastify: '5.x',
  name: 'fastify-handoff/tls-sessions',
  dependencies: ['fastify-handoff/store']
})
export default tlsSessions
