import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import fastifyCookie from '@fastify/cookie'
import { InvalidOptionError } from '../lib/errors.js'
import { compileOptions, type OptionsCheck } from '../lib/options.js'
import { handoffStore, STORE_OPTIONS_SCHEMA, type HandoffStoreOptions } from './store.js'
import { tlsSessions, checkTlsSessionsOptions, type TlsSessionsOptions } from './tls-sessions.js'
import { authSession, resolveOptions, type AuthSessionOptions } from './auth-session.js'
import { cart, checkCartOptions, resolveCartCookie, type CartOptions } from './cart.js'
import { handoffMetrics, checkMetricsOptions, type HandoffMetricsOptions } from './metrics.js'
import { proxyProtocol, checkProxyProtocolOptions, type ProxyProtocolOptions } from './proxy-protocol.js'
import { handoffDrain, checkDrainOptions, type HandoffDrainOptions } from './drain.js'

export interface HandoffOptions extends HandoffStoreOptions {
  /** TLS session failover; needs Fastify's `https` option. `false` to leave out. Default: on when the server is HTTPS. */
  tls?: TlsSessionsOptions | boolean
  /** Auth sessions (registers @fastify/cookie if it is not yet). `false` to leave out. Default: on. */
  session?: AuthSessionOptions | boolean
  /** Carts and checkout (needs `session`). `false` to leave out. Default: on. */
  cart?: CartOptions | boolean
  /** Prometheus metrics and /health. `false` to leave out. Default: on. */
  metrics?: HandoffMetricsOptions | boolean
  /** Client addresses from a PROXY protocol header sent by these trusted balancers (docs/proxy-protocol.md). Default: off. */
  proxyProtocol?: ProxyProtocolOptions
  /** Graceful drain and the readiness route (signal handling stays opt-in). `false` to leave out. Default: on. */
  drain?: HandoffDrainOptions | boolean
}

const opt = <T extends object>(v: T | boolean | undefined): T | undefined => v === false ? undefined : (v === true || v === undefined ? {} as T : v)

const part = { anyOf: [{ type: 'boolean' }, { type: 'object' }], description: 'true, false or an options object' } as const

/** The store's schema plus one key per part; each part's object is checked by its own plugin's schema. */
export const HANDOFF_OPTIONS_SCHEMA = {
  ...STORE_OPTIONS_SCHEMA,
  properties: {
    ...STORE_OPTIONS_SCHEMA.properties,
    tls: part,
    session: part,
    cart: part,
    metrics: part,
    drain: part,
    proxyProtocol: { type: 'object', description: 'an options object such as { trusted: [\'10.0.0.0/24\'] }' }
  }
} as const

const checkTopLevel: OptionsCheck = compileOptions(HANDOFF_OPTIONS_SCHEMA)

/**
 * Checks every part's options before anything is opened or registered, naming options by their full path
 * ('session.cookie.name'), and refuses parts that contradict each other.
 */
export function checkHandoffOptions (opts: HandoffOptions): void {
  checkTopLevel(opts)
  const { tls, session, cart: cartOpts, metrics, proxyProtocol: proxyOpts, drain } = opts
  if (proxyOpts !== undefined) checkProxyProtocolOptions(proxyOpts, 'proxyProtocol')
  if (typeof tls === 'object') checkTlsSessionsOptions(tls, 'tls')
  const sessionOpts = opt(session)
  const sessionCookieName = sessionOpts === undefined ? undefined : resolveOptions(sessionOpts, 'session').cookieName
  if (typeof cartOpts === 'object') checkCartOptions(cartOpts, 'cart')
  if (session === false && cartOpts !== undefined && cartOpts !== false) {
    throw new InvalidOptionError('cart', 'carts need auth sessions: remove `session: false`, or set `cart: false`')
  }
  const c = opt(cartOpts)
  if (c !== undefined) resolveCartCookie(c, sessionCookieName, 'cart')
  if (typeof metrics === 'object') checkMetricsOptions(metrics, 'metrics')
  if (typeof drain === 'object') checkDrainOptions(drain, 'drain')
}

/**
 * Everything at once: the store, then TLS sessions (on an HTTPS server), auth sessions, carts, metrics and drain, all
 * sharing one TieredStore per instance. Each part is also a plugin of its own.
 */
const handoffPlugin: FastifyPluginAsync<HandoffOptions> = async (fastify: FastifyInstance, opts) => {
  checkHandoffOptions(opts)
  const { tls, session, cart: cartOpts, metrics, proxyProtocol: proxyOpts, drain, ...storeOpts } = opts
  if (proxyOpts !== undefined) await fastify.register(proxyProtocol, proxyOpts)
  await fastify.register(handoffStore, storeOpts)
  const isHttps = typeof (fastify.server as { setTicketKeys?: unknown }).setTicketKeys === 'function'
  const tlsOpts = tls === undefined ? (isHttps ? {} : undefined) : opt(tls)
  if (tlsOpts !== undefined) await fastify.register(tlsSessions, tlsOpts)
  const sessionOpts = opt(session)
  if (sessionOpts !== undefined) {
    if (!fastify.hasPlugin('@fastify/cookie')) await fastify.register(fastifyCookie)
    await fastify.register(authSession, sessionOpts)
    const c = opt(cartOpts)
    if (c !== undefined) await fastify.register(cart, c)
  }
  const m = opt(metrics)
  if (m !== undefined) await fastify.register(handoffMetrics, m)
  const d = opt(drain)
  if (d !== undefined) await fastify.register(handoffDrain, d)
}

export const handoff = fp(handoffPlugin, { fastify: '5.x', name: 'fastify-handoff' })
export default handoff
