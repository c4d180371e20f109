/**
 * Auth sessions: req/s of a warm-session read and of a session write, as a ratio to bare Fastify measured in the
 * same run, next to the peers (@fastify/session + connect-redis on node-redis, @fastify/secure-session), plus Redis
 * commands per request (INFO commandstats delta on a private redis-server).
 *
 *   npx tsx bench/session.ts            # writes bench/results/session.json and bench/results/session.md
 *
 * Each server runs in its own process (spawned from this file with --server <kind>); autocannon runs here. Runs are
 * interleaved (round 1: every kind, read then write; round 2: ...) and the median of the rounds is reported, so a
 * slow patch of the machine hits every kind alike. Server CPU per request (process.cpuUsage delta in the server) is
 * reported too: it does not depend on how fast the load generator is.
 */
import type { ChildProcess } from 'node:child_process'
import { createRequire } from 'node:module'
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyCookie, { Signer } from '@fastify/cookie'
import { Redis } from 'ioredis'
import { handoffStore } from '../plugins/store.js'
import { authSession } from '../plugins/auth-session.js'
import { KeyRing, Sealer } from '../lib/seal.js'
import { startRedis, type RedisHandle } from '../scripts/redis-server.js'
import { baselineFile, commandDelta, commandStats, countRoundTrips, median, peerSession, redisCpuUs, registerPeerSession, round, roundTripCounter, serveUntilStopped, spawnServer, stopServer } from './lib.js'

declare module '../plugins/auth-session.js' {
  interface SessionData {
    n?: number
  }
}

type Kind = 'bare' | 'floor' | 'floor-sealed' | 'handoff' | 'handoff-baseline' | 'fsession-redis' | 'secure-session' | 'handoff-embedded'
type Case = 'read' | 'write' | 'write-fixed'

/** autocannon ships no types; the part used here. */
interface AutocannonClient { setHeaders: (headers: Record<string, string>) => void }
interface AutocannonResult {
  requests: { average: number, total: number }
  latency: { p99: number }
  errors: number
  timeouts: number
  non2xx: number
}
const requireCjs = createRequire(import.meta.url)
const autocannon = requireCjs('autocannon') as (opts: {
  url: string
  connections: number
  duration: number
  overallRate?: number
  setupClient?: (client: AutocannonClient) => void
}) => Promise<AutocannonResult>

// handoff-embedded: the same plugin on the in-process repository (no Redis), to separate the plugin's and the store's
// own CPU from the cost of talking to Redis. For reference only; it cannot be shared between instances.
// floor: bare Fastify plus @fastify/cookie (the incoming cookie parsed) and exactly one ioredis SET of the session's
// JSON per write, nothing else: what the target's "one round trip" costs on its own on this machine, the ceiling for
// any server-side session store (issue 17's floor).
// floor-sealed: the floor plus what a sealed session with a version cookie must do per write (seal, sign), no more.
// handoff-baseline: the handoff server of an older checkout (BENCH_BASELINE), for a before/after from one run.
const BASELINE = baselineFile('session.ts')
const ALL_KINDS: Kind[] = ['bare', 'floor', 'floor-sealed', 'handoff', ...(BASELINE === undefined ? [] : ['handoff-baseline' as const]), 'fsession-redis', 'secure-session', 'handoff-embedded']
// BENCH_KINDS=handoff,fsession-redis runs those only (bare and the floor always run: every ratio needs them).
const KINDS: Kind[] = process.env.BENCH_KINDS === undefined
  ? ALL_KINDS
  : ALL_KINDS.filter(k => k === 'bare' || k === 'floor' || (process.env.BENCH_KINDS ?? '').split(',').includes(k))
// write-fixed: the write route at a fixed offered load (BENCH_FIXED_RATE req/s, below what every server reaches), so
// CPU per request compares the same work at the same rate: in the closed loop a faster server batches more per
// system call and pays less per request for it.
const CASES: Case[] = (process.env.BENCH_CASES?.split(',') as Case[] | undefined) ?? ['read', 'write', 'write-fixed']
const FIXED_RATE = Number(process.env.BENCH_FIXED_RATE ?? 1500)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const DURATION_S = Number(process.env.BENCH_DURATION ?? 4)
const WARMUP_S = Number(process.env.BENCH_WARMUP ?? 1)
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 10)
const SECRET = 'fastify-handoff bench secret, at least 32 bytes long'
const SELF = fileURLToPath(import.meta.url)
const RESULTS = fileURLToPath(new URL('./results/', import.meta.url))

// ---------------------------------------------------------------------------------------------------------------
// Servers (one process each)

