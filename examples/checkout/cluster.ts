/**
 * Starts the demo deployment: a private redis-server (when REDIS_URL is unset and one is installed), N shop
 * instances as separate processes, and the TCP round-robin balancer in front. Used by `npm run demo`, the failover
 * drill and the end-to-end test. Without Redis, the instances run in this one process on one embedded repository.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import type { Server, Socket } from 'node:net'
import { redisServerBinary, startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { MemoryRepository } from '../../lib/repository/memory.js'
import { startBalancer, ReadinessChecker, type Backend } from './balancer.js'
import { buildShop } from './app.js'
import { devCertificate } from './dev-cert.js'
import { DEV_SECRET } from './secret.js'

export interface InstanceHandle {
  name: string
  port: number
  alive: () => boolean
  kill: () => Promise<void>
  restart: () => Promise<void>
  /** A graceful stop, as a deploy does it: SIGTERM (the instance drains, closes, exits), resolves on exit. */
  terminate: () => Promise<void>
  /** Starts it again on its port (after `terminate` or `kill`); resolves once it listens. */
  start: () => Promise<void>
}

export interface ShopCluster {
  mode: 'redis' | 'embedded'
  redisUrl: string | undefined
  balancerPort: number
  instances: InstanceHandle[]
  /** Whether the balancer sends new connections to this instance (alive and its readiness check answered 200). */
  inRotation: (instance: InstanceHandle) => boolean
  stop: () => Promise<void>
}

export interface ShopClusterOptions {
  instances?: number
  /** First instance port; the others follow. Default: 8444. */
  basePort?: number
  /** Explicit instance ports (overrides basePort). */
  ports?: number[]
  /** Default: 8443. */
  balancerPort?: number
  secret?: string
  logLevel?: string
  onLog?: (line: string) => void
  /**
   * The balancer sends a PROXY protocol v2 header from BALANCER_SOURCE_ADDRESS, the one address the instances trust,
   * so they see each client's address (`ip` in /api/whoami); direct connections to an instance still work.
   * Needs 127.0.0.2 on the loopback interface (Linux has 127.0.0.0/8). Default: false.
   */
  proxyProtocol?: boolean
  /** The instances' drain period, ms (DRAIN_MS). Default: the instance's (5000). */
  drainMs?: number
  /** How often the balancer checks each instance's /ready, ms. Default: 250. */
  readinessIntervalMs?: number
}

/** Where the demo balancer connects from when it sends PROXY headers. */
export const BALANCER_SOURCE_ADDRESS = '127.0.0.2'

// Instance processes die with this one (as scripts/redis-server.ts does for redis-server): a crashed demo, drill or
// test must not leave shops listening.
const liveChildren = new Set<ChildProcess>()
process.on('exit', () => { for (const c of liveChildren) { try { c.kill('SIGKILL') } catch {} } })

function haveRedisServer (): boolean {
  try { redisServerBinary(); return true } catch { return false }
}

