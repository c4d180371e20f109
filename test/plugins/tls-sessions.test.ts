/**
 * TLS session failover over real TLS connections: separate server processes (scripts/tls-instance.ts) share
 * one private redis-server; clients are Node's tls.connect and `openssl s_client`. In-process tests at the end cover
 * registration checks. Every process started here is stopped here, by PID.
 */
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import http2 from 'node:http2'
import tls from 'node:tls'
import t from 'tap'
import Fastify from 'fastify'
import { partitionOf, entryKey } from '../../lib/partitions.js'
import { RedisRepository } from '../../lib/repository/redis.js'
import { KeyRing } from '../../lib/seal.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { handoffStore } from '../../plugins/store.js'
import {
  handoffHttpsOptions, sessionIdContextFor, sessionProtocolVersion, tlsSessions, type TlsSessionsOptions
} from '../../plugins/tls-sessions.js'
import { testCerts } from '../../scripts/certs.js'
import { startRedis } from '../../scripts/redis-server.js'
import { DEFAULT_TEST_SECRET, runningInstances, spawnTlsInstance, type InstanceConfig, type TlsInstance } from '../../scripts/tls-instance.js'
import { elapse, waitFor } from '../helpers/wait-for.js'
import { sClient as sClientTls, visit as visitTls, type TlsMode, type Visit } from '../helpers/tls-clients.js'

const FIXTURE = fileURLToPath(new URL('../../scripts/tls-instance.ts', import.meta.url))
const OTHER_SECRET = 'a different cluster secret, also 32+ bytes'
const PREFIX = `tlstest${process.pid}:`
const certs = testCerts()
const tmp = mkdtempSync(join(tmpdir(), 'handoff-tls-test-'))
process.on('exit', () => { rmSync(tmp, { recursive: true, force: true }) })

// ---------------------------------------------------------------------------------------------------------------
// Instances

type Instance = TlsInstance
async function startInstance (name: string, cfg: Partial<InstanceConfig>, argv: string[] = []): Promise<Instance> {
  return await spawnTlsInstance(name, { keyPath: certs.rsa.keyPath, certPath: certs.rsa.certPath, prefix: PREFIX, ...cfg }, argv)
}

// ---------------------------------------------------------------------------------------------------------------
// Clients

type Mode = TlsMode
const MODES: Mode[] = ['tls13', 'tls12', 'tls12-no-ticket']

/** One TLS connection with one HTTP request (so TLS 1.3 tickets, sent after the handshake, arrive). */
async function visit (port: number, opts: { mode?: Mode, session?: Buffer | undefined } = {}): Promise<Visit & { ms: number }> {
  const start = performance.now()
  const v = await visitTls(port, certs.ca, opts)
  return { ...v, ms: performance.now() - start }
}

/** openssl s_client, one HTTP request; returns whether it reported the session "Reused,". */
const sClient = (port: number, mode: Mode, sess: { out?: string, in?: string }): { reused: boolean, output: string } =>
  sClientTls(port, certs.caPath, mode, sess)

function nodeDefaultContext (argv: string[]): string {
  return createHash('sha1').update(argv.join(' ')).digest('hex').slice(0, 32)
}

// ---------------------------------------------------------------------------------------------------------------
// The cluster

const redis = await startRedis()
t.teardown(async () => { await redis.stop() })

const base: Partial<InstanceConfig> = { redisUrl: redis.url, commandTimeoutMs: 300 }
const cache: TlsSessionsOptions = { sessionCache: true }
// R1, R2: short epochs, for the rotation tests.
const PERIOD = 3000
const SKEW = 500
const rotating: Partial<InstanceConfig> = { ...base, tlsSessions: { ticketKeyPeriodMs: PERIOD, maxClockSkewMs: SKEW } }
// All started at once, before any test: each is its own process, so they start in parallel.
const [A, B, C, D, N1, N2, X, R1, R2] = await Promise.all([
  startInstance('A', { ...base, tlsSessions: cache }, ['--role=a']),
  startInstance('B', { ...base, tlsSessions: cache }, ['--role', 'b', '--and-more']),
  startInstance('C', { ...base, noTicket: true, useHelper: true, tlsSessions: { sessionCache: true, singleUse: true } }, ['c']),
  startInstance('D', { ...base, noTicket: true, useHelper: true, tlsSessions: { sessionCache: true, singleUse: true } }, ['d', 'dd']),
  startInstance('N1', { plugin: false }, ['--n1']),
  startInstance('N2', { plugin: false }, ['--n2']),
  startInstance('X', { ...base, secret: OTHER_SECRET, tlsSessions: cache }, ['--x']),
  startInstance('R1', rotating, ['--r1']),
  startInstance('R2', rotating, ['--r2', 'x'])
]) as [Instance, Instance, Instance, Instance, Instance, Instance, Instance, Instance, Instance]
const everyone = [A, B, C, D, N1, N2, X, R1, R2]
t.teardown(async () => { await Promise.all(everyone.map(async i => await i.stop())) })