async function buildServer (kind: Kind, redisUrl: string): Promise<{ app: FastifyInstance, close: () => Promise<void> }> {
  const app = Fastify({ logger: false })
  let close = async (): Promise<void> => {}
  if (kind === 'bare') {
    app.get('/login', async () => ({ n: 0 }))
    app.get('/read', async () => ({ n: 1 }))
    app.get('/write', async () => ({ n: 1 }))
  } else if (kind === 'floor' || kind === 'floor-sealed') {
    // The same client settings as the store's RedisRepository (no auto-pipelining, no offline queue).
    const client = new Redis(redisUrl, { enableAutoPipelining: false, enableOfflineQueue: false, maxRetriesPerRequest: 0 })
    client.on('error', () => {})
    await new Promise(resolve => client.once('ready', resolve))
    close = async () => { await client.quit() }
    await app.register(fastifyCookie)
    const sealer = new Sealer(new KeyRing(SECRET))
    const signer = new Signer(Buffer.alloc(32, 3))
    const sid = 'x'.repeat(32)
    const sessions = new Map<string, { n: number, c: number }>()
    // A cookie of the session cookie's size, so that reads pay @fastify/cookie's parse as the session plugin's do.
    app.get('/login', async (_request, reply) => {
      reply.setCookie('handoff.sid', signer.sign(`${sid}.1`), { path: '/', httpOnly: true, sameSite: 'lax', maxAge: 1800 })
      return { n: 0 }
    })
    app.get('/read', async () => ({ n: 1 }))
    if (kind === 'floor') {
      let n = 0
      app.get('/write', async (request) => {
        const id = (request.cookies['handoff.sid'] ?? '').slice(0, 32) || sid
        const data = { n: ++n }
        await client.set(`floor:${id}`, JSON.stringify(data), 'PX', 1_800_000)
        roundTripCounter.count++
        return data
      })
    } else {
      // What a sealed server-side session with a version cookie cannot avoid per write, and nothing more: JSON of
      // the session, an AES-256-GCM seal, one SET with expiry, a re-signed cookie. No compare-and-set, no
      // invalidation, no local tier, no verification of the incoming cookie.
      app.get('/write', async (request, reply) => {
        const id = (request.cookies['handoff.sid'] ?? '').slice(0, 32) || sid
        const cur = sessions.get(id) ?? { n: 0, c: Date.now() }
        const next = { n: cur.n + 1, c: cur.c }
        sessions.set(id, next)
        const sealed = sealer.seal(Buffer.from(JSON.stringify({ d: next, c: next.c })), Buffer.from(`floor:${id}:${next.n}`))
        await client.set(`floor:${id}`, sealed, 'PX', 1_800_000)
        roundTripCounter.count++
        reply.setCookie('handoff.sid', signer.sign(`${id}.${next.n}`), { path: '/', httpOnly: true, sameSite: 'lax', maxAge: 1800 })
        return { n: next.n }
      })
    }
  } else if (kind === 'handoff' || kind === 'handoff-embedded') {
    await app.register(fastifyCookie)
    await app.register(handoffStore, kind === 'handoff' ? { secret: SECRET, redis: redisUrl } : { secret: SECRET })
    await app.register(authSession, { cookie: { secure: false } })
    countRoundTrips(app.handoff.repository as unknown as Record<string, unknown>)
    app.get('/login', async (request) => { request.session.set('n', 0); return { n: 0 } })
    app.get('/read', async (request) => ({ n: request.session.get('n') }))
    app.get('/write', async (request) => ({ n: request.session.increment('n') }))
  } else if (kind === 'fsession-redis' || kind === 'secure-session') {
    close = await registerPeerSession(app, kind, redisUrl, SECRET)
    app.get('/login', async (request) => { peerSession(request).set('n', 0); return { n: 0 } })
    app.get('/read', async (request) => ({ n: peerSession(request).get('n') }))
    app.get('/write', async (request) => {
      const s = peerSession(request)
      const n = (s.get('n') as number) + 1
      s.set('n', n)
      return { n }
    })
  } else {
    throw new Error(`${kind} runs from the baseline checkout's own bench file`)
  }
  app.get('/__cpu', async () => ({ ...process.cpuUsage(), roundTrips: roundTripCounter.count }))
  return { app, close }
}

async function serve (kind: Kind, redisUrl: string): Promise<void> {
  const { app, close } = await buildServer(kind, redisUrl)
  await serveUntilStopped(app, close)
}

// ---------------------------------------------------------------------------------------------------------------
// Driver

interface Server { kind: Kind, child: ChildProcess, base: string, cookies: string[] }

