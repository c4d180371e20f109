/**
 * TLS session failover benchmark: `npx tsx bench/tls.ts` (about a minute on 2 cores).
 *
 * Three instance processes (scripts/tls-instance.ts) per cluster share one private redis-server; a client
 * reconnects round-robin across them, each time offering the session it got last, as a client behind an L4 balancer
 * does. Per certificate type (RSA-2048, ECDSA P-256), in the same run:
 *   - the share of resumed handshakes over 1,000 reconnects with the plugin and with Node's defaults;
 *   - server CPU per handshake (process.cpuUsage() inside the servers, summed over the three, idle rate
 *     subtracted) for full handshakes and for resumed ones, and their ratio.
 * Then, RSA only: TLS 1.2 with tickets, TLS 1.2 from the session cache, and a real https.Agent through a round-robin
 * TCP balancer with and without single-use sessions (the measured cost of `singleUse`).
 * Then `sessionCache` on vs off for TLS 1.3 (rounds in rotating order, with a second cache-off cluster as the A/A
 * control that shows what "within noise" is in this run), and real clients (curl, Chromium, openssl s_client,
 * TLS 1.2 session-id clients) through HAProxy in TCP round-robin, with and without ticket renewal, one row per client.
 * BENCH_TLS_ONLY=certs,tls12,clients picks parts. Loopback only; every process is stopped at the end. Writes
 * bench/results/tls.json and bench/results/tls.md.
 */
import { constants } from 'node:crypto'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import https from 'node:https'
import net from 'node:net'
import os from 'node:os'
import tls from 'node:tls'
import { fileURLToPath } from 'node:url'
import { testCerts, type KeyType } from '../scripts/certs.js'
import { startRedis } from '../scripts/redis-server.js'
import { spawnTlsInstance, type InstanceConfig, type TlsInstance } from '../scripts/tls-instance.js'
import { median, percentile } from './lib.js'
import { chromiumPath, chromiumRun, curlRun, haproxyAvailable, sClientRun, startHaproxy, type ClientRun } from '../test/helpers/real-clients.js'
import type { TlsSessionsOptions } from '../plugins/tls-sessions.js'

const RECONNECTS = Number(process.env.BENCH_TLS_RECONNECTS ?? 1000)
const FULL = Number(process.env.BENCH_TLS_FULL ?? 300)
const CPU_ROUNDS = Number(process.env.BENCH_TLS_CPU_ROUNDS ?? 5)
const AGENT_REQUESTS = Number(process.env.BENCH_TLS_AGENT_REQUESTS ?? 200)
const WARMUP = 30
/** Parts to run, comma-separated (certs, tls12, clients); default all. For a quick look at one part. */
const ONLY = new Set((process.env.BENCH_TLS_ONLY ?? 'certs,tls12,clients').split(','))
const certs = testCerts()
const RESULTS = fileURLToPath(new URL('./results/', import.meta.url))

type Mode = 'tls13' | 'tls12' | 'tls12-no-ticket'

function clientOptions (mode: Mode): tls.ConnectionOptions {
  if (mode === 'tls13') return { minVersion: 'TLSv1.3' }
  if (mode === 'tls12') return { maxVersion: 'TLSv1.2' }
  return { maxVersion: 'TLSv1.2', secureOptions: constants.SSL_OP_NO_TICKET }
}

interface Handshake { reused: boolean, session: Buffer | undefined, ms: number }

/**
 * One handshake and nothing else: the client ends as soon as it holds a session to offer next time (TLS 1.3 sends
 * tickets just after the handshake, so it waits for the first one; TLS 1.2 has it at once).
 */