t.test('every instance has the cluster session id context whatever its command line; Node defaults differ', async t => {
  const expected = sessionIdContextFor(DEFAULT_TEST_SECRET)
  const [a, b, c, n1, n2, x] = await Promise.all([A, B, C, N1, N2, X].map(async i => await i.status()))
  t.equal(a?.sessionIdContext, expected, 'A: set by the plugin (Node default replaced)')
  t.equal(b?.sessionIdContext, expected, 'B: same, although started with another command line')
  t.equal(c?.sessionIdContext, expected, 'C: set through handoffHttpsOptions')
  t.equal(n1?.sessionIdContext, nodeDefaultContext([process.execPath, FIXTURE, '--n1']), 'N1: Node default, a hash of its argv')
  t.not(n1?.sessionIdContext, n2?.sessionIdContext, 'N1 and N2 (no plugin) differ')
  t.not(x?.sessionIdContext, expected, 'X (other secret) has another context')
  t.match(A.stderr(), /gave the TLS server the cluster session id context/)
  t.equal(a?.metrics.ticketKeyEpoch, b?.metrics.ticketKeyEpoch, 'A and B use the same epoch key')
})

for (const mode of MODES) {
  t.test(`${mode}: a Node client's session from A resumes on B`, async t => {
    const first = await visit(A.port, { mode })
    t.equal(first.reused, false, 'first visit: full handshake')
    t.equal(first.protocol, mode === 'tls13' ? 'TLSv1.3' : 'TLSv1.2')
    t.ok(first.session, 'the client got a session')
    const second = await visit(B.port, { mode, session: first.session })
    t.equal(second.reused, true, 'B resumed the session A issued')
    t.equal(second.body?.resumed, true, 'request.tlsResumed is true on B')
    t.equal(second.body?.pid, B.pid)
    const third = await visit(A.port, { mode, session: second.session ?? first.session })
    t.equal(third.reused, true, 'and back on A')
  })

  t.test(`${mode}: openssl s_client -sess_out on A, -sess_in on B reports "Reused,"`, async t => {
    const file = join(tmp, `sess-${mode}.pem`)
    const a = sClient(A.port, mode, { out: file })
    t.equal(a.reused, false, 'A: New')
    const b = sClient(B.port, mode, { in: file })
    t.equal(b.reused, true, 'B: Reused')
    t.match(b.output, /"resumed":true/, 'and the application saw it')
  })
}

t.test('session cache: TLS 1.2 sessions are stored, TLS 1.3 ones skipped, hits counted', async t => {
  const [a, b] = await Promise.all([A.status(), B.status()])
  t.ok((a.metrics.cacheWrites ?? 0) >= 2, `A stored the no-ticket sessions (${String(a.metrics.cacheWrites)})`)
  // TLS 1.3 sessions are never stored: since the ClientHello peek, TLS 1.3 connections run without session
  // callbacks, so none even reaches newSession (before it, each was handed over and skipped: cacheSkipped >= 2).
  t.ok((a.metrics.cacheLookupsSkipped ?? 0) >= 2, `A recognised the TLS 1.3 connections (${String(a.metrics.cacheLookupsSkipped)})`)
  t.equal(a.metrics.cacheSkipped, 0, 'no TLS 1.3 session reached newSession')
  t.ok((b.metrics.cacheHits ?? 0) >= 2, `B answered from the cache (${String(b.metrics.cacheHits)})`)
  // TLS 1.3 ClientHellos (random legacy ids) were recognised before TLS started: no lookup for them.
  t.ok((b.metrics.cacheLookupsSkipped ?? 0) >= 2, `B skipped the TLS 1.3 lookups (${String(b.metrics.cacheLookupsSkipped)})`)
  t.ok((b.metrics.resumed ?? 0) >= 6, `B counted its resumed handshakes (${String(b.metrics.resumed)})`)
  t.equal(a.metrics.handshakeErrors, 0)
  t.equal(b.metrics.handshakeErrors, 0)
})

