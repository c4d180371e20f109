import t from 'tap'
import Fastify from 'fastify'
import { request } from 'node:http'
import { Redis } from 'ioredis'
import { handoffStore } from '../../plugins/store.js'
import { startRedis } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
const clients = (cli: (...a: string[]) => string): number => Number(/connected_clients:(\d+)/.exec(cli('INFO', 'clients'))?.[1])
const pubsub = (cli: (...a: string[]) => string): number => cli('PUBSUB', 'SHARDNUMSUB', 'handoff:{p0}:inv').split('\n').map(Number)[1] ?? -1

t.test('fastify.close() finishes in-flight writes, then unsubscribes and quits its Redis connections', async t => {
  const server = await startRedis({ private: true })
  t.teardown(async () => await server.stop())
  const baseline = clients(server.cli)
  const app = Fastify()
  await app.register(handoffStore, { secret: SECRET, redis: server.url })
  // The handler holds until the test releases it, once close() is under way: in flight for as long as needed.
  let arrived = false
  let release = (): void => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  app.post('/slow-write', async () => {
    arrived = true
    await gate
    const r = await app.handoff.store.update(app.handoff.store.key('closing', 'counter'), () => ({ n: 1 }))
    return { version: r.version }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.equal(pubsub(server.cli), 1, 'subscribed while running')
  t.equal(clients(server.cli) - baseline, 2, 'a command and a subscriber connection')
  const port = (app.server.address() as { port: number }).port
  const inFlight = new Promise<{ status: number, body: string }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/slow-write', method: 'POST', agent: false }, res => {
      let body = ''
      res.on('data', d => { body += String(d) })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
  t.ok(await waitFor(() => arrived), 'the request is in its handler')
  const closing = app.close()
  t.ok(await waitFor(() => !app.server.listening), 'close() has stopped the listener')
  release()
  const res = await inFlight
  await closing
  t.equal(res.status, 200, 'the request in flight when close() was called completed')
  t.same(JSON.parse(res.body), { version: 1 })
  t.equal(server.cli('HGET', 'handoff:{p' + String(/\{p(\d+)\}/.exec(app.handoff.store.key('closing', 'counter'))?.[1]) + '}:closing:counter', 'v'), '1', 'its write is stored')
  t.equal(pubsub(server.cli), 0, 'unsubscribed')
  t.equal(clients(server.cli), baseline, 'every connection it opened is closed')
})

t.test('a client passed in is left open for its owner', async t => {
  const server = await startRedis({ private: true })
  t.teardown(async () => await server.stop())
  const mine = new Redis(server.url, { enableOfflineQueue: false, maxRetriesPerRequest: 0 })
  await new Promise(resolve => mine.once('ready', resolve))
  t.teardown(() => mine.disconnect())
  const app = Fastify()
  await app.register(handoffStore, { secret: SECRET, redis: mine })
  await app.ready()
  await app.close()
  t.equal(await mine.ping(), 'PONG')
  t.equal(pubsub(server.cli), 0, 'but the subscriber the store opened is gone')
})
