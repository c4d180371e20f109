/**
 * Carts: "add to cart" and checkout through the example shop's JSON API, req/s as a ratio to bare Fastify in the same
 * run, next to the peers a Fastify user would keep a cart in (the session of @fastify/session + connect-redis, or of
 * @fastify/secure-session), plus Redis round trips and commands per request (INFO commandstats delta on a private
 * redis-server) and p99 latency.
 *
 *   npx tsx bench/cart.ts        # writes bench/results/cart.json and bench/results/cart.md (about 2 minutes)
 *
 * Each server runs in its own process (spawned from this file with --server <kind>); autocannon runs here.
 * - add: POST /api/cart/items adding one item to an existing cart, one cart (and session) per autocannon connection,
 *   anonymous, and for fastify-handoff also signed in. Each connection keeps its cookies like a browser (the anchor
 *   cookie changes on every cart change; for secure-session the cookie is the cart).
 * - checkout: POST /api/checkout with a fresh Idempotency-Key per request, each on its own cart prepared before the
 *   run through the API (add, billing address, payment token); a fixed number of checkouts per round.
 * Runs are interleaved (round 1: every server and case, round 2: ...) and medians of the rounds are reported.
 */
import type { ChildProcess } from 'node:child_process'
import { createRequire } from 'node:module'
import { randomBytes } from 'node:crypto'
import { cpus, loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { Redis } from 'ioredis'
import { buildShop, PRODUCTS } from '../examples/checkout/app.js'
import { startRedis, type RedisHandle } from '../scripts/redis-server.js'
import { baselineFile, commandDelta, commandStats, countRoundTrips, median, peerSession, progress, redisCpuUs, registerPeerSession, round, roundTripCounter, writeResult, serveUntilStopped, spawnServer, stopServer } from './lib.js'

type Kind = 'bare' | 'floor' | 'handoff' | 'handoff-baseline' | 'fsession-redis' | 'secure-session'
type Case = 'add' | 'add-user' | 'checkout'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const DURATION_S = Number(process.env.BENCH_DURATION ?? 4)
const WARMUP_S = Number(process.env.BENCH_WARMUP ?? 1)
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 10)
/** Checkouts per round (each on its own prepared cart). */
const CHECKOUTS = Number(process.env.BENCH_CHECKOUTS ?? 1500)
/** The bare checkout route needs no carts: it runs for a time instead. */
const BARE_CHECKOUT_S = 2
const SECRET = 'fastify-handoff bench secret, at least 32 bytes long'
const SELF = fileURLToPath(import.meta.url)

/** The handoff server of an older checkout (BENCH_BASELINE), run next to this one for a before/after from one run. */
const BASELINE = baselineFile('cart.ts')
/**
 * Which server runs which case, in the order of a round. The bare server is every case's ratio base; the floor (the
 * cookie parsed and one ioredis SET of the cart's JSON per add, nothing else) is the base of the CPU ratio.
 */
const PLAN: Array<{ kind: Kind, case: Case }> = [
  { kind: 'bare', case: 'add' },
  { kind: 'floor', case: 'add' },
  { kind: 'handoff', case: 'add' },
  ...(BASELINE === undefined ? [] : [{ kind: 'handoff-baseline' as const, case: 'add' as const }]),
  { kind: 'handoff', case: 'add-user' },
  { kind: 'fsession-redis', case: 'add' },
  { kind: 'secure-session', case: 'add' },
  { kind: 'bare', case: 'checkout' },
  { kind: 'handoff', case: 'checkout' },
  ...(BASELINE === undefined ? [] : [{ kind: 'handoff-baseline' as const, case: 'checkout' as const }])
]
const KINDS: Kind[] = ['bare', 'floor', 'handoff', ...(BASELINE === undefined ? [] : ['handoff-baseline' as const]), 'fsession-redis', 'secure-session']
const isHandoff = (kind: Kind): boolean => kind === 'handoff' || kind === 'handoff-baseline'

const ITEM_SCHEMA = {
  body: {
    type: 'object',
    required: ['sku'],
    properties: { sku: { type: 'string', maxLength: 64 }, qty: { type: 'integer', minimum: 1, maximum: 999 } }
  }
} as const