t.test('server without tickets (SSL_OP_NO_TICKET), single-use cache: resumes once on another instance, then full', async t => {
  const first = await visit(C.port, { mode: 'tls12' })
  t.equal(first.reused, false)
  const second = await visit(D.port, { mode: 'tls12', session: first.session })
  t.equal(second.reused, true, 'D resumed C\'s session from the shared cache')
  const third = await visit(C.port, { mode: 'tls12', session: first.session })
  t.equal(third.reused, false, 'the same session again: it was taken, so a full handshake (no error)')
  const file = join(tmp, 'sess-noticket.pem')
  t.equal(sClient(C.port, 'tls12', { out: file }).reused, false)
  t.equal(sClient(D.port, 'tls12', { in: file }).reused, true, 's_client without -no_ticket: Reused through the cache')
  const d = await D.status()
  t.equal(d.metrics.handshakeErrors, 0)
})

t.test('negative control: without the plugin (Node defaults) no session resumes on another instance', async t => {
  for (const mode of MODES) {
    const first = await visit(N1.port, { mode })
    const same = await visit(N1.port, { mode, session: first.session })
    const other = await visit(N2.port, { mode, session: first.session })
    t.equal(other.reused, false, `${mode}: N2 does not resume N1's session`)
    if (mode !== 'tls12-no-ticket') t.equal(same.reused, true, `${mode}: (N1 itself does, so the client side is right)`)
  }
  const file = join(tmp, 'sess-n.pem')
  sClient(N1.port, 'tls13', { out: file })
  t.equal(sClient(N2.port, 'tls13', { in: file }).reused, false, 's_client: New on N2')
})

t.test('another cluster secret: no resumption either way, no error, no harm to the cluster', async t => {
  for (const mode of MODES) {
    const fromA = await visit(A.port, { mode })
    const onX = await visit(X.port, { mode, session: fromA.session })
    t.equal(onX.reused, false, `${mode}: X does not resume A's session`)
    t.equal(onX.body?.pid, X.pid, 'X answered the request')
    const fromX = await visit(X.port, { mode })
    t.equal((await visit(A.port, { mode, session: fromX.session })).reused, false, `${mode}: A does not resume X's session`)
  }
  const x = await X.status()
  t.equal(x.metrics.handshakeErrors, 0, 'X: no failed handshake')
  t.not(x.metrics.ticketKeyEpoch, null, 'X runs on its own cluster\'s shared key (separate namespace), not a broken one')
  const fromA = await visit(A.port)
  t.equal((await visit(B.port, { session: fromA.session })).reused, true, 'A and B still resume each other')
})

t.test('certificate reload (setSecureContext) keeps the shared key and context', async t => {
  const r = await A.reload()
  t.equal(r.ok, true, `reloaded ${r.error ?? ''}`)
  const a = await A.status()
  t.equal(a.sessionIdContext, sessionIdContextFor(DEFAULT_TEST_SECRET), 'context survived the reload')
  const fromB = await visit(B.port)
  t.equal((await visit(A.port, { session: fromB.session })).reused, true, 'A resumes B\'s ticket after its reload')
  const fromA = await visit(A.port)
  t.equal((await visit(B.port, { session: fromA.session })).reused, true, 'B resumes A\'s new ticket')
})

// ---------------------------------------------------------------------------------------------------------------
// Rotation and failure (short epochs)

function ticketKeyName (epoch: number, secret = DEFAULT_TEST_SECRET): string {
  const ring = new KeyRing(secret)
  const id = `tls-ticket-epoch-${epoch}-${ring.ids[ring.ids.length - 1] ?? ''}`
  return entryKey(PREFIX, partitionOf(id, 1024), id, 'ticketkey')
}

/** Waits until `offset` ms into the next epoch. */
async function untilEpochOffset (offset: number): Promise<number> {
  const now = Date.now()
  const next = Math.floor(now / PERIOD) + 1
  await elapse(next * PERIOD + offset - now)
  return next
}

