/**
 * A Jepsen-style history checker for the tiered store, seen as one register per key with compare-and-set updates.
 *
 * Every write stores a unique id `w` and the id of the value it was built on (`prev`, null for "absent"), so the
 * final value read directly from Redis names the chain of writes it descends from (its lineage). Then:
 * - an acknowledged write outside that lineage must be explained by a delete that could have come after it and
 *   before the lineage began; else by a data-loss fault (counted as lost by Redis); else it is lost;
 * - an acknowledged delete is lost when the final value descends from a write that completed before it began;
 * - a write whose winning compare-and-set used a base already superseded (or wiped) before it started was built
 *   on a stale base (a lost update in the making);
 * - a read is stale when it returns a value superseded by an acknowledged operation that completed more than one
 *   lease before the read began, or a value Redis lost in a wipe that ended more than one lease before.
 * Operations whose outcome is unknown (timeout, 503) may have taken effect at any time after they began.
 */

export type OpKind = 'read' | 'put' | 'inc' | 'del' | 'take'
/** ok: acknowledged; fail: certainly not applied (conflict); unknown: may or may not have been applied. */
export type Outcome = 'ok' | 'fail' | 'unknown'

export interface Observed {
  /** Write id of the value returned; null: absent (never written, deleted or lost). */
  w: string | null
  version: number
  degraded: boolean
  source: 'local' | 'repository'
}

export interface OpRecord {
  client: string
  kind: OpKind
  /** The key's id (the same on every instance). */
  key: string
  /** ms on CLOCK_MONOTONIC (process.hrtime), comparable across processes on one machine. */
  start: number
  end: number
  outcome: Outcome
  /** What a read or take returned. */
  seen?: Observed
  /** put/inc: the id this write stores. */
  w?: string
  /** put/inc: the id of the value its (last) compare-and-set attempt was built on; null: built on absent. */
  prev?: string | null
  version?: number
  error?: string
}

/**
 * none: Redis keeps every acknowledged write; wipe: Redis loses everything (FLUSHALL, restart empty);
 * partial: Redis may roll back recent writes (failover to a replica).
 */
export type DataLoss = 'none' | 'wipe' | 'partial'

export interface FaultWindow {
  kind: string
  start: number
  end: number
  dataLoss: DataLoss
}

export interface CheckOptions {
  leaseMs: number
  /** Allowance for comparing clocks of different processes, ms. */
  clockSlackMs?: number
  /** Keep at most this many anomaly descriptions. Default: 20. */
  maxAnomalies?: number
}

export interface CheckResult {
  operations: number
  /** Acknowledged writes and deletes. */
  acknowledged: number
  /** Acknowledged writes/deletes neither visible nor explained by a later operation or a data-loss fault. */
  lost: number
  /** Acknowledged writes/deletes gone because Redis lost them (a data-loss fault): counted, not silent. */
  lostByRedis: number
  /** Non-degraded reads that returned a value superseded more than one lease before they began. */
  staleReads: number
  /** The longest such staleness, ms (0 when none). */
  maxStalenessMs: number
  /** Acknowledged writes whose compare-and-set used a base that was already superseded or wiped. */
  staleBases: number
  /** Reads flagged degraded that were stale (allowed today, bounded by maxDegradedMs in the design). */
  degradedStale: number
  maxDegradedStalenessMs: number
  /** Values nobody wrote (a codec or checker fault). */
  phantoms: number
  anomalies: string[]
}

/** Unknown outcomes may take effect any time after they began. */
function effectiveEnd (op: OpRecord): number {
  return op.outcome === 'unknown' ? Number.POSITIVE_INFINITY : op.end
}

const isWrite = (op: OpRecord): boolean => op.kind === 'put' || op.kind === 'inc'
const isRemoval = (op: OpRecord): boolean => op.kind === 'del' || op.kind === 'take'
const applied = (op: OpRecord): boolean => op.outcome !== 'fail'