async function handshake (port: number, mode: Mode, session?: Buffer): Promise<Handshake> {
  const start = performance.now()
  return await new Promise((resolve, reject) => {
    let reused = false
    let got: Buffer | undefined
    let finished = false
    const socket = tls.connect({
      host: '127.0.0.1', port, servername: 'localhost', ca: certs.ca, ...clientOptions(mode), ...(session === undefined ? {} : { session })
    })
    const finish = (): void => {
      if (finished) return
      finished = true
      clearTimeout(guard)
      socket.end()
      resolve({ reused, session: got ?? session, ms: performance.now() - start })
    }
    const guard = setTimeout(() => { socket.destroy(); reject(new Error('handshake timeout')) }, 5000)
    socket.on('session', s => { got = s; if (mode === 'tls13') finish() })
    socket.on('secureConnect', () => {
      reused = socket.isSessionReused()
      if (mode !== 'tls13') {
        got = socket.getSession() ?? got
        finish()
      } else if (reused) {
        // Measured here: after a TLS 1.3 resumption Node's server sends no new ticket; the client keeps its session.
        finish()
      } else {
        setTimeout(finish, 200) // bounded, should a full handshake bring no ticket
      }
    })
    socket.resume() // tickets come as post-handshake records: they are only processed while the socket reads
    socket.on('error', err => {
      if (finished) return
      clearTimeout(guard)
      finished = true
      reject(err)
    })
  })
}

async function cpuOf (cluster: TlsInstance[]): Promise<number> {
  const s = await Promise.all(cluster.map(async i => await i.status()))
  return s.reduce((sum, x) => sum + x.cpu.user + x.cpu.system, 0)
}

async function serverCounts (cluster: TlsInstance[]): Promise<{ handshakes: number, resumed: number, errors: number }> {
  const s = await Promise.all(cluster.map(async i => await i.status()))
  const n = (k: string): number => s.reduce((sum, x) => sum + (x.metrics[k] ?? 0), 0)
  return { handshakes: n('handshakes'), resumed: n('resumed'), errors: n('handshakeErrors') }
}

/** Background CPU of the cluster per ms (timers, Redis heartbeats), to subtract from timed runs. */
async function idleRate (cluster: TlsInstance[]): Promise<number> {
  const a = await cpuOf(cluster)
  const t0 = performance.now()
  await new Promise(resolve => setTimeout(resolve, 1000))
  const b = await cpuOf(cluster)
  return (b - a) / (performance.now() - t0)
}

interface Run {
  handshakes: number
  resumed: number
  resumedShare: number
  /** Resumed handshakes as the servers counted them (plugin metrics; 0 without the plugin). */
  serverResumed: number
  /** Server CPU per handshake, microseconds, idle subtracted. */
  cpuUsPerHandshake: number
  /** Client-observed time per handshake, ms. */
  p50Ms: number
  p99Ms: number
  serverHandshakeErrors: number
}

/** `n` connections round-robin over the cluster; with `reuse`, each offers the last session received. */
async function roundRobin (cluster: TlsInstance[], n: number, mode: Mode, reuse: boolean, idle: number): Promise<Run> {
  let session: Buffer | undefined
  // Start from a session of the cluster, so that reconnect 1 can already resume.
  if (reuse) session = (await handshake((cluster[0] as TlsInstance).port, mode)).session
  const before = await cpuOf(cluster)
  const counts = await serverCounts(cluster)
  const times: number[] = []
  let resumed = 0
  const t0 = performance.now()
  for (let i = 0; i < n; i++) {
    const port = (cluster[(i + 1) % cluster.length] as TlsInstance).port
    const h = await handshake(port, mode, reuse ? session : undefined)
    if (h.reused) resumed++
    if (reuse) session = h.session
    times.push(h.ms)
  }
  const elapsed = performance.now() - t0
  const cpu = await cpuOf(cluster) - before - idle * elapsed
  const after = await serverCounts(cluster)
  return {
    handshakes: n,
    resumed,
    resumedShare: resumed / n,
    serverResumed: after.resumed - counts.resumed,
    cpuUsPerHandshake: cpu / n,
    p50Ms: percentile(times, 0.5),
    p99Ms: percentile(times, 0.99),
    serverHandshakeErrors: after.errors - counts.errors
  }
}

// Private, as in every benchmark: with REDIS_URL set it would otherwise share that server.
const redis = await startRedis({ private: true })
const prefix = `benchtls${process.pid}:`
const live: TlsInstance[] = []

