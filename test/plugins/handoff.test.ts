import t from 'tap'
import Fastify from 'fastify'
import handoff from '../../plugins/index.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'

t.test('the umbrella registers store, sessions, carts and metrics; TLS only on HTTPS', async t => {
  const app = Fastify()
  await app.register(handoff, { secret: SECRET, session: { cookie: { secure: false } }, cart: { secureCookie: false } })
  app.post('/add', async req => await req.cart.add({ sku: 'A', unitPrice: 100, currency: 'EUR' }))
  await app.ready()
  t.teardown(async () => await app.close())
  t.ok(app.hasPlugin('fastify-handoff/store'))
  t.ok(app.hasPlugin('fastify-handoff/auth-session'))
  t.ok(app.hasPlugin('fastify-handoff/cart'))
  t.ok(app.hasPlugin('fastify-handoff/metrics'))
  t.notOk(app.hasPlugin('fastify-handoff/tls-sessions'), 'plain HTTP: no TLS part')
  const res = await app.inject({ method: 'POST', url: '/add' })
  t.equal(res.statusCode, 200)
  t.match(res.json(), { items: [{ sku: 'A', quantity: 1 }], total: 100 })
  t.equal((await app.inject('/health')).json().status, 'ok')
})

t.test('parts can be left out; asking for TLS on plain HTTP is a clear startup error', async t => {
  const app = Fastify()
  await app.register(handoff, { secret: SECRET, cart: false, metrics: false })
  await app.ready()
  t.notOk(app.hasPlugin('fastify-handoff/cart'))
  t.notOk(app.hasPlugin('fastify-handoff/metrics'))
  await app.close()
  const bad = Fastify()
  await t.rejects(async () => { await bad.register(handoff, { secret: SECRET, tls: true }); await bad.ready() }, { code: 'FST_HANDOFF_INVALID_OPTION', message: /https/ })
})
