/**
 * The proxy-protocol plugin over real sockets: clients on loopback send PROXY v1/v2 headers (written by hand or by
 * HAProxy's send-proxy-v2) before TLS or HTTP, and the server answers with what Fastify sees as request.ip. Every
 * process started here (haproxy, the example's instance) is stopped here, by PID.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net, { type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import tls from 'node:tls'
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { encodeProxyHeaderV2 } from '../../lib/proxy-protocol.js'
import { proxyProtocol, type ProxyProtocolOptions } from '../../plugins/proxy-protocol.js'
import { handoff } from '../../plugins/handoff.js'
import { handoffStore } from '../../plugins/store.js'
import { handoffHttpsOptions, tlsSessions } from '../../plugins/tls-sessions.js'
import { testCerts } from '../../scripts/certs.js'
import { freePort } from '../../scripts/redis-server.js'

const certs = testCerts()
const SECRET = 'proxy-protocol test secret, 32 bytes or more'
const LOOPBACK_TRUSTED = ['127.0.0.0/8']
const NOT_LOOPBACK = ['10.0.0.0/8']
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

interface Seen { ip: string, remoteAddress: string | undefined, remotePort: number | undefined, family: string | undefined, resumed?: boolean }
interface Server { app: FastifyInstance, port: number, handled: () => number }

async function startServer (opts: { tls: boolean, proxy?: ProxyProtocolOptions, tlsSessions?: boolean, host?: string, logLines?: string[] }): Promise<Server> {
  const lines = opts.logLines
  const logger = lines === undefined ? false : { level: 'info', stream: { write: (line: string) => { lines.push(line) } } }
  const app = (opts.tls
    ? Fastify({ logger, https: handoffHttpsOptions({ key: certs.rsa.key, cert: certs.rsa.cert }, { secret: SECRET }) })
    : Fastify({ logger })) as unknown as FastifyInstance
  if (opts.tlsSessions === true) {
    await app.register(handoffStore, { secret: SECRET })
    await app.register(tlsSessions)
  }
  if (opts.proxy !== undefined) await app.register(proxyProtocol, opts.proxy)
  let handled = 0
  app.addHook('onRequest', async () => { handled++ })
  app.get('/ip', async (req): Promise<Seen> => ({
    ip: req.ip,
    remoteAddress: req.socket.remoteAddress,
    remotePort: req.socket.remotePort,
    family: req.socket.remoteFamily,
    ...(opts.tlsSessions === true ? { resumed: req.tlsResumed } : {})
  }))
  app.get('/health', async () => 'ok')
  await app.listen({ port: 0, host: opts.host ?? '127.0.0.1' })
  return { app, port: (app.server.address() as AddressInfo).port, handled: () => handled }
}

interface Answer {
  /** Status code, or undefined when the server closed without answering. */
  status: number | undefined
  body: Seen | undefined
  error: string | undefined
  resumed: boolean
  session: Buffer | undefined
  /** ms from connect to close. */
  ms: number
}

interface CallOptions {
  tls: boolean
  /** Sent first, alone (then the request): as string or bytes; an array is sent piece by piece, 50 ms apart. */
  header?: Buffer | string | Array<Buffer | string>
  /** Header and HTTP request in one write (plain HTTP only). */
  coalesce?: boolean
  /** Send nothing after the header. */
  silent?: boolean
  localAddress?: string
  host?: string
  session?: Buffer
  requests?: number
}

