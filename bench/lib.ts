// Shared benchmark helpers: medians of interleaved rounds, ratios from the same run, results on disk.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import type { FastifyInstance, FastifyPluginCallback, FastifyRequest } from 'fastify'
import fastifyCookie from '@fastify/cookie'

export function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m] as number : ((s[m - 1] as number) + (s[m] as number)) / 2
}

export function percentile (xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(p * s.length))] as number
}

/** Ops per second of `fn` run `n` times (awaited only when it returns a promise). */
export async function opsPerSec (n: number, fn: (i: number) => unknown): Promise<number> {
  const t0 = performance.now()
  for (let i = 0; i < n; i++) {
    const r = fn(i)
    if (r instanceof Promise) await r
  }
  return n / ((performance.now() - t0) / 1000)
}

export function progress (msg: string): void {
  process.stderr.write(`\r\x1b[K${msg}`)
}

export function writeResult (name: string, json: unknown, markdown: string): void {
  mkdirSync('bench/results', { recursive: true })
  // Dated, so that a summary written later (or in another checkout, whose file times are its clone's) says when.
  const dated = typeof json === 'object' && json !== null && !Array.isArray(json) && !('date' in json) ? { date: new Date().toISOString(), ...json } : json
  writeFileSync(`bench/results/${name}.json`, JSON.stringify(dated, null, 2) + '\n')
  writeFileSync(`bench/results/${name}.md`, markdown.trimEnd() + '\n')
  process.stderr.write('\r\x1b[K')
  console.log(markdown)
}

export const fmt = (x: number, d = 2): string => x.toFixed(d)

export function round (x: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(x * f) / f
}

/** INFO commandstats of a redis-server as command -> calls. */
export function commandStats (redis: { cli: (...args: string[]) => string }): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of redis.cli('INFO', 'commandstats').split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim())
    if (m !== null) out.set(m[1] as string, Number(m[2]))
  }
  return out
}

/**
 * Redis commands between two commandstats snapshots: everything but INFO (the measurement itself) and the handoff
 * store's heartbeat (a PING on the subscriber and a GETEX of the witness key, 20/s each per instance whatever the
 * load); the PINGs are returned apart.
 */
export function commandDelta (before: Map<string, number>, after: Map<string, number>): { data: Record<string, number>, ping: number } {
  const data: Record<string, number> = {}
  let ping = 0
  for (const [cmd, n] of after) {
    const d = n - (before.get(cmd) ?? 0)
    if (d <= 0 || cmd === 'info' || cmd === 'getex') continue
    if (cmd === 'ping') ping = d
    else data[cmd] = d
  }
  return { data, ping }
}

/**
 * redis-server's own CPU time so far (used_cpu_sys + used_cpu_user of INFO cpu, all its threads), in microseconds: the
 * delta over a run divided by its requests is the Redis side of a request's cost. Every server of a benchmark shares
 * the one private redis-server, so the idle ones add their heartbeats (a few PINGs per second each) to the figure.
 */
export function redisCpuUs (redis: { cli: (...args: string[]) => string }): number {
  const info = redis.cli('INFO', 'cpu')
  const sys = Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1] ?? NaN)
  const user = Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1] ?? NaN)
  return (sys + user) * 1e6
}

/**
 * The benchmark file of an older checkout to run next to this one (BENCH_BASELINE=<directory of that checkout, with
 * node_modules>): the same server kind from the old code, measured in the same run, so a before/after table comes
 * from one run instead of two runs on a noisy machine.
 */
export function baselineFile (name: string): string | undefined {
  const dir = process.env.BENCH_BASELINE
  return dir === undefined || dir === '' ? undefined : `${dir.replace(/\/$/, '')}/bench/${name}`
}

/** What the peers' node-redis client needs to offer the benchmarks. */
export interface RedisLike {
  on: (event: string, fn: (...args: unknown[]) => void) => void
  connect: () => Promise<unknown>
  quit: () => Promise<unknown>
}

/**
 * Round trips to Redis made by the store: each Repository call is one command (a Lua script counts once, although
 * INFO commandstats also lists the commands it runs inside). Wrapped in the benchmark servers only.
 */
