import t from 'tap'
import { RedisRepository } from '../../../lib/repository/redis.js'
import { ShardedRepository } from '../../../lib/repository/sharded.js'
import { TieredStore } from '../../../lib/tiered-store.js'
import { startRedis, type RedisHandle } from '../../../scripts/redis-server.js'
import { repositoryContract } from './contract.js'
import { waitFor } from '../../helpers/wait-for.js'
import { countSocketWrites, streamOf } from '../../helpers/socket-writes.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'

const servers: RedisHandle[] = []
for (let i = 0; i < 3; i++) servers.push(await startRedis({ private: true }))
const make = (): ShardedRepository => new ShardedRepository(servers.map((s, i) => ({
  id: `node-${i}`, repository: new RedisRepository({ url: s.url })
})))
const repo = make()
await repo.connect()
t.teardown(async () => { await repo.close(); for (const s of servers) await s.stop() })

repositoryContract(t, 'redis-sharded', async () => repo)

t.test('sharded: partitions spread over every node by rendezvous, coherence across instances', async t => {
  const other = make()
  const a = new TieredStore({ repository: repo, secret: SECRET, partitions: 256 })
  const b = new TieredStore({ repository: other, secret: SECRET, partitions: 256 })
  await a.start()
  await b.start()
  t.teardown(async () => { await a.close(); await b.close(); await other.close() })
  const keys = Array.from({ length: 300 }, (_, i) => a.key(`sh-${i}`, 'cart'))
  for (const k of keys) await a.update(k, () => ({ v: 1 }))
  const sizes = servers.map(s => Number(s.cli('DBSIZE')))
  for (const n of sizes) t.ok(n > 60, `each node holds a share (${sizes.join(', ')})`)
  for (const k of keys.slice(0, 30)) await b.get(k)
  const before = b.counters.invalidations
  for (const k of keys.slice(0, 30)) await a.update(k, () => ({ v: 2 }))
  await waitFor(() => b.counters.invalidations >= before + 30, { timeoutMs: 5000, intervalMs: 5 })
  for (const k of keys.slice(0, 30)) t.match(await b.get(k), { version: 2, value: { v: 2 } })
})

t.test('sharded: one node down fails only its own partitions', async t => {
  const s = new TieredStore({ repository: repo, secret: SECRET, partitions: 256, coherence: false })
  const keys = Array.from({ length: 60 }, (_, i) => s.key(`down-${i}`, 'cart'))
  await (servers[2] as RedisHandle).kill()
  let ok = 0
  let unavailable = 0
  for (const k of keys) {
    try { await s.update(k, () => ({ v: 1 })); ok++ } catch (err) { if ((err as { code?: string }).code === 'FST_HANDOFF_UNAVAILABLE') unavailable++ }
  }
  t.ok(ok > 20 && unavailable > 5, `${ok} writes on live nodes, ${unavailable} refused with 503 on the dead one`)
  t.equal(ok + unavailable, keys.length, 'no other outcome')
  await (servers[2] as RedisHandle).restart()
})