/** One connection: optional PROXY header, then TLS (or not), then GET /ip with Connection: close. */
async function call (port: number, o: CallOptions): Promise<Answer> {
  const started = Date.now()
  const raw = net.connect({ port, host: o.host ?? '127.0.0.1', ...(o.localAddress === undefined ? {} : { localAddress: o.localAddress }) })
  let error: string | undefined
  raw.on('error', err => { error ??= err.message })
  await new Promise<void>((resolve, reject) => { raw.once('connect', resolve); raw.once('error', reject) })
  const n = o.requests ?? 1
  const request = Array.from({ length: n }, (_, i) => `GET /ip HTTP/1.1\r\nHost: localhost\r\n${i === n - 1 ? 'Connection: close\r\n' : ''}\r\n`).join('')
  const pieces = o.header === undefined ? [] : Array.isArray(o.header) ? o.header : [o.header]
  if (o.coalesce === true) {
    raw.write(Buffer.concat([...pieces.map(p => Buffer.from(p)), Buffer.from(request)]))
  } else {
    for (const [i, p] of pieces.entries()) {
      if (i > 0) await sleep(50)
      raw.write(p)
    }
  }
  let stream: net.Socket = raw
  let session: Buffer | undefined
  let resumed = false
  if (o.tls && o.silent !== true) {
    const s = tls.connect({ socket: raw, ca: certs.ca, servername: 'localhost', ...(o.session === undefined ? {} : { session: o.session }) })
    s.on('error', err => { error ??= err.message })
    s.once('secureConnect', () => { resumed = s.isSessionReused() })
    s.on('session', (sess: Buffer) => { session = sess })
    stream = s
  }
  if (o.coalesce !== true && o.silent !== true) stream.write(request)
  let out = ''
  stream.on('data', (d: Buffer) => { out += d.toString('latin1') })
  const guard = setTimeout(() => { error ??= 'client gave up after 10 s'; stream.destroy() }, 10_000)
  await new Promise(resolve => stream.once('close', resolve))
  clearTimeout(guard)
  const status = /^HTTP\/1\.1 (\d{3})/.exec(out)?.[1]
  const bodies = out.split('HTTP/1.1 ').slice(1).map(r => r.slice(r.indexOf('\r\n\r\n') + 4))
  let body: Seen | undefined
  try { body = bodies.length > 0 ? JSON.parse(bodies[bodies.length - 1] ?? '') as Seen : undefined } catch { body = undefined }
  return { status: status === undefined ? undefined : Number(status), body, error, resumed, session, ms: Date.now() - started }
}

const V2_203_0_113_7 = encodeProxyHeaderV2({ address: '203.0.113.7', port: 51234 }, { address: '10.0.0.1', port: 443 })
const V2_IPV6 = encodeProxyHeaderV2({ address: '2001:db8::42', port: 4242 }, { address: '2001:db8::1', port: 443 })
const V1_IPV4 = 'PROXY TCP4 198.51.100.22 10.0.0.1 35646 443\r\n'
const V1_IPV6 = 'PROXY TCP6 2001:DB8:0:0:0:0:0:7 2001:db8::1 40000 443\r\n'
// v2 LOCAL: what HAProxy's health checks send.
const V2_LOCAL = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00])

t.test('HTTPS, trusted balancer: v1 and v2 headers, IPv4 and IPv6 clients, become request.ip', async t => {
  const s = await startServer({ tls: true, proxy: { trusted: LOOPBACK_TRUSTED } })
  t.teardown(async () => await s.app.close())
  const cases: Array<[string, CallOptions['header'], Partial<Seen>]> = [
    ['v2 IPv4', V2_203_0_113_7, { ip: '203.0.113.7', remoteAddress: '203.0.113.7', remotePort: 51234, family: 'IPv4' }],
    ['v2 IPv6', V2_IPV6, { ip: '2001:db8::42', remotePort: 4242, family: 'IPv6' }],
    ['v1 IPv4', V1_IPV4, { ip: '198.51.100.22', remotePort: 35646, family: 'IPv4' }],
    ['v1 IPv6, text normalized as Node writes it', V1_IPV6, { ip: '2001:db8::7', remotePort: 40000, family: 'IPv6' }],
    ['v2 in three pieces, 50 ms apart', [V2_203_0_113_7.subarray(0, 5), V2_203_0_113_7.subarray(5, 20), V2_203_0_113_7.subarray(20)], { ip: '203.0.113.7' }]
  ]
  for (const [name, header, want] of cases) {
    const a = await call(s.port, { tls: true, header })
    t.equal(a.status, 200, `${name}: answered over TLS (${a.error ?? 'no error'})`)
    t.match(a.body, want, `${name}: request.ip and request.socket show the announced client`)
  }
  t.match(s.app.handoffProxyProtocol.metrics, { proxied: cases.length, direct: 0, refusedUntrusted: 0, refusedInvalid: 0, timeouts: 0 })
})