t.test('rotation: all instances switch together at the boundary; old tickets fall back to a full handshake', async t => {
  const e = await untilEpochOffset(150)
  const [s1, s2] = await Promise.all([R1.status(), R2.status()])
  t.equal(s1.metrics.ticketKeyEpoch, e, 'R1 on the epoch key')
  t.equal(s2.metrics.ticketKeyEpoch, e, 'R2 on the same epoch')
  const old = await visit(R1.port)
  t.equal((await visit(R2.port, { session: old.session })).reused, true, 'within the epoch, R2 resumes R1\'s ticket')
  t.equal(redis.cli('HEXISTS', ticketKeyName(e), 'd'), '1', 'the epoch key is in Redis')

  await untilEpochOffset(SKEW + 400)
  const [a1, a2] = await Promise.all([R1.status(), R2.status()])
  t.equal(a1.metrics.ticketKeyEpoch, e + 1, 'R1 switched')
  t.equal(a2.metrics.ticketKeyEpoch, e + 1, 'R2 switched')
  const boundary = (e + 1) * PERIOD
  const at1 = a1.metrics.ticketKeyAppliedAt ?? 0
  const at2 = a2.metrics.ticketKeyAppliedAt ?? 0
  // Timers, not polling: typically a few ms. The bound (half a period) is what a loaded 2-core machine allows and
  // still tells "at the boundary" from "a period late".
  t.ok(at1 >= boundary && at1 - boundary < PERIOD / 2, `R1 switched ${at1 - boundary} ms after the boundary`)
  t.ok(at2 >= boundary && at2 - boundary < PERIOD / 2, `R2 switched ${at2 - boundary} ms after the boundary`)
  t.ok(Math.abs(at1 - at2) < PERIOD / 2, `instances switched ${Math.abs(at1 - at2)} ms apart`)
  t.ok((a1.metrics.keyRotations ?? 0) >= 1 && (a2.metrics.keyRotations ?? 0) >= 1, 'rotations counted')

  const stale = await visit(R2.port, { session: old.session })
  t.equal(stale.reused, false, 'a ticket of the retired key: full handshake')
  t.equal(stale.body?.pid, R2.pid, 'and the request was answered')
  const fresh = await visit(R2.port)
  t.equal((await visit(R1.port, { session: fresh.session })).reused, true, 'a new ticket resumes across instances again')
  const file = join(tmp, 'sess-rot.pem')
  sClient(R1.port, 'tls13', { out: file })
  t.equal(sClient(R2.port, 'tls13', { in: file }).reused, true, 's_client: Reused after the rotation')
  t.equal(redis.cli('HEXISTS', ticketKeyName(e), 'd'), '0', 'the retired key was deleted from Redis (forward secrecy)')
  const [b1, b2] = await Promise.all([R1.status(), R2.status()])
  t.equal(b1.metrics.handshakeErrors, 0, 'R1: no failed handshake')
  t.equal(b2.metrics.handshakeErrors, 0, 'R2: no failed handshake')
})

t.test('ticket keys never reach a log line', async t => {
  const repository = new RedisRepository({ url: redis.url })
  const store = new TieredStore({ repository, secret: DEFAULT_TEST_SECRET, prefix: PREFIX, coherence: false })
  await store.start()
  t.teardown(async () => { await store.close(); await repository.close() })
  const e = Math.floor(Date.now() / PERIOD)
  const entry = await store.get(ticketKeyName(e))
  const b64 = (entry?.value as { key?: string } | undefined)?.key
  t.type(b64, 'string', 'read the current key with the cluster secret')
  const bytes = Buffer.from(b64 ?? '', 'base64')
  for (const i of [A, B, R1, R2]) {
    const log = i.stderr()
    for (const form of [bytes.toString('base64'), bytes.toString('hex'), bytes.subarray(16, 32).toString('hex'), bytes.subarray(32).toString('base64')]) {
      t.notOk(log.includes(form), `${i.name}: key material not in its log`)
    }
  }
})

