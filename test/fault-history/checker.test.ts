/**
 * The history checker itself, on hand-made histories: each anomaly it must find, and the legal histories it must
 * accept. (A checker that cannot fail proves nothing.)
 */
import t from 'tap'
import { checkHistory, formatTable, type FaultWindow, type OpRecord } from '../helpers/history.js'

const LEASE = 250
let n = 0
function put (client: string, start: number, end: number, prev: string | null, outcome: OpRecord['outcome'] = 'ok'): OpRecord {
  return { client, kind: 'put', key: 'k', start, end, outcome, w: `${client}${++n}`, prev }
}
function del (client: string, start: number, end: number, outcome: OpRecord['outcome'] = 'ok'): OpRecord {
  return { client, kind: 'del', key: 'k', start, end, outcome }
}
function read (client: string, start: number, w: string | null, opts: { degraded?: boolean } = {}): OpRecord {
  return { client, kind: 'read', key: 'k', start, end: start + 1, outcome: 'ok', seen: { w, version: 0, degraded: opts.degraded ?? false, source: 'local' } }
}
const check = (ops: OpRecord[], final: string | null, faults: FaultWindow[] = []): ReturnType<typeof checkHistory> =>
  checkHistory(ops, new Map([['k', final]]), faults, { leaseMs: LEASE })
const w = (op: OpRecord): string => op.w as string

t.test('a chain of writes, each read after it: nothing to report', async t => {
  const a = put('A', 0, 10, null)
  const b = put('B', 20, 30, w(a))
  const r = check([a, b, read('C', 5, null), read('C', 15, w(a)), read('C', 400, w(b))], w(b))
  t.match(r, { acknowledged: 2, lost: 0, lostByRedis: 0, staleReads: 0, staleBases: 0, phantoms: 0 })
})

t.test('an acknowledged write that is neither visible nor superseded is lost', async t => {
  const a = put('A', 0, 10, null)
  const b = put('B', 20, 30, w(a))
  const c = put('C', 40, 50, w(a)) // built on a, like b: a lost update
  const r = check([a, b, c], w(c))
  t.equal(r.lost, 1, 'b is lost')
  t.equal(r.staleBases, 1, 'c won a compare-and-set on a base b had already superseded')
})

t.test('a write erased by a later delete is superseded, not lost', async t => {
  const a = put('A', 0, 10, null)
  const d = del('B', 20, 30)
  const b = put('C', 40, 50, null)
  t.match(check([a, d, b], w(b)), { lost: 0, acknowledged: 3 })
  t.match(check([a, d], null), { lost: 0 })
})

t.test('a delete undone by a write built on the deleted value is lost (resurrection)', async t => {
  const a = put('A', 0, 10, null)
  const d = del('B', 20, 30)
  const b = put('C', 40, 50, w(a))
  const r = check([a, d, b], w(b))
  t.equal(r.lost, 1)
  t.equal(r.staleBases, 1)
})

t.test('writes gone in a wipe are lost by Redis, counted apart', async t => {
  const a = put('A', 0, 10, null)
  const wipe: FaultWindow = { kind: 'FLUSHALL', start: 20, end: 21, dataLoss: 'wipe' }
  t.match(check([a], null, [wipe]), { lost: 0, lostByRedis: 1 })
  t.match(check([a], null), { lost: 1, lostByRedis: 0 }, 'without the fault the same history is a loss')
  const b = put('B', 30, 40, null)
  t.match(check([a, b], w(b), [wipe]), { lost: 0, lostByRedis: 1 }, 'also when a new value was written since')
})

t.test('a write built on a value Redis lost in a wipe has a stale base', async t => {
  const a = put('A', 0, 10, null)
  const wipe: FaultWindow = { kind: 'FLUSHALL', start: 20, end: 21, dataLoss: 'wipe' }
  const b = put('B', 30, 40, w(a))
  t.equal(check([a, b], w(b), [wipe]).staleBases, 1)
})

t.test('reads: stale past the lease is reported with its staleness; within the lease or degraded it is not', async t => {
  const a = put('A', 0, 10, null)
  const b = put('B', 20, 30, w(a))
  t.match(check([a, b, read('C', 30 + LEASE - 20, w(a))], w(b)), { staleReads: 0 }, 'within the lease')
  const late = check([a, b, read('C', 30 + LEASE + 500, w(a))], w(b))
  t.equal(late.staleReads, 1)
  t.equal(late.maxStalenessMs, LEASE + 500)
  t.match(check([a, b, read('C', 30 + LEASE + 500, w(a), { degraded: true })], w(b)), { staleReads: 0, degradedStale: 1 })
  t.match(check([a, b, read('C', 1000, null)], w(b)), { staleReads: 1 }, 'absent after an acknowledged write')
  t.match(check([a, del('A', 40, 50), read('C', 1000, null)], null), { staleReads: 0 }, 'absent after a delete')
})

t.test('reads of a value Redis lost in a wipe are stale once the lease has passed', async t => {
  const a = put('A', 0, 10, null)
  const wipe: FaultWindow = { kind: 'FLUSHALL', start: 100, end: 101, dataLoss: 'wipe' }
  t.match(check([a, read('B', 101 + LEASE + 100, w(a))], null, [wipe]), { staleReads: 1, maxStalenessMs: LEASE + 100 })
  t.match(check([a, read('B', 150, w(a)), read('B', 160, null)], null, [wipe]), { staleReads: 0 })
})

t.test('an unknown write may take effect at any time; a failed one never', async t => {
  const a = put('A', 0, 10, null)
  const u = put('C', 20, 30, w(a), 'unknown')
  const b = put('B', 5000, 5010, w(u))
  t.match(check([a, u, b], w(b)), { lost: 0, phantoms: 0, staleBases: 0 })
  const f = put('C', 20, 30, w(a), 'fail')
  t.match(check([a, f], w(f)), { phantoms: 1 }, 'a value from a failed write is a phantom')
})

t.test('a failover rollback (partial data loss) may undo acknowledged writes and deletes: counted by Redis', async t => {
  const a = put('A', 0, 10, null)
  const b = put('B', 20, 30, w(a))
  const fo: FaultWindow = { kind: 'failover', start: 25, end: 2000, dataLoss: 'partial' }
  t.match(check([a, b, read('C', 3000, w(a))], w(a), [fo]), { lost: 0, lostByRedis: 1, staleReads: 0 })
})

t.test('the table has a row per phase', async t => {
  const r = check([], null)
  const table = formatTable([{ fault: 'none', result: r, resets: 'not detected', convergedMs: 5 }])
  t.equal(table.split('\n').length, 3)
  t.match(table, /\| none +\| 0 +\| 0 +\| 0 +\|/)
})