/** `finals`: the value each key holds in Redis once the history is over (read directly), by key id. */
export function checkHistory (ops: readonly OpRecord[], finals: ReadonlyMap<string, string | null>, faults: readonly FaultWindow[], opts: CheckOptions): CheckResult {
  const lease = opts.leaseMs + (opts.clockSlackMs ?? 10)
  const maxAnomalies = opts.maxAnomalies ?? 20
  const res: CheckResult = {
    operations: ops.length,
    acknowledged: 0,
    lost: 0,
    lostByRedis: 0,
    staleReads: 0,
    maxStalenessMs: 0,
    staleBases: 0,
    degradedStale: 0,
    maxDegradedStalenessMs: 0,
    phantoms: 0,
    anomalies: []
  }
  const note = (s: string): void => { if (res.anomalies.length < maxAnomalies) res.anomalies.push(s) }
  const lossFaults = faults.filter(f => f.dataLoss !== 'none')
  const wipes = faults.filter(f => f.dataLoss === 'wipe')
  const lossBetween = (from: number, to: number): FaultWindow | undefined => lossFaults.find(f => f.end > from && f.start < to)

  const byKey = new Map<string, OpRecord[]>()
  for (const op of ops) {
    let list = byKey.get(op.key)
    if (list === undefined) { list = []; byKey.set(op.key, list) }
    list.push(op)
  }
  for (const key of new Set([...byKey.keys(), ...finals.keys()])) {
    const list = byKey.get(key) ?? []
    const writes = new Map<string, OpRecord>()
    for (const op of list) if (isWrite(op) && applied(op) && op.w !== undefined) writes.set(op.w, op)
    const removals = list.filter(op => isRemoval(op) && applied(op))
    const acked = list.filter(op => op.outcome === 'ok' && (isWrite(op) || isRemoval(op)))
    res.acknowledged += acked.length

    // The final value's lineage, newest first.
    const lineage = new Set<string>()
    let root: OpRecord | undefined
    let cur = finals.get(key) ?? null
    let lineageKnown = true
    while (cur !== null && !lineage.has(cur)) {
      const rec = writes.get(cur)
      if (rec === undefined) {
        res.phantoms++
        note(`${key}: Redis holds ${cur}, which no recorded write produced`)
        lineageKnown = false
        break
      }
      lineage.add(cur)
      root = rec
      cur = rec.prev ?? null
    }
    // Before this, whatever was there could have been erased; after it, the lineage alone is the history.
    const rootEnd = finals.get(key) === null || root === undefined || !lineageKnown ? Number.POSITIVE_INFINITY : effectiveEnd(root)

    for (const op of acked) {
      if (isWrite(op)) {
        if (op.w !== undefined && lineage.has(op.w)) continue
        if (removals.some(d => d !== op && effectiveEnd(d) > op.start && d.start < rootEnd)) continue
        // A wipe explains it when it came before the final lineage began; a failover may roll back to an older one.
        const f = lossFaults.find(f => f.end > op.start && (f.dataLoss === 'partial' || f.start < rootEnd))
        if (f !== undefined) { res.lostByRedis++; continue }
        res.lost++
        note(`${key}: acknowledged ${op.kind} ${op.w ?? '?'} by ${op.client} (${fmtSpan(op)}) is neither visible nor superseded`)
      } else {
        // A delete is lost when the final value descends from a write that completed before the delete began.
        const resurrected = [...lineage].map(w => writes.get(w)).find(x => x !== undefined && effectiveEnd(x) < op.start)
        if (resurrected === undefined) continue
        // A failover may roll back the tombstone and keep the older value; a wipe keeps neither.
        if (faults.some(f => f.dataLoss === 'partial' && f.end > op.start)) { res.lostByRedis++; continue }
        res.lost++
        note(`${key}: acknowledged ${op.kind} by ${op.client} (${fmtSpan(op)}) undone: the final value descends from ${resurrected.w ?? '?'}, written before it`)
      }
    }

    // Writes built on a base that was already superseded (or wiped) when they began.
    for (const y of list) {
      if (!isWrite(y) || y.outcome !== 'ok' || y.prev === null || y.prev === undefined) continue
      const x = writes.get(y.prev)
      if (x === undefined) { res.phantoms++; note(`${key}: ${y.w ?? '?'} was built on ${y.prev}, which no recorded write produced`); continue }
      const supersededBy = acked.find(z => z !== x && z !== y && z.start > effectiveEnd(x) && z.end < y.start &&
        lossBetween(z.start, y.start) === undefined)
      const wipedBy = wipes.find(f => f.start > effectiveEnd(x) && f.end < y.start)
      if (supersededBy === undefined && wipedBy === undefined) continue
      res.staleBases++
      note(`${key}: ${y.kind} ${y.w ?? '?'} by ${y.client} (${fmtSpan(y)}) was built on ${y.prev}, ` +
        (wipedBy !== undefined ? `which Redis lost in ${wipedBy.kind}` : `already superseded by ${supersededBy?.kind ?? '?'} ${supersededBy?.w ?? ''} of ${supersededBy?.client ?? '?'}`))
    }

    // Reads.
    for (const r of list) {
      if (r.outcome !== 'ok' || r.seen === undefined) continue
      const staleness = readStaleness(r, r.seen.w, writes, acked, removals, lossBetween, wipes, lease)
      if (staleness === undefined) continue
      if (r.seen.degraded) {
        res.degradedStale++
        res.maxDegradedStalenessMs = Math.max(res.maxDegradedStalenessMs, staleness.ms)
        continue
      }
      res.staleReads++
      res.maxStalenessMs = Math.max(res.maxStalenessMs, staleness.ms)
      note(`${key}: ${r.kind} on ${r.client} at ${fmtTime(r.start)} (${r.seen.source}) returned ${r.seen.w ?? 'absent'}, ` +
        `stale for ${Math.round(staleness.ms)} ms: ${staleness.why}`)
    }
  }
  return res
}