t.test('sharded: a frozen node (SIGSTOP) trips only its own breaker; the other nodes keep serving', async t => {
  const timeoutMs = 300
  const sharded = new ShardedRepository(servers.map((s, i) => ({
    id: `node-${i}`, repository: new RedisRepository({ url: s.url, commandTimeoutMs: timeoutMs })
  })))
  await sharded.connect()
  const frozen = servers[1] as RedisHandle
  t.teardown(async () => { frozen.resume(); await sharded.close() })
  const s = new TieredStore({ repository: sharded, secret: SECRET, partitions: 256, coherence: false })
  const keys = Array.from({ length: 60 }, (_, i) => s.key(`freeze-${i}`, 'cart'))
  const onFrozen = keys.filter(k => sharded.nodeFor(k) === sharded.nodes[1]?.repository)
  const elsewhere = keys.filter(k => !onFrozen.includes(k))
  t.ok(onFrozen.length > 5 && elsewhere.length > 20, `${onFrozen.length} keys on the frozen node, ${elsewhere.length} elsewhere`)

  frozen.pause()
  await t.rejects(s.update(onFrozen[0] as string, () => ({ v: 1 })), { code: 'FST_HANDOFF_UNAVAILABLE' }, 'the first command times out')
  t.same(sharded.unavailableNodes(), ['node-1'])
  for (const k of onFrozen) {
    const started = performance.now()
    await t.rejects(s.update(k, () => ({ v: 1 })), { code: 'FST_HANDOFF_UNAVAILABLE' })
    t.ok(performance.now() - started < timeoutMs, 'then at once, without waiting for a timeout')
  }
  for (const k of elsewhere) t.match(await s.update(k, () => ({ v: 1 })), { written: true }, 'the other nodes take writes')

  frozen.resume()
  const back = await waitFor(async () => await s.update(onFrozen[0] as string, () => ({ v: 2 })).then(() => true, () => false),
    { timeoutMs: 5000, intervalMs: 50 })
  t.ok(back, 'the probe closes the breaker once the node answers')
  t.same(sharded.unavailableNodes(), [])
})

t.test('sharded: one node\'s subscriber killed (CLIENT KILL TYPE pubsub) resyncs only that node\'s partitions', async t => {
  const sharded = make()
  // A lease a loaded machine does not lapse by itself while the test looks (a lapse drops every copy of the node).
  const s = new TieredStore({ repository: sharded, secret: SECRET, partitions: 256, coherence: { leaseMs: 2000 } })
  await s.start()
  t.teardown(async () => { await s.close(); await sharded.close() })
  const keys = Array.from({ length: 60 }, (_, i) => s.key(`resync-${i}`, 'cart'))
  const killedNode = sharded.nodes[0]?.repository
  const onKilled = keys.filter(k => sharded.nodeFor(k) === killedNode)
  const elsewhere = keys.filter(k => !onKilled.includes(k))
  t.ok(onKilled.length > 5 && elsewhere.length > 20, `${onKilled.length} keys on the node whose subscriber is killed, ${elsewhere.length} elsewhere`)
  for (const k of keys) await s.update(k, () => ({ v: 1 }))
  for (const k of keys) t.match(s.getLocal(k), { version: 1 }, 'every key has a local copy')

  const resyncs = s.counters.resyncs
  ;(servers[0] as RedisHandle).cli('CLIENT', 'KILL', 'TYPE', 'pubsub')
  t.ok(await waitFor(() => s.counters.resyncs > resyncs, { timeoutMs: 5000 }), 'the node\'s subscriber reconnected: a resync')
  t.ok(await waitFor(() => s.health().localReads, { timeoutMs: 5000 }), 'and the lease is held again')
  const reads = s.counters.repositoryReads
  for (const k of elsewhere) t.match(await s.get(k), { version: 1, source: 'local' }, 'copies of the other nodes\' partitions still answer')
  t.equal(s.counters.repositoryReads, reads, 'no read for them')
  for (const k of onKilled) t.match(await s.get(k), { version: 1, source: 'repository' }, 'copies of the resynced node\'s partitions are not trusted')
  t.equal(s.counters.repositoryReads, reads + onKilled.length, 'one read each')
})

t.test('sharded: the commands of one turn leave in one socket write per node', async t => {
  const keys = Array.from({ length: 48 }, (_, i) => `sh-turn:{p${i}}:k`)
  for (const k of keys) await repo.get(k)
  const conns = repo.nodes.map(n => (n.repository as RedisRepository).client)
  const counters = conns.map(c => countSocketWrites(streamOf(c)))
  const results = await Promise.all(keys.map(async k => await repo.compareAndSet(k, null, Buffer.from('v'), 10_000)))
  const writes = counters.map(stop => stop())
  t.ok(results.every(r => r.ok))
  t.same(writes, conns.map(() => 1), 'one write per node for the 48 commands of the turn')
})
