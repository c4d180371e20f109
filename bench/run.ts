/**
 * npm run bench: runs every benchmark in bench/ one after another (each in its own process, so one cannot warm or
 * slow another), then writes bench/results/summary.md (a headline table with the targets the issues name, then each
 * benchmark's own table) and bench/results/summary.svg (req/s as a ratio to bare Fastify, next to the peers).
 * Pass names to run a subset: `npm run bench -- store coherence`; `npm run bench -- --summary` runs nothing and only
 * rewrites the summary from the results on disk (after running one benchmark file by hand). A benchmark that fails or
 * times out is reported and the others still run; the exit code is then 1.
 */
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs'
import { cpus } from 'node:os'

const ALL = ['store', 'coherence', 'fanout', 'session', 'tls', 'cart']
const TIMEOUT_MS = 15 * 60_000
const RESULTS = 'bench/results'

const summaryOnly = process.argv.includes('--summary')
const wanted = process.argv.slice(2).filter(a => a !== '--summary')
const unknown = wanted.filter(n => !ALL.includes(n))
if (unknown.length > 0) {
  console.error(`unknown benchmark(s): ${unknown.join(', ')}; known: ${ALL.join(', ')}`)
  process.exit(2)
}
const names = summaryOnly ? [] : wanted.length > 0 ? wanted : ALL
mkdirSync(RESULTS, { recursive: true })