async function startServer (kind: Kind, redisUrl: string): Promise<Server> {
  const { child, base } = kind === 'handoff-baseline' ? await spawnServer(BASELINE as string, 'handoff', redisUrl) : await spawnServer(SELF, kind, redisUrl)
  // One session per connection, as with that many users: a single shared session would measure contention on one
  // key instead (a separate question, answered by the concurrency test). The floors hand out one fixed cookie: a
  // plain SET does not contend.
  const cookies: string[] = []
  for (let i = 0; i < CONNECTIONS; i++) {
    const res = await fetch(`${base}/login`)
    const cookie = res.headers.getSetCookie().map(c => c.split(';')[0]).join('; ')
    if (kind !== 'bare' && cookie === '') throw new Error(`${kind}: login set no cookie`)
    cookies.push(cookie)
  }
  return { kind, child, base, cookies }
}

async function probe (s: Server): Promise<{ cpu: number, roundTrips: number }> {
  const r = await fetch(`${s.base}/__cpu`)
  const u = await r.json() as { user: number, system: number, roundTrips: number }
  return { cpu: u.user + u.system, roundTrips: u.roundTrips }
}

interface Run {
  rps: number
  p99: number
  errors: number
  non2xx: number
  cpuUsPerReq: number
  /** redis-server's CPU per request (all servers share it; the idle ones add their heartbeats). */
  redisCpuUsPerReq: number
  /** Top-level Redis commands per request (a Lua script once). */
  roundTripsPerReq: number
  /** Commands per request as INFO commandstats counts them (inside Lua scripts too). */
  commandsPerReq: number
  byCommand: Record<string, number>
  pingPerReq: number
}

async function runOnce (s: Server, c: Case, redis: RedisHandle): Promise<Run> {
  const url = `${s.base}/${c === 'write-fixed' ? 'write' : c}`
  const rate = c === 'write-fixed' ? { overallRate: FIXED_RATE } : {}
  let next = 0
  const setupClient = (client: AutocannonClient): void => {
    const cookie = s.cookies[next++ % Math.max(1, s.cookies.length)]
    if (cookie !== undefined && cookie !== '') client.setHeaders({ cookie })
  }
  if (WARMUP_S > 0) await autocannon({ url, setupClient, connections: CONNECTIONS, duration: WARMUP_S, ...rate })
  const before = commandStats(redis)
  const p0 = await probe(s)
  const rc0 = redisCpuUs(redis)
  next = 0
  const r = await autocannon({ url, setupClient, connections: CONNECTIONS, duration: DURATION_S, ...rate })
  const rc1 = redisCpuUs(redis)
  const p1 = await probe(s)
  const after = commandStats(redis)
  const requests = r.requests.total
  const { data, ping } = commandDelta(before, after)
  const total = Object.values(data).reduce((a, b) => a + b, 0)
  const per: Record<string, number> = {}
  for (const [k, v] of Object.entries(data)) per[k] = round(v / requests, 4)
  // The peers use plain commands (no scripts): for them every command is a round trip.
  const roundTrips = s.kind.startsWith('handoff-') ? (s.kind === 'handoff-embedded' ? 0 : p1.roundTrips - p0.roundTrips) : s.kind === 'handoff' || s.kind.startsWith('floor') ? p1.roundTrips - p0.roundTrips : s.kind === 'handoff-embedded' ? 0 : total
  return {
    rps: r.requests.average,
    p99: r.latency.p99,
    errors: r.errors + r.timeouts,
    non2xx: r.non2xx,
    // includes the one /__cpu request, negligible
    cpuUsPerReq: round((p1.cpu - p0.cpu) / requests, 2),
    redisCpuUsPerReq: round((rc1 - rc0) / requests, 2),
    roundTripsPerReq: round(roundTrips / requests, 4),
    commandsPerReq: round(total / requests, 4),
    byCommand: per,
    pingPerReq: round(ping / requests, 4)
  }
}

