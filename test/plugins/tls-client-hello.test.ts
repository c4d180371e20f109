/**
 * The ClientHello peek of tls-sessions (issue 16): with `sessionCache` on, a connection whose ClientHello offers
 * TLS 1.3 to a server that allows it is answered without a store lookup (its legacy session id is random: nothing to
 * find), while TLS 1.2 session ids are still looked up and resume. In-process HTTPS servers on loopback with the
 * embedded store; clients are Node's TLS client over raw sockets, so a PROXY header can go first.
 */
import { constants } from 'node:crypto'
import net, { type AddressInfo } from 'node:net'
import tls from 'node:tls'
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { encodeProxyHeaderV2 } from '../../lib/proxy-protocol.js'
import { proxyProtocol } from '../../plugins/proxy-protocol.js'
import { handoffStore } from '../../plugins/store.js'
import { handoffHttpsOptions, serverAllowsTls13, tlsSessions } from '../../plugins/tls-sessions.js'
import { testCerts } from '../../scripts/certs.js'

const certs = testCerts()
const SECRET = 'client-hello peek test secret, 32 bytes or more'
const HEADER = encodeProxyHeaderV2({ address: '203.0.113.9', port: 40000 }, { address: '10.0.0.1', port: 443 })

async function server (opts: { maxVersion?: 'TLSv1.2', proxy?: 'before' | 'after', sessionCache?: boolean } = {}): Promise<{ app: FastifyInstance, port: number }> {
  const app = Fastify({ https: handoffHttpsOptions({ key: certs.rsa.key, cert: certs.rsa.cert, ...(opts.maxVersion === undefined ? {} : { maxVersion: opts.maxVersion }) }, { secret: SECRET }) }) as unknown as FastifyInstance
  const proxy = async (): Promise<void> => { await app.register(proxyProtocol, { trusted: ['127.0.0.0/8'] }) }
  if (opts.proxy === 'before') await proxy()
  await app.register(handoffStore, { secret: SECRET })
  await app.register(tlsSessions, { sessionCache: opts.sessionCache ?? true })
  if (opts.proxy === 'after') await proxy()
  app.get('/', async req => ({ ip: req.ip, resumed: req.tlsResumed }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => { await app.close() })
  return { app, port: (app.server.address() as AddressInfo).port }
}

type Client = 'tls13' | 'tls12-no-ticket' | 'any-no-ticket'
interface Visit { reused: boolean, protocol: string | null, session: Buffer | undefined, body: { ip: string, resumed: boolean } | undefined }

/** One connection: optional bytes first (a PROXY header), then TLS and GET / with Connection: close. */
async function visit (port: number, client: Client, o: { session?: Buffer, before?: Buffer } = {}): Promise<Visit> {
  const raw = net.connect({ port, host: '127.0.0.1' })
  await new Promise<void>((resolve, reject) => { raw.once('connect', resolve); raw.once('error', reject) })
  if (o.before !== undefined) raw.write(o.before)
  const version = client === 'tls13' ? { minVersion: 'TLSv1.3' as const } : client === 'tls12-no-ticket' ? { maxVersion: 'TLSv1.2' as const } : {}
  const s = tls.connect({
    socket: raw,
    ca: certs.ca,
    servername: 'localhost',
    ...version,
    ...(client === 'tls13' ? {} : { secureOptions: constants.SSL_OP_NO_TICKET }),
    ...(o.session === undefined ? {} : { session: o.session })
  })
  let reused = false
  let protocol: string | null = null
  let session: Buffer | undefined
  let out = ''
  s.on('session', (x: Buffer) => { session ??= x })
  s.once('secureConnect', () => {
    reused = s.isSessionReused()
    protocol = s.getProtocol()
    s.write('GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
  })
  s.on('data', (d: Buffer) => { out += d.toString('latin1') })
  s.on('error', () => {})
  s.setTimeout(10_000, () => s.destroy())
  await new Promise(resolve => s.once('close', resolve))
  let body: Visit['body']
  try { body = JSON.parse(out.slice(out.indexOf('\r\n\r\n') + 4)) as Visit['body'] } catch { body = undefined }
  return { reused, protocol, session: session ?? s.getSession() ?? undefined, body }
}

const counters = (app: FastifyInstance): { skipped: number, hits: number, misses: number, tls13Sessions: number } => {
  const m = app.handoffTls.metrics
  return { skipped: m.cacheLookupsSkipped, hits: m.cacheHits, misses: m.cacheMisses, tls13Sessions: m.cacheSkipped }
}

t.test('TLS 1.3 ClientHellos skip the lookup (full and resumed); TLS 1.2 session ids are looked up and resume', async t => {
  const { app, port } = await server()
  const full = await visit(port, 'tls13')
  t.equal(full.protocol, 'TLSv1.3')
  const resumed = await visit(port, 'tls13', { ...(full.session === undefined ? {} : { session: full.session }) })
  t.equal(resumed.reused, true, 'the ticket still resumes')
  t.same(counters(app), { skipped: 2, hits: 0, misses: 0, tls13Sessions: 0 }, 'two TLS 1.3 connections: no lookup, and no session handed over')
  const first12 = await visit(port, 'tls12-no-ticket')
  t.equal(first12.protocol, 'TLSv1.2')
  const again12 = await visit(port, 'tls12-no-ticket', { ...(first12.session === undefined ? {} : { session: first12.session }) })
  t.equal(again12.reused, true, 'a TLS 1.2 session id resumes from the cache')
  t.same(counters(app), { skipped: 2, hits: 1, misses: 0, tls13Sessions: 0 })
  t.equal(app.handoffTls.metrics.cacheWrites, 1, 'the TLS 1.2 session was stored')
  t.equal(app.handoffTls.metrics.handshakeErrors, 0)
})

t.test('a server that does not allow TLS 1.3 looks up every id, also from clients that offer 1.3', async t => {
  const { app, port } = await server({ maxVersion: 'TLSv1.2' })
  t.equal(serverAllowsTls13(app.server as unknown as tls.Server), false)
  const first = await visit(port, 'any-no-ticket')
  t.equal(first.protocol, 'TLSv1.2', 'the client offered 1.3, the server chose 1.2')
  const again = await visit(port, 'any-no-ticket', { ...(first.session === undefined ? {} : { session: first.session }) })
  t.equal(again.reused, true, 'resumed by session id')
  // Node's client sends a random 32-byte id when it offers 1.3 (RFC 8446 D.4), here looked up and not found.
  t.same(counters(app), { skipped: 0, hits: 1, misses: 1, tls13Sessions: 0 })
})

t.test('serverAllowsTls13 follows the secure context, also after setSecureContext', async t => {
  const s = tls.createServer({ key: certs.rsa.key, cert: certs.rsa.cert })
  t.equal(serverAllowsTls13(s), true)
  s.setSecureContext({ key: certs.rsa.key, cert: certs.rsa.cert, maxVersion: 'TLSv1.2' })
  t.equal(serverAllowsTls13(s), false)
  t.equal(serverAllowsTls13(tls.createServer({ key: certs.rsa.key, cert: certs.rsa.cert, secureOptions: constants.SSL_OP_NO_TLSv1_3 })), false)
})

for (const order of ['before', 'after'] as const) {
  t.test(`with the PROXY protocol plugin registered ${order} tls-sessions: header first, then the ClientHello`, async t => {
    const { app, port } = await server({ proxy: order })
    const full = await visit(port, 'tls13', { before: HEADER })
    t.match(full.body, { ip: '203.0.113.9', resumed: false })
    const resumed = await visit(port, 'tls13', { before: HEADER, ...(full.session === undefined ? {} : { session: full.session }) })
    t.match(resumed.body, { ip: '203.0.113.9', resumed: true })
    const first12 = await visit(port, 'tls12-no-ticket', { before: HEADER })
    const again12 = await visit(port, 'tls12-no-ticket', { before: HEADER, ...(first12.session === undefined ? {} : { session: first12.session }) })
    t.match(again12.body, { ip: '203.0.113.9', resumed: true })
    t.same(counters(app), { skipped: 2, hits: 1, misses: 0, tls13Sessions: 0 })
    t.equal(app.handoffProxyProtocol.metrics.proxied, 4)
  })
}

t.test('another newSession listener on the server: TLS 1.3 lookups are still skipped (answered at once), it sees every session', async t => {
  const { app, port } = await server()
  const theirs: Buffer[] = []
  const listener = (_id: Buffer, data: Buffer, cb: () => void): void => { theirs.push(data); cb() }
  app.server.on('newSession', listener)
  t.teardown(() => { app.server.off('newSession', listener) })
  const full = await visit(port, 'tls13')
  const resumed = await visit(port, 'tls13', { ...(full.session === undefined ? {} : { session: full.session }) })
  t.equal(resumed.reused, true)
  const c = counters(app)
  t.same([c.skipped, c.hits, c.misses], [2, 0, 0], 'no lookup')
  t.ok(theirs.length >= 2, `their listener got the TLS 1.3 sessions (${theirs.length})`)
  t.equal(c.tls13Sessions, theirs.length, 'and the plugin saw them too, and stored none')
  t.equal(app.handoffTls.metrics.cacheWrites, 0)
})

t.test('a ClientHello sent a byte at a time is still read; bytes that are no ClientHello go to TLS unchanged', async t => {
  const { app, port } = await server()
  // Capture a real ClientHello, then replay it in pieces through a relay.
  const relay = net.createServer(c => {
    const up = net.connect(port, '127.0.0.1')
    let first = true
    c.on('data', d => {
      if (!first) { up.write(d); return }
      first = false
      c.pause()
      const bytes = [...d]
      const step = (): void => {
        const b = bytes.shift()
        if (b === undefined) { c.resume(); return }
        up.write(Buffer.from([b]))
        setTimeout(step, 0)
      }
      step()
    })
    up.on('data', d => c.write(d))
    for (const s of [c, up]) s.on('error', () => { c.destroy(); up.destroy() })
    up.on('close', () => c.destroy())
  })
  await new Promise<void>(resolve => relay.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { relay.close() })
  const relayPort = (relay.address() as AddressInfo).port
  const v = await visit(relayPort, 'tls13')
  t.equal(v.protocol, 'TLSv1.3', 'handshake completed')
  t.equal(counters(app).skipped, 1, 'and the peek read the whole ClientHello')
  // An HTTP request on the TLS port: TLS answers it as it always does (an error, the connection closed), no hang.
  const plain = net.connect(port, '127.0.0.1')
  plain.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n')
  plain.on('data', () => {})
  plain.on('error', () => {})
  const closed = await Promise.race([new Promise(resolve => plain.once('close', () => resolve(true))), new Promise(resolve => setTimeout(() => resolve(false), 5000))])
  t.equal(closed, true, 'closed by TLS')
  t.equal(counters(app).skipped, 1)
})

t.test('close: the server\'s emit and listenerCount are its own again', async t => {
  const { app } = await server()
  t.ok(Object.hasOwn(app.server, 'emit'))
  t.ok(Object.hasOwn(app.server, 'listenerCount'))
  await app.close()
  t.notOk(Object.hasOwn(app.server, 'emit'))
  t.notOk(Object.hasOwn(app.server, 'listenerCount'))
})

t.test('sessionCache off: no peek at all (the server\'s emit is its own)', async t => {
  const { app, port } = await server({ sessionCache: false })
  t.notOk(Object.hasOwn(app.server, 'emit'))
  t.notOk(Object.hasOwn(app.server, 'listenerCount'))
  const v = await visit(port, 'tls13')
  t.equal(v.protocol, 'TLSv1.3')
  t.equal(counters(app).skipped, 0)
})