const clock = (ms: number): string => {
  const s = Math.round(ms / 1000)
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`
}

interface Outcome { name: string, ok: boolean, seconds: number, detail: string, startedAt: number }

/**
 * Runs one benchmark in its own process group, so that a timeout (or Ctrl-C here) also stops the servers and
 * redis-server it started.
 */
async function runBench (name: string): Promise<{ ok: boolean, detail: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', `bench/${name}.ts`], { stdio: 'inherit', detached: true })
  const killGroup = (): void => {
    try { if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL') } catch {}
  }
  let timedOut = false
  const timer = setTimeout(() => { timedOut = true; killGroup() }, TIMEOUT_MS)
  const onInterrupt = (): void => { killGroup(); process.exit(130) }
  process.once('SIGINT', onInterrupt)
  process.once('SIGTERM', onInterrupt)
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>(resolve => {
    child.once('exit', (c, s) => resolve([c, s]))
    child.once('error', err => { console.error(String(err)); resolve([null, null]) })
  })
  clearTimeout(timer)
  process.off('SIGINT', onInterrupt)
  process.off('SIGTERM', onInterrupt)
  if (code === 0) return { ok: true, detail: 'ok' }
  killGroup() // whatever it left behind
  return { ok: false, detail: timedOut ? `timed out after ${TIMEOUT_MS / 60_000} min` : signal !== null ? `killed by ${signal}` : `exit code ${String(code)}` }
}

const started = Date.now()
const outcomes: Outcome[] = []
for (const [i, name] of names.entries()) {
  console.error(`\n[${i + 1}/${names.length}] ${name}, elapsed ${clock(Date.now() - started)}`)
  const t0 = Date.now()
  const r = await runBench(name)
  const seconds = Math.round((Date.now() - t0) / 1000)
  outcomes.push({ name, ok: r.ok, seconds, detail: r.detail, startedAt: t0 })
  console.error(`\r\x1b[K[${i + 1}/${names.length}] ${name} ${r.ok ? 'done' : `FAILED (${r.detail})`} in ${seconds} s, elapsed ${clock(Date.now() - started)}`)
}

// ---------------------------------------------------------------------------------------------------------------
// Results

type Json = Record<string, unknown>

interface Loaded { data: Json, fresh: boolean, date: string }

/** When the commit that last changed `file` was made, or undefined (not in git, or changed since). */
function committedAt (file: string): number | undefined {
  try {
    execFileSync('git', ['diff', '--quiet', 'HEAD', '--', file], { stdio: 'ignore' })
    const at = Date.parse(execFileSync('git', ['log', '-1', '--format=%cI', '--', file], { encoding: 'utf8' }).trim())
    return Number.isNaN(at) ? undefined : at
  } catch {
    return undefined
  }
}

/** A benchmark's JSON result, and whether this run wrote it (else it is left from an earlier run). */
function load (name: string): Loaded | undefined {
  const file = `${RESULTS}/${name}.json`
  if (!existsSync(file)) return undefined
  try {
    const data = JSON.parse(readFileSync(file, 'utf8')) as Json
    const mtime = statSync(file).mtimeMs
    const ran = outcomes.find(o => o.name === name)
    // The date the benchmark wrote into its result (a checkout's file times say when it was cloned, not measured);
    // for results written before benchmarks dated them, the commit that last changed the file, if it is unchanged since.
    const measured = typeof data.date === 'string' && !Number.isNaN(Date.parse(data.date)) ? Date.parse(data.date) : committedAt(file) ?? mtime
    return { data, fresh: ran !== undefined && ran.ok && mtime >= ran.startedAt, date: new Date(measured).toISOString().slice(0, 16).replace('T', ' ') }
  } catch {
    return undefined
  }
}

const num = (v: unknown): number | undefined => typeof v === 'number' && Number.isFinite(v) ? v : undefined
const obj = (v: unknown): Json | undefined => typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Json : undefined
const arr = (v: unknown): unknown[] => Array.isArray(v) ? v : []
const x = (v: number | undefined): string => v === undefined ? 'n/a' : `${v.toFixed(2)}x`
const f = (v: number | undefined, d = 2): string => v === undefined ? 'n/a' : v.toFixed(d)
const pct = (v: number | undefined): string => v === undefined ? 'n/a' : `${(v * 100).toFixed(1)}%`

function row (r: Loaded | undefined, kind: string, c: string): Json | undefined {
  return arr(r?.data.rows).map(obj).find(o => o?.kind === kind && o?.case === c)
}

/** Whether `a` had more req/s than `b` in every round (rows of the same run, rounds in the same order). */
function aheadEveryRound (a: Json | undefined, b: Json | undefined): boolean | undefined {
  const ra = arr(a?.ratiosPerRound).map(num)
  const rb = arr(b?.ratiosPerRound).map(num)
  if (ra.length === 0 || ra.length !== rb.length) return undefined
  return ra.every((v, i) => v !== undefined && rb[i] !== undefined && v > (rb[i] as number))
}

const results = {
  store: load('store'),
  coherence: load('coherence'),
  fanout: load('fanout'),
  session: load('session'),
  tls: load('tls'),
  cart: load('cart')
}

interface Headline { measure: string, handoff: string, target: string, status: string, peers: string, source: keyof typeof results }
const headlines: Headline[] = []
const verdict = (ok: boolean | undefined): string => ok === undefined ? 'n/a' : ok ? 'met' : '**missed**'

{
  const s = results.session
  // The floors (bench/session.ts) say what the target leaves room for on the machine the run was on.
  const floors = (c: string): string => {
    const one = num(row(s, 'floor', c)?.ratioToBare)
    const sealed = num(row(s, 'floor-sealed', c)?.ratioToBare)
    if (one === undefined || sealed === undefined) return ''
    return c === 'write'
      ? `; floors: one ioredis SET ${x(one)}, seal + SET + signed cookie ${x(sealed)}`
      : `; floor: @fastify/cookie parsing the cookie ${x(one)}`
  }
  const peers = (c: string): string => `connect-redis ${x(num(row(s, 'fsession-redis', c)?.ratioToBare))}, secure-session ${x(num(row(s, 'secure-session', c)?.ratioToBare))}${floors(c)}`
  const read = row(s, 'handoff', 'read')
  const rr = num(read?.ratioToBare)
  const rc = num(read?.redisCommandsPerReq)
  headlines.push({
    source: 'session',
    measure: 'Warm session read, req/s vs bare Fastify',
    handoff: `${x(rr)}, ${f(rc)} Redis commands/req, p99 ${f(num(read?.p99Ms), 0)} ms`,
    target: '>= 0.85x, 0 Redis commands',
    status: verdict(rr === undefined || rc === undefined ? undefined : rr >= 0.85 && rc < 0.01),
    peers: peers('read')
  })
  const write = row(s, 'handoff', 'write')
  const wr = num(write?.ratioToBare)
  const wt = num(write?.redisRoundTripsPerReq)
  const wf = num(write?.cpuRatioToFloor)
  const ahead = aheadEveryRound(write, row(s, 'fsession-redis', 'write'))
  const fixed = row(s, 'handoff', 'write-fixed')
  headlines.push({
    source: 'session',
    measure: 'Session write: server + Redis CPU per request vs the floor (cookie parse + one SET), and req/s vs bare Fastify',
    handoff: `${x(wf)} the floor's CPU (${f(num(write?.cpuUsPerReq), 0)} + ${f(num(write?.redisCpuUsPerReq), 0)} us server + Redis)` +
      `${fixed === undefined ? '' : `, ${x(num(fixed.cpuRatioToFloor))} at a fixed ${f(num(s?.data.settings !== undefined ? obj(s.data.settings)?.fixedRate : undefined), 0)} req/s`}; ` +
      `${x(wr)} bare req/s, ${ahead === undefined ? 'n/a' : ahead ? 'ahead of' : '**not always ahead of**'} connect-redis in every round; ${f(wt)} round trips/req (${f(num(write?.redisCommandsPerReq), 1)} commands), p99 ${f(num(write?.p99Ms), 0)} ms`,
    target: '<= 1.3x the floor\'s CPU, ahead of connect-redis in every round, 1 round trip',
    status: verdict(wf === undefined || wt === undefined || ahead === undefined ? undefined : wf <= 1.3 && ahead && wt < 1.05),
    peers: peers('write')
  })
}
{
  const c = results.cart
  const peers = `connect-redis ${x(num(row(c, 'fsession-redis', 'add')?.ratioToBare))}, secure-session ${x(num(row(c, 'secure-session', 'add')?.ratioToBare))}`
  const peerAdd = row(c, 'fsession-redis', 'add')
  for (const [cs, label] of [['add', 'Cart add (anonymous): server + Redis CPU vs the floor (cookie parse + one SET of the cart), req/s vs bare Fastify'], ['add-user', 'Cart add (signed in), same measures']] as const) {
    const r = row(c, 'handoff', cs)
    const rf = num(r?.cpuRatioToFloor)
    const ahead = aheadEveryRound(r, peerAdd)
    const margin = num(r?.rps) !== undefined && num(peerAdd?.rps) !== undefined ? (num(r?.rps) as number) / (num(peerAdd?.rps) as number) : undefined
    headlines.push({
      source: 'cart',
      measure: label,
      handoff: `${x(rf)} the floor's CPU (${f(num(r?.cpuUsPerReq), 0)} + ${f(num(r?.redisCpuUsPerReq), 0)} us server + Redis); ${x(num(r?.ratioToBare))} bare (${f(num(r?.rps), 0)} req/s, ${x(margin)} connect-redis's, ` +
        `${ahead === undefined ? 'n/a' : ahead ? 'ahead' : '**not ahead**'} in every round), ${f(num(r?.redisRoundTripsPerReq))} round trips/req, p99 ${f(num(r?.p99Ms), 0)} ms`,
      target: '<= 2x the floor\'s CPU, ahead of connect-redis by a clear margin',
      // "A clear margin": ahead in every round and by at least 10% on the medians.
      status: verdict(rf === undefined || ahead === undefined || margin === undefined ? undefined : rf <= 2 && ahead && margin >= 1.1),
      peers: cs === 'add' ? peers : 'not measured (a user id in their session changes nothing)'
    })
  }
  const r = row(c, 'handoff', 'checkout')
  const trips = num(r?.redisRoundTripsPerReq)
  headlines.push({
    source: 'cart',
    measure: 'Checkout (prepared cart, new Idempotency-Key)',
    handoff: `${f(num(r?.rps), 0)} checkouts/s (${x(num(r?.ratioToBare))} bare), p50 ${f(num(r?.p50Ms), 0)} / p99 ${f(num(r?.p99Ms), 0)} ms, ${f(trips)} round trips`,
    target: '3 Redis round trips for a first checkout',
    status: verdict(trips === undefined ? undefined : trips <= 3.05),
    peers: 'no checkout in the peers'
  })
}
{
  const certs = arr(results.tls?.data.certs).map(obj)
  const cert = (t: string): Json | undefined => certs.find(o => o?.type === t)
  const share = (t: string): number | undefined => num(obj(obj(cert(t)?.handoff)?.resumed)?.resumedShare)
  const node = (t: string): number | undefined => num(obj(cert(t)?.nodeDefaults)?.resumedShare)
  const ratio = (t: string): number | undefined => num(obj(cert(t)?.handoff)?.cpuRatio)
  const shares = [share('rsa'), share('ecdsa')]
  headlines.push({
    source: 'tls',
    measure: `TLS resumption across 3 instances, ${f(num(results.tls?.data.reconnects), 0)} reconnects round-robin`,
    handoff: `RSA ${pct(shares[0])}, ECDSA ${pct(shares[1])}`,
    target: '>= 99%',
    status: verdict(shares.some(v => v === undefined) ? undefined : shares.every(v => (v as number) >= 0.99)),
    peers: `Node defaults: RSA ${pct(node('rsa'))}, ECDSA ${pct(node('ecdsa'))}`
  })
  headlines.push({
    source: 'tls',
    measure: 'Server CPU per resumed / per full TLS 1.3 handshake',
    handoff: `RSA ${f(ratio('rsa'))}, ECDSA ${f(ratio('ecdsa'))}`,
    target: 'none named (measured in the same run)',
    status: '-',
    peers: '-'
  })
}
{
  const c = results.coherence?.data
  headlines.push({
    source: 'coherence',
    measure: 'Invalidation latency, write ack to the other instance dropping its copy',
    handoff: `median ${f(num(c?.medianMs), 3)} ms, p99 ${f(num(c?.p99Ms), 3)} ms (${f(num(c?.received), 0)}/${f(num(c?.writes), 0)} received)`,
    target: 'none named (reads after the 250 ms lease are never stale)',
    status: '-',
    peers: '-'
  })
}
{
  // Redis CPU per write at the largest fleet over one instance, per design and held share (bench/fanout.ts).
  const g = arr(results.fanout?.data.growth).map(obj)
  const ratio = (d: string, s: number): number | undefined => num(g.find(o => o?.design === d && o?.heldShare === s)?.ratioTopToOne)
  const designs = [...new Set(g.map(o => String(o?.design)))]
  const cells = arr(results.fanout?.data.cells).map(obj)
  const top = cells.reduce<number | undefined>((m, c) => Math.max(m ?? 0, num(c?.instances) ?? 0), undefined)
  const cpuAt = (d: string, s: number): number | undefined =>
    num(cells.find(c => c?.design === d && c?.heldShare === s && c?.instances === top)?.redisCpuUsPerWrite)
  // Tracking over pub/sub at the largest fleet, every key held: the median of each round's pair (the two ran side by side).
  const paired = arr(g.find(o => o?.design === 'tracking' && o?.heldShare === 1)?.versusPubsubPerRound).map(num)
    .filter((n): n is number => n !== undefined).sort((a, b) => a - b)
  const pairedMedian = paired.length === 0 ? undefined : paired[paired.length >> 1]
  headlines.push({
    source: 'fanout',
    measure: 'Fan-out: Redis CPU per write, N=64 instances over N=1 (1% / 100% of keys held each)',
    handoff: designs.map(d => `${d} ${x(ratio(d, 0.01))} / ${x(ratio(d, 1))}`).join(', ') +
      `; at N=${top ?? '?'} with every key held: tracking ${f(cpuAt('tracking', 1), 1)} us vs pubsub ${f(cpuAt('pubsub', 1), 1)} us per write` +
      ` (per round ${paired.map(x => f(x)).join(' / ')}x)`,
    target: 'tracking: <= 1.5x at 1% held; 100% held no worse than pubsub (median of the per-round pairs at the largest fleet <= 1)',
    // Both halves of the goal: the growth at 1% held, and the cost when every instance holds every key.
    status: designs.includes('tracking')
      ? verdict((ratio('tracking', 0.01) ?? Infinity) <= 1.5 && (pairedMedian ?? Infinity) <= 1)
      : 'n/a',
    peers: '-'
  })
}
{
  const u = obj(results.store?.data.update)
  const rt = num(u?.roundTripsPerUpdate)
  headlines.push({
    source: 'store',
    measure: 'Store: Redis round trips per uncontended update',
    handoff: f(rt),
    target: 'exactly 1',
    status: verdict(rt === undefined ? undefined : Math.abs(rt - 1) < 0.01),
    peers: '-'
  })
}

