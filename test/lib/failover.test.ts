/**
 * Failover under load, for real: a primary is killed mid-workload (Redis Cluster and Sentinel). With
 * `durability: { replicas: 1 }` no acknowledged write may be lost and writes must come back once a replica is
 * there again; without it the test reports how many acknowledged writes were lost (the anchor measured 6,611).
 */
import t, { type Test } from 'tap'
import { Cluster, Redis } from 'ioredis'
import clusterKeySlot from 'cluster-key-slot'
import { RedisRepository } from '../../lib/repository/redis.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startCluster } from '../helpers/cluster.js'
import { startSentinels, type SentinelHandle } from '../helpers/sentinel.js'
import type { RedisHandle } from '../../scripts/redis-server.js'
import { elapse, waitFor } from '../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
interface Counter { n: number }
const inc = (cur: unknown): Counter => ({ n: ((cur as Counter | undefined)?.n ?? 0) + 1 })

interface Setup {
  repository: () => RedisRepository
  /** Make the replica that will be promoted lag behind (optional: not every topology can be made to). */
  lagReplica?: () => void
  /** Kill the primary serving `key`; resolve once a replica has been promoted. Returns the killed node. */
  killPrimaryOf: (key: string) => Promise<RedisHandle>
}

interface Outcome { acked: number, lostKeys: number, lostWrites: number, unavailableMs: number, errors: Record<string, number> }

async function run (t: Test, setup: Setup, durable: boolean): Promise<Outcome> {
  const repository = setup.repository()
  const store = new TieredStore({
    repository,
    secret: SECRET,
    partitions: 64,
    ...(durable ? { durability: { replicas: 1, timeoutMs: 300 } } : {})
  })
  await store.start()
  t.teardown(async () => { await store.close(); await repository.close() })
  const keys = Array.from({ length: 48 }, (_, i) => store.key(`fo-${durable ? 'd' : 'n'}-${i}-${Date.now()}`, 'counter'))
  const target = keys[0] as string
  const acked = new Map<string, number>()
  const errors: Record<string, number> = {}
  let writes = 0
  const state = { on: true }
  const lanes = Array.from({ length: 12 }, async (_, lane) => {
    for (let i = lane; state.on; i += 12) {
      const k = keys[i % keys.length] as string
      try {
        const r = await store.update(k, inc)
        writes++
        acked.set(k, Math.max(acked.get(k) ?? 0, (r.value as Counter).n))
      } catch (err) {
        const code = (err as { code?: string }).code ?? (err as Error).message
        errors[code] = (errors[code] ?? 0) + 1
        await elapse(10) // back off: a failing shard answers at once
      }
    }
  })
  // A workload under way: 800 ms of it, and at least 100 acknowledged writes (a loaded machine writes less per second).
  const workloadFrom = Date.now()
  await waitFor(() => Date.now() - workloadFrom >= 800 && writes >= 100, { timeoutMs: 30_000, intervalMs: 20 })
  if (setup.lagReplica !== undefined) {
    setup.lagReplica()
    const lagFrom = Date.now()
    const atLag = writes
    await waitFor(() => Date.now() - lagFrom >= 300 && writes >= atLag + 30, { timeoutMs: 30_000, intervalMs: 20 })
  }
  const killedAt = performance.now()
  const killed = await setup.killPrimaryOf(target)
  // Stop the workload once the replica is promoted, before anything new is written: later writes would build on
  // the rolled-back values and hide what was lost.
  state.on = false
  await Promise.all(lanes)
  const check = setup.repository()
  const reader = new TieredStore({ repository: check, secret: SECRET, partitions: 64, coherence: false, maxLocalBytes: 0 })
  await reader.start()
  let lostKeys = 0
  let lostWrites = 0
  for (const [k, n] of acked) {
    let stored: number | undefined
    await waitFor(async () => {
      try { stored = ((await reader.get(k))?.value as Counter | undefined)?.n ?? 0 } catch {}
      return stored !== undefined
    }, { timeoutMs: 5000, intervalMs: 50 })
    if ((stored ?? 0) < n) { lostKeys++; lostWrites += n - (stored ?? 0) }
  }
  await reader.close()
  await check.close()
  // A promoted primary has no replica: WAIT 1 fails until the old primary is back as its replica.
  await killed.restart()
  let unavailableMs = -1
  await waitFor(async () => {
    try {
      await store.update(target, inc)
      unavailableMs = performance.now() - killedAt
      return true
    } catch { return false }
  }, { timeoutMs: 30_000, intervalMs: 25 })
  t.ok(unavailableMs > 0, `writes to the failed shard came back ${unavailableMs.toFixed(0)} ms after the kill`)
  t.comment(`${durable ? 'with' : 'without'} WAIT: ${writes} acknowledged writes, ${lostWrites} lost on ${lostKeys} keys, ` +
    `unavailable ${unavailableMs.toFixed(0)} ms, errors ${JSON.stringify(errors)}`)
  return { acked: writes, lostKeys, lostWrites, unavailableMs, errors }
}

t.test('Redis Cluster: a primary killed under load', async t => {
  const cluster = await startCluster()
  t.teardown(async () => await cluster.stop())
  const setup: Setup = {
    repository: () => new RedisRepository({
      client: new Cluster(cluster.startupNodes, { enableOfflineQueue: false, redisOptions: { maxRetriesPerRequest: 0 } }),
      ownsClient: true,
      commandTimeoutMs: 1000
    }),
    killPrimaryOf: async (key) => {
      const slot = clusterKeySlot(key)
      const node = cluster.primaryOf(slot)
      await node.kill()
      await waitFor(() => { try { return cluster.primaryOf(slot) !== node } catch { return false } }, { timeoutMs: 15_000, intervalMs: 50 })
      return node
    }
  }
  const durable = await run(t, setup, true)
  t.equal(durable.lostWrites, 0, 'replicas: 1 — zero acknowledged writes lost')
  await cluster.waitHealthy()
  const plain = await run(t, setup, false)
  t.ok(plain.acked > 0, `without WAIT: ${plain.lostWrites} acknowledged writes lost (reported, not asserted)`)
})

function sentinelSetup (s: SentinelHandle): Setup {
  return {
    repository: () => new RedisRepository({
      client: new Redis({ sentinels: s.sentinelAddresses, name: s.name, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: (n: number) => Math.min(50 * n, 500) }),
      ownsClient: true,
      commandTimeoutMs: 1000
    }),
    lagReplica: () => { s.replicationLink.blackhole() },
    killPrimaryOf: async () => {
      const port = s.currentPrimaryPort()
      const node = [s.primary, s.replica].find(n => n.port === port) as RedisHandle
      await node.kill()
      await waitFor(() => s.currentPrimaryPort() !== port, { timeoutMs: 20_000, intervalMs: 50 })
      return node
    }
  }
}

t.test('Sentinel: the primary killed under load while its replica lags', async t => {
  // A fresh setup per run, so that both runs start from a replica that replicates through the lagging link.
  const first = await startSentinels()
  t.teardown(async () => await first.stop())
  const plain = await run(t, sentinelSetup(first), false)
  t.ok(plain.acked > 0, `without WAIT: ${plain.lostWrites} acknowledged writes lost on ${plain.lostKeys} keys (reported)`)
  const second = await startSentinels()
  t.teardown(async () => await second.stop())
  const durable = await run(t, sentinelSetup(second), true)
  t.equal(durable.lostWrites, 0, 'replicas: 1 — zero acknowledged writes lost')
})
