/**
 * request.session.degraded: an instance cut off from Redis answers a session from its own copy, says so, and stops
 * answering it within the store's maxDegradedMs (then 503, like writes).
 */
import t from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { startRedis } from '../../scripts/redis-server.js'
import { startProxy } from '../helpers/proxy.js'
import { buildApp } from '../fixtures/session-instance.js'

const MAX_DEGRADED = 1500
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

t.test('a partitioned instance flags the session degraded, then stops honouring it within maxDegradedMs + 1 s', async t => {
  const redis = await startRedis({ private: true })
  t.teardown(async () => await redis.stop())
  const proxy = await startProxy(redis.port)
  t.teardown(async () => await proxy.close())
  const app = await buildApp({ redisUrl: `redis://127.0.0.1:${proxy.port}`, store: { commandTimeoutMs: 1000, maxDegradedMs: MAX_DEGRADED } })
  app.get('/whoami', async request => ({ user: request.session.user?.id ?? null, degraded: request.session.degraded }))
  await app.ready()
  t.teardown(async () => { proxy.restore(); await app.close() })

  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'alice' } })
  const cookie = cookieOf(login)
  const whoami = async (): Promise<LightMyRequestResponse> => await app.inject({ method: 'GET', url: '/whoami', headers: { cookie } })
  t.same((await whoami()).json(), { user: 'alice', degraded: false }, 'connected: not degraded')

  proxy.blackhole()
  const cutAt = performance.now()
  let degraded = 0
  let refusedAfter = Number.POSITIVE_INFINITY
  while (performance.now() - cutAt < MAX_DEGRADED + 3000) {
    const res = await whoami()
    if (res.statusCode === 503) { refusedAfter = performance.now() - cutAt; break }
    const body = res.json<{ user: string | null, degraded: boolean }>()
    if (body.degraded) { degraded++; t.equal(body.user, 'alice') }
    await sleep(50)
  }
  t.ok(degraded > 0, `cut off, the session answered flagged degraded (${degraded} requests)`)
  t.ok(refusedAfter <= MAX_DEGRADED + 1000, `then 503 after ${refusedAfter.toFixed(0)} ms (maxDegradedMs ${MAX_DEGRADED})`)
})

function cookieOf (res: LightMyRequestResponse): string {
  const sc = res.headers['set-cookie']
  for (const c of Array.isArray(sc) ? sc : sc === undefined ? [] : [sc]) {
    const first = c.split(';')[0] as string
    if (first.startsWith('handoff.sid=')) return first
  }
  throw new Error(`no session cookie: ${res.statusCode} ${res.body}`)
}
