// Shared benchmark helpers: medians of interleaved rounds, ratios from the same run, results on disk.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import type { FastifyInstance } from 'fastify'

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
  writeFileSync(`bench/results/${name}.json`, JSON.stringify(json, null, 2) + '\n')
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
 * Redis commands between two commandstats snapshots: everything but INFO (the measurement itself) and PING (the
 * handoff store's subscriber heartbeat, 20/s per instance whatever the load), which is returned apart.
 */
export function commandDelta (before: Map<string, number>, after: Map<string, number>): { data: Record<string, number>, ping: number } {
  const data: Record<string, number> = {}
  let ping = 0
  for (const [cmd, n] of after) {
    const d = n - (before.get(cmd) ?? 0)
    if (d <= 0 || cmd === 'info') continue
    if (cmd === 'ping') ping = d
    else data[cmd] = d
  }
  return { data, ping }
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