export async function startShopCluster (opts: ShopClusterOptions = {}): Promise<ShopCluster> {
  const n = opts.instances ?? 3
  const basePort = opts.basePort ?? 8444
  const secret = opts.secret ?? process.env.HANDOFF_SECRET ?? DEV_SECRET
  devCertificate() // create it once, before the instances race to
  let redis: RedisHandle | undefined
  let redisUrl = process.env.REDIS_URL
  if ((redisUrl === undefined || redisUrl === '') && haveRedisServer()) {
    redis = await startRedis({ private: true })
    redisUrl = redis.url
  }
  const instances: InstanceHandle[] = []
  if (redisUrl === undefined || redisUrl === '') {
    // One process, one embedded repository shared by the instances: the same code paths, no Redis.
    const repository = new MemoryRepository()
    for (let i = 0; i < n; i++) {
      const name = `shop-${String.fromCharCode(97 + i)}`
      const port = opts.ports?.[i] ?? basePort + i
      let app: Awaited<ReturnType<typeof buildShop>>['app'] | undefined
      const start = async (): Promise<void> => {
        app = (await buildShop({
          instanceName: name,
          secret,
          tls: devCertificate(),
          repository: Object.assign(Object.create(repository) as MemoryRepository, { close: async () => {} }),
          ...(opts.proxyProtocol === true ? { proxyProtocol: { trusted: [BALANCER_SOURCE_ADDRESS] } } : {}),
          ...(opts.drainMs === undefined ? {} : { drain: { drainMs: opts.drainMs } })
        })).app
        await app.listen({ port, host: '127.0.0.1' })
      }
      await start()
      instances.push({
        name,
        port,
        alive: () => app !== undefined,
        kill: async () => { await app?.close(); app = undefined },
        restart: async () => { await app?.close(); await start() },
        terminate: async () => { const a = app; await a?.handoffDrain(); if (app === a) app = undefined },
        start: async () => { if (app === undefined) await start() }
      })
    }
  } else {
    // In parallel: each start is mostly the process loading its modules.
    instances.push(...await Promise.all(Array.from({ length: n }, async (_, i) =>
      await spawnInstance(`shop-${String.fromCharCode(97 + i)}`, opts.ports?.[i] ?? basePort + i, redisUrl, secret, opts))))
  }
  const alive = (): Backend[] => instances.filter(x => x.alive()).map(x => ({ host: '127.0.0.1', port: x.port, name: x.name }))
  // A draining instance (readiness 503) gets no new connections; it goes on serving the ones it has.
  const readiness = new ReadinessChecker(alive, {
    intervalMs: opts.readinessIntervalMs ?? 250,
    onChange: (b, ready) => opts.onLog?.(`[balancer] ${b.name ?? b.port} ${ready ? 'ready: back in rotation' : 'not ready: out of rotation'}`)
  })
  // None ready (every check slow on a starved machine): try the live ones rather than refuse everyone.
  const backends = (): Backend[] => { const live = alive(); const ready = live.filter(readiness.isReady); return ready.length > 0 ? ready : live }
  const balancerPort = opts.balancerPort ?? 8443
  const balancer: Server = await startBalancer(backends, balancerPort, '127.0.0.1', opts.proxyProtocol === true ? { proxyProtocol: true, localAddress: BALANCER_SOURCE_ADDRESS } : {})
  // Closing the balancer waits for its connections; a browser keeps them open (keep-alive), so stop ends them.
  const clients = new Set<Socket>()
  balancer.on('connection', (s: Socket) => { clients.add(s); s.once('close', () => clients.delete(s)) })
  return {
    mode: redis !== undefined || (process.env.REDIS_URL ?? '') !== '' ? 'redis' : 'embedded',
    redisUrl,
    balancerPort,
    instances,
    inRotation: x => x.alive() && readiness.isReady({ host: '127.0.0.1', port: x.port }),
    stop: async () => {
      readiness.stop()
      const closed = new Promise<void>(resolve => balancer.close(() => resolve()))
      for (const s of clients) s.destroy()
      await closed
      await Promise.all(instances.map(async x => await x.kill()))
      await redis?.stop()
    }
  }
}

async function spawnInstance (name: string, port: number, redisUrl: string, secret: string, opts: ShopClusterOptions): Promise<InstanceHandle> {
  let child: ChildProcess | undefined
  const start = async (): Promise<void> => {
    const c = spawn(process.execPath, ['--import', 'tsx', new URL('./instance.ts', import.meta.url).pathname], {
      env: {
        ...process.env,
        PORT: String(port),
        INSTANCE_NAME: name,
        REDIS_URL: redisUrl,
        HANDOFF_SECRET: secret,
        LOG_LEVEL: opts.logLevel ?? 'warn',
        PROXY_PROTOCOL_TRUSTED: opts.proxyProtocol === true ? BALANCER_SOURCE_ADDRESS : '',
        ...(opts.drainMs === undefined ? {} : { DRAIN_MS: String(opts.drainMs) })
      },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    child = c
    liveChildren.add(c)
    c.once('exit', () => liveChildren.delete(c))
    c.stderr?.on('data', (d: Buffer) => opts.onLog?.(`[${name}] ${d.toString().trimEnd()}`))
    await new Promise<void>((resolve, reject) => {
      // Generous: a 2-core machine at load 30 has taken over 60 s to start one (it is mostly loading modules).
      const timer = setTimeout(() => reject(new Error(`${name} did not start within 120 s`)), 120_000)
      createInterface({ input: c.stdout as NodeJS.ReadableStream }).once('line', () => { clearTimeout(timer); resolve() })
      c.once('exit', code => { clearTimeout(timer); reject(new Error(`${name} exited with ${String(code)} while starting`)) })
    })
  }
  await start()
  const alive = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null
  const stopWith = async (signal: NodeJS.Signals): Promise<void> => {
    const c = child
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return
    const exited = new Promise<void>(resolve => c.once('exit', () => resolve()))
    c.kill(signal)
    await exited
  }
  const kill = async (): Promise<void> => { await stopWith('SIGKILL') }
  return {
    name,
    port,
    alive,
    kill,
    restart: async () => { await kill(); await start() },
    terminate: async () => { await stopWith('SIGTERM') },
    start: async () => { if (!alive()) await start() }
  }
}
