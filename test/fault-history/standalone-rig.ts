/**
 * The standalone setup of the fault-history checker: one private redis-server (appendonly, fsync always, so that a
 * kill -9 alone loses nothing), three store instances in their own processes (A and B straight to Redis, C through
 * a TCP proxy so that it alone can be cut off), a direct reader, and the nemesis' faults.
 */
import type { Test } from 'tap'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { RedisRepository } from '../../lib/repository/redis.js'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { startProxy, type TcpProxy } from '../helpers/proxy.js'
import type { FaultWindow, PhaseRow } from '../helpers/history.js'
import { clock, directReader, sleep, startClient, storeSupports, PARTITIONS, SECRET, type HistoryClient, type PhaseOutcome, type PhaseSettings } from './harness.js'

export const MAX_DEGRADED_MS = 500
export const PARTITION_MS = 3000

export type Fault = () => Promise<FaultWindow>

export interface StandaloneRig {
  redis: RedisHandle
  proxy: TcpProxy
  clients: HistoryClient[]
  /** Whether the store has maxDegradedMs (then every instance runs with MAX_DEGRADED_MS). */
  degradedBounded: boolean
  settings: () => PhaseSettings
  faults: { sigstop: Fault, pubsubKill: Fault, partitionC: Fault, restartKeep: Fault, restartEmpty: Fault, flushall: Fault }
  rows: PhaseRow[]
}

async function window (kind: string, dataLoss: FaultWindow['dataLoss'], act: () => Promise<void>): Promise<FaultWindow> {
  const start = clock()
  await act()
  return { kind, start, end: clock(), dataLoss }
}

export async function startStandaloneRig (t: Test, name: string): Promise<StandaloneRig> {
  const prefix = `hist${name}${process.pid}:`
  const redis = await startRedis({ private: true, args: ['--appendonly', 'yes', '--appendfsync', 'always'] })
  const dir = redis.cli('CONFIG', 'GET', 'dir').split('\n')[1] ?? ''
  const proxy = await startProxy(redis.port)
  const degradedBounded = storeSupports('maxDegradedMs')
  const store = degradedBounded ? { maxDegradedMs: MAX_DEGRADED_MS } : {}
  const clients = await Promise.all([
    { name: 'A', url: redis.url },
    { name: 'B', url: redis.url },
    { name: 'C', url: `redis://127.0.0.1:${proxy.port}` }
  ].map(async c => await startClient({ ...c, prefix, secret: SECRET, partitions: PARTITIONS, store })))
  const readerRepo = new RedisRepository({ url: redis.url, commandTimeoutMs: 1000 })
  const reader = directReader(readerRepo, prefix)
  await reader.start()
  t.teardown(async () => {
    await Promise.all(clients.map(async c => await c.close()))
    await reader.close()
    await readerRepo.close()
    await proxy.close()
    await redis.stop()
  })
  let seed = 1
  return {
    redis,
    proxy,
    clients,
    degradedBounded,
    rows: [],
    settings: () => ({ clients, reader, warmMs: 600, afterMs: 1000, convergeBoundMs: 2000, lanes: 2, gapMs: 8, seed: seed++ }),
    faults: {
      sigstop: async () => await window('SIGSTOP', 'none', async () => { redis.pause(); await sleep(1200); redis.resume() }),
      pubsubKill: async () => await window('CLIENT KILL TYPE pubsub', 'none', async () => {
        redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub')
        await sleep(300)
        redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub')
      }),
      partitionC: async () => await window('stalled proxy to C', 'none', async () => { proxy.blackhole(); await sleep(PARTITION_MS); proxy.restore() }),
      restartKeep: async () => await window('kill -9 + restart (AOF kept)', 'none', async () => { await redis.restart() }),
      restartEmpty: async () => await window('kill -9 + restart empty', 'wipe', async () => {
        await redis.kill()
        rmSync(join(dir, 'appendonlydir'), { recursive: true, force: true })
        await redis.restart()
      }),
      flushall: async () => await window('FLUSHALL', 'wipe', async () => { redis.cli('FLUSHALL') })
    }
  }
}

/** The faults one after another in a seeded order, 300 ms apart. */
export function mixed (faults: Fault[], mixSeed: number): () => Promise<FaultWindow[]> {
  return async () => {
    const order = faults.map((f, i) => ({ f, k: Math.sin(mixSeed * 97 + i * 13) })).sort((a, b) => a.k - b.k)
    const out: FaultWindow[] = []
    for (const { f } of order) { out.push(await f()); await sleep(300) }
    return out
  }
}

export function describe (o: PhaseOutcome): string {
  const r = o.result
  return `${o.row.fault}: ${r.operations} ops, ${r.acknowledged} acked, lost ${r.lost}, lost by Redis ${r.lostByRedis}, ` +
    `stale reads ${r.staleReads} (max ${Math.round(r.maxStalenessMs)} ms), stale bases ${r.staleBases}, ` +
    `degraded stale ${r.degradedStale} (max ${Math.round(r.maxDegradedStalenessMs)} ms), resets ${String(o.row.resets)}, converged ${String(o.row.convergedMs)}`
}

/** What every phase must show, whatever the fault. */
export function assertCommon (t: Test, o: PhaseOutcome): void {
  t.comment(describe(o))
  for (const a of o.result.anomalies) t.comment(`  ${a}`)
  for (const d of o.disagreements.slice(0, 10)) t.comment(`  not converged: ${d}`)
  t.ok(o.result.acknowledged >= 20, `the workload ran (${o.result.acknowledged} acknowledged writes and deletes)`)
  t.equal(o.result.phantoms, 0, 'every value read or stored was written by a recorded operation')
  t.equal(o.result.lost, 0, 'every acknowledged write or delete is visible, superseded, or counted as lost by Redis')
  t.equal(o.result.staleBases, 0, 'no compare-and-set won on a base that was already superseded or wiped')
  t.equal(o.result.staleReads, 0, `no non-degraded read older than the lease (max staleness ${Math.round(o.result.maxStalenessMs)} ms)`)
  t.not(o.row.convergedMs, 'never', 'every instance agrees with a direct read of Redis within 2 s after the workload')
}