async function drive (): Promise<void> {
  const started = Date.now()
  // This machine is shared: the load average says how much else ran next to the benchmark.
  const loadBefore = loadavg().map(x => round(x, 2))
  const redis = await startRedis({ private: true })
  const servers: Server[] = []
  try {
    for (const kind of KINDS) servers.push(await startServer(kind, redis.url))
    const runs = new Map<string, Run[]>()
    const ratios = new Map<string, number[]>()
    const cpuRatios = new Map<string, number[]>()
    const floorRatios = new Map<string, number[]>()
    for (let round = 0; round < ROUNDS; round++) {
      for (const c of CASES) {
        let bare = 0
        let bareCpu = 0
        let floorCpu = 0
        for (const s of servers) {
          const r = await runOnce(s, c, redis)
          const id = `${s.kind}/${c}`
          runs.set(id, [...(runs.get(id) ?? []), r])
          if (s.kind === 'bare') { bare = r.rps; bareCpu = r.cpuUsPerReq }
          // Server + Redis CPU per request over the floor's, in the same round (bare runs first, then the floor).
          if (s.kind === 'floor') floorCpu = r.cpuUsPerReq + r.redisCpuUsPerReq
          ratios.set(id, [...(ratios.get(id) ?? []), r.rps / bare])
          cpuRatios.set(id, [...(cpuRatios.get(id) ?? []), bareCpu / r.cpuUsPerReq])
          if (s.kind !== 'bare') floorRatios.set(id, [...(floorRatios.get(id) ?? []), (r.cpuUsPerReq + r.redisCpuUsPerReq) / floorCpu])
          process.stderr.write(`round ${round + 1} ${id.padEnd(22)} ${Math.round(r.rps).toString().padStart(6)} req/s  ${(r.rps / bare).toFixed(2)}x bare  ` +
            `${r.cpuUsPerReq} + ${r.redisCpuUsPerReq} us CPU/req (server + Redis), ${s.kind === 'bare' ? '-' : ((r.cpuUsPerReq + r.redisCpuUsPerReq) / floorCpu).toFixed(2)}x floor  ` +
            `${r.roundTripsPerReq} Redis round trips/req  p99 ${r.p99} ms${r.errors + r.non2xx > 0 ? `  errors ${r.errors} non2xx ${r.non2xx}` : ''}\n`)
        }
      }
    }
    const rows = []
    for (const c of CASES) {
      for (const kind of KINDS) {
        const id = `${kind}/${c}`
        const rs = runs.get(id) ?? []
        const last = rs[rs.length - 1] as Run
        rows.push({
          kind,
          case: c,
          rps: Math.round(median(rs.map(r => r.rps))),
          ratioToBare: round(median(ratios.get(id) ?? []), 3),
          ratiosPerRound: (ratios.get(id) ?? []).map(x => round(x, 3)),
          // Bare's server CPU per request over this server's, per round: steadier than req/s on a shared machine (it
          // does not depend on how much CPU the load generator and the other processes got), not the target metric.
          cpuRatioToBare: round(median(cpuRatios.get(id) ?? []), 3),
          cpuUsPerReq: round(median(rs.map(r => r.cpuUsPerReq)), 2),
          redisCpuUsPerReq: round(median(rs.map(r => r.redisCpuUsPerReq)), 2),
          cpuRatioToFloor: kind === 'bare' ? null : round(median(floorRatios.get(id) ?? []), 3),
          cpuRatiosToFloorPerRound: (floorRatios.get(id) ?? []).map(x => round(x, 3)),
          p99Ms: median(rs.map(r => r.p99)),
          redisRoundTripsPerReq: round(median(rs.map(r => r.roundTripsPerReq)), 4),
          redisCommandsPerReq: round(median(rs.map(r => r.commandsPerReq)), 4),
          redisByCommand: last.byCommand,
          heartbeatPingsPerReq: round(median(rs.map(r => r.pingPerReq)), 4),
          errors: rs.reduce((a, r) => a + r.errors + r.non2xx, 0)
        })
      }
    }
    const result = {
      date: new Date().toISOString(),
      node: process.version,
      cpus: `${cpus().length} x ${cpus()[0]?.model ?? '?'}`,
      redis: redis.cli('INFO', 'server').match(/redis_version:(\S+)/)?.[1] ?? '?',
      settings: { rounds: ROUNDS, durationS: DURATION_S, warmupS: WARMUP_S, connections: CONNECTIONS, pipelining: 1, fixedRate: FIXED_RATE },
      loadAverage: { before: loadBefore, after: loadavg().map(x => round(x, 2)) },
      targets: { read: '>= 0.85x bare, 0 Redis commands', write: 'server + Redis CPU per request <= 1.3x the floor, req/s ahead of @fastify/session + connect-redis in every round, 1 round trip' },
      rows,
      elapsedS: Math.round((Date.now() - started) / 1000)
    }
    mkdirSync(RESULTS, { recursive: true })
    writeFileSync(`${RESULTS}session.json`, JSON.stringify(result, null, 2) + '\n')
    writeFileSync(`${RESULTS}session.md`, markdown(result))
    process.stdout.write(markdown(result))
  } finally {
    for (const s of servers) await stopServer(s)
    await redis.stop()
  }
}

