/**
 * Type tests of the public API, checked by `npm run typecheck` (tsc): each `@ts-expect-error` must stay an error,
 * and every other line must compile. Never executed.
 */
import Fastify from 'fastify'
import handoff, { handoffStore, authSession, cart, tlsSessions, handoffHttpsOptions, handoffDrain, type HandoffOptions, type HandoffDrainOptions, type CartView, type Order, type CartOptions, type LostCheckout, CheckoutLostError, CartMovedError, IdempotencyKeyReusedError } from '../../plugins/index.js'
import { TieredStore, MemoryRepository, TicketKeySchedule, TieredTicketKeyStore, type StoreEntry } from '../../lib/index.js'
import { resolveTlsSessionsOptions, TLS_SESSIONS_DEFAULTS } from '../../plugins/index.js'
import { proxyProtocol, encodeProxyHeaderV2, PROXY_PROTOCOL_DEFAULTS, type ProxyProtocolOptions } from '../../plugins/index.js'
import { scanProxyHeader } from '../../lib/index.js'

declare module '../../plugins/auth-session.js' {
  interface SessionData { visits?: number, theme?: 'dark' | 'light' }
}

/** Keeps values "used" without running anything. */
function use (..._values: unknown[]): void {}

export async function typeTests (): Promise<void> {
  const app = Fastify({ https: handoffHttpsOptions({ key: 'k', cert: 'c' }, { secret: 'x'.repeat(32) }) })
  const opts: HandoffOptions = { secret: 'x'.repeat(32), redis: 'redis://127.0.0.1:6379', durability: { replicas: 1 }, cart: { maxItems: 10 } }
  await app.register(handoff, opts)
  // @ts-expect-error the secret is required
  const missing: HandoffOptions = { redis: 'redis://x' }
  use(missing)
  use(handoffStore, authSession, cart, tlsSessions)

  app.get('/', async (req) => {
    const visits: number = req.session.increment('visits')
    req.session.set('theme', 'dark')
    // @ts-expect-error a field not declared in SessionData
    req.session.set('nope', 1)
    // @ts-expect-error theme is 'dark' | 'light'
    req.session.set('theme', 'blue')
    const user: string | undefined = req.session.user?.id
    const resumed: boolean = req.tlsResumed
    const view: CartView = await req.cart.add({ sku: 'A', unitPrice: 100, currency: 'EUR' })
    const total: number = view.total
    return { visits, user, resumed, total }
  })
  const order: Order | undefined = await app.handoffCart.getOrder('ord_x')
  use(order)
  const lost: LostCheckout[] = []
  const cartOptions: CartOptions = {
    provider: {
      charge: async () => ({ status: 'succeeded', chargeId: 'ch_1' }),
      lookup: async (key: string) => key === '' ? undefined : { chargeId: 'ch_1', amount: 100, currency: 'EUR' }
    },
    onCheckoutLost: (l) => { lost.push(l) },
    orderDurability: { replicas: 1, timeoutMs: 50 }
  }
  // @ts-expect-error lookup answers a charge or undefined
  const badLookup: CartOptions = { provider: { charge: async () => ({ status: 'succeeded', chargeId: 'c' }), lookup: async () => 'ch_1' } }
  const recovered: boolean | undefined = order?.recovered
  use(cartOptions, badLookup, recovered, CheckoutLostError, CartMovedError, IdempotencyKeyReusedError)

  const drain: HandoffDrainOptions = { drainMs: 2000, signals: ['SIGTERM'], readinessEndpoint: '/ready', closeTimeoutMs: 5000 }
  await app.register(handoffDrain, drain)
  // @ts-expect-error signals are signal names
  const badSignals: HandoffDrainOptions = { signals: ['TERM'] }
  use(badSignals)
  const closed: Promise<void> = app.handoffDrain()
  const draining: boolean = app.handoffDraining
  // @ts-expect-error read-only
  app.handoffDraining = true
  use(closed, draining)
  const n: number = app.handoffTls.metrics.resumed
  use(n)

  interface Counter { n: number }
  const store = new TieredStore<Counter>({ repository: new MemoryRepository(), secret: 'x'.repeat(32) })
  const r = await store.update(store.key('id', 'counter'), cur => ({ n: (cur?.n ?? 0) + 1 }))
  const value: Counter | undefined = r.value
  const e: StoreEntry<Counter> | undefined = await store.get(store.key('id', 'counter'), { minVersion: r.version })
  // @ts-expect-error the mutate must return a Counter
  await store.update(store.key('id', 'counter'), () => ({ m: 1 }))
  use(value, e)

  // Typed collections: ids in, parsed values out.
  const counters = store.collection<Counter>('counter', { parse: (v) => ({ n: (v as Counter).n }) })
  const c: Counter | undefined = (await counters.get('id'))?.value
  await counters.update('id', cur => ({ n: (cur?.n ?? 0) + 1 }))
  // @ts-expect-error the mutate must return a Counter
  await counters.update('id', () => ({ m: 1 }))
  use(c)
}

// "Your devices": list and end a user's sessions; describe records what the application chooses.
export async function devicesTypeTests (): Promise<void> {
  const app = Fastify()
  await app.register(authSession, { describe: (request) => ({ userAgent: request.headers['user-agent'], address: request.ip }) })
  // @ts-expect-error describe returns strings
  await app.register(authSession, { describe: () => ({ userAgent: 1 }) })
  const listed = await app.handoffSessions.list('user-1', { current: 'sid' })
  const lastSeen: number = listed[0]?.lastSeenAt ?? 0
  const ended: boolean = await app.handoffSessions.destroy('user-1', listed[0]?.handle ?? '')
  use(lastSeen, ended)
}

// The TLS building blocks docs/tls-sessions.md lists as exported are reachable from the package's entries.
const tlsDefaults: boolean = TLS_SESSIONS_DEFAULTS.sessionCache
use(tlsDefaults, resolveTlsSessionsOptions, TicketKeySchedule, TieredTicketKeyStore)

// PROXY protocol: the plugin and its pieces are exported; `trusted` is required.
export async function proxyProtocolTypeTests (): Promise<void> {
  const app = Fastify()
  await app.register(proxyProtocol, { trusted: ['10.0.0.0/8'], headerTimeoutMs: 1000, allowDirect: false })
  // @ts-expect-error trusted balancer addresses are required
  const noTrusted: ProxyProtocolOptions = { headerTimeoutMs: 1000 }
  const refused: number = app.handoffProxyProtocol.metrics.refusedUntrusted
  const header: Buffer = encodeProxyHeaderV2({ address: '203.0.113.7', port: 1 }, { address: '10.0.0.1', port: 443 })
  const scan = scanProxyHeader(header)
  const ip: string | undefined = scan.kind === 'header' ? scan.client?.address : undefined
  use(noTrusted, refused, ip, PROXY_PROTOCOL_DEFAULTS.headerTimeoutMs)
}
