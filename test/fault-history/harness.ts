/**
 * Runs the fault-history phases: store instances in their own processes (test/fixtures/history-client.ts) run a
 * random workload while a nemesis injects faults; then the history is checked (test/helpers/history.ts) and every
 * instance must converge to what Redis holds, read directly.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { RedisRepository } from '../../lib/repository/redis.js'
import { MemoryRepository } from '../../lib/repository/memory.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { isHandoffError } from '../../lib/errors.js'
import type { ClientReply, ClientRequest, HistoryClientConfig } from '../fixtures/history-client.js'
import { checkHistory, type CheckResult, type FaultWindow, type OpRecord, type PhaseRow } from '../helpers/history.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const FIXTURE = fileURLToPath(new URL('../fixtures/history-client.ts', import.meta.url))

export const SECRET = 'fault-history checker secret, at least 32 bytes'
export const LEASE_MS = 250
// The store's default: with 16 stripes, a gap flushes one stripe of 64 partitions, and keys elsewhere keep their copies.
export const PARTITIONS = 1024
// CLOCK_MONOTONIC, one clock for every process on the machine: performance.timeOrigin is sampled per process at
// start and was seen tens of ms apart between processes here, enough to misorder operations.
export const clock = (): number => Number(process.hrtime.bigint()) / 1e6
export const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/** A request without its id (the client numbers them). */
type RequestBody = ClientRequest extends infer R ? R extends ClientRequest ? Omit<R, 'id'> : never : never
type Reply = Extract<ClientReply, { type: 'reply' }>

export interface HistoryClient {
  name: string
  child: ChildProcess
  call: (msg: RequestBody, timeoutMs?: number) => Promise<Reply>
  close: () => Promise<void>
}

const live = new Set<ChildProcess>()
process.on('exit', () => { for (const c of live) c.kill('SIGKILL') })

export async function startClient (cfg: HistoryClientConfig): Promise<HistoryClient> {
  const child = fork(FIXTURE, [], {
    cwd: ROOT,
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, HISTORY_CLIENT: JSON.stringify(cfg) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  live.add(child)
  child.once('exit', () => live.delete(child))
  let next = 0
  const pending = new Map<number, (r: Reply) => void>()
  await new Promise<void>((resolve, reject) => {
    // Generous: several tsx processes compiling at once on a loaded 2-core machine.
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`history client ${cfg.name} not ready within 90 s`)) }, 90_000)
    child.on('message', (m: ClientReply) => {
      if (m.type === 'ready') {
        clearTimeout(timer)
        // A run on a chosen transport (HANDOFF_COHERENCE_TRANSPORT) must really use it: a store that fell back or
        // ignored the variable would make the checker's verdict about the other transport.
        const want = process.env.HANDOFF_COHERENCE_TRANSPORT
        if (want !== undefined && want !== '' && m.transport !== want) {
          child.kill('SIGKILL')
          reject(new Error(`history client ${cfg.name} runs coherence on ${m.transport}, not ${want}`))
          return
        }
        resolve()
        return
      }
      pending.get(m.id)?.(m)
      pending.delete(m.id)
    })
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`history client ${cfg.name} exited (${String(code)})`)) })
  })
  const call = async (msg: RequestBody, timeoutMs = 15_000): Promise<Reply> => {
    const id = ++next
    return await new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => { pending.delete(id); reject(new Error(`${cfg.name}: no answer to ${msg.type} within ${timeoutMs} ms`)) }, timeoutMs)
      pending.set(id, r => { clearTimeout(timer); if (r.error !== undefined) reject(new Error(`${cfg.name}: ${r.error}`)); else resolve(r) })
      child.send({ ...msg, id })
    })
  }
  return {
    name: cfg.name,
    child,
    call,
    close: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise(resolve => child.once('exit', resolve))
      try { await call({ type: 'close' }, 5000) } catch { child.kill('SIGKILL') }
      await exited
    }
  }
}

/** A reader that goes straight to Redis every time (no local tier, no coherence): what Redis holds now. */
export function directReader (repository: RedisRepository, prefix: string): TieredStore<{ w: string }> {
  return new TieredStore<{ w: string }>({ repository, secret: SECRET, prefix, partitions: PARTITIONS, coherence: false, maxLocalBytes: 0 })
}

/** True when this build of the store knows `option` (it refuses an invalid value naming it). */
export function storeSupports (option: string, invalid: unknown = -1): boolean {
  try {
    // eslint-disable-next-line no-new
    new TieredStore({ repository: new MemoryRepository(), secret: SECRET, [option]: invalid } as unknown as ConstructorParameters<typeof TieredStore>[0])
  } catch (err) {
    return isHandoffError(err, 'FST_HANDOFF_INVALID_OPTION') && err.message.includes(option)
  }
  return false
}