t.test('plain HTTP, trusted balancer: header and request in one packet, keep-alive requests keep the client', async t => {
  const s = await startServer({ tls: false, proxy: { trusted: LOOPBACK_TRUSTED } })
  t.teardown(async () => await s.app.close())
  const a = await call(s.port, { tls: false, header: V2_203_0_113_7, coalesce: true, requests: 3 })
  t.equal(a.status, 200)
  t.match(a.body, { ip: '203.0.113.7', remotePort: 51234 })
  t.equal(s.handled(), 3, 'the bytes after the header reached the HTTP parser: three requests on one connection')
  const b = await call(s.port, { tls: false, header: V1_IPV6 })
  t.match(b.body, { ip: '2001:db8::7', family: 'IPv6' })
})

t.test('Fastify\'s request log shows the client; a refusal is logged with the peer and the reason', async t => {
  const lines: string[] = []
  const s = await startServer({ tls: true, proxy: { trusted: LOOPBACK_TRUSTED }, logLines: lines })
  t.teardown(async () => await s.app.close())
  await call(s.port, { tls: true, header: V2_203_0_113_7 })
  const incoming = lines.map(l => JSON.parse(l) as { msg: string, req?: { remoteAddress?: string, remotePort?: number } }).find(l => l.msg === 'incoming request')
  t.match(incoming?.req, { remoteAddress: '203.0.113.7', remotePort: 51234 })
  await call(s.port, { tls: true })
  t.ok(lines.some(l => l.includes('PROXY protocol: connection refused') && l.includes('"peer":"127.0.0.1"') && l.includes('no PROXY header')), 'refusal logged')
})

t.test('v2 LOCAL (a balancer health check) keeps the balancer\'s own address', async t => {
  const s = await startServer({ tls: true, proxy: { trusted: LOOPBACK_TRUSTED } })
  t.teardown(async () => await s.app.close())
  const a = await call(s.port, { tls: true, header: V2_LOCAL })
  t.equal(a.status, 200)
  t.match(a.body, { ip: '127.0.0.1' })
  t.equal(s.app.handoffProxyProtocol.metrics.local, 1)
})

t.test('a PROXY header from an address not in trusted is refused: connection closed, no request handled', async t => {
  for (const useTls of [true, false]) {
    const s = await startServer({ tls: useTls, proxy: { trusted: NOT_LOOPBACK } })
    for (const header of [V2_203_0_113_7, V1_IPV4, 'PROXY garbage\r\n']) {
      const a = await call(s.port, { tls: useTls, header })
      t.equal(a.status, undefined, `${useTls ? 'HTTPS' : 'HTTP'}: no answer to a header from 127.0.0.1 (${a.error ?? 'closed'})`)
    }
    t.equal(s.handled(), 0, 'no request reached Fastify')
    t.equal(s.app.handoffProxyProtocol.metrics.refusedUntrusted, 3)
    await s.app.close()
  }
})

t.test('an untrusted address is refused on the first bytes of a header, without waiting for the rest', async t => {
  const s = await startServer({ tls: true, proxy: { trusted: NOT_LOOPBACK, headerTimeoutMs: 60_000 } })
  t.teardown(async () => await s.app.close())
  for (const start of [V2_203_0_113_7.subarray(0, 6), Buffer.from('PROXY ')]) {
    const a = await call(s.port, { tls: true, header: start, silent: true })
    t.equal(a.status, undefined)
    t.ok(a.ms < 30_000, `closed on its first 6 bytes, not by the 60 s timeout (${a.ms} ms)`)
  }
  t.match(s.app.handoffProxyProtocol.metrics, { refusedUntrusted: 2, timeouts: 0 })
})

t.test('untrusted addresses without a header: served directly by default, closed with allowDirect: false', async t => {
  const open = await startServer({ tls: true, proxy: { trusted: NOT_LOOPBACK } })
  t.teardown(async () => await open.app.close())
  const a = await call(open.port, { tls: true })
  t.equal(a.status, 200)
  t.match(a.body, { ip: '127.0.0.1' })
  t.equal(open.app.handoffProxyProtocol.metrics.direct, 1)
  const plain = await startServer({ tls: false, proxy: { trusted: NOT_LOOPBACK } })
  t.teardown(async () => await plain.app.close())
  t.match((await call(plain.port, { tls: false })).body, { ip: '127.0.0.1' }, 'an HTTP request that starts with P (POST-like) is not a header: GET here, and the scan is unit-tested')

  const closed = await startServer({ tls: true, proxy: { trusted: NOT_LOOPBACK, allowDirect: false } })
  t.teardown(async () => await closed.app.close())
  const b = await call(closed.port, { tls: true })
  t.equal(b.status, undefined, `closed: ${b.error ?? ''}`)
  t.equal(closed.handled(), 0)
  t.equal(closed.app.handoffProxyProtocol.metrics.refusedUntrusted, 1)
})

