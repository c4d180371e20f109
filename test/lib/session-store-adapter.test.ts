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

/** A store call with a node-style callback, as a promise. */
async function call (f: (cb: (err?: Error | null) => void) => void): Promise<void> {
  await new Promise<void>((resolve, reject) => { f(err => { if (err != null) reject(err); else resolve() }) })
}

t.test('a set still in flight after destroy does not bring the session back', async t => {
  const app = await buildApp()
  t.teardown(async () => { await app.close() })
  const store = new TieredSessionStore(app.handoff.store)
  const cookie = { originalMaxAge: 60_000, expires: new Date(Date.now() + 60_000).toISOString() }
  await call(cb => { store.set('s-resurrect-0123456789abcdefghijk', { cookie, n: 1 }, cb) })
  await call(cb => { store.destroy('s-resurrect-0123456789abcdefghijk', cb) })
  // The save of a request that loaded the session before the logout: refused, and said so (it used to report
  // success for a write that was not stored).
  await t.rejects(call(cb => { store.set('s-resurrect-0123456789abcdefghijk', { cookie, n: 2 }, cb) }),
    { code: 'FST_HANDOFF_SESSION_ENDED', statusCode: 409 }, 'the caller learns its save was not stored')
  const got = await new Promise<unknown>((resolve, reject) => {
    store.get('s-resurrect-0123456789abcdefghijk', (err, s) => { if (err != null) reject(err); else resolve(s) })
  })
  t.equal(got, null, 'the tombstone refused the write')
})

t.test('field names __proto__, constructor and prototype: not saved, and never read back from the store', async t => {
  const app = await buildApp()
  t.teardown(async () => { await app.close() })
  const store = new TieredSessionStore(app.handoff.store)
  const read = async (id: string): Promise<unknown> => await new Promise<unknown>((resolve, reject) => {
    store.get(id, (err, s) => { if (err != null) reject(err); else resolve(s) })
  })
  const cookie = { originalMaxAge: 60_000, expires: new Date(Date.now() + 60_000).toISOString() }
  for (const name of ['__proto__', 'constructor', 'prototype']) {
    const id = `s-reserved-${name}-0123456789abcdef`
    // As JSON.parse makes it: an own property of that name (what a stored session or a parsed body can hold).
    const session = JSON.parse(`{"n": 1, ${JSON.stringify(name)}: {"polluted": true}}`) as object
    await t.rejects(call(cb => { store.set(id, { ...session, cookie }, cb) }), TypeError, `set with a "${name}" field is refused`)
    t.equal(await read(id), null, 'and nothing was stored')
    // Written by something else under the adapter's key (an older version, another writer): not handed out.
    const corrupt = app.handoff.store.counters.corrupt
    await app.handoff.store.update(app.handoff.store.key(id, 'fsession'), () => ({ cookie, n: 1, [name]: { polluted: true } }))
    const got = await read(id)
    t.equal(got, null, `a stored session holding "${name}" reads as no session`)
    t.equal(app.handoff.store.counters.corrupt, corrupt + 1, 'counted as a corrupt entry')
  }
  await call(cb => { store.set('s-plain-0123456789abcdefghijklmn', { cookie, n: 2, constructorName: 'ok' }, cb) })
  t.match(await read('s-plain-0123456789abcdefghijklmn'), { n: 2, constructorName: 'ok' }, 'other names are fine')
})

t.test('adapter options are checked', async t => {
  const app = await buildApp()
  t.teardown(async () => { await app.close() })
  t.throws(() => new TieredSessionStore(app.handoff.store, { kind: 'bad kind' }), { code: 'FST_HANDOFF_INVALID_OPTION', message: /"kind"/ })
  t.throws(() => new TieredSessionStore(app.handoff.store, { ttlMs: 0 }), { code: 'FST_HANDOFF_INVALID_OPTION', message: /"ttlMs"/ })
  t.throws(() => new TieredSessionStore(app.handoff.store, { logger: {} as never }), { code: 'FST_HANDOFF_INVALID_OPTION', message: /"logger"/ })
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

t.test('a callback that throws is the caller\'s error: reported once, never an unhandled rejection, the process survives', async t => {
  const app = await buildApp()
  t.teardown(async () => { await app.close() })
  const reported: Array<{ obj: { err?: Error }, msg?: string }> = []
  const logger = { warn: () => {}, error: (obj: object, msg?: string) => { reported.push({ obj: obj as { err?: Error }, msg }) } }
  const store = new TieredSessionStore(app.handoff.store, { logger })
  const rejections: unknown[] = []
  const onRejection = (err: unknown): void => { rejections.push(err) }
  process.on('unhandledRejection', onRejection)
  t.teardown(() => { process.off('unhandledRejection', onRejection) })
  const sid = 'throwing-callback-0123456789abcdef'
  const calls = { set: 0, get: 0, destroy: 0 }
  const bug = (op: keyof typeof calls) => (): never => { calls[op]++; throw new Error(`caller bug in ${op}`) }
  const reportedCount = async (n: number): Promise<void> => {
    const deadline = Date.now() + 5000 // bounded: on a broken adapter nothing is ever reported
    while (reported.length < n && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
  }
  store.set(sid, { cookie: { originalMaxAge: 60_000 }, n: 1 }, bug('set'))
  await reportedCount(1)
  store.get(sid, bug('get'))
  await reportedCount(2)
  store.destroy(sid, bug('destroy'))
  await reportedCount(3)
  await new Promise(resolve => setTimeout(resolve, 50))
  t.same(calls, { set: 1, get: 1, destroy: 1 }, 'each callback ran once (not again with its own error)')
  t.same(reported.map(r => r.obj.err?.message), ['caller bug in set', 'caller bug in get', 'caller bug in destroy'], 'reported with the caller\'s own error')
  t.match(reported[0]?.msg, /callback threw \(its error, not the store's/)
  t.same(rejections, [], 'no unhandled rejection')
  const stored = await app.handoff.store.get(app.handoff.store.key(sid, 'fsession'))
  t.equal(stored, undefined, 'and the operations themselves completed (set, then destroy)')
})

t.test('@fastify/session with an async handler that sends without `return reply`: the process survives (child process)', async t => {
  const { spawn } = await import('node:child_process')
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/fsession-double-send.ts', redis.url], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr.on('data', (d: Buffer) => { err += d.toString() })
  const killer = setTimeout(() => { child.kill('SIGKILL') }, 60_000)
  const code = await new Promise<number | null>(resolve => child.on('exit', resolve))
  clearTimeout(killer)
  const events = out.trim().split('\n').filter(l => l !== '').map(l => JSON.parse(l) as { event: string, path?: string, status?: number })
  t.same(events.filter(e => e.event === 'response').map(e => [e.path, e.status]), [['/bug', 200], ['/bug', 200], ['/fine', 200]], 'every request answered')
  t.ok(events.some(e => e.event === 'alive'), 'still alive after them')
  t.notOk(events.some(e => e.event === 'unhandledRejection' || e.event === 'uncaughtException'), `no crash: ${out}`)
  t.equal(code, 0, 'exited normally')
  t.match(err, /FST_HANDOFF_CALLER_CALLBACK_THREW/, 'the caller\'s exception is reported')
  t.match(err, /ERR_HTTP_HEADERS_SENT[\s\S]*@fastify[\\/]session/, 'with its own stack: @fastify/session writing headers twice')
})