async function cluster (name: string, type: KeyType, cfg: Partial<InstanceConfig>): Promise<TlsInstance[]> {
  const cert = certs[type]
  const base: InstanceConfig = { keyPath: cert.keyPath, certPath: cert.certPath, redisUrl: redis.url, prefix, logLevel: 'warn', ...cfg }
  // Different command lines on purpose: Node's default session id context differs per process because of it.
  const started = await Promise.all([0, 1, 2].map(async i => await spawnTlsInstance(`${name}-${i}`, base, [`--instance=${i}`])))
  live.push(...started)
  for (const i of started) await handshake(i.port, 'tls13') // first-connection costs (lazy init) out of the way
  return started
}

async function stopAll (cluster: TlsInstance[]): Promise<void> {
  await Promise.all(cluster.map(async i => await i.stop()))
}

async function warm (c: TlsInstance[], mode: Mode): Promise<void> {
  let s: Buffer | undefined
  for (let i = 0; i < WARMUP; i++) s = (await handshake((c[i % c.length] as TlsInstance).port, mode, s)).session
}

interface CertResult {
  type: KeyType
  handoff: {
    /** The RECONNECTS round-robin run: the share of resumed handshakes. */
    resumed: Run
    /** Alternating CPU rounds of FULL handshakes each, full then resumed. */
    rounds: Array<{ full: Run, resumed: Run }>
    /** Medians over the rounds, µs of server CPU per handshake. */
    cpuFullUs: number
    cpuResumedUs: number
    /** Median of the per-round ratios resumed / full, and the ratios themselves. */
    cpuRatio: number
    cpuRatios: number[]
  }
  nodeDefaults: Run
}

/** Round-robin TCP balancer on loopback, so an https.Agent (which caches sessions per host:port) sees one server. */
async function balancer (ports: number[]): Promise<{ port: number, close: () => Promise<void> }> {
  let next = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer(c => {
    const up = net.connect((ports[next++ % ports.length] as number), '127.0.0.1')
    for (const s of [c, up]) { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => { c.destroy(); up.destroy() }) }
    c.pipe(up).pipe(c)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as net.AddressInfo).port,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}

/** Sequential requests through the balancer with a real https.Agent (no keep-alive: every request reconnects). */
async function agentRun (ports: number[], n: number): Promise<{ pattern: string, resumedShare: number }> {
  const lb = await balancer(ports)
  const agent = new https.Agent({ keepAlive: false, maxVersion: 'TLSv1.2', secureOptions: constants.SSL_OP_NO_TICKET, ca: certs.ca })
  let pattern = ''
  try {
    for (let i = 0; i < n; i++) {
      const body = await new Promise<string>((resolve, reject) => {
        const req = https.get({ host: 'localhost', port: lb.port, path: '/tls', agent }, res => {
          let b = ''
          res.on('data', d => { b += String(d) })
          res.on('end', () => resolve(b))
        })
        req.on('error', reject)
        req.setTimeout(5000, () => req.destroy(new Error('request timeout')))
      })
      pattern += (JSON.parse(body) as { resumed: boolean }).resumed ? 'R' : 'F'
    }
  } finally {
    agent.destroy()
    await lb.close()
  }
  return { pattern: pattern.slice(0, 12), resumedShare: (pattern.match(/R/g)?.length ?? 0) / n }
}