const stale = (h: Headline): string => {
  const r = results[h.source]
  if (r === undefined) return ' (no result)'
  return r.fresh ? '' : ` (not from this run: ${r.date})`
}
const totalS = Math.round((Date.now() - started) / 1000)
const md = [
  '# Benchmark results',
  '',
  `${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, Node ${process.version}, ${cpus().length} x ${cpus()[0]?.model ?? '?'}, ` +
  'loopback, private redis-server per benchmark. ' +
  (summaryOnly
    ? 'Summary rewritten from the results on disk (`npm run bench -- --summary`); each row says when it was measured. '
    : `\`npm run bench\` took ${clock(totalS * 1000)} ` +
      `(${outcomes.map(o => `${o.name} ${o.seconds} s${o.ok ? '' : ` **failed: ${o.detail}**`}`).join(', ')}). `) +
  'Ratios are to bare Fastify measured in the same run; medians of interleaved rounds.',
  '',
  '| measure | fastify-handoff | target | status | peers, same run |',
  '|---|---|---|---|---|',
  ...headlines.map(h => `| ${h.measure} | ${h.handoff}${stale(h)} | ${h.target} | ${h.status} | ${h.peers} |`),
  '',
  '![req/s as a ratio to bare Fastify](summary.svg)',
  '',
  // Every benchmark with results on disk, run now or earlier (each table carries its own date).
  ...ALL.filter(n => existsSync(`${RESULTS}/${n}.md`)).map(n => {
    const text = readFileSync(`${RESULTS}/${n}.md`, 'utf8').trimEnd()
    const r = outcomes.find(o => o.name === n)
    // One heading level for every benchmark's section, whatever the benchmark wrote.
    const body = text.replace(/^#{1,3} /gm, '### ')
    return r !== undefined && !r.ok ? `${body}\n\n**This run of bench/${n}.ts failed (${r.detail}); the table above is from an earlier run.**\n` : `${body}\n`
  })
].join('\n')
writeFileSync(`${RESULTS}/summary.md`, md)

// ---------------------------------------------------------------------------------------------------------------
// Chart: hand-written SVG, no dependency

interface Group { label: string, target?: number, bars: Array<{ series: number, value: number | undefined }> }
const SERIES = [
  { name: 'fastify-handoff', color: '#2563eb', kind: 'handoff' },
  { name: '@fastify/session + connect-redis', color: '#dc2626', kind: 'fsession-redis' },
  { name: '@fastify/secure-session', color: '#16a34a', kind: 'secure-session' }
]
const groups: Group[] = [
  { label: 'warm session read', target: 0.85, bars: SERIES.map((s, i) => ({ series: i, value: num(row(results.session, s.kind, 'read')?.ratioToBare) })) },
  { label: 'session write', bars: SERIES.map((s, i) => ({ series: i, value: num(row(results.session, s.kind, 'write')?.ratioToBare) })) },
  { label: 'cart add', bars: SERIES.map((s, i) => ({ series: i, value: num(row(results.cart, s.kind, 'add')?.ratioToBare) })) }
]

function esc (s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
}

function chart (gs: Group[]): string {
  const W = 900
  const H = 500
  const left = 64
  const right = 24
  const top = 96
  const bottom = 56
  const pw = W - left - right
  const ph = H - top - bottom
  const values = gs.flatMap(g => g.bars.map(b => b.value ?? 0))
  const max = Math.max(1, ...values)
  const y = (v: number): number => top + ph - (v / max) * ph
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="13">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${left}" y="30" font-size="18" font-weight="bold">req/s as a ratio to bare Fastify (same run; higher is better)</text>`,
    `<text x="${left}" y="52" fill="#555">${esc(`Medians of interleaved rounds, ${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores, loopback Redis. Dashed: the target.`)}</text>`
  ]
  // Legend
  let lx = left
  for (const s of SERIES) {
    out.push(`<rect x="${lx}" y="66" width="14" height="14" fill="${s.color}"/>`, `<text x="${lx + 20}" y="78">${esc(s.name)}</text>`)
    lx += 30 + s.name.length * 7.2
  }
  // Axis and grid
  for (let v = 0; v <= max + 1e-9; v += 0.25) {
    const yy = y(v).toFixed(1)
    out.push(`<line x1="${left}" y1="${yy}" x2="${W - right}" y2="${yy}" stroke="${v === 0 ? '#333' : '#e5e7eb'}"/>`,
      `<text x="${left - 8}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end" fill="#555">${v.toFixed(2)}x</text>`)
  }
  const gw = pw / gs.length
  const bw = Math.min(64, (gw - 40) / SERIES.length)
  for (const [gi, g] of gs.entries()) {
    const gx = left + gi * gw
    const x0 = gx + (gw - bw * SERIES.length) / 2
    for (const b of g.bars) {
      const bx = x0 + b.series * bw
      const color = SERIES[b.series]?.color ?? '#999'
      if (b.value === undefined) {
        out.push(`<text x="${(bx + bw / 2).toFixed(1)}" y="${(y(0) - 6).toFixed(1)}" text-anchor="middle" fill="#999">n/a</text>`)
        continue
      }
      out.push(`<rect x="${(bx + 3).toFixed(1)}" y="${y(b.value).toFixed(1)}" width="${(bw - 6).toFixed(1)}" height="${(y(0) - y(b.value)).toFixed(1)}" fill="${color}"/>`,
        `<text x="${(bx + bw / 2).toFixed(1)}" y="${(y(b.value) - 6).toFixed(1)}" text-anchor="middle">${b.value.toFixed(2)}x</text>`)
    }
    if (g.target !== undefined) {
      const ty = y(g.target).toFixed(1)
      out.push(`<line x1="${(x0 - 8).toFixed(1)}" y1="${ty}" x2="${(x0 + bw * SERIES.length + 8).toFixed(1)}" y2="${ty}" stroke="#111" stroke-width="1.5" stroke-dasharray="6 4"/>`,
        `<text x="${(x0 + bw * SERIES.length + 10).toFixed(1)}" y="${(y(g.target) + 4).toFixed(1)}" font-size="12">target ${g.target.toFixed(2)}x</text>`)
    }
    out.push(`<text x="${(gx + gw / 2).toFixed(1)}" y="${H - bottom + 24}" text-anchor="middle" font-weight="bold">${esc(g.label)}</text>`)
  }
  out.push('</svg>', '')
  return out.join('\n')
}
writeFileSync(`${RESULTS}/summary.svg`, chart(groups))

const failed = outcomes.filter(o => !o.ok)
console.error(`\nwrote ${RESULTS}/summary.md and ${RESULTS}/summary.svg in ${clock(Date.now() - started)}` +
  `${failed.length > 0 ? `; FAILED: ${failed.map(o => `${o.name} (${o.detail})`).join(', ')}` : ''}`)
process.exit(failed.length > 0 ? 1 : 0)