function readStaleness (
  r: OpRecord,
  seen: string | null,
  writes: ReadonlyMap<string, OpRecord>,
  acked: readonly OpRecord[],
  removals: readonly OpRecord[],
  lossBetween: (from: number, to: number) => FaultWindow | undefined,
  wipes: readonly FaultWindow[],
  lease: number
): { ms: number, why: string } | undefined {
  let worst: { ms: number, why: string } | undefined
  const consider = (ms: number, why: string): void => { if (worst === undefined || ms > worst.ms) worst = { ms, why } }
  if (seen !== null) {
    const w = writes.get(seen)
    if (w === undefined) return undefined // a phantom, counted by the caller's lineage checks when final
    const wEnd = effectiveEnd(w)
    for (const z of acked) {
      // z began after w was acknowledged, so it is ordered after w; unless a data-loss fault may have taken z back.
      if (z === w || !(z.start > wEnd) || !(z.end + lease < r.start) || lossBetween(z.start, r.start) !== undefined) continue
      consider(r.start - z.end, `superseded by ${z.kind} ${z.w ?? ''} of ${z.client} acknowledged at ${fmtTime(z.end)}`)
    }
    for (const f of wipes) {
      if (f.start > wEnd && f.end + lease < r.start) consider(r.start - f.end, `Redis lost it in ${f.kind} ending at ${fmtTime(f.end)}`)
    }
    return worst
  }
  // Absent: stale when an acknowledged write came before the read and nothing could have removed it since.
  for (const x of acked) {
    if (!isWrite(x) || !(x.end + lease < r.start)) continue
    if (removals.some(d => effectiveEnd(d) > x.start && d.start < r.end)) continue
    if (lossBetween(x.start, r.end) !== undefined) continue
    consider(r.start - x.end, `${x.kind} ${x.w ?? ''} of ${x.client} was acknowledged at ${fmtTime(x.end)}`)
  }
  return worst
}

function fmtTime (t: number): string {
  return Number.isFinite(t) ? `${(t / 1000 % 1000).toFixed(3)} s` : 'never'
}

function fmtSpan (op: OpRecord): string {
  return `${fmtTime(op.start)}-${op.outcome === 'unknown' ? '?' : fmtTime(op.end)}`
}

export interface PhaseRow {
  fault: string
  result: CheckResult
  /** Sum over instances of the store's reset counter, or 'not detected' when the store has none. */
  resets: number | 'not detected'
  /** ms until every instance agreed with Redis on every key after the fault, or 'never' within the bound. */
  convergedMs: number | 'never'
}

/** The table the issue asks for, as aligned text. */
export function formatTable (rows: readonly PhaseRow[]): string {
  const head = ['fault', 'ops', 'acked', 'lost', 'lost by Redis', 'stale reads', 'max staleness ms', 'stale bases', 'degraded stale (max ms)', 'resets detected', 'converged ms']
  const body = rows.map(r => [
    r.fault,
    String(r.result.operations),
    String(r.result.acknowledged),
    String(r.result.lost),
    String(r.result.lostByRedis),
    String(r.result.staleReads),
    String(Math.round(r.result.maxStalenessMs)),
    String(r.result.staleBases),
    `${r.result.degradedStale} (${Math.round(r.result.maxDegradedStalenessMs)})`,
    String(r.resets),
    String(r.convergedMs)
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...body.map(b => (b[i] ?? '').length)))
  const line = (cells: string[]): string => '| ' + cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ') + ' |'
  return [line(head), '|' + widths.map(w => '-'.repeat(w + 2)).join('|') + '|', ...body.map(line)].join('\n')
}
