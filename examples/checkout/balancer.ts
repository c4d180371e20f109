/**
 * A layer 4 (TCP) round-robin balancer with TLS passthrough: each new client connection goes to the next live
 * backend, whatever the previous one of the same client was. That is the point of the demo: no stickiness, so the
 * TLS session, the login and the cart must follow the client to any instance. Backends that refuse a connection are
 * skipped. `ReadinessChecker` (below) takes draining backends out of rotation. For real deployments see haproxy.cfg.
 *
 * With `proxyProtocol`, each backend connection starts with a PROXY protocol v2 header carrying the client's address
 * (as HAProxy's `send-proxy-v2`), for instances that run the proxy-protocol plugin; `localAddress` is the source
 * address the balancer connects from, the one those instances trust.
 */
import { createServer, connect, type Server, type Socket } from 'node:net'
import { request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { encodeProxyHeaderV2 } from '../../lib/proxy-protocol.js'

export interface Backend { host: string, port: number, name?: string }

export interface BalancerOptions { proxyProtocol?: boolean, localAddress?: string }

export function startBalancer (backends: () => Backend[], port: number, host = '127.0.0.1', opts: BalancerOptions = {}): Promise<Server> {
  let next = 0
  const server = createServer(client => {
    client.on('error', () => {})
    const list = backends()
    let tries = 0
    const attempt = (): void => {
      if (list.length === 0 || tries >= list.length) { client.destroy(); return }
      const b = list[next++ % list.length] as Backend
      tries++
      const upstream: Socket = connect({ port: b.port, host: b.host, ...(opts.localAddress === undefined ? {} : { localAddress: opts.localAddress }) })
      upstream.once('error', () => { upstream.destroy(); if (!client.destroyed) attempt() })
      upstream.once('connect', () => {
        upstream.removeAllListeners('error')
        upstream.on('error', () => client.destroy())
        if (opts.proxyProtocol === true) {
          const { remoteAddress, remotePort, localAddress, localPort } = client
          if (remoteAddress === undefined || remotePort === undefined || localAddress === undefined || localPort === undefined) { client.destroy(); upstream.destroy(); return }
          upstream.write(encodeProxyHeaderV2({ address: remoteAddress, port: remotePort }, { address: localAddress, port: localPort }))
        }
        client.pipe(upstream)
        upstream.pipe(client)
        client.on('close', () => upstream.destroy())
        upstream.on('close', () => client.destroy())
      })
    }
    attempt()
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => resolve(server))
  })
}

export interface ReadinessOptions {
  /** Readiness route of every backend. Default: '/ready'. */
  path?: string
  /** Time between two checks of one backend, ms. Default: 250. */
  intervalMs?: number
  /** A check not answered within this is a failure, ms. Default: 1000. */
  timeoutMs?: number
  /** Consecutive failed checks that take a backend out (one slow answer on a loaded machine is not a drain). Default: 2. */
  fall?: number
  /** Consecutive passed checks that put it back. Default: 1. */
  rise?: number
  /** Check over HTTPS (any certificate: the check asks for readiness, not identity). Default: true. */
  tls?: boolean
  /** Called when a backend goes in or out of rotation. */
  onChange?: (backend: Backend, ready: boolean) => void
}

/**
 * Health checks on the backends' readiness route, as HAProxy's `option httpchk` does: `fall` failed checks in a row
 * (503 while draining, refused while restarting, no answer in time) take a backend out of rotation, `rise` passed
 * ones put it back. Backends never checked count as ready (as HAProxy starts its servers up). Pass `isReady` as a
 * filter of the list `startBalancer` picks from.
 */
export class ReadinessChecker {
  private readonly state = new Map<string, boolean>()
  /** Consecutive results that disagree with the state, per backend. */
  private readonly streak = new Map<string, number>()
  private readonly checking = new Set<string>()
  private readonly timer: NodeJS.Timeout
  private readonly path: string
  private readonly timeoutMs: number
  private readonly tls: boolean

  constructor (private readonly backends: () => Backend[], private readonly opts: ReadinessOptions = {}) {
    this.path = opts.path ?? '/ready'
    this.timeoutMs = opts.timeoutMs ?? 1000
    this.tls = opts.tls ?? true
    this.timer = setInterval(() => { for (const b of this.backends()) this.check(b) }, opts.intervalMs ?? 250)
    this.timer.unref()
  }

  readonly isReady = (b: Backend): boolean => this.state.get(`${b.host}:${b.port}`) ?? true

  stop (): void { clearInterval(this.timer) }

  private check (b: Backend): void {
    const id = `${b.host}:${b.port}`
    if (this.checking.has(id)) return
    this.checking.add(id)
    const done = (ok: boolean): void => {
      if (!this.checking.delete(id)) return
      const was = this.state.get(id) ?? true
      const streak = was === ok ? 0 : (this.streak.get(id) ?? 0) + 1
      if (streak >= (ok ? this.opts.rise ?? 1 : this.opts.fall ?? 2)) {
        this.state.set(id, ok)
        this.streak.set(id, 0)
        this.opts.onChange?.(b, ok)
      } else this.streak.set(id, streak)
    }
    const req = (this.tls ? httpsRequest : httpRequest)({
      host: b.host, port: b.port, path: this.path, agent: false, rejectUnauthorized: false, timeout: this.timeoutMs
    }, res => {
      res.resume()
      res.once('end', () => done(res.statusCode === 200))
      res.once('error', () => done(false))
    })
    req.once('timeout', () => req.destroy(new Error('readiness check timed out')))
    req.once('error', () => done(false))
    req.end()
  }
}
