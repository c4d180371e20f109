/**
 * The @fastify/session store adapter (the migration path): @fastify/session itself, unchanged, with
 * TieredSessionStore as its store, on a private redis-server. Two Fastify apps with their own TieredStore stand for
 * two instances.
 */
import t from 'tap'
import Fastify, { type FastifyInstance, type FastifyRequest, type Session } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import fastifySession from '@fastify/session'
import { handoffStore } from '../../plugins/store.js'
import { TieredSessionStore } from '../../lib/session-store-adapter.js'
import { startRedis } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'

const SECRET = 'fastify-handoff adapter test secret, 32+ bytes'
const COOKIE_SECRET = 'a @fastify/session cookie secret of 32+ chars'
const PREFIX = `adaptertest${process.pid}:`

/** @fastify/session's request.session, typed by hand: fastify-handoff/auth-session declares request.session too. */
interface FSession {
  sessionId: string
  get: (key: string) => unknown
  set: (key: string, value: unknown) => void
  regenerate: () => Promise<void>
  destroy: () => Promise<void>
}
const sessionOf = (request: FastifyRequest): FSession => (request as unknown as { session: FSession }).session

const redis = await startRedis()
t.teardown(async () => { await redis.stop() })

async function buildApp (): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(fastifyCookie)
  // A 10 s coherence lease: with the default 250 ms a loaded machine let it lapse, and a warm read went to Redis.
  await app.register(handoffStore, { secret: SECRET, redis: redis.url, prefix: PREFIX, partitions: 64, coherence: { leaseMs: 10_000 } })
  // Options as a function: evaluated once the store plugin has decorated the instance.
  await app.register(fastifySession, (instance) => ({
    secret: COOKIE_SECRET,
    store: new TieredSessionStore<Session>(instance.handoff.store),
    saveUninitialized: false,
    cookie: { secure: false }
  }))
  app.post<{ Body: { n: number } }>('/set', async (request) => {
    sessionOf(request).set('n', request.body.n)
    sessionOf(request).set('cart', { items: ['book'] })
    return { id: sessionOf(request).sessionId }
  })
  app.get('/get', async (request) => ({ id: sessionOf(request).sessionId, n: sessionOf(request).get('n') ?? null }))
  app.post('/push', async (request) => {
    // @fastify/session hands nested objects to the application, which mutates them: they must not be frozen.
    const cart = sessionOf(request).get('cart') as { items: string[] }
    cart.items.push('pen')
    sessionOf(request).set('cart', cart)
    return { items: cart.items }
  })
  app.post('/regenerate', async (request) => {
    await sessionOf(request).regenerate()
    sessionOf(request).set('n', 99)
    return { id: sessionOf(request).sessionId }
  })
  app.post('/destroy', async (request) => {
    await sessionOf(request).destroy()
    return { ok: true }
  })
  await app.ready()
  return app
}

function cookieFrom (res: { headers: Record<string, unknown> }): string {
  const sc = res.headers['set-cookie']
  const first = Array.isArray(sc) ? sc[0] : sc
  if (typeof first !== 'string') throw new Error('no Set-Cookie')
  return first.split(';')[0] as string
}