t.test('Redis down: TLS keeps working on the current key, lookups fall back fast, nothing hangs', { skip: !redis.controllable && 'REDIS_URL server cannot be killed' }, async t => {
  // Frozen first (SIGSTOP): commands hang rather than fail, so the lookup timeout is what bounds the handshake.
  const writesBefore = (await A.status()).metrics.cacheWrites ?? 0
  const fresh = await visit(A.port, { mode: 'tls12-no-ticket' })
  t.ok(await waitFor(async () => ((await A.status()).metrics.cacheWrites ?? 0) > writesBefore), 'the write behind the handshake is done')
  const timeoutsBefore = (await B.status()).metrics.cacheTimeouts ?? 0
  redis.pause()
  try {
    const frozen = await visit(B.port, { mode: 'tls12-no-ticket', session: fresh.session })
    t.equal(frozen.reused, false, 'Redis frozen: the lookup times out, full handshake')
    // The timeout counted below is the evidence; the bound only tells a bounded handshake from one hung for the freeze.
    t.ok(frozen.ms < 3000, `bounded by sessionLookupTimeoutMs: ${Math.round(frozen.ms)} ms`)
    t.equal((await B.status()).metrics.cacheTimeouts, timeoutsBefore + 1, 'counted as a timeout')
    const fromA = await visit(A.port)
    t.equal((await visit(B.port, { session: fromA.session })).reused, true, 'tickets resume meanwhile')
  } finally {
    redis.resume()
  }

  // Kill Redis before R1/R2 prepare the next epoch's key (boundary - lead), so that they cannot have it.
  if (Date.now() % PERIOD > 1500) await untilEpochOffset(100)
  const beforeA = await visit(A.port, { mode: 'tls12-no-ticket' })
  const ticket = await visit(A.port)
  const r1Epoch = (await R1.status()).metrics.ticketKeyEpoch
  const logFrom = new Map([R1, R2].map(i => [i, i.stderr().length]))
  await redis.kill()

  const full = await visit(A.port)
  t.equal(full.body?.pid, A.pid, 'a new client is served')
  t.ok(full.ms < 4000, `in ${Math.round(full.ms)} ms`)
  const resumed = await visit(B.port, { session: ticket.session })
  t.equal(resumed.reused, true, 'a ticket from A still resumes on B (keys are in memory)')
  const cached = await visit(B.port, { mode: 'tls12-no-ticket', session: beforeA.session })
  t.equal(cached.reused, false, 'a session-cache lookup cannot reach Redis: full handshake, not an error')
  t.ok(cached.ms < 4000, `bounded: ${Math.round(cached.ms)} ms`)
  const newSession = await visit(A.port, { mode: 'tls12-no-ticket' })
  t.equal(newSession.body?.pid, A.pid, 'a new TLS 1.2 session is served although it cannot be stored')

  // R1/R2 cross an epoch boundary with Redis down: both keep the current key, so they still resume each other.
  await untilEpochOffset(SKEW + 600)
  const [s1, s2] = await Promise.all([R1.status(), R2.status()])
  t.equal(s1.metrics.ticketKeyEpoch, r1Epoch, 'R1 kept its key past the boundary')
  t.equal(s2.metrics.ticketKeyEpoch, r1Epoch, 'R2 too')
  const fromR1 = await visit(R1.port)
  t.equal((await visit(R2.port, { session: fromR1.session })).reused, true, 'and they still resume each other')
  for (const i of [R1, R2]) {
    const warnings = i.stderr().slice(logFrom.get(i)).split('\n').filter(l => l.includes('TLS ticket keys unreachable'))
    t.equal(warnings.length, 1, `${i.name}: logged once`)
  }
  const [a, b] = await Promise.all([A.status(), B.status()])
  t.equal(a.metrics.handshakeErrors, 0, 'A: no failed handshake')
  t.equal(b.metrics.handshakeErrors, 0, 'B: no failed handshake')
  t.ok((b.metrics.cacheErrors ?? 0) + (b.metrics.cacheTimeouts ?? 0) >= 1, 'B counted the failed lookup')
  t.ok((a.metrics.cacheWriteErrors ?? 0) >= 1, 'A counted the failed write')

  const stopStart = Date.now()
  await X.stop()
  // Below the 5 s after which stop() would SIGKILL it: it closed by itself.
  t.ok(Date.now() - stopStart < 4500, `an instance closes in ${Date.now() - stopStart} ms with Redis down`)

  // Recovery: Redis comes back empty; the instances create and share the next key again.
  await redis.restart()
  const recovered = await waitFor(async () => {
    const [x1, x2] = await Promise.all([R1.status(), R2.status()])
    return x1.metrics.ticketKeyEpoch !== r1Epoch && x1.metrics.ticketKeyEpoch === x2.metrics.ticketKeyEpoch &&
      x1.metrics.ticketKeyEpoch === Math.floor(Date.now() / PERIOD)
  }, { timeoutMs: 3 * PERIOD, intervalMs: 200 })
  t.ok(recovered, 'after Redis is back, both moved to the current epoch\'s shared key')
  const again = await visit(R1.port)
  t.equal((await visit(R2.port, { session: again.session })).reused, true, 'and resume each other on it')
})