const started = performance.now()
// Other work on the machine inflates per-process CPU time unevenly (shared cores): recorded so that runs compare.
const loadAtStart = os.loadavg()[0] ?? 0
/** TLS 1.3 handshake CPU with sessionCache on and off, alternating rounds in the same run (issue 16). */
interface CacheCost {
  /** `off2`: a second cache-off cluster, the A/A control: how far two identical configurations differ here. */
  rounds: Array<{ fullOff: Run, fullOn: Run, fullOff2: Run, resumedOff: Run, resumedOn: Run, resumedOff2: Run }>
  fullOffUs: number
  fullOnUs: number
  resumedOffUs: number
  resumedOnUs: number
  /** Medians of the per-round ratios on / off. */
  fullRatio: number
  resumedRatio: number
  /** Medians of the per-round ratios off2 / off (the noise yardstick). */
  fullControlRatio: number
  resumedControlRatio: number
}
const CLIENT_RECONNECTS = Number(process.env.BENCH_TLS_CLIENT_RECONNECTS ?? 100)
/** Real clients through HAProxy (TCP round-robin) over 3 instances; per client, with and without ticket renewal. */
type ClientRows = Record<string, { renewal: ClientRun | string, noRenewal: ClientRun | string }>
const results: { certs: CertResult[], tls12?: Record<string, Run>, singleUse?: Record<string, { pattern: string, resumedShare: number }>, cacheCost?: CacheCost, clients?: ClientRows } = { certs: [] }
try {
  for (const type of ONLY.has('certs') ? ['rsa', 'ecdsa'] as const : []) {
    const handoff = await cluster(`handoff-${type}`, type, {})
    await warm(handoff, 'tls13')
    const idle = await idleRate(handoff)
    const resumed = await roundRobin(handoff, RECONNECTS, 'tls13', true, idle)
    // CPU: full and resumed alternate over CPU_ROUNDS rounds, so that drift (other load, frequency) hits both alike.
    const rounds: Array<{ full: Run, resumed: Run }> = []
    for (let r = 0; r < CPU_ROUNDS; r++) {
      rounds.push({ full: await roundRobin(handoff, FULL, 'tls13', false, idle), resumed: await roundRobin(handoff, FULL, 'tls13', true, idle) })
    }
    await stopAll(handoff)
    const fullUs = median(rounds.map(x => x.full.cpuUsPerHandshake))
    const resumedUs = median(rounds.map(x => x.resumed.cpuUsPerHandshake))
    const ratios = rounds.map(x => x.resumed.cpuUsPerHandshake / x.full.cpuUsPerHandshake)
    const plain = await cluster(`node-${type}`, type, { plugin: false })
    await warm(plain, 'tls13')
    const nodeDefaults = await roundRobin(plain, RECONNECTS, 'tls13', true, await idleRate(plain))
    await stopAll(plain)
    results.certs.push({ type, handoff: { resumed, rounds, cpuFullUs: fullUs, cpuResumedUs: resumedUs, cpuRatio: median(ratios), cpuRatios: ratios }, nodeDefaults })
    console.error(`${type}: resumed ${(resumed.resumedShare * 100).toFixed(1)}% (Node defaults ${(nodeDefaults.resumedShare * 100).toFixed(1)}%), ` +
      `CPU full ${fullUs.toFixed(0)} us, resumed ${resumedUs.toFixed(0)} us, ratios ${ratios.map(x => x.toFixed(2)).join(' ')}`)
  }

  if (ONLY.has('tls12')) {
  // TLS 1.2, RSA: tickets, and the session cache for clients without tickets.
    const cache: TlsSessionsOptions = { sessionCache: true }
    const c12 = await cluster('tls12', 'rsa', { tlsSessions: cache })
    const off = await cluster('nocache', 'rsa', { tlsSessions: { sessionCache: false } })
    const off2 = await cluster('nocache2', 'rsa', { tlsSessions: { sessionCache: false } })
    await warm(c12, 'tls13')
    await warm(off, 'tls13')
    await warm(off2, 'tls13')
    const idle12 = await idleRate(c12)
    const idleOff = await idleRate(off)
    const idleOff2 = await idleRate(off2)
    // The price of sessionCache for TLS 1.3 clients, on and off alternating so that drift hits both alike; the order
    // within a round rotates, and a second cache-off cluster measures what "within noise" means in this run.
    const costRounds: CacheCost['rounds'] = []
    for (let r = 0; r < CPU_ROUNDS; r++) {
      const row: Partial<CacheCost['rounds'][number]> = {}
      const order = [['Off', off, idleOff], ['On', c12, idle12], ['Off2', off2, idleOff2]] as const
      for (const resumedRun of [false, true]) {
        for (let k = 0; k < order.length; k++) {
          const [name, c, idle] = order[(k + r) % order.length] as (typeof order)[number]
          row[`${resumedRun ? 'resumed' : 'full'}${name}`] = await roundRobin(c, FULL, 'tls13', resumedRun, idle)
        }
      }
      costRounds.push(row as CacheCost['rounds'][number])
    }
    await stopAll(off)
    await stopAll(off2)
    const medOf = (f: (x: CacheCost['rounds'][number]) => number): number => median(costRounds.map(f))
    results.cacheCost = {
      rounds: costRounds,
      fullOffUs: medOf(x => x.fullOff.cpuUsPerHandshake),
      fullOnUs: medOf(x => x.fullOn.cpuUsPerHandshake),
      resumedOffUs: medOf(x => x.resumedOff.cpuUsPerHandshake),
      resumedOnUs: medOf(x => x.resumedOn.cpuUsPerHandshake),
      fullRatio: medOf(x => x.fullOn.cpuUsPerHandshake / x.fullOff.cpuUsPerHandshake),
      resumedRatio: medOf(x => x.resumedOn.cpuUsPerHandshake / x.resumedOff.cpuUsPerHandshake),
      fullControlRatio: medOf(x => x.fullOff2.cpuUsPerHandshake / x.fullOff.cpuUsPerHandshake),
      resumedControlRatio: medOf(x => x.resumedOff2.cpuUsPerHandshake / x.resumedOff.cpuUsPerHandshake)
    }
    console.error(`sessionCache on/off, TLS 1.3: full ${results.cacheCost.fullRatio.toFixed(2)}x, resumed ${results.cacheCost.resumedRatio.toFixed(2)}x; ` +
      `control off2/off: full ${results.cacheCost.fullControlRatio.toFixed(2)}x, resumed ${results.cacheCost.resumedControlRatio.toFixed(2)}x`)
    results.tls12 = {
      tickets: await roundRobin(c12, RECONNECTS, 'tls12', true, idle12),
      sessionCache: await roundRobin(c12, RECONNECTS, 'tls12-no-ticket', true, idle12),
      fullNoTicket: await roundRobin(c12, FULL, 'tls12-no-ticket', false, idle12),
      // The price of sessionCache for TLS 1.3 clients: a lookup of their random legacy session id on each connection.
      tls13WithCache: await roundRobin(c12, RECONNECTS, 'tls13', true, idle12)
    }
    results.singleUse = { reusable: await agentRun(c12.map(i => i.port), AGENT_REQUESTS) }
    await stopAll(c12)
    const single = await cluster('single', 'rsa', { tlsSessions: { sessionCache: true, singleUse: true } })
    results.singleUse.singleUse = await agentRun(single.map(i => i.port), AGENT_REQUESTS)
    await stopAll(single)
  }
  if (ONLY.has('clients')) {
    if (!haproxyAvailable()) {
      console.error('clients: haproxy not installed, skipped (apt-get install haproxy)')
    } else {
      const rows: ClientRows = {}
      for (const renewal of [true, false]) {
        // As the example runs: session cache on, for the TLS 1.2 session-id clients.
        const c = await cluster(renewal ? 'clients' : 'clients-norenew', 'rsa', { tlsSessions: { sessionCache: true, ticketRenewal: renewal } })
        const lb = await startHaproxy(c.map(i => i.port))
        const target = { port: lb.port, caPath: certs.caPath, certPath: certs.rsa.certPath }
        const attempt = async (f: () => ClientRun | Promise<ClientRun>): Promise<ClientRun | string> => {
          try { return await f() } catch (err) { return `failed: ${(err as Error).message.slice(0, 120)}` }
        }
        const runs: Record<string, () => ClientRun | Promise<ClientRun>> = {
          'curl, TLS 1.3, many URLs + Connection: close (single-use tickets)': () => curlRun(target, CLIENT_RECONNECTS),
          'Chromium (playwright-core), new connection per fetch (single-use tickets)': async () => existsSync(chromiumPath())
            ? await chromiumRun(target, CLIENT_RECONNECTS)
            : await Promise.reject(new Error(`no chromium at ${chromiumPath()}`)),
          'openssl s_client, TLS 1.3, newest ticket each time (single-use)': () => sClientRun(target, CLIENT_RECONNECTS, { reuse: false }),
          'openssl s_client, TLS 1.3, -sess_in one ticket (reusing)': () => sClientRun(target, CLIENT_RECONNECTS, { reuse: true }),
          'curl, TLS 1.2 (session ids)': () => curlRun(target, CLIENT_RECONNECTS, { tls12: true }),
          'openssl s_client, TLS 1.2 -no_ticket (session id)': () => sClientRun(target, CLIENT_RECONNECTS, { tls12: true, noTicket: true, reuse: true })
        }
        for (const [name, f] of Object.entries(runs)) {
          const r = await attempt(f)
          rows[name] ??= { renewal: '', noRenewal: '' }
          ;(rows[name] as ClientRows[string])[renewal ? 'renewal' : 'noRenewal'] = r
          console.error(`clients (renewal ${String(renewal)}): ${name}: ${typeof r === 'string' ? r : `${r.resumed}/${r.connections - 1}`}`)
        }
        await lb.stop()
        await stopAll(c)
      }
      results.clients = rows
    }
  }
} finally {
  await stopAll(live)
  await redis.stop()
}

