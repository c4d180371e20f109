/**
 * One option policy: every plugin checks its options with a JSON schema at registration (lib/options.ts), refusing
 * unknown keys with a did-you-mean, wrong types and ranges, and contradictions, all as FST_HANDOFF_INVALID_OPTION
 * naming the option's path. Each row is a misconfiguration measured to start (or crash) before this policy.
 */
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { Writable } from 'node:stream'
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { handoff, handoffStore, authSession, cart, handoffMetrics, handoffDrain, proxyProtocol, type HandoffOptions } from '../../plugins/index.js'
import { didYouMean, editDistance } from '../../lib/options.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
// A port nothing listens on: a refused option must fail before any connection is tried.
const NOWHERE = 'redis://127.0.0.1:1'

// A loopback listener standing where Redis would be, started by the table's test: a dial to it stays open for a
// while (one to NOWHERE is refused at once), so a refusal that came after the Redis client was made shows.
const listener = { url: '', dialledBy: [] as string[] }

type Setup = (app: FastifyInstance) => Promise<void>

const umbrella = (opts: Record<string, unknown>): Setup => async app => { await app.register(handoff, opts as unknown as HandoffOptions) }
const store = (opts: Record<string, unknown>): Setup => async app => { await app.register(handoffStore, { secret: SECRET, ...opts } as never) }
const withSession = async (app: FastifyInstance): Promise<void> => {
  await app.register(fastifyCookie)
  await app.register(handoffStore, { secret: SECRET })
  await app.register(authSession, { cookie: { secure: false } })
}
const cartWith = (opts: Record<string, unknown>): Setup => async app => { await withSession(app); await app.register(cart, opts as never) }
// Resolves `redis` when the row runs (the listener's port is known only then), and notes a socket left by the row.
const storeListened = (opts: Record<string, unknown>): Setup => async app => {
  const before = sockets()
  try { await store({ redis: listener.url, ...opts })(app) } finally {
    if (sockets() > before) listener.dialledBy.push(JSON.stringify(opts))
  }
}
const drainWith = (opts: Record<string, unknown>): Setup => async app => { await app.register(handoffDrain, opts as never) }
const proxyWith = (opts: Record<string, unknown>): Setup => async app => { await app.register(proxyProtocol, opts as never) }
const metricsWith = (opts: Record<string, unknown>): Setup => async app => {
  await app.register(handoffStore, { secret: SECRET })
  await app.register(handoffMetrics, opts as never)
}