t.test('every instance stops promptly', async t => {
  const start = Date.now()
  await Promise.all(everyone.map(async i => await i.stop()))
  t.ok(Date.now() - start < 6000, `all stopped in ${Date.now() - start} ms`)
  t.equal(runningInstances(), 0, 'no child process left')
})

// ---------------------------------------------------------------------------------------------------------------
// Registration checks, in process (embedded repository)

const SECRET = DEFAULT_TEST_SECRET
const tlsFiles = { key: certs.rsa.key, cert: certs.rsa.cert }

t.test('registration refuses a plain HTTP server', async t => {
  const app = Fastify()
  await app.register(handoffStore, { secret: SECRET })
  await t.rejects(async () => { await app.register(tlsSessions); await app.ready() }, { code: 'FST_HANDOFF_INVALID_OPTION', message: /needs an HTTPS server.*`https` option/ })
  await app.close()
})

t.test('registration refuses an https.sessionIdContext other than the cluster\'s', async t => {
  const app = Fastify({ https: { ...tlsFiles, sessionIdContext: 'something-else' } })
  await app.register(handoffStore, { secret: SECRET })
  await t.rejects(async () => { await app.register(tlsSessions); await app.ready() }, { code: 'FST_HANDOFF_INVALID_OPTION', message: /differs.*handoffHttpsOptions/ })
  await app.close()
})

t.test('applySessionIdContext: false refuses Node\'s per-process default, naming the fix', async t => {
  const app = Fastify({ https: tlsFiles })
  await app.register(handoffStore, { secret: SECRET })
  await t.rejects(async () => { await app.register(tlsSessions, { applySessionIdContext: false }); await app.ready() }, { message: /hash of process\.argv.*handoffHttpsOptions/ })
  await app.close()
})

t.test('an explicit shared context given to both https and the plugin is accepted', async t => {
  const app = Fastify({ https: { ...tlsFiles, sessionIdContext: 'my-cluster' } })
  await app.register(handoffStore, { secret: SECRET })
  await app.register(tlsSessions, { sessionIdContext: 'my-cluster', applySessionIdContext: false })
  await app.ready()
  t.equal((app.server as unknown as { sessionIdContext: string }).sessionIdContext, 'my-cluster')
  t.throws(() => { (app.server as unknown as tls.Server).setSecureContext({ ...tlsFiles, sessionIdContext: 'other' }) },
    { code: 'FST_HANDOFF_INVALID_OPTION' }, 'a reload with another context is refused')
  await app.close()
})

t.test('options are checked with precise messages', async t => {
  const cases: Array<[TlsSessionsOptions, RegExp]> = [
    [{ ticketKeyPeriodMs: 10 }, /ticketKeyPeriodMs.*between 1000/],
    [{ ticketKeyPeriodMs: 4000, maxClockSkewMs: 2000 }, /maxClockSkewMs.*between 0 and 1000/],
    [{ sessionLookupTimeoutMs: 0 }, /sessionLookupTimeoutMs/],
    [{ singleUse: true }, /singleUse.*sessionCache: true/],
    [{ sessionCache: 'yes' as unknown as boolean }, /sessionCache.*true or false/],
    [{ sessionIdContext: 'x'.repeat(33) }, /sessionIdContext.*1 to 32/],
    [{ sesionCache: true } as unknown as TlsSessionsOptions, /sesionCache.*did you mean "sessionCache"/]
  ]
  for (const [opts, re] of cases) {
    const app = Fastify({ https: tlsFiles })
    await app.register(handoffStore, { secret: SECRET })
    await t.rejects(async () => { await app.register(tlsSessions, opts); await app.ready() }, { code: 'FST_HANDOFF_INVALID_OPTION', message: re }, JSON.stringify(opts))
    await app.close()
  }
})