t.test('a trusted address must send a header: none, or a malformed one, closes the connection', async t => {
  const s = await startServer({ tls: true, proxy: { trusted: LOOPBACK_TRUSTED } })
  t.teardown(async () => await s.app.close())
  const none = await call(s.port, { tls: true })
  t.equal(none.status, undefined, 'plain TLS from the balancer\'s address is refused (the spec: never guess)')
  const bad = await call(s.port, { tls: true, header: 'PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n' })
  t.equal(bad.status, undefined)
  t.equal(s.handled(), 0)
  t.equal(s.app.handoffProxyProtocol.metrics.refusedInvalid, 2)
})

t.test('a partial header, or silence, is closed after headerTimeoutMs', async t => {
  const s = await startServer({ tls: true, proxy: { trusted: LOOPBACK_TRUSTED, headerTimeoutMs: 300 } })
  t.teardown(async () => await s.app.close())
  const partial = await call(s.port, { tls: true, header: V2_203_0_113_7.subarray(0, 14), silent: true })
  t.equal(partial.status, undefined)
  t.ok(partial.ms >= 250, `not closed before the timeout (closed after ${partial.ms} ms)`)
  const v1 = await call(s.port, { tls: true, header: 'PROXY TCP4 198.51.100.22', silent: true })
  t.equal(v1.status, undefined)
  const silent = await call(s.port, { tls: true, silent: true })
  t.equal(silent.status, undefined)
  t.ok(silent.ms >= 250, `silence closed after ${silent.ms} ms`)
  t.equal(s.app.handoffProxyProtocol.metrics.timeouts, 3)
  t.equal(s.handled(), 0)
})

t.test('PROXY off: plain clients work as before, and a header is not honoured', async t => {
  for (const useTls of [true, false]) {
    const s = await startServer({ tls: useTls })
    const a = await call(s.port, { tls: useTls })
    t.equal(a.status, 200)
    t.match(a.body, { ip: '127.0.0.1', remoteAddress: '127.0.0.1' })
    const b = await call(s.port, { tls: useTls, header: V1_IPV4 })
    t.not(b.body?.ip, '198.51.100.22', `${useTls ? 'HTTPS' : 'HTTP'} without the plugin never takes a header's address (status ${String(b.status)})`)
    await s.app.close()
  }
})

t.test('with tls-sessions: the plugin still sees the TLS server, sessions resume through PROXY headers', async t => {
  const s = await startServer({ tls: true, tlsSessions: true, proxy: { trusted: LOOPBACK_TRUSTED } })
  t.teardown(async () => await s.app.close())
  t.ok(s.app.server instanceof tls.Server)
  const first = await call(s.port, { tls: true, header: V2_203_0_113_7 })
  t.match(first.body, { ip: '203.0.113.7', resumed: false })
  t.ok(first.session, 'a session ticket arrived')
  const second = await call(s.port, { tls: true, header: V2_IPV6, ...(first.session === undefined ? {} : { session: first.session }) })
  t.ok(second.resumed, 'resumed through the PROXY header')
  t.match(second.body, { ip: '2001:db8::42', resumed: true })
  t.equal(s.app.handoffTls.metrics.resumed, 1)
})

t.test('dual-stack listener: an IPv4 balancer seen as ::ffff:127.0.0.1 is trusted by its IPv4 entry', async t => {
  let s: Server
  try {
    s = await startServer({ tls: true, host: '::', proxy: { trusted: ['127.0.0.1'] } })
  } catch (err) {
    t.plan(0, `no IPv6 on this machine: ${(err as Error).message}`)
    return
  }
  t.teardown(async () => await s.app.close())
  const a = await call(s.port, { tls: true, header: V2_203_0_113_7 })
  t.match(a.body, { ip: '203.0.113.7' })
})

