/**
 * Ticket renewal (issue 16): after every resumed handshake the server issues a new ticket, so a client that uses
 * each ticket once (as browsers do, RFC 8446 C.4) resumes on every reconnect, across instances. Real processes
 * (scripts/tls-instance.ts) on one private redis-server; the control group runs with `ticketRenewal: false`, which
 * is also what the plugin falls back to where Node lacks the ticket-key callback. Only Node 20 is installed here,
 * the lowest version `engines` allows; the callback is feature-detected on every version.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { testCerts } from '../../scripts/certs.js'
import { startRedis } from '../../scripts/redis-server.js'
import { runningInstances, spawnTlsInstance, type InstanceConfig, type TlsInstance } from '../../scripts/tls-instance.js'
import { sClient, visit, type TlsMode } from '../helpers/tls-clients.js'

// Instance processes start slowly on a loaded 2-core machine (tsx compiles each); every loop below is bounded.
t.setTimeout(300_000)
const certs = testCerts()
const tmp = mkdtempSync(join(tmpdir(), 'handoff-tls-renewal-'))
process.on('exit', () => { rmSync(tmp, { recursive: true, force: true }) })
const redis = await startRedis({ private: true })
t.teardown(async () => { await redis.stop() })

const base: InstanceConfig = { keyPath: certs.rsa.keyPath, certPath: certs.rsa.certPath, redisUrl: redis.url, prefix: `tlsrenew${process.pid}:` }
const noRenewal: InstanceConfig = { ...base, tlsSessions: { ticketRenewal: false } }
const all = await Promise.all([
  spawnTlsInstance('A', base, ['--a']),
  spawnTlsInstance('B', base, ['--b']),
  spawnTlsInstance('C', base, ['--c']),
  spawnTlsInstance('F1', noRenewal, ['--f1']),
  spawnTlsInstance('F2', noRenewal, ['--f2'])
])
const [A, B, C, F1, F2] = all as [TlsInstance, TlsInstance, TlsInstance, TlsInstance, TlsInstance]
t.teardown(async () => { await Promise.all(all.map(async i => await i.stop())) })

const RECONNECTS = 30

/**
 * A single-use client: each connection offers the newest ticket it holds and then forgets it, round-robin over
 * `fleet`. Returns the pattern (R resumed, F full) and how many tickets resumed connections brought.
 */
async function singleUse (fleet: TlsInstance[], mode: TlsMode = 'tls13'): Promise<{ pattern: string, resumed: number, ticketsAfterResume: number }> {
  let ticket: Buffer | undefined
  let pattern = ''
  let ticketsAfterResume = 0
  for (let i = 0; i < RECONNECTS; i++) {
    const v = await visit((fleet[i % fleet.length] as TlsInstance).port, certs.ca, { mode, session: ticket })
    pattern += v.reused ? 'R' : 'F'
    if (v.reused) ticketsAfterResume += v.tickets
    ticket = v.session // undefined when the server sent none: the used ticket is not offered again
  }
  return { pattern, resumed: pattern.split('R').length - 1, ticketsAfterResume }
}

t.test('renewal is active where the callback exists, off in the control group', async t => {
  const [a, f] = await Promise.all([A.status(), F1.status()])
  t.equal(a.metrics.ticketRenewalActive, 1, 'A renews')
  t.equal(f.metrics.ticketRenewalActive, 0, 'F1 (ticketRenewal: false) does not')
  t.equal(a.metrics.ticketKeyId, f.metrics.ticketKeyId, 'same cluster key on both paths')
})

t.test('TLS 1.3, single-use client round-robin over 3 instances: resumes every reconnect with renewal', async t => {
  const r = await singleUse([A, B, C])
  t.equal(r.pattern, 'F' + 'R'.repeat(RECONNECTS - 1), `renewal: ${r.pattern}`)
  t.ok(r.ticketsAfterResume >= RECONNECTS - 1, `a new ticket after each resumption (${r.ticketsAfterResume})`)
  const control = await singleUse([F1, F2])
  t.ok(control.resumed <= Math.ceil(RECONNECTS / 2), `without renewal: ${control.pattern} (every other one, as Node by itself)`)
  t.equal(control.ticketsAfterResume, 0, 'no ticket after a resumption without renewal')
  const s = await Promise.all([A, B, C].map(async i => await i.status()))
  t.ok(s.reduce((n, x) => n + Number(x.metrics.ticketsRenewed ?? 0), 0) >= RECONNECTS - 1, 'counted as renewed')
})

t.test('openssl s_client -msg: a NewSessionTicket after a resumed handshake with renewal, none without (TLS 1.2 and 1.3)', async t => {
  // Node's client emits no 'session' event for a TLS 1.2 resumption, so the server's messages are read off the wire.
  for (const mode of ['tls12', 'tls13'] as const) {
    for (const [i, expected] of [[A, 1], [F1, 0]] as const) {
      const file = join(tmp, `msg-${mode}-${i.name}.pem`)
      sClient(B.port, certs.caPath, mode, { out: file })
      const r = sClient(i.port, certs.caPath, mode, { in: file, msg: true })
      t.equal(r.reused, true, `${mode}: ${i.name} resumed B's ticket`)
      t.equal(r.output.match(/<<< .*NewSessionTicket/g)?.length ?? 0, expected, `${mode}: ${i.name} sent ${expected} ticket(s) after the resumption`)
    }
  }
})

t.test('a mixed fleet interoperates: renewal and setTicketKeys instances resume each other\'s tickets', async t => {
  const fromF = await visit(F1.port, certs.ca)
  t.equal((await visit(A.port, certs.ca, { session: fromF.session })).reused, true, 'F1 ticket on A')
  const fromA = await visit(A.port, certs.ca)
  t.equal((await visit(F2.port, certs.ca, { session: fromA.session })).reused, true, 'A ticket on F2')
  const renewed = await visit(B.port, certs.ca, { session: fromA.session })
  t.equal(renewed.reused, true)
  t.equal((await visit(F1.port, certs.ca, { session: renewed.session })).reused, true, 'a renewed ticket (from B) on F1')
})

t.test('certificate reload (setSecureContext) keeps renewal and the shared key', async t => {
  const r = await A.reload()
  t.equal(r.ok, true, r.error ?? 'reloaded')
  t.equal((await A.status()).metrics.ticketRenewalActive, 1, 'still active on the new context')
  const first = await visit(B.port, certs.ca)
  const onA = await visit(A.port, certs.ca, { session: first.session })
  t.equal(onA.reused, true, 'A resumes B\'s ticket after its reload')
  t.ok(onA.tickets >= 1, 'and renews it')
  t.equal((await visit(C.port, certs.ca, { session: onA.session })).reused, true, 'the renewed ticket resumes on C')
})

t.test('a ticket from another cluster is refused quietly (full handshake, counted)', async t => {
  const other = await spawnTlsInstance('X', { ...base, secret: 'another cluster secret, 32 bytes or more' }, ['--x'])
  t.teardown(async () => { await other.stop() })
  const fromX = await visit(other.port, certs.ca)
  const before = (await A.status()).metrics.ticketsUnknownKey ?? 0
  const v = await visit(A.port, certs.ca, { session: fromX.session })
  t.equal(v.reused, false)
  t.equal(v.body?.pid, A.pid, 'served')
  const a = await A.status()
  t.equal(a.metrics.ticketsUnknownKey, Number(before) + 1, 'counted')
  t.equal(a.metrics.handshakeErrors, 0, 'not an error')
})

t.test('every instance stops', async t => {
  await Promise.all(all.map(async i => await i.stop()))
  t.equal(runningInstances(), 0)
})
