import t from 'tap'
import Fastify from 'fastify'
import { request } from 'node:http'
import { Redis } from 'ioredis'
import { handoffStore } from '../../plugins/store.js'
import { startRedis } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
const clients = (cli: (...a: string[]) => string): number => Number(/connected_clients:(\d+)/.exec(cli('INFO', 'clients'))?.[1])
const numsub = (cli: (...a: string[]) => string, command: string, channel: string): number => cli('PUBSUB', command, channel).split('\n').map(Number)[1] ?? -1
/** Subscribers of a partition's channel (pub/sub), or of the tracking redirect channel (tracking). */
const subscribers = (cli: (...a: string[]) => string, transport: 'pubsub' | 'tracking'): number =>
  transport === 'pubsub' ? numsub(cli, 'SHARDNUMSUB', 'handoff:{p0}:inv') : numsub(cli, 'NUMSUB', '__redis__:invalidate')

for (const transport of ['pubsub', 'tracking'] as const) {
  t.test(`fastify.close() finishes in-flight writes, then unsubscribes and quits its Redis connections (${transport})`, async t => {
    const server = await startRedis({ private: true })
    t.teardown(async () => await server.stop())
    const baseline = clients(server.cli)
    const app = Fastify()
    await app.register(handoffStore, { secret: SECRET, redis: server.url, coherence: { transport } })
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
    t.equal(subscribers(server.cli, transport), 1, 'subscribed while running')
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
    t.equal(subscribers(server.cli, transport), 0, 'unsubscribed')
    t.equal(clients(server.cli), baseline, 'every connection it opened is closed')
  })

  t.test(`a client passed in is left open for its owner (${transport})`, async t => {
    const server = await startRedis({ private: true })
    t.teardown(async () => await server.stop())
    const mine = new Redis(server.url, { enableOfflineQueue: false, maxRetriesPerRequest: 0 })
    await new Promise(resolve => mine.once('ready', resolve))
    t.teardown(() => mine.disconnect())
    const app = Fastify()
    await app.register(handoffStore, { secret: SECRET, redis: mine, coherence: { transport } })
    await app.ready()
    await app.close()
    t.equal(await mine.ping(), 'PONG')
    t.equal(subscribers(server.cli, transport), 0, 'but the subscriber the store opened is gone')
  })
}
