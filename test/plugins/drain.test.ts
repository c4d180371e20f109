import t from 'tap'
import Fastify from 'fastify'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { Agent, request } from 'node:http'
import { handoffStore } from '../../plugins/store.js'
import { handoffDrain } from '../../plugins/drain.js'
import { handoff } from '../../plugins/handoff.js'
import { startRedis } from '../../scripts/redis-server.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'

interface Answer { status: number, body: string, connection: string | undefined }

async function get (port: number, path: string, agent: Agent | false = false, method = 'GET'): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, agent }, res => {
      let body = ''
      res.on('data', d => { body += String(d) })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, connection: res.headers.connection }))
    })
    req.on('error', reject)
    req.end()
  })
}

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

t.test('invalid options are refused at registration, naming the option', async t => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ drainMs: -1 }, 'drainMs'],
    [{ drainMs: '5s' }, 'drainMs'],
    [{ drainMs: 1.5 }, 'drainMs'],
    [{ closeTimeoutMs: -5 }, 'closeTimeoutMs'],
    [{ readinessEndpoint: 'ready' }, 'readinessEndpoint'],
    [{ readinessEndpoint: true }, 'readinessEndpoint'],
    [{ signals: 'SIGTERM' }, 'signals'],
    [{ signals: ['SIGKILL'] }, 'signals'],
    [{ signals: ['SIGTERM', 15] }, 'signals']
  ]
  for (const [opts, name] of cases) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(handoffDrain, opts as never); await app.ready() },
      { code: 'FST_HANDOFF_INVALID_OPTION', message: new RegExp(`"${name}"`) }, JSON.stringify(opts))
    await app.close()
  }
})

t.test('drain: readiness 503 at once, keep-alive answers close their connection, serving goes on for drainMs, then close; in-flight work and the store finish last', async t => {
  const redis = await startRedis({ private: true })
  t.teardown(async () => await redis.stop())
  const app = Fastify()
  await app.register(handoffStore, { secret: SECRET, redis: redis.url })
  await app.register(handoffDrain, { drainMs: 1500 })
  const order: string[] = []
  const store = app.handoff.store
  const storeClose = store.close.bind(store)
  store.close = async () => { order.push('store closed'); await storeClose() }
  app.server.on('close', () => order.push('server closed'))
  // A request that is in flight from before the drain until after the close has begun (however slow the machine).
  let handlerStarted = (): void => {}
  const started = new Promise<void>(resolve => { handlerStarted = resolve })
  let closeBegan = (): void => {}
  const closing = new Promise<void>(resolve => { closeBegan = resolve })
  app.addHook('preClose', async () => { closeBegan() })
  app.post('/slow-write', async () => {
    handlerStarted()
    await closing
    await sleep(100)
    const r = await store.update(store.key('drain', 'counter'), cur => ({ n: ((cur as { n: number } | undefined)?.n ?? 0) + 1 }))
    return { version: r.version }
  })
  app.get('/hello', async () => ({ hello: 'world' }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as { port: number }).port
  const keepAlive = new Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => keepAlive.destroy())

  t.same(await get(port, '/ready'), { status: 200, body: '{"status":"ready"}', connection: 'close' }, 'ready while serving')
  const before = await get(port, '/hello', keepAlive)
  t.equal(before.connection, 'keep-alive', 'keep-alive before the drain')
  t.equal(app.handoffDraining, false)

  const inFlight = get(port, '/slow-write', false, 'POST')
  await started
  const drainStarted = Date.now()
  const drained = app.handoffDrain()
  t.equal(app.handoffDrain(), app.handoffDrain(), 'a second call returns the same promise')
  t.equal(app.handoffDraining, true, 'draining from the call on')
  const ready = await get(port, '/ready')
  t.equal(ready.status, 503, 'readiness answers 503 while draining')
  t.same(JSON.parse(ready.body), { status: 'draining' })
  const during = await get(port, '/hello', keepAlive)
  t.equal(during.status, 200, 'still serving on the keep-alive connection')
  t.equal(during.connection, 'close', 'and telling the client to close it')
  t.equal((await get(port, '/hello')).status, 200, 'new connections are still served during the drain period')
  await drained
  const elapsed = Date.now() - drainStarted
  t.ok(elapsed >= 1500, `closed after the drain period (${elapsed} ms)`)
  const slow = await inFlight
  t.equal(slow.status, 200, 'the request in flight from before the drain to after the close began completed')
  t.same(JSON.parse(slow.body), { version: 1 })
  t.same(order, ['server closed', 'store closed'], 'the store (and its Redis connections) closed after the server')
  await t.rejects(get(port, '/hello'), { code: 'ECONNREFUSED' }, 'no longer accepting connections')
})

t.test('a plain fastify.close() also reports draining; drainMs 0 closes at once', async t => {
  const app = Fastify()
  await app.register(handoffDrain, { drainMs: 0, readinessEndpoint: '/probe/ready' })
  await app.ready()
  t.equal((await app.inject('/probe/ready')).statusCode, 200)
  await app.handoffDrain()
  t.equal(app.handoffDraining, true)

  const other = Fastify()
  await other.register(handoffDrain, { readinessEndpoint: false })
  await other.ready()
  t.equal((await other.inject('/ready')).statusCode, 404, 'readinessEndpoint: false: no route')
  await other.close()
  t.equal(other.handoffDraining, true, 'fastify.close() alone counts as draining')
})

t.test('the umbrella plugin registers it (readiness and a draining gauge); drain: false leaves it out', async t => {
  const app = Fastify()
  await app.register(handoff, { secret: SECRET, session: { cookie: { secure: false } }, cart: { secureCookie: false }, drain: { drainMs: 0 } })
  await app.ready()
  t.equal((await app.inject('/ready')).statusCode, 200)
  t.match((await app.inject('/metrics')).body, /^handoff_draining 0$/m)
  t.equal((await app.inject('/health')).statusCode, 200)
  await app.close()

  const without = Fastify()
  await without.register(handoff, { secret: SECRET, session: false, drain: false })
  await without.ready()
  t.equal((await without.inject('/ready')).statusCode, 404)
  t.equal(without.hasDecorator('handoffDrain'), false)
  await without.close()
})

t.test('signals: SIGTERM drains (readiness 503, still serving), then the process closes and exits 0', async t => {
  const child = spawn(process.execPath, ['--import', 'tsx', new URL('../fixtures/drain-app.ts', import.meta.url).pathname], {
    env: { ...process.env, DRAIN_MS: '800' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const exited = new Promise<number | null>(resolve => child.once('exit', code => resolve(code)))
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  const port = await new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', line => resolve((JSON.parse(line) as { port: number }).port))
    child.once('exit', code => reject(new Error(`fixture exited with ${String(code)}`)))
  })
  t.equal((await get(port, '/ready')).status, 200)
  const sent = Date.now()
  child.kill('SIGTERM')
  await sleep(100)
  t.equal((await get(port, '/ready')).status, 503, 'draining after SIGTERM')
  t.equal((await get(port, '/hello')).status, 200, 'and still serving')
  t.equal(await exited, 0, 'exits 0 once closed')
  t.ok(Date.now() - sent >= 800, 'not before the drain period')
})
