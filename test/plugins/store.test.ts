import t from 'tap'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import { handoffStore } from '../../plugins/store.js'
import { startRedis } from '../../scripts/redis-server.js'
import { countSocketWrites, streamOf } from '../helpers/socket-writes.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'

t.test('registers with the embedded repository by default and decorates fastify.handoff', async t => {
  const app = Fastify()
  await app.register(handoffStore, { secret: SECRET })
  await app.ready()
  t.equal(app.handoff.repository.kind, 'memory')
  const k = app.handoff.store.key('x', 'counter')
  await app.handoff.store.update(k, () => ({ n: 1 }))
  t.match(await app.handoff.store.get(k), { value: { n: 1 } })
  await app.close()
  await t.rejects(app.handoff.repository.get(k), { code: 'FST_HANDOFF_CLOSED' }, 'onClose closed the repository it built')
})

t.test('clear errors for missing or bad options, at registration', async t => {
  await t.rejects(async () => { const app = Fastify(); await app.register(handoffStore, {} as never); await app.ready() },
    { code: 'FST_HANDOFF_INVALID_OPTION', message: /secret/ })
  await t.rejects(async () => { const app = Fastify(); await app.register(handoffStore, { secret: 'short' }); await app.ready() },
    { code: 'FST_HANDOFF_INVALID_OPTION', message: /32 bytes/ })
  await t.rejects(async () => { const app = Fastify(); await app.register(handoffStore, { secret: SECRET, partitions: 1000 }); await app.ready() },
    { code: 'FST_HANDOFF_INVALID_OPTION', message: /partitions/ })
  await t.rejects(async () => { const app = Fastify(); await app.register(handoffStore, { secret: SECRET, redis: 'redis://127.0.0.1:1', durability: { replicas: 1, timeoutMs: 1500 } }); await app.ready() },
    { code: 'FST_HANDOFF_INVALID_OPTION', message: /durability.timeoutMs.*below commandTimeoutMs/ })
  for (const bad of [-1, 1.5, '2', null]) {
    await t.rejects(async () => { const app = Fastify(); await app.register(handoffStore, { secret: SECRET, retryAfterSeconds: bad as number }); await app.ready() },
      { code: 'FST_HANDOFF_INVALID_OPTION', message: /retryAfterSeconds/ }, `retryAfterSeconds ${JSON.stringify(bad)}`)
  }
  // Refused before a Redis client exists: a client made first would go on reconnecting after the failed boot.
  const sockets = (): number => process.getActiveResourcesInfo().filter(r => r === 'TCPSocketWrap' || r === 'TCPConnectWrap').length
  const open = sockets()
  await t.rejects(async () => { const app = Fastify(); await app.register(handoffStore, { secret: SECRET, redis: 'redis://127.0.0.1:1', retryAfterSeconds: -1 }); await app.ready() },
    { code: 'FST_HANDOFF_INVALID_OPTION', message: /retryAfterSeconds/ })
  t.equal(sockets(), open, 'no connection left behind')
})

t.test('Redis by URL: connections are closed on fastify.close(); a client passed in is left open', async t => {
  const server = await startRedis()
  t.teardown(async () => await server.stop())
  const app = Fastify()
  await app.register(handoffStore, { secret: SECRET, redis: server.url })
  await app.ready()
  t.equal(app.handoff.repository.kind, 'redis')
  await app.handoff.store.update(app.handoff.store.key('y', 'counter'), () => ({ n: 1 }))
  const before = Number(/connected_clients:(\d+)/.exec(server.cli('INFO', 'clients'))?.[1])
  await app.close()
  const after = Number(/connected_clients:(\d+)/.exec(server.cli('INFO', 'clients'))?.[1])
  t.equal(before - after, 2, 'command and subscriber connections closed')

  const mine = new Redis(server.url, { enableOfflineQueue: false, maxRetriesPerRequest: 0 })
  await new Promise(resolve => mine.once('ready', resolve))
  const app2 = Fastify()
  await app2.register(handoffStore, { secret: SECRET, redis: mine })
  await app2.ready()
  await app2.close()
  t.equal(await mine.ping(), 'PONG', 'the caller\'s client is still usable')
  mine.disconnect()
})

t.test('coalesceWrites reaches the repository: one socket write per turn by default, one per command when false', async t => {
  await t.rejects(async () => { const app = Fastify(); await app.register(handoffStore, { secret: SECRET, coalesceWrites: 'no' as never }); await app.ready() },
    { code: 'FST_HANDOFF_INVALID_OPTION', message: /coalesceWrites/ })
  const server = await startRedis({ private: true })
  t.teardown(async () => { await server.stop() })
  for (const [coalesceWrites, expected] of [[undefined, 1], [false, 12]] as const) {
    const app = Fastify()
    await app.register(handoffStore, { secret: SECRET, redis: server.url, ...(coalesceWrites === undefined ? {} : { coalesceWrites }) })
    await app.ready()
    const repository = app.handoff.repository
    await repository.get('warm:{p1}:x')
    const writes = countSocketWrites(streamOf((repository as unknown as { client: unknown }).client))
    await Promise.all(Array.from({ length: 12 }, async (_, i) => await repository.get(`coalesce-option:{p${i}}:k`)))
    t.equal(writes(), expected, `coalesceWrites ${String(coalesceWrites)}: ${expected} socket write(s) for 12 commands issued in one turn`)
    await app.close()
  }
})
