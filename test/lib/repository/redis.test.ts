import t from 'tap'
import { RedisRepository } from '../../../lib/repository/redis.js'
import { startRedis } from '../../../scripts/redis-server.js'
import { repositoryContract } from './contract.js'

const server = await startRedis()
const repo = new RedisRepository({ url: server.url })
await repo.connect()
t.teardown(async () => { await repo.close(); await server.stop() })
repositoryContract(t, 'redis', async () => repo)

t.test('redis: one Lua script per write, one command per read', async t => {
  const k = 'cmdcount:{p2}:a:k'
  server.cli('CONFIG', 'RESETSTAT')
  await repo.compareAndSet(k, null, Buffer.from('a'), 10_000)
  await repo.compareAndSet(k, 1, Buffer.from('b'), 10_000)
  await repo.get(k)
  const stats = server.cli('INFO', 'commandstats')
  const calls = (cmd: string): number => Number(new RegExp(`cmdstat_${cmd}:calls=(\\d+)`).exec(stats)?.[1] ?? 0)
  t.equal(calls('evalsha') + calls('eval'), 2, 'each write is one script call')
  // commandstats also counts the HMGET each script runs inside Redis: one per script, plus the read's own.
  t.equal(calls('hmget') - calls('evalsha') - calls('eval'), 1, 'a read is one HMGET')
})

t.test('redis: a foreign value under our key is a clear FST_HANDOFF_CORRUPT_ENTRY, not a crash', async t => {
  server.cli('SET', 'foreign:{p1}:x:k', 'plain string')
  await t.rejects(repo.get('foreign:{p1}:x:k'), { code: 'FST_HANDOFF_CORRUPT_ENTRY' })
  const err = await repo.get('foreign:{p1}:x:k').catch((e: Error) => e)
  t.notMatch((err as Error).message, /foreign:\{p1\}:x:k/, 'the message names the entry by a hash: keys hold session ids')
  await t.rejects(repo.compareAndSet('foreign:{p1}:x:k', 1, Buffer.from('v'), 1000), { code: 'FST_HANDOFF_CORRUPT_ENTRY' })
  server.cli('HSET', 'foreign:{p1}:y:k', 'v', 'not-a-number', 'd', 'x')
  await t.rejects(repo.get('foreign:{p1}:y:k'), { code: 'FST_HANDOFF_CORRUPT_ENTRY' })
})

t.test('redis: checkServer accepts Redis 7 and warns about eviction policies', async t => {
  server.cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction')
  t.same(await repo.checkServer(), [])
  server.cli('CONFIG', 'SET', 'maxmemory-policy', 'volatile-lru')
  const w = await repo.checkServer()
  t.equal(w.length, 1)
  t.match(w[0], /volatile-lru.*evicted/)
  server.cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction')
})