t.test('re-creating the secure context keeps the other options (minVersion) and defaults are in force', async t => {
  const app = Fastify({ https: { ...tlsFiles, minVersion: 'TLSv1.3' } })
  await app.register(handoffStore, { secret: SECRET })
  await app.register(tlsSessions)
  app.get('/tls', async req => ({ resumed: req.tlsResumed, pid: process.pid }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  const port = (app.server.address() as { port: number }).port
  t.equal((app.server as unknown as { sessionIdContext: string }).sessionIdContext, sessionIdContextFor(SECRET))
  await t.rejects(visit(port, { mode: 'tls12' }), /version|protocol/i, 'TLS 1.2 still refused')
  const first = await visit(port)
  t.equal((await visit(port, { session: first.session })).body?.resumed, true, 'TLS 1.3 resumes')
  t.same(app.handoffTls.options, {
    ticketKeyPeriodMs: 43_200_000,
    maxClockSkewMs: 5000,
    ticketKeyCheckMs: 60_000,
    sessionIdContext: sessionIdContextFor(SECRET),
    applySessionIdContext: true,
    sessionCache: false,
    sessionLookupTimeoutMs: 50,
    singleUse: false,
    ticketRenewal: true
  })
  t.equal(app.handoffTls.metrics.handshakeErrors, 1, 'the refused TLS 1.2 client counted as a failed handshake')
  t.equal(app.handoffTls.metrics.resumed, 1)
})

t.test('handoffHttpsOptions fills in the context and refuses a conflicting one', async t => {
  const o = handoffHttpsOptions({ ...tlsFiles, minVersion: 'TLSv1.2' as const }, { secret: SECRET })
  t.equal(o.sessionIdContext, sessionIdContextFor(SECRET))
  t.equal(o.minVersion, 'TLSv1.2')
  t.match(o.sessionIdContext, /^[0-9a-f]{32}$/)
  t.not(sessionIdContextFor(OTHER_SECRET), o.sessionIdContext)
  t.equal(sessionIdContextFor([{ id: 'new', secret: OTHER_SECRET }, { id: 'old', secret: SECRET }]),
    sessionIdContextFor([{ id: 'old', secret: SECRET }]), 'putting a new secret in front keeps the context')
  t.throws(() => handoffHttpsOptions({ sessionIdContext: 'x' }, { secret: SECRET }), { code: 'FST_HANDOFF_INVALID_OPTION' })
})

t.test('request.tlsResumed under HTTP/2', async t => {
  const app = Fastify({ http2: true, https: handoffHttpsOptions({ ...tlsFiles, allowHTTP1: false }, { secret: SECRET }) })
  await app.register(handoffStore, { secret: SECRET })
  await app.register(tlsSessions)
  app.get('/tls', async req => ({ resumed: req.tlsResumed }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  const url = `https://localhost:${(app.server.address() as { port: number }).port}`
  const get = async (session?: Buffer): Promise<{ resumed: boolean, session: Buffer | undefined }> => await new Promise((resolve, reject) => {
    let got: Buffer | undefined
    const client = http2.connect(url, { ca: certs.ca, ...(session === undefined ? {} : { session }) })
    client.socket?.on('session', (s: Buffer) => { got ??= s })
    client.on('error', reject)
    const req = client.request({ ':path': '/tls' })
    let body = ''
    req.on('data', d => { body += String(d) })
    req.on('end', () => {
      client.close()
      // Tickets arrive after the handshake; give them a moment.
      setTimeout(() => resolve({ ...(JSON.parse(body) as { resumed: boolean }), session: got }), 50)
    })
    req.on('error', reject)
    req.end()
  })
  const first = await get()
  t.equal(first.resumed, false)
  t.ok(first.session)
  t.equal((await get(first.session)).resumed, true)
})

t.test('sessionProtocolVersion reads the version of a DER session', async t => {
  t.equal(sessionProtocolVersion(Buffer.from('30819f020101020203040402', 'hex')), 0x0304)
  t.equal(sessionProtocolVersion(Buffer.from('30819b020101020203030402', 'hex')), 0x0303)
  t.equal(sessionProtocolVersion(Buffer.from('3003020101', 'hex')), undefined)
  t.equal(sessionProtocolVersion(Buffer.alloc(0)), undefined)
})