// ---------------------------------------------------------------------------------------------------------------
// Servers (one process each)

const requireCjs = createRequire(import.meta.url)

interface Item { sku: string, name: string, unitPrice: number, currency: string, quantity: number }
interface PeerCart { items: Item[], version: number }
/** What every server answers to an add: the cart as the client may see it, as the shop's CartView does. */
function cartView (items: Item[], version: number): Record<string, unknown> {
  let total = 0
  for (const it of items) total += it.unitPrice * it.quantity
  return { items, total, currency: items[0]?.currency, version, details: {}, source: 'local', reviewNeeded: false, instance: 'bench' }
}

function addItem (cart: PeerCart, product: typeof PRODUCTS[number], quantity: number): PeerCart {
  const items = cart.items.map(x => x.sku === product.sku ? { ...x, quantity: x.quantity + quantity } : x)
  if (!items.some(x => x.sku === product.sku)) {
    items.push({ sku: product.sku, name: product.name, unitPrice: product.price, currency: product.currency, quantity })
  }
  return { items, version: cart.version + 1 }
}

async function buildServer (kind: Kind, redisUrl: string): Promise<{ app: FastifyInstance, close: () => Promise<void> }> {
  let close = async (): Promise<void> => {}
  let orders = (): number => 0
  let app: FastifyInstance
  if (kind === 'handoff') {
    // The whole suite as the example shop deploys it (store, auth sessions, carts, metrics), on Redis.
    const shop = await buildShop({ instanceName: 'bench', secret: SECRET, redisUrl })
    app = shop.app
    // The shop's FakeProvider records every charge in the same Redis (two more writes, one of them on a single
    // counter key every checkout shares). A real provider is a remote service: here it answers at once, so the
    // checkout figures are the plugin's own cost.
    shop.provider.charge = async (req) => ({ status: 'succeeded', chargeId: `ch_${req.idempotencyKey.slice(4, 20)}` })
    countRoundTrips(app.handoff.repository as unknown as Record<string, unknown>)
    orders = () => app.handoffCart.metrics.ordersPlaced
    // The shop knows two users only; signed-in carts need one user per connection.
    app.post<{ Body: { user: string } }>('/bench/login', async (req) => {
      await req.session.regenerate()
      req.session.user = { id: req.body.user }
      return { user: req.body.user }
    })
  } else if (kind === 'bare') {
    app = Fastify({ logger: false, bodyLimit: 16 * 1024 })
    // The same JSON work as the shop's route (body schema, product lookup, a cart-sized answer), no state.
    const items: Item[] = PRODUCTS.map(p => ({ sku: p.sku, name: p.name, unitPrice: p.price, currency: p.currency, quantity: 3 }))
    let version = 0
    app.post<{ Body: { sku: string, qty?: number } }>('/api/cart/items', { schema: ITEM_SCHEMA }, async (req, reply) => {
      const product = PRODUCTS.find(p => p.sku === req.body.sku)
      if (product === undefined) return await reply.code(404).send({ error: `no product ${req.body.sku}` })
      return cartView(items, ++version)
    })
    app.post('/api/checkout', async (req, reply) => {
      const key = req.headers['idempotency-key']
      if (typeof key !== 'string') return await reply.code(400).send({ error: 'the Idempotency-Key header is required' })
      return { orderId: `ord_${key.slice(-24)}`, status: 'placed', total: 5700, currency: 'EUR', instance: 'bench' }
    })
  } else if (kind === 'floor') {
    // Issue 17's floor for a cart add: the cookie parsed and one ioredis SET of the cart's JSON, nothing else (the cart
    // is kept in this process, so no read; no compare-and-set, no sealing, no signed cookie).
    app = Fastify({ logger: false, bodyLimit: 16 * 1024 })
    await app.register(fastifyCookie)
    // The same client settings as the store's RedisRepository (no auto-pipelining, no offline queue).
    const client = new Redis(redisUrl, { enableAutoPipelining: false, enableOfflineQueue: false, maxRetriesPerRequest: 0 })
    client.on('error', () => {})
    await new Promise(resolve => client.once('ready', resolve))
    close = async () => { await client.quit() }
    const carts = new Map<string, PeerCart>()
    app.post<{ Body: { sku: string, qty?: number } }>('/api/cart/items', { schema: ITEM_SCHEMA }, async (req, reply) => {
      const product = PRODUCTS.find(p => p.sku === req.body.sku)
      if (product === undefined) return await reply.code(404).send({ error: `no product ${req.body.sku}` })
      let id = req.cookies.cart
      if (id === undefined) {
        id = randomBytes(16).toString('base64url')
        reply.setCookie('cart', id, { path: '/', httpOnly: true, sameSite: 'lax' })
      }
      const cart = addItem(carts.get(id) ?? { items: [], version: 0 }, product, req.body.qty ?? 1)
      carts.set(id, cart)
      await client.set(`floor:cart:${id}`, JSON.stringify(cart), 'PX', 1_800_000)
      roundTripCounter.count++
      return cartView(cart.items, cart.version)
    })
  } else if (kind === 'fsession-redis' || kind === 'secure-session') {
    app = Fastify({ logger: false, bodyLimit: 16 * 1024 })
    close = await registerPeerSession(app, kind, redisUrl, SECRET)
    app.post<{ Body: { user: string } }>('/bench/login', async (req) => {
      peerSession(req).set('user', req.body.user)
      return { user: req.body.user }
    })
    // The cart a Fastify user would keep in the session: read, add, write back.
    app.post<{ Body: { sku: string, qty?: number } }>('/api/cart/items', { schema: ITEM_SCHEMA }, async (req, reply) => {
      const product = PRODUCTS.find(p => p.sku === req.body.sku)
      if (product === undefined) return await reply.code(404).send({ error: `no product ${req.body.sku}` })
      const s = peerSession(req)
      const cart = addItem((s.get('cart') as PeerCart | undefined) ?? { items: [], version: 0 }, product, req.body.qty ?? 1)
      s.set('cart', cart)
      return cartView(cart.items, cart.version)
    })
  } else {
    throw new Error(`${kind} runs from the baseline checkout's own bench file`)
  }
  app.get('/__cpu', { config: { handoffSession: false } }, async () => ({ ...process.cpuUsage(), roundTrips: roundTripCounter.count, orders: orders() }))
  return { app, close }
}