export interface Phase {
  name: string
  /** Injects its faults and returns when they are healed, with their windows. */
  nemesis: () => Promise<FaultWindow[]>
  /** Keys written often. Default: 4. */
  hotKeys?: number
  /** Keys written once and then read (sessions). Default: 4. */
  coldKeys?: number
}

export interface PhaseOutcome {
  row: PhaseRow
  result: CheckResult
  /** Per instance: the change of `counters.resets` during the phase, or undefined when the store has no such counter. */
  resetsPerInstance: Array<number | undefined>
  /** Keys on which some instance still disagreed with Redis when the bound ran out ("instance key: local vs redis"). */
  disagreements: string[]
  history: OpRecord[]
}

export interface PhaseSettings {
  clients: HistoryClient[]
  reader: TieredStore<{ w: string }>
  warmMs: number
  afterMs: number
  /** How long every instance has to agree with Redis once the workload stops. */
  convergeBoundMs: number
  lanes: number
  gapMs: number
  seed: number
}

async function counters (c: HistoryClient): Promise<Record<string, number>> {
  return (await c.call({ type: 'counters' })).counters ?? {}
}

async function directRead (reader: TieredStore<{ w: string }>, key: string, untilMs: number): Promise<string | null> {
  for (;;) {
    try {
      return (await reader.get(reader.key(key, 'reg')))?.value?.w ?? null
    } catch (err) {
      if (clock() > untilMs) throw err
      await sleep(50)
    }
  }
}

/** The key ids a phase works on (fresh per phase, so that phases do not see each other's data). */
export function phaseKeys (phase: Phase, seed: number): { hotKeys: string[], coldKeys: string[] } {
  const base = `${phase.name.replace(/[^a-z0-9]+/gi, '-')}-${seed}`
  return {
    hotKeys: Array.from({ length: phase.hotKeys ?? 4 }, (_, i) => `${base}-hot${i}`),
    coldKeys: Array.from({ length: phase.coldKeys ?? 4 }, (_, i) => `${base}-cold${i}`)
  }
}

export async function runPhase (phase: Phase, s: PhaseSettings): Promise<PhaseOutcome> {
  const { hotKeys, coldKeys } = phaseKeys(phase, s.seed)
  const keys = [...hotKeys, ...coldKeys]
  const before = await Promise.all(s.clients.map(counters))
  // The first instance writes every key once before anyone starts, so that the cold keys exist.
  for (const [i, c] of s.clients.entries()) {
    await c.call({ type: 'run', hotKeys, coldKeys, seedKeys: i === 0, lanes: s.lanes, seed: s.seed * 7 + i, gapMs: s.gapMs })
  }
  await sleep(s.warmMs)
  const faults = await phase.nemesis()
  await sleep(s.afterMs)
  const history: OpRecord[] = []
  for (const h of await Promise.all(s.clients.map(async c => await c.call({ type: 'stop' }, 30_000)))) history.push(...(h.history ?? []))

  // Convergence: every instance reads every key until all agree with a direct read of Redis, within the bound.
  const convergeStart = clock()
  const deadline = convergeStart + s.convergeBoundMs
  let convergedMs: number | 'never' = 'never'
  const finals = new Map<string, string | null>()
  let disagreements: string[] = []
  for (;;) {
    disagreements = []
    for (const key of keys) finals.set(key, await directRead(s.reader, key, deadline + 5000))
    for (const c of s.clients) {
      for (const key of keys) {
        const op = (await c.call({ type: 'read', key })).op as OpRecord
        history.push(op)
        const local = op.outcome === 'ok' && op.seen?.degraded !== true ? op.seen?.w ?? null : 'error'
        if (local !== finals.get(key)) disagreements.push(`${c.name} ${key}: ${String(local)} vs Redis ${String(finals.get(key))}`)
      }
    }
    if (disagreements.length === 0) { convergedMs = Math.round(clock() - convergeStart); break }
    if (clock() > deadline) break
    await sleep(50)
  }
  // Redis may still change under the reads above only through the workload, which has stopped: finals are final.
  const result = checkHistory(history, finals, faults, { leaseMs: LEASE_MS })
  const after = await Promise.all(s.clients.map(counters))
  const resetsPerInstance = after.map((a, i) => typeof a.resets === 'number' ? a.resets - (before[i]?.resets ?? 0) : undefined)
  const resets = resetsPerInstance.some(r => r === undefined) ? 'not detected' as const : resetsPerInstance.reduce<number>((n, r) => n + (r ?? 0), 0)
  return { row: { fault: phase.name, result, resets, convergedMs }, result, resetsPerInstance, disagreements, history }
}