t.test('close: connections still in their header phase are closed, and the server is left as it was', async t => {
  const s = await startServer({ tls: true, proxy: { trusted: LOOPBACK_TRUSTED, headerTimeoutMs: 60_000 } })
  t.ok(Object.hasOwn(s.app.server, 'emit'))
  const waiting = call(s.port, { tls: true, header: V2_203_0_113_7.subarray(0, 10), silent: true })
  await sleep(100)
  await s.app.close()
  const a = await waiting
  t.equal(a.status, undefined)
  t.ok(a.ms < 30_000, `closed by close(), not by the 60 s header timeout (${a.ms} ms)`)
  t.notOk(Object.hasOwn(s.app.server, 'emit'), 'the server\'s own emit is back')
})

t.test('options are checked at registration', async t => {
  const bad: Array<[unknown, RegExp]> = [
    [undefined, /"trusted"/],
    [{}, /"trusted".*non-empty array/],
    [{ trusted: [] }, /"trusted"/],
    [{ trusted: ['10.0.0.0/40'] }, /"trusted".*prefix/],
    [{ trusted: ['balancer.local'] }, /"trusted".*not an IP address/],
    [{ trusted: ['10.0.0.1'], headerTimeoutMs: 0 }, /"headerTimeoutMs"/],
    [{ trusted: ['10.0.0.1'], allowDirect: 'yes' }, /"allowDirect"/]
  ]
  for (const [opts, message] of bad) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(proxyProtocol, opts as ProxyProtocolOptions); await app.ready() },
      { code: 'FST_HANDOFF_INVALID_OPTION', message }, JSON.stringify(opts) ?? 'undefined')
    await app.close()
  }
  const app = Fastify()
  await app.register(proxyProtocol, { trusted: [' 10.0.0.0/8 ', 'fd00::/8'] })
  await app.ready()
  t.same(app.handoffProxyProtocol.options, { trusted: [' 10.0.0.0/8 ', 'fd00::/8'], headerTimeoutMs: 2000, allowDirect: true })
  await app.close()
})