async function serve (kind: Kind, redisUrl: string): Promise<void> {
  const { app, close } = await buildServer(kind, redisUrl)
  await serveUntilStopped(app, close)
}

// ---------------------------------------------------------------------------------------------------------------
// Driver

/** autocannon ships no types; the part used here. */
interface AutocannonRequest {
  method: string
  path: string
  headers?: Record<string, string>
  body?: string
  /** Per-connection state: autocannon deep-copies the request options for each connection. */
  conn?: { jar: Jar | null, n: number }
  setupRequest: (req: AutocannonRequest, context: Record<string, unknown>) => AutocannonRequest
  onResponse?: (status: number, body: string, context: Record<string, unknown>, headers: Record<string, string | string[]>) => void
}
interface AutocannonResult {
  requests: { average: number, total: number }
  latency: { p50: number, p99: number, average: number }
  duration: number
  errors: number
  timeouts: number
  non2xx: number
}
const autocannon = requireCjs('autocannon') as (opts: {
  url: string
  connections: number
  duration?: number
  amount?: number
  requests: AutocannonRequest[]
}) => Promise<AutocannonResult>

/** A client's cookies, as a browser keeps them. */
interface Jar { cookies: Record<string, string>, header: string }

function newJar (): Jar { return { cookies: {}, header: '' } }

function storeCookies (jar: Jar, setCookie: string | string[] | undefined): void {
  if (setCookie === undefined) return
  for (const c of Array.isArray(setCookie) ? setCookie : [setCookie]) {
    const first = c.split(';', 1)[0] as string
    const eq = first.indexOf('=')
    if (eq <= 0) continue
    const name = first.slice(0, eq).trim()
    if (/;\s*max-age=0\b/i.test(c) || first.slice(eq + 1) === '') delete jar.cookies[name]
    else jar.cookies[name] = first.slice(eq + 1)
  }
  jar.header = Object.entries(jar.cookies).map(([k, v]) => `${k}=${v}`).join('; ')
}

