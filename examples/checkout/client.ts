/**
 * A small HTTPS client for the drill and the tests: a cookie jar, one TLS session cache shared by all requests
 * (as a browser keeps one), a new connection per request (so the balancer spreads them), retries on connection
 * errors, and a record of which instance answered and whether TLS resumed.
 */
import { request as httpsRequest, Agent } from 'node:https'
import type { TLSSocket } from 'node:tls'

export interface Answer<T = Record<string, unknown>> { status: number, body: T, instance: string, resumed: boolean }

export interface ClientStats {
  requests: number
  resumed: number
  retries: number
  errors: string[]
  instances: Map<string, number>
}

export class ShopClient {
  readonly stats: ClientStats = { requests: 0, resumed: 0, retries: 0, errors: [], instances: new Map() }
  private readonly cookies = new Map<string, string>()
  // keepAlive off (default): every request is a new TCP + TLS connection, round-robined by the balancer; the session
  // cache (maxCachedSessions) is what lets a new connection resume. keepAlive on: a browser's way, one connection
  // reused for as long as the server keeps it (a draining instance answers `Connection: close`).
  private readonly agent: Agent

  constructor (private readonly port: number, private readonly host = '127.0.0.1', opts: { keepAlive?: boolean } = {}) {
    this.agent = new Agent({ keepAlive: opts.keepAlive ?? false, maxSockets: opts.keepAlive === true ? 1 : Infinity, maxCachedSessions: 10, rejectUnauthorized: false })
  }

  /** Closes kept-alive connections. */
  close (): void { this.agent.destroy() }

  async call<T = Record<string, unknown>> (method: string, path: string, body?: unknown, headers: Record<string, string> = {}, opts: { port?: number, retries?: number } = {}): Promise<Answer<T>> {
    const retries = opts.retries ?? 10
    for (let attempt = 0; ; attempt++) {
      try {
        const a = await this.once<T>(method, path, body, headers, opts.port ?? this.port)
        if (a.status >= 500 && attempt < retries && a.status !== 501) {
          this.stats.retries++
          await new Promise(resolve => setTimeout(resolve, 200))
          continue
        }
        return a
      } catch (err) {
        if (attempt >= retries) throw err
        this.stats.retries++
        this.stats.errors.push(`${method} ${path}: ${(err as Error).message}`)
        await new Promise(resolve => setTimeout(resolve, 200))
      }
    }
  }

  private async once<T> (method: string, path: string, body: unknown, headers: Record<string, string>, port: number): Promise<Answer<T>> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
    return await new Promise((resolve, reject) => {
      const req = httpsRequest({
        host: this.host,
        port,
        path,
        method,
        agent: this.agent,
        servername: 'localhost',
        headers: {
          ...headers,
          ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(payload.length) }),
          ...(this.cookies.size === 0 ? {} : { cookie: [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ') })
        },
        timeout: 10_000
      }, res => {
        const resumed = (res.socket as TLSSocket).isSessionReused()
        for (const c of res.headers['set-cookie'] ?? []) {
          const [pair] = c.split(';')
          const i = (pair ?? '').indexOf('=')
          const name = (pair ?? '').slice(0, i)
          const value = (pair ?? '').slice(i + 1)
          if (/max-age=0|expires=thu, 01 jan 1970/i.test(c) || value === '') this.cookies.delete(name)
          else this.cookies.set(name, value)
        }
        const chunks: Buffer[] = []
        res.on('data', (d: Buffer) => chunks.push(d))
        res.on('end', () => {
          const instance = String(res.headers['x-handoff-instance'] ?? '?')
          this.stats.requests++
          if (resumed) this.stats.resumed++
          this.stats.instances.set(instance, (this.stats.instances.get(instance) ?? 0) + 1)
          const text = Buffer.concat(chunks).toString()
          let parsed: unknown = text
          try { parsed = JSON.parse(text) } catch {}
          resolve({ status: res.statusCode ?? 0, body: parsed as T, instance, resumed })
        })
        res.on('error', reject)
      })
      req.on('timeout', () => req.destroy(new Error('timeout')))
      req.on('error', reject)
      req.end(payload)
    })
  }
}
