// Preloaded (node --import) into each test process of @fastify/session's suite: one TieredStore on the redis-server
// at HANDOFF_REDIS_URL; store.cjs (installed as the suite's lib/store.js) builds a TieredSessionStore on it.
import { after } from 'node:test'
import { TieredStore } from '../../lib/tiered-store.ts'
import { RedisRepository } from '../../lib/repository/redis.ts'
import { TieredSessionStore } from '../../lib/session-store-adapter.ts'

const repository = new RedisRepository({ url: process.env.HANDOFF_REDIS_URL })
const store = new TieredStore({ repository, secret: 'fastify-session suite harness secret, 32+ bytes', prefix: `fsuite${process.pid}:`, partitions: 64 })
await store.start()
globalThis.__handoffSessionStore = (kind) => new TieredSessionStore(store, { kind })
// Printed at the end: proof that the suite's requests went through the adapter.
globalThis.__handoffCalls = { set: 0, get: 0, destroy: 0 }
after(async () => {
  process.stderr.write(`handoff adapter calls: ${JSON.stringify(globalThis.__handoffCalls)}\n`)
  await store.close()
  await repository.close() // the store does not own its repository
})