const seconds = (performance.now() - started) / 1000
const pct = (x: number): string => `${(x * 100).toFixed(1)}%`
const us = (x: number): string => `${Math.round(x)} µs`
const env = {
  node: process.version,
  openssl: process.versions.openssl,
  cpus: os.cpus().length,
  cpu: os.cpus()[0]?.model ?? '',
  loadAverage: { start: loadAtStart, end: os.loadavg()[0] ?? 0 },
  date: new Date().toISOString(),
  seconds
}
const json = { env, reconnects: RECONNECTS, cpuRoundHandshakes: FULL, cpuRounds: CPU_ROUNDS, ...results }
mkdirSync(RESULTS, { recursive: true })
writeFileSync(`${RESULTS}tls.json`, JSON.stringify(json, null, 2) + '\n')

const lines = [
  '### TLS session failover (bench/tls.ts)',
  '',
  `Node ${env.node}, OpenSSL ${env.openssl}, ${env.cpus} CPUs (1-min load average ${env.loadAverage.start.toFixed(1)} at start, ` +
  `${env.loadAverage.end.toFixed(1)} at the end), loopback; 3 instance processes on one Redis, client reconnecting`,
  'round-robin with the session it got last; TLS 1.3 unless noted. Server CPU summed over the instances (process.cpuUsage(),',
  `idle rate subtracted), per handshake: medians of ${CPU_ROUNDS} alternating rounds of ${FULL} full and ${FULL} resumed handshakes`,
  '(ratio: median of the per-round ratios, each round in brackets).',
  '',
  `| Certificate | Resumed, ${RECONNECTS} reconnects (plugin) | Resumed (Node defaults) | CPU full | CPU resumed | Resumed / full (rounds) |`,
  '|---|---|---|---|---|---|',
  ...results.certs.map(c => `| ${c.type === 'rsa' ? 'RSA-2048' : 'ECDSA P-256'} | ${pct(c.handoff.resumed.resumedShare)} | ${pct(c.nodeDefaults.resumedShare)} | ` +
    `${us(c.handoff.cpuFullUs)} | ${us(c.handoff.cpuResumedUs)} | ${c.handoff.cpuRatio.toFixed(2)} (${c.handoff.cpuRatios.map(x => x.toFixed(2)).join(', ')}) |`),
  ''
]
if (results.tls12 !== undefined) {
  const t12 = results.tls12
  const full12 = t12.fullNoTicket?.cpuUsPerHandshake ?? NaN
  const row = (label: string, r: Run | undefined, ratio: boolean): string =>
    `| ${label} | ${r?.resumed === 0 ? '-' : pct(r?.resumedShare ?? 0)} | ${us(r?.cpuUsPerHandshake ?? 0)} | ` +
    `${ratio ? ((r?.cpuUsPerHandshake ?? 0) / full12).toFixed(2) : '-'} | ${(r?.p50Ms ?? 0).toFixed(2)} ms |`
  lines.push(
    '| RSA-2048, other modes | Resumed | CPU per handshake | / TLS 1.2 full | p50 client time |',
    '|---|---|---|---|---|',
    row('TLS 1.2, tickets', t12.tickets, true),
    row('TLS 1.2, session cache (client without tickets)', t12.sessionCache, true),
    row('TLS 1.2, full handshakes (no session offered)', t12.fullNoTicket, false),
    row('TLS 1.3 tickets, with sessionCache on', t12.tls13WithCache, false),
    ''
  )
}
if (results.cacheCost !== undefined) {
  const c = results.cacheCost
  const ratios = (f: (x: CacheCost['rounds'][number]) => number): string => c.rounds.map(f).map(x => x.toFixed(2)).join(', ')
  lines.push(
    `TLS 1.3 handshakes, RSA-2048, \`sessionCache\` on vs off (${CPU_ROUNDS} rounds of ${FULL} each, same run, order rotating per round; server CPU per`,
    'handshake). Control: a second, identical cache-off cluster against the first, the spread two equal configurations show here:',
    '',
    '| TLS 1.3 handshake | cache off | cache on | on / off (rounds) | control: off / off (rounds) |',
    '|---|---|---|---|---|',
    `| full | ${us(c.fullOffUs)} | ${us(c.fullOnUs)} | ${c.fullRatio.toFixed(2)} (${ratios(x => x.fullOn.cpuUsPerHandshake / x.fullOff.cpuUsPerHandshake)}) | ` +
    `${c.fullControlRatio.toFixed(2)} (${ratios(x => x.fullOff2.cpuUsPerHandshake / x.fullOff.cpuUsPerHandshake)}) |`,
    `| resumed | ${us(c.resumedOffUs)} | ${us(c.resumedOnUs)} | ${c.resumedRatio.toFixed(2)} (${ratios(x => x.resumedOn.cpuUsPerHandshake / x.resumedOff.cpuUsPerHandshake)}) | ` +
    `${c.resumedControlRatio.toFixed(2)} (${ratios(x => x.resumedOff2.cpuUsPerHandshake / x.resumedOff.cpuUsPerHandshake)}) |`,
    ''
  )
}
if (results.singleUse !== undefined) {
  const s = results.singleUse
  lines.push(
    `https.Agent (no keep-alive, TLS 1.2 without tickets) through a round-robin balancer, ${AGENT_REQUESTS} requests:`,
    `reusable sessions ${pct(s.reusable?.resumedShare ?? 0)} resumed (${s.reusable?.pattern ?? ''}...), ` +
    `singleUse ${pct(s.singleUse?.resumedShare ?? 0)} (${s.singleUse?.pattern ?? ''}...).`,
    ''
  )
}
if (results.clients !== undefined) {
  const cell = (r: ClientRun | string): string => typeof r === 'string' ? r : `${pct(r.rate)} (${r.resumed}/${r.connections - 1}, ${r.pattern.slice(0, 8)}...)`
  lines.push(
    `Real clients through HAProxy 2.6 (TCP round-robin) over 3 instances (sessionCache on, as the example), ${CLIENT_RECONNECTS} connections each;`,
    'resumed reconnects as the servers counted them (every connection after the first):',
    '',
    '| Client | ticketRenewal: true (default) | ticketRenewal: false (Node\'s behaviour) |',
    '|---|---|---|',
    ...Object.entries(results.clients).map(([name, r]) => `| ${name} | ${cell(r.renewal)} | ${cell(r.noRenewal)} |`),
    ''
  )
}
writeFileSync(`${RESULTS}tls.md`, lines.join('\n'))
console.log(lines.join('\n'))
console.error(`done in ${seconds.toFixed(1)} s`)
