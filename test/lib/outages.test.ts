/**
 * Outage state per node: with `{ shards }` (two private redis-servers), one node frozen (SIGSTOP) while the other
 * answers. The store must say so once per outage per node (one warning when it starts, one line with its duration
 * when it ends), not once per call that happens to reach the other node, and name the node that is out.
 */
import t from 'tap'
import { RedisRepository } from '../../lib/repository/redis.js'
import { ShardedRepository } from '../../lib/repository/sharded.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
const UNAVAILABLE = /repository unavailable/
const ANSWERS = /repository answers again/

interface Line { level: 'warn' | 'info', obj: Record<string, unknown>, msg: string }

t.test('one node frozen: one warning for it, none for the other, and its recovery once with its duration', async t => {
  const servers: RedisHandle[] = [await startRedis({ private: true }), await startRedis({ private: true })]
  t.teardown(async () => { for (const s of servers) { s.resume(); await s.stop() } })
  const [frozen, live] = servers as [RedisHandle, RedisHandle]
  const id = (s: RedisHandle): string => `${s.host}:${s.port}`
  const repository = new ShardedRepository(servers.map(s => ({ id: id(s), repository: new RedisRepository({ url: s.url, commandTimeoutMs: 300 }) })))
  const lines: Line[] = []
  const logger = {
    warn: (obj: object, msg?: string) => { lines.push({ level: 'warn', obj: obj as Record<string, unknown>, msg: msg ?? '' }) },
    info: (obj: object, msg?: string) => { lines.push({ level: 'info', obj: obj as Record<string, unknown>, msg: msg ?? '' }) }
  }
  const store = new TieredStore({ repository, secret: SECRET, partitions: 64, coherence: false, logger })
  await store.start()
  t.teardown(async () => { await store.close(); await repository.close() })

  // A key on each node.
  const keyOn = (node: string): string => {
    for (let i = 0; ; i++) {
      const k = store.key(`outage-${i}`, 'cart')
      if (repository.nodeOf(k) === node) return k
    }
  }
  const onFrozen = keyOn(id(frozen))
  const onLive = keyOn(id(live))
  const bump = (cur: unknown): { n: number } => ({ n: ((cur as { n?: number } | undefined)?.n ?? 0) + 1 })
  await store.update(onFrozen, bump)
  await store.update(onLive, bump)
  const about = (node: RedisHandle, level: Line['level'], msg: RegExp): Line[] =>
    lines.filter(l => l.level === level && msg.test(l.msg) && l.obj.node === id(node))

  frozen.pause()
  let refused = 0
  let written = 0
  // Traffic to both nodes, interleaved: every call to the live node answers between two failures on the frozen one.
  for (let round = 0; round < 15; round++) {
    await store.update(onFrozen, bump).then(() => {}, (err: { code?: string }) => { if (err.code === 'FST_HANDOFF_UNAVAILABLE') refused++ })
    await store.update(onLive, bump).then(() => { written++ })
    await store.get(onLive)
  }
  t.equal(refused, 15, 'every write to the frozen node failed with 503')
  t.equal(written, 15, 'every write to the other node succeeded')
  t.equal(about(frozen, 'warn', UNAVAILABLE).length, 1, 'one warning for the frozen node')
  t.equal(about(live, 'warn', UNAVAILABLE).length, 0, 'none for the node that answers')
  t.equal(lines.filter(l => UNAVAILABLE.test(l.msg)).length, 1, 'and no other warning of the kind')
  t.equal(lines.filter(l => ANSWERS.test(l.msg)).length, 0, 'no recovery while the node is frozen')
  t.match(store.health(), { status: 'degraded', unavailableNodes: [id(frozen)] }, 'health names the node that is out')
  t.equal(store.degraded, true)

  frozen.resume()
  t.ok(await waitFor(async () => await store.update(onFrozen, bump).then(() => true, () => false), { timeoutMs: 10_000, intervalMs: 50 }),
    'the node answers again after SIGCONT')
  for (let round = 0; round < 5; round++) { await store.update(onFrozen, bump); await store.update(onLive, bump) }
  const recovered = about(frozen, 'info', ANSWERS)
  t.equal(recovered.length, 1, 'its recovery is logged once')
  t.ok(Number(recovered[0]?.obj.durationMs) > 0, `with the outage's duration (${String(recovered[0]?.obj.durationMs)} ms)`)
  t.equal(about(live, 'info', ANSWERS).length, 0, 'nothing about the node that never failed')
  t.equal(about(frozen, 'warn', UNAVAILABLE).length, 1, 'still one warning in all')
  t.match(store.health(), { status: 'ok', unavailableNodes: [] })
})
