import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import fastifyCookie from '@fastify/cookie'
import { handoffStore, type HandoffStoreOptions } from './store.js'
import { tlsSessions, type TlsSessionsOptions } from './tls-sessions.js'
import { authSession, type AuthSessionOptions } from './auth-session.js'
import { cart, type CartOptions } from './cart.js'
import { handoffMetrics, type HandoffMetricsOptions } from './metrics.js'
import { handoffDrain, type HandoffDrainOptions } from './drain.js'

export interface HandoffOptions extends HandoffStoreOptions {
  /** TLS session failover; needs Fastify's `https` option. `false` to leave out. Default: on when the server is HTTPS. */
  tls?: TlsSessionsOptions | boolean
  /** Auth sessions (registers @fastify/cookie if it is not yet). `false` to leave out. Default: on. */
  session?: AuthSessionOptions | boolean
  /** Carts and checkout (needs `session`). `false` to leave out. Default: on. */
  cart?: CartOptions | boolean
  /** Prometheus metrics and /health. `false` to leave out. Default: on. */
  metrics?: HandoffMetricsOptions | boolean
  /** Graceful drain and the readiness route (signal handling stays opt-in). `false` to leave out. Default: on. */
  drain?: HandoffDrainOptions | boolean
}

const opt = <T extends object>(v: T | boolean | undefined): T | undefined => v === false ? undefined : (v === true || v === undefined ? {} as T : v)

/**
 * Everything at once: the store, then TLS sessions (on an HTTPS server), auth sessions, carts, metrics and drain, all
 * sharing one TieredStore per instance. Each part is also a plugin of its own.
 */
const handoffPlugin: FastifyPluginAsync<HandoffOptions> = async (fastify: FastifyInstance, opts) => {
  const { tls, session, cart: cartOpts, metrics, drain, ...storeOpts } = opts
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
