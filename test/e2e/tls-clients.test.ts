/**
 * Real clients through a real balancer (issue 16): three instance processes (scripts/tls-instance.ts, session cache
 * on, as the example runs) behind HAProxy in TCP round-robin; each client makes RECONNECTS connections in a row, and
 * the servers say which were resumed. Targets: single-use-ticket clients (curl with many URLs and `Connection:
 * close`, Chromium, s_client offering the newest ticket) and TLS 1.2 session-id clients resume >= 95% of reconnects;
 * clients that reuse a ticket resume 100%.
 *
 * HAProxy missing: skipped with one line, unless CI is set (.ci/run installs it), where that is a failure. The same
 * for Chromium (HANDOFF_SKIP_BROWSER=1 skips it explicitly, as in the checkout test).
 */
import { existsSync } from 'node:fs'
import t, { type Test } from 'tap'
import { testCerts } from '../../scripts/certs.js'
import { startRedis } from '../../scripts/redis-server.js'
import { runningInstances, spawnTlsInstance, type TlsInstance } from '../../scripts/tls-instance.js'
import { chromiumPath, chromiumRun, curlRun, haproxyAvailable, sClientRun, startHaproxy, type ClientRun } from '../helpers/real-clients.js'

const RECONNECTS = 40
const ci = process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false'

if (!haproxyAvailable()) {
  if (ci) {
    t.fail('haproxy is not installed: .ci/run installs Debian\'s haproxy package; this test needs it under CI')
  } else {
    console.log('# tls-clients: haproxy not installed (apt-get install haproxy); skipping the real-balancer client test')
    t.pass('skipped: no haproxy')
  }
} else {
  // Instance processes start slowly on a loaded 2-core machine; every loop below is bounded.
  t.setTimeout(400_000)
  const certs = testCerts()
  const redis = await startRedis({ private: true })
  t.teardown(async () => { await redis.stop() })
  const cfg = {
    keyPath: certs.rsa.keyPath,
    certPath: certs.rsa.certPath,
    redisUrl: redis.url,
    prefix: `tlsclients${process.pid}:`,
    logLevel: 'warn',
    tlsSessions: { sessionCache: true }
  }
  const fleet: TlsInstance[] = await Promise.all(['A', 'B', 'C'].map(async n => await spawnTlsInstance(n, cfg, [`--${n}`])))
  t.teardown(async () => { await Promise.all(fleet.map(async i => await i.stop())) })
  const lb = await startHaproxy(fleet.map(i => i.port))
  t.teardown(async () => { await lb.stop() })
  const target = { port: lb.port, caPath: certs.caPath }
  // startHaproxy's readiness probe opens and drops a connection, which an instance counts as a failed handshake.
  await new Promise(resolve => setTimeout(resolve, 200))
  const errorsBefore = await Promise.all(fleet.map(async i => Number((await i.status()).metrics.handshakeErrors ?? 0)))

  const check = (t: Test, label: string, r: ClientRun, min: number): void => {
    t.equal(r.connections, RECONNECTS, `${label}: ${RECONNECTS} connections`)
    t.ok(r.rate >= min, `${label}: ${r.resumed}/${r.connections - 1} reconnects resumed (${(r.rate * 100).toFixed(1)}%, target ${min * 100}%): ${r.pattern}`)
  }

  t.test('the balancer spreads connections over all three instances', async t => {
    const before = await Promise.all(fleet.map(async i => Number((await i.status()).metrics.handshakes ?? 0)))
    curlRun(target, 6)
    const after = await Promise.all(fleet.map(async i => Number((await i.status()).metrics.handshakes ?? 0)))
    t.same(after.map((x, i) => x - (before[i] ?? 0)), [2, 2, 2], 'two handshakes each')
  })

  t.test('curl, TLS 1.3, many URLs with Connection: close (single-use tickets): >= 95%', async t => {
    check(t, 'curl TLS 1.3', curlRun(target, RECONNECTS), 0.95)
  })

  t.test('openssl s_client, TLS 1.3, each connection offers the newest ticket (single-use): >= 95%', async t => {
    check(t, 's_client single-use', sClientRun(target, RECONNECTS, { reuse: false }), 0.95)
  })

  t.test('openssl s_client, TLS 1.3, reusing its first ticket: 100%', async t => {
    check(t, 's_client reuse', sClientRun(target, RECONNECTS, { reuse: true }), 1)
  })

  t.test('curl, TLS 1.2 (session ids: curl sends no ticket extension): >= 95%', async t => {
    check(t, 'curl TLS 1.2', curlRun(target, RECONNECTS, { tls12: true }), 0.95)
  })

  t.test('openssl s_client, TLS 1.2 -no_ticket (session id): >= 95%', async t => {
    check(t, 's_client TLS 1.2 -no_ticket', sClientRun(target, RECONNECTS, { tls12: true, noTicket: true, reuse: true }), 0.95)
  })

  t.test('no handshake failed so far (the browser, next, may abandon speculative connections)', async t => {
    const s = await Promise.all(fleet.map(async i => await i.status()))
    t.same(s.map((x, i) => Number(x.metrics.handshakeErrors ?? 0) - (errorsBefore[i] ?? 0)), [0, 0, 0])
  })

  const noBrowser = process.env.HANDOFF_SKIP_BROWSER === '1'
    ? 'HANDOFF_SKIP_BROWSER=1'
    : !existsSync(chromiumPath()) && !ci ? `no chromium at ${chromiumPath()}` : false
  t.test('Chromium (playwright-core), a new connection per fetch: >= 95%', { skip: noBrowser }, async t => {
    if (!existsSync(chromiumPath())) { t.fail(`chromium not found at ${chromiumPath()} (.ci/run installs Debian's chromium)`); return }
    check(t, 'Chromium', await chromiumRun({ ...target, certPath: certs.rsa.certPath }, RECONNECTS), 0.95)
  })

  t.test('every process stops', async t => {
    await lb.stop()
    await Promise.all(fleet.map(async i => await i.stop()))
    t.equal(runningInstances(), 0)
  })
}