export const roundTripCounter = { count: 0 }
export function countRoundTrips (repository: Record<string, unknown>): void {
  for (const m of ['get', 'compareAndSet', 'delete', 'touch', 'take']) {
    const f = repository[m]
    if (typeof f !== 'function') continue
    repository[m] = async (...args: unknown[]): Promise<unknown> => {
      roundTripCounter.count++
      return await (f as (...a: unknown[]) => Promise<unknown>).apply(repository, args)
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Benchmark servers in their own processes: the bench file spawns itself with `--server <kind> --redis <url>`, the
// child listens on a free loopback port and prints it as one JSON line, and stops on SIGTERM or when stdin closes
// (so a driver that dies takes its servers with it).

/** In the child: listen, announce the port, stop on SIGTERM or the end of stdin. */
export async function serveUntilStopped (app: FastifyInstance, close: () => Promise<void>): Promise<void> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const addr = app.server.address()
  process.stdout.write(JSON.stringify({ port: typeof addr === 'object' && addr !== null ? addr.port : 0 }) + '\n')
  const stop = (): void => {
    const force = setTimeout(() => process.exit(0), 2000)
    force.unref()
    app.close().then(close).then(() => process.exit(0), () => process.exit(1))
  }
  process.on('SIGTERM', stop)
  process.stdin.on('end', stop)
  process.stdin.resume()
}

export interface ServerProcess { child: ChildProcess, base: string }

/** In the driver: spawn `file --server kind --redis redisUrl` and wait for its port. */
export async function spawnServer (file: string, kind: string, redisUrl: string, timeoutMs = 30_000): Promise<ServerProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', file, '--server', kind, '--redis', redisUrl], {
    stdio: ['pipe', 'pipe', 'inherit']
  })
  const port = await new Promise<number>((resolve, reject) => {
    let buf = ''
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${kind} server did not start within ${timeoutMs} ms`)) }, timeoutMs)
    child.stdout?.on('data', (d: Buffer) => {
      buf += d.toString()
      const nl = buf.indexOf('\n')
      if (nl >= 0) { clearTimeout(timer); resolve((JSON.parse(buf.slice(0, nl)) as { port: number }).port) }
    })
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`${kind} server exited with ${String(code)}`)) })
  })
  return { child, base: `http://127.0.0.1:${port}` }
}

export async function stopServer (s: { child: ChildProcess }): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return
  const exited = new Promise(resolve => s.child.once('exit', resolve))
  s.child.kill('SIGTERM')
  await exited
}

// ---------------------------------------------------------------------------------------------------------------
// The peers: @fastify/session + connect-redis (on node-redis) and @fastify/secure-session, set up alike in every
// benchmark that compares against them. Loaded without their types: they and our auth-session plugin all declare
// request.session.

const requirePeer = createRequire(import.meta.url)

export type PeerKind = 'fsession-redis' | 'secure-session'

/** The peers' session objects, typed by hand: their packages augment FastifyRequest.session with their own types. */
export interface PeerSession {
  get: (key: string) => unknown
  set: (key: string, value: unknown) => void
}

export function peerSession (request: FastifyRequest): PeerSession {
  return (request as unknown as { session: PeerSession }).session
}

/**
 * Registers a peer's session plugin on `app`; returns what closes its connections. @fastify/session runs with
 * rolling: false, as in the anchor: a read-only request costs one GET instead of GET + SET.
 */
export async function registerPeerSession (app: FastifyInstance, kind: PeerKind, redisUrl: string, secret: string): Promise<() => Promise<void>> {
  if (kind === 'secure-session') {
    const secureSession = requirePeer('@fastify/secure-session') as FastifyPluginCallback<Record<string, unknown>>
    await app.register(secureSession, { key: Buffer.alloc(32, 7), cookie: { path: '/', httpOnly: true, secure: false } })
    return async () => {}
  }
  const fastifySession = requirePeer('@fastify/session') as FastifyPluginCallback<Record<string, unknown>>
  const { RedisStore } = requirePeer('connect-redis') as { RedisStore: new (o: { client: unknown }) => object }
  const { createClient } = requirePeer('redis') as { createClient: (o: { url: string }) => RedisLike }
  const client = createClient({ url: redisUrl })
  client.on('error', () => {}) // without a listener node-redis errors crash the process (measured)
  await client.connect()
  await app.register(fastifyCookie)
  await app.register(fastifySession, {
    secret,
    store: new RedisStore({ client }),
    saveUninitialized: false,
    rolling: false,
    cookie: { secure: false, maxAge: 1_800_000 }
  })
  return async () => { await client.quit() }
}
