/**
 * Fault-history checker, data-loss faults: FLUSHALL, kill -9 + restart empty, and a mix with the other faults.
 * Redis forgets; the store must detect the reset and count it (`counters.resets`), lose nothing beyond what Redis
 * lost (which is counted, never silent), serve no copy Redis no longer holds past the lease, and converge.
 */
import t from 'tap'
import { formatTable } from '../helpers/history.js'
import { runPhase, type Phase } from './harness.js'
import { assertCommon, mixed, startStandaloneRig } from './standalone-rig.js'

// A loaded 2-core machine starts three tsx processes slowly: an upper bound, not a target.
t.setTimeout(240_000)
const rig = await startStandaloneRig(t, 'loss')
const { sigstop, pubsubKill, partitionC, restartEmpty, flushall } = rig.faults

t.test('data-loss faults (FLUSHALL, restart empty): reset detected and counted, nothing lost silently, instances converge', async t => {
  const phases: Phase[] = [
    { name: 'FLUSHALL', nemesis: async () => [await flushall()] },
    { name: 'kill -9 + restart empty', nemesis: async () => [await restartEmpty()] },
    { name: 'mixed with data loss', nemesis: mixed([sigstop, flushall, pubsubKill, partitionC, restartEmpty], 2) }
  ]
  for (const phase of phases) {
    await t.test(phase.name, async t => {
      const o = await runPhase(phase, rig.settings())
      rig.rows.push(o.row)
      assertCommon(t, o)
      t.comment(`${o.result.lostByRedis} acknowledged writes/deletes lost by Redis (counted, as they must be)`)
      for (const [i, r] of o.resetsPerInstance.entries()) {
        if (r === undefined) t.fail(`${rig.clients[i]?.name ?? i}: reset not detected (the store has no counters.resets)`)
        else t.ok(r >= 1, `${rig.clients[i]?.name ?? i}: the reset was detected and counted (${r})`)
      }
    })
  }
  for (const line of formatTable(rig.rows).split('\n')) t.comment(line)
})
