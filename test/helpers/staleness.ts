/**
 * Instruments for the coherence guarantee: a read that is not flagged `degraded` and starts more than one lease
 * after a write's acknowledgement never returns an older version.
 */
import type { TieredStore } from '../../lib/tiered-store.js'

export interface Read { start: number, version: number, degraded: boolean }
export interface Ack { at: number, version: number }

export const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

export interface Counter { n: number }
export const inc = (cur: unknown): Counter => ({ n: ((cur as Counter | undefined)?.n ?? 0) + 1 })

/** Reads `key` on `reader` every few ms until stopped. */
export function poll (reader: TieredStore, key: string): { stop: () => Promise<Read[]> } {
  const reads: Read[] = []
  const state = { on: true }
  const loop = (async () => {
    while (state.on) {
      const start = performance.now()
      try {
        const e = await reader.get(key)
        reads.push({ start, version: e?.version ?? 0, degraded: e?.degraded ?? false })
      } catch {}
      await sleep(2)
    }
  })()
  return { stop: async () => { state.on = false; await loop; return reads } }
}

/** Reads outside the guarantee: not degraded, started a lease after an ack, older than that ack. */
export function violations (reads: Read[], acks: Ack[], leaseMs: number): Read[] {
  return reads.filter(r => !r.degraded && acks.some(a => r.start > a.at + leaseMs && r.version < a.version))
}

export async function writeAll (writer: TieredStore, key: string, n: number, gapMs: number): Promise<Ack[]> {
  const acks: Ack[] = []
  for (let i = 0; i < n; i++) {
    const r = await writer.update(key, inc)
    acks.push({ at: performance.now(), version: r.version })
    await sleep(gapMs)
  }
  return acks
}

/**
 * Random interleavings of writes and reads (some with a version floor) over several stores on one key per run:
 * true when every floor is honoured and nothing is stale past the lease.
 */
export async function interleaving (stores: TieredStore[], key: string, ops: Array<{ write: boolean, on: number, floor: boolean }>, leaseMs: number): Promise<boolean> {
  const acks: Ack[] = []
  const reads: Read[] = []
  let floorViolations = 0
  let acked = 0
  await Promise.all(ops.map(async (op, i) => {
    await sleep(i % 7)
    const s = stores[op.on % stores.length] as TieredStore
    if (op.write) {
      const r = await s.update(key, inc)
      acks.push({ at: performance.now(), version: r.version })
      acked = Math.max(acked, r.version)
    } else {
      const floor = op.floor ? acked : 0
      const start = performance.now()
      const e = await s.get(key, { minVersion: floor })
      if ((e?.version ?? 0) < floor) floorViolations++
      reads.push({ start, version: e?.version ?? 0, degraded: e?.degraded ?? false })
    }
  }))
  return floorViolations === 0 && violations(reads, acks, leaseMs).length === 0
}
