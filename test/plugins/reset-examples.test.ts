/**
 * Issue 13's example-level checks: three app instances (A, B, C: each its own store and Redis connections, in one
 * process) on one private redis-server, a browser-like cookie jar going from one to the other, then FLUSHALL.
 * B and C start after the user signed in (a deploy, a scale-out): they learn the entries by reading them, and have
 * seen no invalidation of their partition, which is the common case in production.
 * - a logout on A is seen on B and C within 1 s (the old cookie no longer signs anyone in);
 * - with a fresh login, an add to cart on A and an add on B both survive.
 */
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { handoffStore } from '../../plugins/store.js'
import { authSession } from '../../plugins/auth-session.js'
import { cart } from '../../plugins/cart.js'
import { startRedis } from '../../scripts/redis-server.js'

const SECRET = 'reset examples secret, at least 32 bytes long'
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

const redis = await startRedis({ private: true })
t.teardown(async () => await redis.stop())

async function instance (t: Test, name: string): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(fastifyCookie)
  await app.register(handoffStore, { secret: SECRET, redis: redis.url, prefix: `reset${process.pid}:` })
  await app.register(authSession, { cookie: { secure: false } })
  await app.register(cart, { secureCookie: false })
  app.post<{ Body: { user: string } }>('/login', async req => { await req.session.regenerate(); req.session.user = { id: req.body.user }; return { ok: true } })
  app.post('/logout', async req => { await req.session.destroy(); return { ok: true } })
  app.get('/me', async req => ({ instance: name, user: req.session.user?.id ?? null }))
  app.post<{ Body: { sku: string } }>('/items', async req => await req.cart.add({ sku: req.body.sku, quantity: 1, unitPrice: 1000, currency: 'EUR' }))
  app.get('/cart', async req => await req.cart.get())
  await app.ready()
  t.teardown(async () => await app.close())
  return app
}

type Jar = Map<string, string>
async function call (app: FastifyInstance, jar: Jar, method: 'GET' | 'POST', url: string, payload?: object): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await app.inject({ method, url, ...(payload === undefined ? {} : { payload }), headers: { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') } })
  for (const c of res.cookies as Array<{ name: string, value: string, maxAge?: number }>) {
    if (c.value === '' || c.maxAge === 0) jar.delete(c.name); else jar.set(c.name, c.value)
  }
  return { status: res.statusCode, body: res.json() }
}

const skus = (body: Record<string, unknown>): string[] => ((body.items ?? []) as Array<{ sku: string }>).map(i => i.sku).sort()

t.test('after FLUSHALL, a logout on A is seen on B and C within 1 s', async t => {
  const a = await instance(t, 'A')
  const jar: Jar = new Map()
  t.equal((await call(a, jar, 'POST', '/login', { user: 'alice' })).status, 200)
  const [b, c] = [await instance(t, 'B'), await instance(t, 'C')]
  for (const app of [a, b, c]) t.equal((await call(app, jar, 'GET', '/me')).body.user, 'alice', 'signed in everywhere (and cached)')
  redis.cli('FLUSHALL')
  // The stolen (or other tab's) cookie: what was valid before the logout.
  const old: Jar = new Map(jar)
  const logout = await call(a, jar, 'POST', '/logout')
  t.equal(logout.status, 200, 'the logout on A is acknowledged')
  const loggedOutAt = performance.now()
  for (const [name, app] of [['B', b], ['C', c]] as const) {
    let user: unknown = 'alice'
    while (user !== null && performance.now() - loggedOutAt < 1000) {
      user = (await call(app, new Map(old), 'GET', '/me')).body.user
      if (user !== null) await sleep(50)
    }
    t.equal(user, null, `${name} no longer honours the logged-out cookie within 1 s`)
  }
})

t.test('after FLUSHALL, with a fresh login, an add on A and an add on B both survive', async t => {
  const a = await instance(t, 'A')
  const jar: Jar = new Map()
  await call(a, jar, 'POST', '/login', { user: 'bob' })
  await call(a, jar, 'POST', '/items', { sku: 'HAT' })
  const [b, c] = [await instance(t, 'B'), await instance(t, 'C')]
  for (const app of [a, b, c]) t.same(skus((await call(app, jar, 'GET', '/cart')).body), ['HAT'], 'the cart before the flush, everywhere')
  redis.cli('FLUSHALL')
  const fresh: Jar = new Map()
  t.equal((await call(a, fresh, 'POST', '/login', { user: 'bob' })).status, 200, 'a fresh login (the session is gone)')
  const mug = await call(a, fresh, 'POST', '/items', { sku: 'MUG' })
  t.equal(mug.status, 200, 'add MUG on A acknowledged')
  const tee = await call(b, fresh, 'POST', '/items', { sku: 'TEE' })
  t.equal(tee.status, 200, 'add TEE on B acknowledged')
  await sleep(300)
  for (const [name, app] of [['A', a], ['B', b], ['C', c]] as const) {
    const got = skus((await call(app, fresh, 'GET', '/cart')).body)
    t.ok(got.includes('MUG') && got.includes('TEE'), `${name} sees both acknowledged adds (got ${got.join(', ')})`)
  }
})