t.test('@fastify/session keeps working with the adapter as its store, across instances', async t => {
  const a = await buildApp()
  const b = await buildApp()
  t.teardown(async () => { await a.close(); await b.close() })

  const res = await a.inject({ method: 'POST', url: '/set', payload: { n: 7 } })
  t.equal(res.statusCode, 200)
  const cookie = cookieFrom(res)
  const sid = (res.json() as { id: string }).id

  const reads0 = a.handoff.store.counters.repositoryReads
  t.same((await a.inject({ url: '/get', headers: { cookie } })).json(), { id: sid, n: 7 })
  t.equal(a.handoff.store.counters.repositoryReads, reads0, 'the warm read on the writing instance came from its local tier')

  t.same((await b.inject({ url: '/get', headers: { cookie } })).json(), { id: sid, n: 7 }, 'another instance reads it from Redis')

  const pushed = await b.inject({ method: 'POST', url: '/push', headers: { cookie } })
  t.equal(pushed.statusCode, 200, 'nested values handed to @fastify/session are mutable copies, not the frozen shared ones')
  t.same(pushed.json(), { items: ['book', 'pen'] })

  // What Redis holds is sealed: neither the field name nor the value is readable there.
  const key = a.handoff.store.key(sid, 'fsession')
  const raw = redis.cli('HGET', key, 'd')
  t.ok(raw.length > 0, 'the entry is in Redis')
  t.notMatch(raw, /book|cart/, 'sealed at rest')

  const regen = await a.inject({ method: 'POST', url: '/regenerate', headers: { cookie } })
  const cookie2 = cookieFrom(regen)
  const sid2 = (regen.json() as { id: string }).id
  t.not(sid2, sid, 'regenerate gives a new id')
  t.same((await b.inject({ url: '/get', headers: { cookie: cookie2 } })).json(), { id: sid2, n: 99 })
  t.equal((await b.inject({ url: '/get', headers: { cookie } })).json<{ n: number | null }>().n, null, 'the old id is gone')

  await a.inject({ method: 'POST', url: '/destroy', headers: { cookie: cookie2 } })
  t.equal((await a.inject({ url: '/get', headers: { cookie: cookie2 } })).json<{ n: number | null }>().n, null, 'destroyed')
  // @fastify/session's cookie carries no version: B drops its copy when the invalidation arrives (normally within
  // a millisecond, at worst the coherence lease later), not before.
  const started = Date.now()
  let n: number | null = 99
  await waitFor(async () => {
    n = (await b.inject({ url: '/get', headers: { cookie: cookie2 } })).json<{ n: number | null }>().n
    return n === null
  }, { timeoutMs: 5000, intervalMs: 5 })
  t.equal(n, null, `destroyed on the other instance too, after ${Date.now() - started} ms`)
})

t.test('a set still in flight after destroy does not bring the session back', async t => {
  const app = await buildApp()
  t.teardown(async () => { await app.close() })
  const store = new TieredSessionStore(app.handoff.store)
  const call = async (f: (cb: (err?: Error | null) => void) => void): Promise<void> => {
    await new Promise<void>((resolve, reject) => { f(err => { if (err != null) reject(err); else resolve() }) })
  }
  const cookie = { originalMaxAge: 60_000, expires: new Date(Date.now() + 60_000).toISOString() }
  await call(cb => { store.set('s-resurrect-0123456789abcdefghijk', { cookie, n: 1 }, cb) })
  await call(cb => { store.destroy('s-resurrect-0123456789abcdefghijk', cb) })
  // The save of a request that loaded the session before the logout:
  await call(cb => { store.set('s-resurrect-0123456789abcdefghijk', { cookie, n: 2 }, cb) })
  const got = await new Promise<unknown>((resolve, reject) => {
    store.get('s-resurrect-0123456789abcdefghijk', (err, s) => { if (err != null) reject(err); else resolve(s) })
  })
  t.equal(got, null, 'the tombstone refused the write')
})

t.test('adapter options are checked', async t => {
  const app = await buildApp()
  t.teardown(async () => { await app.close() })
  t.throws(() => new TieredSessionStore(app.handoff.store, { kind: 'bad kind' }), { code: 'FST_HANDOFF_INVALID_OPTION', message: /"kind"/ })
  t.throws(() => new TieredSessionStore(app.handoff.store, { ttlMs: 0 }), { code: 'FST_HANDOFF_INVALID_OPTION', message: /"ttlMs"/ })
  // The adapter satisfies @fastify/session's own store type.
  const typed: fastifySession.SessionStore = new TieredSessionStore<Session>(app.handoff.store)
  t.type(typed.get, 'function')
})

t.test('touch (express-session stores): extends the entry\'s expiry to the cookie\'s, without a new version', async t => {
  const app = await buildApp()
  t.teardown(async () => { await app.close() })
  const store = new TieredSessionStore<Session>(app.handoff.store)
  const cb = async (f: (done: (err?: unknown) => void) => void): Promise<void> => await new Promise((resolve, reject) => {
    f(err => { if (err === undefined || err === null) resolve(); else reject(err) })
  })
  const sid = 'touch-test-session-id-0123456789'
  const soon = { cookie: { expires: new Date(Date.now() + 10_000) } } as unknown as Session
  await cb(done => { store.set(sid, soon, done) })
  const key = app.handoff.store.key(sid, 'fsession')
  const before = await app.handoff.repository.get(key)
  t.ok(before !== null && before.expiresAt <= Date.now() + 10_500, 'stored with the cookie\'s expiry')
  const later = { cookie: { expires: new Date(Date.now() + 600_000) } }
  await cb(done => { store.touch(sid, later, done) })
  const after = await app.handoff.repository.get(key)
  t.ok(after !== null && after.expiresAt > Date.now() + 590_000, 'expiry extended to the new cookie\'s')
  t.equal(after?.version, before?.version, 'no rewrite: same version')
})
