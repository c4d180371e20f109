/**
 * Fault-history checker, faults the store handles today: SIGSTOP, CLIENT KILL TYPE pubsub, a stalled path to one
 * instance, kill -9 with the data kept (appendonly, fsync always), and a mix. Three store instances in their own
 * processes run a random workload (test/fixtures/history-client.ts); each history is checked (test/helpers/history.ts):
 * nothing lost, no non-degraded read older than the lease, every instance converges, no reset counted.
 */
import t from 'tap'
import { formatTable } from '../helpers/history.js'
import { runPhase, type Phase, type PhaseOutcome } from './harness.js'
import { assertCommon, mixed, startStandaloneRig, MAX_DEGRADED_MS, PARTITION_MS } from './standalone-rig.js'

// A loaded 2-core machine starts three tsx processes slowly: an upper bound, not a target.
t.setTimeout(240_000)
const rig = await startStandaloneRig(t, 'ok')
const { sigstop, pubsubKill, partitionC, restartKeep } = rig.faults
let partitionOutcome: PhaseOutcome | undefined

t.test('faults the store handles today: nothing lost, nothing stale, no reset', async t => {
  const phases: Phase[] = [
    { name: 'SIGSTOP 1.2 s', nemesis: async () => [await sigstop()] },
    { name: 'CLIENT KILL TYPE pubsub (x2)', nemesis: async () => [await pubsubKill()] },
    { name: `stalling proxy: C cut off ${PARTITION_MS / 1000} s`, nemesis: async () => [await partitionC()] },
    { name: 'kill -9 + restart, AOF kept', nemesis: async () => [await restartKeep()] },
    { name: 'mixed, no data loss', nemesis: mixed([sigstop, pubsubKill, partitionC, restartKeep], 1) }
  ]
  for (const phase of phases) {
    await t.test(phase.name, async t => {
      const o = await runPhase(phase, rig.settings())
      rig.rows.push(o.row)
      if (phase.name.startsWith('stalling')) partitionOutcome = o
      assertCommon(t, o)
      t.equal(o.result.lostByRedis, 0, 'Redis lost nothing (no data-loss fault here)')
      if (!phase.name.startsWith('CLIENT KILL')) t.ok(o.history.some(op => op.outcome !== 'ok'), 'the fault was felt: some operation failed or timed out')
      for (const [i, r] of o.resetsPerInstance.entries()) {
        if (r !== undefined) t.equal(r, 0, `${rig.clients[i]?.name ?? i}: no reset counted where Redis kept its data`)
      }
    })
  }
  for (const line of formatTable(rig.rows).split('\n')) t.comment(line)
})

t.test(`partitioned instance: degraded reads stop within maxDegradedMs + 1 s (maxDegradedMs ${MAX_DEGRADED_MS})`, async t => {
  const o = partitionOutcome
  if (o === undefined) { t.fail('the stalling-proxy phase did not run'); return }
  t.comment(`C cut off for ${PARTITION_MS} ms: ${o.result.degradedStale} stale degraded reads, the oldest ${Math.round(o.result.maxDegradedStalenessMs)} ms behind`)
  t.ok(rig.degradedBounded, 'the store has a maxDegradedMs option')
  t.ok(o.result.maxDegradedStalenessMs <= MAX_DEGRADED_MS + 1000,
    `no degraded read more than ${MAX_DEGRADED_MS + 1000} ms stale (measured ${Math.round(o.result.maxDegradedStalenessMs)} ms)`)
})