function markdown (r: { date: string, node: string, cpus: string, redis: string, settings: Record<string, number>, loadAverage: { before: number[], after: number[] }, rows: Array<Record<string, unknown>>, elapsedS: number }): string {
  const label: Record<string, string> = {
    bare: 'bare Fastify',
    floor: 'floor: bare Fastify + @fastify/cookie + one ioredis SET per write',
    'floor-sealed': 'floor + what a sealed session must do per write (JSON, AES-GCM seal, SET, re-signed cookie; incoming cookie not checked)',
    handoff: 'fastify-handoff auth-session',
    'handoff-baseline': `fastify-handoff auth-session, baseline (${process.env.BENCH_BASELINE_LABEL ?? 'older checkout'})`,
    'fsession-redis': '@fastify/session + connect-redis (rolling: false)',
    'secure-session': '@fastify/secure-session (cookie only)',
    'handoff-embedded': 'fastify-handoff, embedded repository (no Redis; reference)'
  }
  const lines = [
    '# Auth sessions: warm read and write, ratio to bare Fastify',
    '',
    `${r.date}, Node ${r.node}, ${r.cpus}, Redis ${r.redis} (private, loopback). autocannon ${r.settings.connections as number} connections, ` +
    `${r.settings.durationS as number} s per run after ${r.settings.warmupS as number} s warm-up, runs interleaved, median of ${r.settings.rounds as number} rounds. ` +
    'Servers in their own processes; autocannon in the driver process. ' +
    `Load average (1/5/15 min) before: ${r.loadAverage.before.join(' / ')}, after: ${r.loadAverage.after.join(' / ')} (2 cores, shared machine).`,
    '',
    '| case | server | req/s | x bare (per round) | server CPU us/req | Redis CPU us/req | server + Redis CPU x floor (per round) | p99 ms | Redis round trips/req | Redis commands/req (commandstats, incl. inside Lua) |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---|'
  ]
  for (const row of r.rows) {
    const by = Object.entries(row.redisByCommand as Record<string, number>).map(([k, v]) => `${k} ${v}`).join(', ')
    lines.push(`| ${row.case === 'write-fixed' ? `write at ${r.settings.fixedRate as number} req/s offered` : row.case as string} | ${label[row.kind as string] ?? ''} | ${row.rps as number} | ${(row.ratioToBare as number).toFixed(2)} (${(row.ratiosPerRound as number[]).map(x => x.toFixed(2)).join(' / ')}) | ` +
      `${row.cpuUsPerReq as number} | ${row.redisCpuUsPerReq as number} | ${row.cpuRatioToFloor === null ? '-' : `${(row.cpuRatioToFloor as number).toFixed(2)} (${(row.cpuRatiosToFloorPerRound as number[]).map(x => x.toFixed(2)).join(' / ')})`} | ${row.p99Ms as number} | ${row.redisRoundTripsPerReq as number} | ${row.redisCommandsPerReq as number}${by === '' ? '' : ` (${by})`} |`)
  }
  lines.push('', 'One session per autocannon connection (10 users), so the write case measures the write path, not contention on ' +
    'one key. Round trips: for fastify-handoff, Repository calls counted in the server (a Lua script is one); for ' +
    'connect-redis, every command (it runs no scripts). Commands: INFO commandstats delta over the run, which also ' +
    'counts the commands a Lua script runs; INFO (the measurement) and PING (the store\'s subscriber heartbeat, 20/s ' +
    'per handoff instance whatever the load, also while other servers are measured) are left out. CPU: the server ' +
    'process\'s (process.cpuUsage) and redis-server\'s (INFO cpu, all servers share it, so the idle ones\' heartbeats are ' +
    'in every row) over the run, per request; "x floor" is (server + Redis) over the floor\'s (server + Redis) in the ' +
    'same round, median of the rounds. CPU per request is measured under the closed loop of 10 connections, so a ' +
    'server that answers faster also batches more per system call: the floor, at several times the req/s, pays less ' +
    'per request for its socket work. Targets (issue 17): read >= 0.85x bare with 0 Redis commands; write server + ' +
    'Redis CPU <= 1.3x the floor, req/s ahead of @fastify/session + connect-redis in every round, one round trip.', '', `Whole run: ${r.elapsedS} s.`, '')
  return lines.join('\n')
}

const argv = process.argv.slice(2)
if (argv[0] === '--server') {
  serve(argv[1] as Kind, argv[3] as string).catch((err: unknown) => { process.stderr.write(String(err) + '\n'); process.exit(1) })
} else {
  drive().catch((err: unknown) => { process.stderr.write(`${err instanceof Error ? err.stack ?? err.message : String(err)}\n`); process.exit(1) })
}
