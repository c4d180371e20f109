/**
 * Private redis-server processes for the tests, the benchmarks and the example's cluster: each on a free loopback
 * port, nothing kept on disk, stopped by PID.
 * Tests can kill, pause (SIGSTOP) or restart them to inject faults. When REDIS_URL is set, `startRedis` returns a
 * handle on that server instead (fault injection is then unavailable and tests that need it skip).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createServer, connect } from 'node:net'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface RedisHandle {
  host: string
  port: number
  url: string
  /** False when the server comes from REDIS_URL: the test must not kill or pause it. */
  controllable: boolean
  pid: () => number | undefined
  stop: () => Promise<void>
  kill: () => Promise<void>
  pause: () => void
  resume: () => void
  restart: () => Promise<void>
  /** Run a redis-cli command against this server and return its stdout (trimmed). */
  cli: (...args: string[]) => string
}

export interface StartRedisOptions {
  /** Extra redis-server arguments, e.g. ['--replicaof', '127.0.0.1', '6380']. */
  args?: string[]
  /** Use this port instead of a free one (restart keeps the port). */
  port?: number
  /** Ignore REDIS_URL and always start a private server. */
  private?: boolean
  /** Contents of a config file passed as the first argument (e.g. a Sentinel configuration). */
  config?: string
  /** Start as a Sentinel (`--sentinel`); implies a config file. */
  sentinel?: boolean
}

let checked: string | undefined

/** A clear message instead of a hang when the machine has no redis-server and no REDIS_URL. */
export function redisServerBinary (): string {
  if (checked !== undefined) return checked
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' })
  if (r.error !== undefined || r.status !== 0) {
    throw new Error('redis-server is not installed and REDIS_URL is not set. Install it (Debian: apt-get install redis-server) ' +
      'or point REDIS_URL at a Redis >= 7 server used only for tests.')
  }
  checked = 'redis-server'
  return checked
}

/**
 * A free loopback port, chosen at random below Linux's ephemeral range (32768+). Ports handed out by the OS
 * (listen on 0) come in sequence, so two test processes starting servers at once, or a killed server's port
 * reused while it restarts, could collide; random picks in 20000-32767 make that very unlikely, and the outgoing
 * connections' local ports never land there.
 */
export async function freePort (lo = 20000, hi = 32767): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = lo + Math.floor(Math.random() * (hi - lo + 1))
    if (await portIsFree(port)) return port
  }
  throw new Error(`no free loopback port found in ${lo}-${hi}`)
}

export async function portIsFree (port: number): Promise<boolean> {
  return await new Promise<boolean>(resolve => {
    const srv = createServer()
    srv.unref()
    srv.once('error', () => resolve(false))
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)))
  })
}

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

/** Sends PING over a raw socket until +PONG comes back, so readiness needs no client library. */
export async function waitForPing (port: number, host = '127.0.0.1', timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>(resolve => {
      const sock = connect(port, host)
      let buf = ''
      const done = (v: boolean): void => { sock.destroy(); resolve(v) }
      sock.setTimeout(500, () => done(false))
      sock.on('error', () => done(false))
      sock.on('connect', () => sock.write('PING\r\n'))
      sock.on('data', d => { buf += d.toString(); if (buf.includes('\r\n')) done(buf.startsWith('+PONG')) })
    })
    if (ok) return
    await sleep(50)
  }
  throw new Error(`redis-server on ${host}:${port} did not answer PING within ${timeoutMs} ms`)
}

const live = new Set<ChildProcess>()
process.on('exit', () => { for (const c of live) { try { c.kill('SIGKILL') } catch {} } })

function externalHandle (url: string): RedisHandle {
  const u = new URL(url)
  const host = u.hostname
  const port = Number(u.port === '' ? 6379 : u.port)
  const refuse = (): never => { throw new Error('REDIS_URL server cannot be killed, paused or restarted by tests') }
  return {
    host,
    port,
    url,
    controllable: false,
    pid: () => undefined,
    stop: async () => {},
    kill: async () => refuse(),
    pause: () => refuse(),
    resume: () => refuse(),
    restart: async () => refuse(),
    cli: (...args) => runCli(host, port, args)
  }
}

function runCli (host: string, port: number, args: string[]): string {
  const r = spawnSync('redis-cli', ['-h', host, '-p', String(port), ...args], { encoding: 'utf8', timeout: 10_000 })
  if (r.error !== undefined) throw r.error
  return r.stdout.trim()
}

export async function startRedis (opts: StartRedisOptions = {}): Promise<RedisHandle> {
  const envUrl = process.env.REDIS_URL
  if (opts.private !== true && envUrl !== undefined && envUrl !== '') return externalHandle(envUrl)
  const bin = redisServerBinary()
  const port = opts.port ?? await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'handoff-redis-'))
  const host = '127.0.0.1'
  let child: ChildProcess | undefined

  const configFile = join(dir, 'redis.conf')
  if (opts.config !== undefined || opts.sentinel === true) writeFileSync(configFile, opts.config ?? '')
  const launch = async (): Promise<void> => {
    const c = spawn(bin, [
      ...(opts.config !== undefined || opts.sentinel === true ? [configFile] : []),
      ...(opts.sentinel === true ? ['--sentinel'] : []),
      '--port', String(port), '--bind', host,
      ...(opts.sentinel === true ? [] : ['--save', '', '--appendonly', 'no']),
      '--dir', dir, '--protected-mode', 'no', '--loglevel', 'warning', ...(opts.args ?? [])
    ], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    c.stderr?.on('data', d => { stderr += d.toString() })
    live.add(c)
    c.on('exit', () => live.delete(c))
    child = c
    try {
      await waitForPing(port, host)
    } catch (err) {
      c.kill('SIGKILL')
      throw new Error(`${(err as Error).message}${stderr === '' ? '' : `; stderr: ${stderr}`}`)
    }
  }

  const killWith = async (signal: NodeJS.Signals): Promise<void> => {
    const c = child
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return
    const exited = new Promise<void>(resolve => c.once('exit', () => resolve()))
    if (signal === 'SIGKILL') c.kill('SIGCONT') // a paused process must be able to die
    c.kill(signal)
    await exited
  }

  await launch()
  return {
    host,
    port,
    url: `redis://${host}:${port}`,
    controllable: true,
    pid: () => child?.pid,
    stop: async () => {
      if (child !== undefined) { child.kill('SIGCONT'); await killWith('SIGTERM') }
      rmSync(dir, { recursive: true, force: true })
    },
    kill: async () => { await killWith('SIGKILL') },
    pause: () => { child?.kill('SIGSTOP') },
    resume: () => { child?.kill('SIGCONT') },
    restart: async () => { await killWith('SIGKILL'); await launch() },
    cli: (...args) => runCli(host, port, args)
  }
}