interface Server { kind: Kind, child: ChildProcess, base: string }

async function startServer (kind: Kind, redisUrl: string): Promise<Server> {
  return { kind, ...await (kind === 'handoff-baseline' ? spawnServer(BASELINE as string, 'handoff', redisUrl) : spawnServer(SELF, kind, redisUrl)) }
}

/** One API call with the jar's cookies; the answer's cookies go back into the jar. Non-2xx throws. */
async function call (s: Server, jar: Jar, method: string, path: string, body?: unknown): Promise<unknown> {
  const headers: Record<string, string> = {}
  if (jar.header !== '') headers.cookie = jar.header
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await fetch(`${s.base}${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
  storeCookies(jar, res.headers.getSetCookie())
  const text = await res.text()
  if (res.status >= 300) throw new Error(`${s.kind} ${method} ${path}: ${res.status} ${text.slice(0, 200)}`)
  return JSON.parse(text)
}

const BILLING = { name: 'Bench User', line1: '1 Loop Street', city: 'Localhost', postcode: '12345', country: 'DE' }
const PAYMENT = { token: 'tok_bench_visa', brand: 'visa', last4: '4242' }

/** `count` carts with one item, made through the API `concurrency` at a time; ready for checkout when `checkout`. */
async function prepareCarts (s: Server, count: number, opts: { signedIn: boolean, checkout: boolean }): Promise<Jar[]> {
  const jars: Jar[] = []
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < count) {
      next++
      const jar = newJar()
      if (opts.signedIn) await call(s, jar, 'POST', '/bench/login', { user: `bench-${randomBytes(9).toString('base64url')}` })
      await call(s, jar, 'POST', '/api/cart/items', { sku: 'TEE-BLK', qty: 1 })
      if (opts.checkout) {
        await call(s, jar, 'PUT', '/api/cart/billing', BILLING)
        await call(s, jar, 'PUT', '/api/cart/payment', PAYMENT)
      }
      jars.push(jar)
    }
  }
  await Promise.all(Array.from({ length: Math.min(count, CONNECTIONS) }, worker))
  return jars
}

async function probe (s: Server): Promise<{ cpu: number, roundTrips: number, orders: number }> {
  const r = await fetch(`${s.base}/__cpu`)
  const u = await r.json() as { user: number, system: number, roundTrips: number, orders: number }
  return { cpu: u.user + u.system, roundTrips: u.roundTrips, orders: u.orders }
}

interface Run {
  rps: number
  requests: number
  p50: number
  p99: number
  errors: number
  non2xx: number
  /** First non-2xx answers, to say what went wrong. */
  failures: string[]
  cpuUsPerReq: number
  /** redis-server's CPU per request (all servers share it; the idle ones add their heartbeats). */
  redisCpuUsPerReq: number
  roundTripsPerReq: number
  commandsPerReq: number
  byCommand: Record<string, number>
  /** Orders the server placed during the run (checkout only). */
  orders: number
}

/**
 * POST /api/cart/items on `jars` (one per connection), cycling over the products so that no quantity reaches its
 * limit. Without `keepCookies` (bare Fastify, which sets none) there is no response callback: it costs the load
 * generator, which shares the 2 cores with the server, about a fifth of the bare ceiling (measured).
 */
function addRequest (jars: Jar[], failures: string[], used: Set<Jar>, keepCookies: boolean): AutocannonRequest {
  let next = 0
  const request: AutocannonRequest = {
    method: 'POST',
    path: '/api/cart/items',
    conn: { jar: null, n: 0 },
    setupRequest (req, context) {
      const conn = req.conn as { jar: Jar | null, n: number }
      if (conn.jar === null) { conn.jar = jars[next++ % jars.length] as Jar; used.add(conn.jar) }
      const sku = (PRODUCTS[conn.n++ % PRODUCTS.length] as typeof PRODUCTS[number]).sku
      context.jar = conn.jar
      req.headers = { 'content-type': 'application/json', ...(conn.jar.header === '' ? {} : { cookie: conn.jar.header }) }
      req.body = `{"sku":"${sku}","qty":1}`
      return req
    }
  }
  if (keepCookies) {
    request.onResponse = (status, body, context, headers) => {
      if (status >= 300 && failures.length < 3) failures.push(`${status} ${body.slice(0, 160)}`)
      storeCookies(context.jar as Jar, headers['set-cookie'] ?? headers['Set-Cookie'])
    }
  }
  return request
}

/**
 * POST /api/checkout, each request on the next prepared cart with a new Idempotency-Key. With `timing`, the time of
 * the last answer is kept there: with a fixed `amount`, autocannon reports its result at its next whole-second tick,
 * so its `duration` overstates the run.
 */
function checkoutRequest (jars: Jar[], failures: string[], timing?: { last: number }): AutocannonRequest {
  let next = 0
  const run = randomBytes(6).toString('hex')
  const request: AutocannonRequest = {
    method: 'POST',
    path: '/api/checkout',
    setupRequest (req) {
      const i = next++
      const jar = jars[i]
      req.headers = { 'idempotency-key': `bench-${run}-${i}`, ...(jar === undefined || jar.header === '' ? {} : { cookie: jar.header }) }
      return req
    }
  }
  if (timing !== undefined) {
    request.onResponse = (status, body) => {
      timing.last = performance.now()
      if (status >= 300 && failures.length < 3) failures.push(`${status} ${body.slice(0, 160)}`)
    }
  }
  return request
}

async function runOnce (s: Server, c: Case, redis: RedisHandle): Promise<Run> {
  const url = s.base
  const failures: string[] = []
  const measure = async (run: () => Promise<AutocannonResult>): Promise<{ r: AutocannonResult, p0: Awaited<ReturnType<typeof probe>>, p1: Awaited<ReturnType<typeof probe>>, before: Map<string, number>, after: Map<string, number>, redisCpuUs: number }> => {
    const before = commandStats(redis)
    const p0 = await probe(s)
    const rc0 = redisCpuUs(redis)
    const r = await run()
    const rc1 = redisCpuUs(redis)
    const p1 = await probe(s)
    const after = commandStats(redis)
    return { r, p0, p1, before, after, redisCpuUs: rc1 - rc0 }
  }
  let m: Awaited<ReturnType<typeof measure>>
  if (c === 'checkout') {
    if (s.kind === 'bare') {
      m = await measure(async () => await autocannon({ url, connections: CONNECTIONS, duration: BARE_CHECKOUT_S, requests: [checkoutRequest([], failures)] }))
    } else {
      const jars = await prepareCarts(s, CHECKOUTS, { signedIn: false, checkout: true })
      const timing = { last: 0 }
      m = await measure(async () => {
        const t0 = performance.now()
        const r = await autocannon({ url, connections: CONNECTIONS, amount: CHECKOUTS, requests: [checkoutRequest(jars, failures, timing)] })
        return { ...r, duration: (timing.last - t0) / 1000 }
      })
    }
  } else {
    const signedIn = c === 'add-user'
    if (WARMUP_S > 0) {
      const warm = await prepareCarts(s, CONNECTIONS, { signedIn, checkout: false })
      await autocannon({ url, connections: CONNECTIONS, duration: WARMUP_S, requests: [addRequest(warm, [], new Set(), s.kind !== 'bare')] })
    }
    const jars = await prepareCarts(s, CONNECTIONS, { signedIn, checkout: false })
    const used = new Set<Jar>()
    m = await measure(async () => await autocannon({ url, connections: CONNECTIONS, duration: DURATION_S, requests: [addRequest(jars, failures, used, s.kind !== 'bare')] }))
    if (used.size !== CONNECTIONS) throw new Error(`${s.kind}/${c}: ${used.size} carts used by ${CONNECTIONS} connections`)
  }
  const result = m.r
  const requests = result.requests.total
  const { data } = commandDelta(m.before, m.after)
  const total = Object.values(data).reduce((a, b) => a + b, 0)
  const per: Record<string, number> = {}
  for (const [k, v] of Object.entries(data)) per[k] = round(v / requests, 4)
  // The peers use plain commands (no scripts): for them every command is a round trip.
  const trips = isHandoff(s.kind) || s.kind === 'floor' ? m.p1.roundTrips - m.p0.roundTrips : total
  return {
    rps: requests / result.duration,
    requests,
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors + result.timeouts,
    non2xx: result.non2xx,
    failures,
    // includes the two /__cpu requests, negligible
    cpuUsPerReq: round((m.p1.cpu - m.p0.cpu) / requests, 2),
    redisCpuUsPerReq: round(m.redisCpuUs / requests, 2),
    roundTripsPerReq: round(trips / requests, 4),
    commandsPerReq: round(total / requests, 4),
    byCommand: per,
    orders: m.p1.orders - m.p0.orders
  }
}

export interface CartRow {
  kind: Kind
  case: Case
  rps: number
  ratioToBare: number
  ratiosPerRound: number[]
  requestsPerRound: number[]
  cpuUsPerReq: number
  redisCpuUsPerReq: number
  /** Server + Redis CPU per request over the floor's in the same round (cart adds only), median; per round. */
  cpuRatioToFloor: number | null
  cpuRatiosToFloorPerRound: number[]
  p50Ms: number
  p99Ms: number
  redisRoundTripsPerReq: number
  redisCommandsPerReq: number
  redisByCommand: Record<string, number>
  ordersPlaced: number
  errors: number
  failures: string[]
}

async function drive (): Promise<void> {
  const started = Date.now()
  const loadBefore = loadavg().map(x => round(x, 2))
  const redis = await startRedis({ private: true })
  const servers = new Map<Kind, Server>()
  try {
    for (const kind of KINDS) {
      progress(`cart: starting the ${kind} server`)
      servers.set(kind, await startServer(kind, redis.url))
    }
    // Checkout's first round should not pay for the JIT alone: a few checkouts before round 1.
    for (const handoff of [...servers.values()].filter(x => isHandoff(x.kind))) {
      progress(`cart: warming up checkout (${handoff.kind})`)
      const warm = await prepareCarts(handoff, 200, { signedIn: false, checkout: true })
      await autocannon({ url: handoff.base, connections: CONNECTIONS, amount: warm.length, requests: [checkoutRequest(warm, [])] })
    }

    const runs = new Map<string, Run[]>()
    const ratios = new Map<string, number[]>()
    const floorRatios = new Map<string, number[]>()
    for (let r = 0; r < ROUNDS; r++) {
      const bare = new Map<Case, number>()
      let floorCpu = NaN
      for (const { kind, case: c } of PLAN) {
        const id = `${kind}/${c}`
        progress(`cart: round ${r + 1}/${ROUNDS} ${id}`)
        const run = await runOnce(servers.get(kind) as Server, c, redis)
        runs.set(id, [...(runs.get(id) ?? []), run])
        if (kind === 'bare') bare.set(c === 'checkout' ? 'checkout' : 'add', run.rps)
        const base = bare.get(c === 'checkout' ? 'checkout' : 'add') as number
        ratios.set(id, [...(ratios.get(id) ?? []), run.rps / base])
        // Server + Redis CPU over the floor's (an anonymous add) in the same round; the floor runs right after bare.
        if (kind === 'floor') floorCpu = run.cpuUsPerReq + run.redisCpuUsPerReq
        const toFloor = c !== 'checkout' && kind !== 'bare' ? (run.cpuUsPerReq + run.redisCpuUsPerReq) / floorCpu : undefined
        if (toFloor !== undefined) floorRatios.set(id, [...(floorRatios.get(id) ?? []), toFloor])
        process.stderr.write(`\r\x1b[Kround ${r + 1} ${id.padEnd(24)} ${Math.round(run.rps).toString().padStart(6)} req/s  ${(run.rps / base).toFixed(2)}x bare  ` +
          `${run.cpuUsPerReq} + ${run.redisCpuUsPerReq} us CPU/req (server + Redis)${toFloor === undefined ? '' : `, ${toFloor.toFixed(2)}x floor`}  ${run.roundTripsPerReq} round trips/req  p50 ${run.p50} p99 ${run.p99} ms` +
          `${run.errors + run.non2xx > 0 ? `  errors ${run.errors} non2xx ${run.non2xx} ${run.failures.join(' | ')}` : ''}\n`)
      }
    }
    const rows: CartRow[] = PLAN.map(({ kind, case: c }) => {
      const id = `${kind}/${c}`
      const rs = runs.get(id) ?? []
      return {
        kind,
        case: c,
        rps: Math.round(median(rs.map(x => x.rps))),
        ratioToBare: round(median(ratios.get(id) ?? []), 3),
        ratiosPerRound: (ratios.get(id) ?? []).map(x => round(x, 3)),
        requestsPerRound: rs.map(x => x.requests),
        cpuUsPerReq: round(median(rs.map(x => x.cpuUsPerReq)), 2),
        redisCpuUsPerReq: round(median(rs.map(x => x.redisCpuUsPerReq)), 2),
        cpuRatioToFloor: floorRatios.has(id) ? round(median(floorRatios.get(id) ?? []), 3) : null,
        cpuRatiosToFloorPerRound: (floorRatios.get(id) ?? []).map(x => round(x, 3)),
        p50Ms: median(rs.map(x => x.p50)),
        p99Ms: median(rs.map(x => x.p99)),
        redisRoundTripsPerReq: round(median(rs.map(x => x.roundTripsPerReq)), 4),
        redisCommandsPerReq: round(median(rs.map(x => x.commandsPerReq)), 4),
        redisByCommand: rs[rs.length - 1]?.byCommand ?? {},
        ordersPlaced: rs.reduce((a, x) => a + x.orders, 0),
        errors: rs.reduce((a, x) => a + x.errors + x.non2xx, 0),
        failures: rs.flatMap(x => x.failures).slice(0, 3)
      }
    })
    const result = {
      date: new Date().toISOString(),
      node: process.version,
      cpus: `${cpus().length} x ${cpus()[0]?.model ?? '?'}`,
      redis: redis.cli('INFO', 'server').match(/redis_version:(\S+)/)?.[1] ?? '?',
      settings: { rounds: ROUNDS, durationS: DURATION_S, warmupS: WARMUP_S, connections: CONNECTIONS, checkoutsPerRound: CHECKOUTS, bareCheckoutS: BARE_CHECKOUT_S, pipelining: 1 },
      loadAverage: { before: loadBefore, after: loadavg().map(x => round(x, 2)) },
      rows,
      elapsedS: Math.round((Date.now() - started) / 1000)
    }
    const failed = rows.filter(x => x.errors > 0)
    writeResult('cart', result, markdown(result))
    if (failed.length > 0) {
      process.stderr.write(`errors in ${failed.map(x => `${x.kind}/${x.case}`).join(', ')}\n`)
      process.exitCode = 1
    }
  } finally {
    for (const s of servers.values()) await stopServer(s)
    await redis.stop()
  }
}

const LABEL: Record<Kind, string> = {
  bare: 'bare Fastify (same JSON work, no state)',
  floor: 'floor: bare Fastify + @fastify/cookie + one ioredis SET of the cart\'s JSON per add',
  'handoff-baseline': `fastify-handoff, baseline (${process.env.BENCH_BASELINE_LABEL ?? 'older checkout'})`,
  handoff: 'fastify-handoff (example shop: store, auth-session, cart, metrics)',
  'fsession-redis': '@fastify/session + connect-redis, cart in the session',
  'secure-session': '@fastify/secure-session, cart in the cookie'
}
const CASE_LABEL: Record<Case, string> = { add: 'cart add, anonymous', 'add-user': 'cart add, signed in', checkout: 'checkout' }

function markdown (r: { date: string, node: string, cpus: string, redis: string, settings: Record<string, number>, loadAverage: { before: number[], after: number[] }, rows: CartRow[], elapsedS: number }): string {
  const s = r.settings
  const lines = [
    '### Carts: add to cart and checkout, ratio to bare Fastify (bench/cart.ts)',
    '',
    `${r.date}, Node ${r.node}, ${r.cpus}, Redis ${r.redis} (private, loopback). autocannon ${s.connections as number} connections ` +
    `in the driver process, each server in its own process. Add: ${s.durationS as number} s per run after ${s.warmupS as number} s warm-up, ` +
    `one cart per connection. Checkout: ${s.checkoutsPerRound as number} checkouts per round, each on its own cart prepared through the API ` +
    `before the run (bare: ${s.bareCheckoutS as number} s). Runs interleaved, median of ${s.rounds as number} rounds. Load average (1/5/15 min) ` +
    `before: ${r.loadAverage.before.join(' / ')}, after: ${r.loadAverage.after.join(' / ')} (2 cores, shared machine).`,
    '',
    '| case | server | req/s | x bare (per round) | server CPU us/req | Redis CPU us/req | server + Redis CPU x floor (per round) | p50 / p99 ms | Redis round trips/req | Redis commands/req (commandstats, incl. inside Lua) |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---|'
  ]
  for (const row of r.rows) {
    const by = Object.entries(row.redisByCommand).map(([k, v]) => `${k} ${v}`).join(', ')
    lines.push(`| ${CASE_LABEL[row.case]} | ${LABEL[row.kind]} | ${row.rps} | ${row.ratioToBare.toFixed(2)} (${row.ratiosPerRound.map(x => x.toFixed(2)).join(' / ')}) | ` +
      `${row.cpuUsPerReq} | ${row.redisCpuUsPerReq} | ${row.cpuRatioToFloor === null ? '-' : `${row.cpuRatioToFloor.toFixed(2)} (${row.cpuRatiosToFloorPerRound.map(x => x.toFixed(2)).join(' / ')})`} | ${row.p50Ms} / ${row.p99Ms} | ${row.redisRoundTripsPerReq} | ${row.redisCommandsPerReq}${by === '' ? '' : ` (${by})`} |` +
      (row.errors > 0 ? ` **${row.errors} errors**: ${row.failures.join('; ').replace(/\|/g, '/')}` : ''))
  }
  const placed = r.rows.find(x => x.kind === 'handoff' && x.case === 'checkout')?.ordersPlaced ?? 0
  lines.push('',
    'Each connection keeps its cookies like a browser (the shop renews its signed cart-anchor cookie on every change; for ' +
    'secure-session the cookie is the cart). Add cycles over the shop\'s 5 products. The peers have no checkout. The ' +
    'checkout uses the shop\'s routes with a provider that answers at once (the example\'s FakeProvider writes each ' +
    `charge to the same Redis); ${placed} orders placed over the rounds. Round trips: for fastify-handoff, Repository calls ` +
    'counted in the server (a Lua script is one); for connect-redis every command. Commands: INFO commandstats delta, ' +
    'INFO and the subscriber heartbeat PING left out. CPU: the server process\'s (process.cpuUsage) and redis-server\'s ' +
    '(INFO cpu; every server shares it, so the idle ones\' heartbeats are in every row) per request; "x floor" is ' +
    'server + Redis over the floor\'s in the same round (the floor keeps the cart in its process and SETs its JSON: ' +
    'no read, no compare-and-set, no sealing, no signed cookie). Targets (issue 17): cart add <= 2x the floor\'s CPU ' +
    'and ahead of connect-redis by a clear margin in req/s; a first checkout in 3 Redis round trips. ' +
    'Latency in whole milliseconds (autocannon).',
    '', `Whole run: ${r.elapsedS} s.`, '')
  return lines.join('\n')
}

const argv = process.argv.slice(2)
if (argv[0] === '--server') {
  serve(argv[1] as Kind, argv[3] as string).catch((err: unknown) => { process.stderr.write(`${err instanceof Error ? err.stack ?? err.message : String(err)}\n`); process.exit(1) })
} else {
  drive().catch((err: unknown) => { process.stderr.write(`${err instanceof Error ? err.stack ?? err.message : String(err)}\n`); process.exit(1) })
}