// [what, setup, option path named, text the message must also hold]
const table: Array<[string, Setup, string, RegExp?]> = [
  ['store: redisUrl instead of redis', store({ redisUrl: NOWHERE }), 'redisUrl', /did you mean "redis"/],
  ['store: reddis', store({ reddis: NOWHERE }), 'reddis', /did you mean "redis"/],
  ['umbrella: redisUrl', umbrella({ secret: SECRET, redisUrl: NOWHERE }), 'redisUrl', /did you mean "redis"/],
  ['store: commandTimeoutMs "abc"', store({ redis: NOWHERE, commandTimeoutMs: 'abc' }), 'commandTimeoutMs', /integer >= 1, got "abc"/],
  ['store: commandTimeoutMs 0', store({ redis: NOWHERE, commandTimeoutMs: 0 }), 'commandTimeoutMs', /integer >= 1, got 0/],
  ['store: commandTimeoutMs -5', store({ redis: NOWHERE, commandTimeoutMs: -5 }), 'commandTimeoutMs', /got -5/],
  ['store: coherence "yes"', store({ coherence: 'yes' }), 'coherence', /false or \{ leaseMs \}/],
  ['store: coherence.leaseMs 0', store({ coherence: { leaseMs: 0 } }), 'coherence.leaseMs'],
  ['store: durability typo', store({ durability: { replicas: 1, timout: 50 } }), 'durability.timout', /did you mean "timeoutMs"/],
  ['store: redis 5', store({ redis: 5 }), 'redis', /redis:\/\/ URL/],
  ['cart: provider null', cartWith({ provider: null }), 'provider', /charge\(/],
  ['cart: provider without charge', cartWith({ provider: {} }), 'provider', /charge\(/],
  ['cart: unknown key', cartWith({ maxitems: 3 }), 'maxitems', /did you mean "maxItems"/],
  ['cart: maxItems "3"', cartWith({ maxItems: '3' }), 'maxItems'],
  ['cart: anchorCookie = session cookie name', async app => {
    await withSessionStoreOnly(app)
    await app.register(authSession, { cookie: { name: 'sid', secure: false } })
    await app.register(cart, { anchorCookie: 'sid' })
  }, 'anchorCookie', /session cookie's name "sid"/],
  ['cart: cookie.name = session cookie name', cartWith({ cookie: { name: 'handoff.sid' } }), 'cookie.name', /session cookie/],
  ['cart: cookie and secureCookie together', cartWith({ cookie: { secure: false }, secureCookie: false }), 'secureCookie', /cookie alone/],
  ['umbrella: session false, cart {}', umbrella({ secret: SECRET, session: false, cart: {} }), 'cart', /need auth sessions/],
  ['umbrella: cart cookie = session cookie', umbrella({ secret: SECRET, session: { cookie: { name: 'sid' } }, cart: { cookie: { name: 'sid' } } }), 'cart.cookie.name'],
  ['umbrella: cart provider null', umbrella({ secret: SECRET, cart: { provider: null } }), 'cart.provider'],
  ['umbrella: session typo', umbrella({ secret: SECRET, session: { cokie: {} } }), 'session.cokie', /did you mean "cookie"/],
  ['umbrella: session cookie sameSite none without secure', umbrella({ secret: SECRET, session: { cookie: { sameSite: 'none', secure: false } } }), 'session.cookie.sameSite'],
  ['umbrella: tls typo', umbrella({ secret: SECRET, tls: { sesionCache: true } }), 'tls.sesionCache', /did you mean "sessionCache"/],
  ['umbrella: metrics "yes"', umbrella({ secret: SECRET, metrics: 'yes' }), 'metrics', /true, false or an options object/],
  ['metrics: typo', metricsWith({ prefx: 'x_' }), 'prefx', /did you mean "prefix"/],
  ['metrics: registry {}', metricsWith({ registry: {} }), 'registry', /prom-client Registry/],
  ['metrics: latencyBuckets "1"', metricsWith({ latencyBuckets: '1' }), 'latencyBuckets'],
  ['metrics: latencyBuckets not increasing', metricsWith({ latencyBuckets: [0.1, 0.01] }), 'latencyBuckets', /increasing/],
  ['umbrella: metrics latencyBuckets [0]', umbrella({ secret: SECRET, metrics: { latencyBuckets: [0] } }), 'metrics.latencyBuckets.0'],
  ['store: maxDegradedMs -1, refused before Redis is dialled', storeListened({ maxDegradedMs: -1 }), 'maxDegradedMs', /integer >= 0, got -1/],
  ['drain: typo', drainWith({ drainMS: 1000 }), 'drainMS', /did you mean "drainMs"/],
  ['umbrella: drain drainMs -1', umbrella({ secret: SECRET, drain: { drainMs: -1 } }), 'drain.drainMs', /got -1/],
  ['umbrella: drain typo', umbrella({ secret: SECRET, drain: { drainMS: 1 } }), 'drain.drainMS', /did you mean "drainMs"/],
  ['proxy-protocol: typo', proxyWith({ trusted: ['127.0.0.1'], headerTimeout: 500 }), 'headerTimeout', /did you mean "headerTimeoutMs"/],
  ['umbrella: proxyProtocol without trusted', umbrella({ secret: SECRET, proxyProtocol: {} }), 'proxyProtocol.trusted', /non-empty array/],
  ['auth-session: typo', async app => { await withSessionStoreOnly(app); await app.register(authSession, { idleTimeout: 5 } as never) }, 'idleTimeout', /did you mean "idleTimeoutMs"/]
]

async function withSessionStoreOnly (app: FastifyInstance): Promise<void> {
  await app.register(fastifyCookie)
  await app.register(handoffStore, { secret: SECRET })
}

const sockets = (): number => process.getActiveResourcesInfo().filter(r => r === 'TCPSocketWrap' || r === 'TCPConnectWrap').length

t.test('each measured misconfiguration is refused at registration, naming the option', async t => {
  const accepted = new Set<Socket>()
  const server = createServer(socket => { accepted.add(socket); socket.on('error', () => {}) })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  listener.url = `redis://127.0.0.1:${(server.address() as AddressInfo).port}`
  t.teardown(async () => {
    for (const s of accepted) s.destroy()
    await new Promise<void>(resolve => server.close(() => resolve()))
  })
  const open = sockets()
  for (const [what, setup, path, extra] of table) {
    const app = Fastify()
    const quoted = path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
    const err = await (async () => { try { await setup(app); await app.ready(); return undefined } catch (e) { return e as Error } })()
    t.match(err, { code: 'FST_HANDOFF_INVALID_OPTION', message: new RegExp(`^Invalid option "${quoted}": `) }, `${what}: names "${path}"`)
    if (extra !== undefined) t.match(err?.message, extra, `${what}: ${String(extra)}`)
    await app.close().catch(() => {})
  }
  t.equal(sockets(), open, 'no Redis connection was opened for a refused configuration')
  t.same(listener.dialledBy, [], 'no refused configuration dialled the address given as redis')
})

t.test('unknown keys list the known ones; Fastify\'s own registration keys are not refused', async t => {
  const app = Fastify()
  await app.register(handoffStore, { secret: SECRET })
  await t.rejects(async () => { await app.register(handoffMetrics, { nope: 1 } as never); await app.ready() }, { message: /known options are endpoint, healthEndpoint, registry, prefix, latencyBuckets/ })
  await app.close()
  const ok = Fastify()
  await ok.register(handoffStore, { secret: SECRET })
  await ok.register(handoffMetrics, { prefix: 'x_', logLevel: 'warn' } as never)
  await ok.ready()
  t.equal((await ok.inject('/metrics')).statusCode, 200, 'logLevel is Fastify\'s: accepted')
  await ok.close()
})

t.test('did-you-mean: edit distance, and a known name inside the unknown one', async t => {
  t.equal(editDistance('kitten', 'sitting'), 3)
  t.equal(editDistance('', 'abc'), 3)
  t.equal(didYouMean('reddis', ['secret', 'redis', 'prefix']), 'redis')
  t.equal(didYouMean('redisUrl', ['secret', 'redis', 'prefix']), 'redis')
  t.equal(didYouMean('COHERENCE', ['coherence']), 'coherence', 'case ignored')
  t.equal(didYouMean('banana', ['secret', 'redis', 'prefix']), undefined, 'nothing close: no guess')
})

t.test('the cart\'s anchor cookie takes the session cookie\'s options shape', async t => {
  const app = Fastify()
  await app.register(handoff, {
    secret: SECRET,
    session: { cookie: { secure: false } },
    cart: { cookie: { name: 'anchor', secure: false, sameSite: 'strict', path: '/shop', domain: 'example.test' } }
  })
  app.post('/shop/add', async req => await req.cart.add({ sku: 'A', unitPrice: 100, currency: 'EUR' }))
  await app.ready()
  t.teardown(async () => await app.close())
  const res = await app.inject({ method: 'POST', url: '/shop/add' })
  t.equal(res.statusCode, 200)
  const anchor = (res.cookies as Array<Record<string, unknown>>).find(c => c.name === 'anchor')
  t.match(anchor, { name: 'anchor', path: '/shop', domain: 'example.test', sameSite: 'Strict', httpOnly: true })
  t.notOk(anchor?.secure, 'secure: false honoured')

  // The older spelling still works.
  const old = Fastify()
  await old.register(handoff, { secret: SECRET, session: { cookie: { secure: false } }, cart: { anchorCookie: 'old_anchor', secureCookie: false } })
  old.post('/add', async req => await req.cart.add({ sku: 'A', unitPrice: 100, currency: 'EUR' }))
  await old.ready()
  t.teardown(async () => await old.close())
  const r2 = await old.inject({ method: 'POST', url: '/add' })
  t.match((r2.cookies as Array<Record<string, unknown>>).find(c => c.name === 'old_anchor'), { path: '/', sameSite: 'Lax', httpOnly: true })
})

async function logsOf (nodeEnv: string | undefined): Promise<Array<{ level: number, msg: string }>> {
  const lines: Array<{ level: number, msg: string }> = []
  const stream = new Writable({ write (chunk: Buffer, _enc, cb) { lines.push(JSON.parse(chunk.toString()) as { level: number, msg: string }); cb() } })
  const before = process.env.NODE_ENV
  if (nodeEnv === undefined) delete process.env.NODE_ENV; else process.env.NODE_ENV = nodeEnv
  try {
    const app = Fastify({ logger: { level: 'info', stream } })
    await app.register(handoffStore, { secret: SECRET })
    await app.ready()
    await app.close()
  } finally {
    if (before === undefined) delete process.env.NODE_ENV; else process.env.NODE_ENV = before
  }
  return lines
}

t.test('no Redis in production: a warning that instances will not share state', async t => {
  const prod = (await logsOf('production')).filter(l => /no Redis configured/.test(l.msg))
  t.equal(prod.length, 1)
  t.equal(prod[0]?.level, 40, 'warn')
  t.match(prod[0]?.msg, /instances will not share state/)
  const dev = (await logsOf(undefined)).filter(l => /no Redis configured/.test(l.msg))
  t.equal(dev.length, 1)
  t.equal(dev[0]?.level, 30, 'info outside production (tests, one-instance development)')
})