t.test('the umbrella plugin takes proxyProtocol and registers it before TLS sessions', async t => {
  const app = Fastify({ https: handoffHttpsOptions({ key: certs.rsa.key, cert: certs.rsa.cert }, { secret: SECRET }) })
  await app.register(handoff, { secret: SECRET, proxyProtocol: { trusted: LOOPBACK_TRUSTED }, session: false, metrics: false })
  app.get('/ip', async (req) => ({ ip: req.ip, resumed: req.tlsResumed }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  const a = await call((app.server.address() as AddressInfo).port, { tls: true, header: V1_IPV4 })
  t.match(a.body, { ip: '198.51.100.22', resumed: false })
  t.equal(app.handoffProxyProtocol.metrics.proxied, 1)
  t.equal(app.handoffTls.metrics.handshakes, 1)
})

// ---------------------------------------------------------------------------------------------------------------
// Through real HAProxy (send-proxy-v2), and through the example's own balancer

function haveHaproxy (): boolean {
  return spawnSync('haproxy', ['-v'], { stdio: 'ignore' }).status === 0
}

/** 127.0.0.3 as the client's source: another address than the balancer's, so request.ip shows whose it is. */
const CLIENT_ADDRESS = '127.0.0.3'

async function waitForPort (port: number, ms: number): Promise<void> {
  const until = Date.now() + ms
  for (;;) {
    const ok = await new Promise<boolean>(resolve => {
      const s = net.connect(port, '127.0.0.1')
      s.once('connect', () => { s.destroy(); resolve(true) })
      s.once('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > until) throw new Error(`nothing listens on ${port} after ${ms} ms`)
    await sleep(50)
  }
}

const haproxyMissing = !haveHaproxy()
if (haproxyMissing && process.env.CI !== 'true') {
  t.comment('haproxy is not installed: the HAProxy send-proxy-v2 test is skipped (apt-get install haproxy; CI fails instead)')
}

t.test('through HAProxy send-proxy-v2: request.ip is the client\'s, health checks arrive as LOCAL', { skip: haproxyMissing && process.env.CI !== 'true' ? 'haproxy not installed' : false }, async t => {
  t.notOk(haproxyMissing, 'haproxy is installed (CI installs it)')
  if (haproxyMissing) return
  const s = await startServer({ tls: true, proxy: { trusted: ['127.0.0.1'] } })
  t.teardown(async () => await s.app.close())
  const frontPort = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'handoff-haproxy-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const cfg = join(dir, 'haproxy.cfg')
  // The example's backend settings (examples/checkout/haproxy.cfg) on test ports, with faster checks.
  writeFileSync(cfg, [
    'defaults', '  mode tcp', '  timeout connect 2s', '  timeout client 10s', '  timeout server 10s',
    'frontend shop_tls', `  bind 127.0.0.1:${frontPort}`, '  default_backend shop',
    'backend shop', '  option httpchk GET /health', '  http-check expect status 200',
    '  default-server check check-ssl verify none inter 200ms fall 2 rise 2',
    `  server shop-a 127.0.0.1:${s.port} send-proxy-v2`, ''
  ].join('\n'))
  const haproxy: ChildProcess = spawn('haproxy', ['-db', '-f', cfg], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  haproxy.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  const exited = new Promise<void>(resolve => haproxy.once('exit', () => resolve()))
  process.once('exit', () => { if (haproxy.exitCode === null) haproxy.kill('SIGKILL') })
  t.teardown(async () => { if (haproxy.exitCode === null && haproxy.signalCode === null) { haproxy.kill('SIGTERM'); await exited } })
  await waitForPort(frontPort, 10_000)

  for (let i = 0; i < 3; i++) {
    const a = await call(frontPort, { tls: true, localAddress: CLIENT_ADDRESS })
    t.equal(a.status, 200, `through HAProxy (${a.error ?? 'ok'}) ${stderr}`)
    t.match(a.body, { ip: CLIENT_ADDRESS, remoteAddress: CLIENT_ADDRESS, family: 'IPv4' }, 'request.ip is the client, not HAProxy (127.0.0.1)')
  }
  const until = Date.now() + 10_000
  while (s.app.handoffProxyProtocol.metrics.local === 0 && Date.now() < until) await sleep(100)
  t.ok(s.app.handoffProxyProtocol.metrics.local > 0, 'HAProxy\'s TLS health checks came with a v2 LOCAL header and passed')
  const m = s.app.handoffProxyProtocol.metrics
  t.ok(m.proxied >= 3, `HAProxy's connections announced their clients (${m.proxied}; its readiness probe by waitForPort counts too)`)
  t.match(m, { refusedInvalid: 0, refusedUntrusted: 0, timeouts: 0 }, 'nothing HAProxy sent was refused')
})

t.test('the example: its balancer sends v2 headers, its instances (PROXY_PROTOCOL_TRUSTED) take them', async t => {
  const { startShopCluster, BALANCER_SOURCE_ADDRESS } = await import('../../examples/checkout/cluster.js')
  const cluster = await startShopCluster({ instances: 1, ports: [await freePort()], balancerPort: await freePort(), proxyProtocol: true })
  t.teardown(async () => await cluster.stop())
  const whoami = async (port: number, localAddress: string): Promise<{ ip?: string } | undefined> => {
    const raw = net.connect({ port, host: '127.0.0.1', localAddress })
    const s = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'localhost' })
    s.write('GET /api/whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
    let out = ''
    s.on('data', (d: Buffer) => { out += d.toString() })
    s.on('error', () => {})
    await new Promise(resolve => s.once('close', resolve))
    try { return JSON.parse(out.slice(out.indexOf('\r\n\r\n') + 4)) as { ip?: string } } catch { return undefined }
  }
  t.match(await whoami(cluster.balancerPort, CLIENT_ADDRESS), { ip: CLIENT_ADDRESS }, `through the balancer (which connects from ${BALANCER_SOURCE_ADDRESS})`)
  const instance = cluster.instances[0]
  t.ok(instance)
  t.match(await whoami(instance?.port ?? 0, '127.0.0.1'), { ip: '127.0.0.1' }, 'a direct client of the instance (not the balancer) still works')
})
