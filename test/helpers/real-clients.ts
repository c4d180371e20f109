/**
 * Real TLS clients against a balancer in front of scripts/tls-instance.ts processes, each making `n` connections in
 * a row to `GET /tls?close=1` (the instance answers `Connection: close`, so every request is a new TLS connection).
 * Resumption is counted server-side: each response says whether its connection was resumed
 * (`socket.isSessionReused()`). Shared by test/e2e/tls-clients.test.ts and bench/tls.ts. Also starts HAProxy (TCP
 * round-robin) on loopback. Every process started here is stopped by its PID; every loop is bounded.
 */
import { spawn, spawnSync } from 'node:child_process'
import { createHash, X509Certificate } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import net from 'node:net'
import { chromium } from 'playwright-core'

export interface ClientRun {
  /** One letter per connection: R resumed, F full (as the server saw it). */
  pattern: string
  connections: number
  /** Resumed connections among the reconnects (every connection after the first). */
  resumed: number
  /** resumed / (connections - 1). */
  rate: number
}

function run (pattern: string): ClientRun {
  const resumed = pattern.slice(1).split('R').length - 1
  return { pattern, connections: pattern.length, resumed, rate: pattern.length > 1 ? resumed / (pattern.length - 1) : 0 }
}

/** The `"resumed":true|false` of each JSON body in `text`, in order. */
function patternOf (text: string): string {
  return [...text.matchAll(/"resumed":(true|false)/g)].map(m => m[1] === 'true' ? 'R' : 'F').join('')
}

export interface Target { port: number, caPath: string }

/**
 * curl with `n` URLs in one invocation and `Connection: close`: one new connection per URL, each offering the
 * session curl got last (curl keeps sessions within one invocation only). TLS 1.3: curl uses each ticket once.
 * `tls12`: TLS 1.2 only; curl's OpenSSL backend sends no ticket extension then, so it resumes by session id.
 */
export function curlRun (target: Target, n: number, opts: { tls12?: boolean } = {}): ClientRun {
  const url = `https://localhost:${target.port}/tls?close=1`
  const args = ['-s', '--cacert', target.caPath, '--resolve', `localhost:${target.port}:127.0.0.1`, '-H', 'Connection: close',
    '--max-time', '60', ...(opts.tls12 === true ? ['--tlsv1.2', '--tls-max', '1.2'] : ['--tlsv1.3'])]
  for (let i = 0; i < n; i++) args.push(url)
  const r = spawnSync('curl', args, { encoding: 'utf8', timeout: 90_000 })
  if (r.error !== undefined) throw r.error
  const p = patternOf(r.stdout)
  if (p.length !== n) throw new Error(`curl: ${p.length} of ${n} answers (status ${String(r.status)}): ${r.stderr.slice(-300)}`)
  return run(p)
}

/**
 * openssl s_client, one process per connection. `reuse`: every connection offers the first session (a client that
 * reuses its ticket, or a TLS 1.2 session id); otherwise each offers the one the previous connection saved (single
 * use). `noTicket`: TLS 1.2 without the ticket extension, so only the session cache can resume it.
 */
export function sClientRun (target: Target, n: number, opts: { tls12?: boolean, noTicket?: boolean, reuse: boolean }): ClientRun {
  const dir = mkdtempSync(join(tmpdir(), 'handoff-sclient-'))
  try {
    let pattern = ''
    for (let i = 0; i < n; i++) {
      const args = ['s_client', '-connect', `127.0.0.1:${target.port}`, '-servername', 'localhost', '-CAfile', target.caPath,
        '-verify_return_error', '-ign_eof', opts.tls12 === true ? '-tls1_2' : '-tls1_3', ...(opts.noTicket === true ? ['-no_ticket'] : [])]
      const first = join(dir, 's0.pem')
      if (i === 0) args.push('-sess_out', first)
      else if (opts.reuse) args.push('-sess_in', first)
      else args.push('-sess_in', join(dir, `s${i - 1}.pem`), '-sess_out', join(dir, `s${i}.pem`))
      if (i > 0 && !opts.reuse && !existsSync(join(dir, `s${i - 1}.pem`))) {
        // The previous connection left no session to offer: this one is a full handshake from scratch.
        args.splice(args.indexOf('-sess_in'), 2)
      }
      const r = spawnSync('openssl', args, { input: 'GET /tls?close=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', encoding: 'utf8', timeout: 10_000 })
      const p = patternOf(r.stdout)
      if (p.length !== 1) throw new Error(`s_client: no answer (status ${String(r.status)}): ${`${r.stdout}${r.stderr}`.slice(-300)}`)
      pattern += p
    }
    return run(pattern)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'
]

export function chromiumPath (): string {
  return process.env.CHROMIUM_PATH !== undefined && process.env.CHROMIUM_PATH !== '' ? process.env.CHROMIUM_PATH : '/usr/bin/chromium'
}

/**
 * Chromium (playwright-core): one page, `n` sequential fetches; each response carries `Connection: close`, so each
 * fetch opens a new TLS connection, offering a ticket from Chromium's session cache (used once each, RFC 8446 C.4).
 */
export async function chromiumRun (target: Target & { certPath: string }, n: number): Promise<ClientRun> {
  const profile = mkdtempSync(join(tmpdir(), 'handoff-tls-chromium-'))
  // Trust the test certificate by its key rather than ignoring errors: with ignoreHTTPSErrors Chromium first fails a
  // full handshake (alert "certificate unknown"), connects again, and keeps no session of such a connection.
  const args = [...CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${spkiHash(target.certPath)}`]
  const context = await chromium.launchPersistentContext(profile, { executablePath: chromiumPath(), args, timeout: 60_000 })
  try {
    const page = context.pages()[0] ?? await context.newPage()
    const origin = `https://localhost:${target.port}`
    await page.goto(`${origin}/tls?close=1`)
    const pattern = await page.evaluate(async (count: number) => {
      let p = ''
      for (let i = 0; i < count; i++) {
        const r = await fetch(`/tls?close=1&i=${i}`)
        p += ((await r.json()) as { resumed: boolean }).resumed ? 'R' : 'F'
      }
      return p
    }, n - 1)
    return run(patternOf(await page.content()) + pattern)
  } finally {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  }
}

/** base64 SHA-256 of a certificate's SubjectPublicKeyInfo, as Chromium's --ignore-certificate-errors-spki-list takes it. */
export function spkiHash (certPath: string): string {
  const cert = new X509Certificate(readFileSync(certPath))
  const der = cert.publicKey.export({ type: 'spki', format: 'der' })
  return createHash('sha256').update(der).digest('base64')
}

export interface Haproxy { port: number, pid: number, stop: () => Promise<void> }

/** True when the haproxy binary can be run. */
export function haproxyAvailable (): boolean {
  const r = spawnSync('haproxy', ['-v'], { encoding: 'utf8' })
  return r.error === undefined && r.status === 0
}

/** HAProxy in TCP mode, round-robin over `ports` on loopback (TLS passes through to the instances). */
export async function startHaproxy (ports: number[]): Promise<Haproxy> {
  const port = await new Promise<number>((resolve, reject) => {
    const s = net.createServer()
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)) })
    s.on('error', reject)
  })
  const dir = mkdtempSync(join(tmpdir(), 'handoff-haproxy-'))
  const cfg = join(dir, 'haproxy.cfg')
  writeFileSync(cfg, [
    'global', '  maxconn 256', '',
    'defaults', '  mode tcp', '  timeout connect 5s', '  timeout client 30s', '  timeout server 30s', '',
    'frontend tls', `  bind 127.0.0.1:${port}`, '  default_backend instances', '',
    'backend instances', '  balance roundrobin',
    ...ports.map((p, i) => `  server i${i} 127.0.0.1:${p}`), ''
  ].join('\n'))
  const child = spawn('haproxy', ['-db', '-f', cfg], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr?.on('data', d => { stderr += String(d) })
  const exited = new Promise<void>(resolve => child.once('exit', () => resolve()))
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) { child.kill('SIGTERM'); await exited }
    rmSync(dir, { recursive: true, force: true })
  }
  const deadline = Date.now() + 15_000
  for (;;) {
    const up = await new Promise<boolean>(resolve => {
      const c = net.connect(port, '127.0.0.1', () => { c.destroy(); resolve(true) })
      c.on('error', () => resolve(false))
    })
    if (up) break
    if (child.exitCode !== null || Date.now() > deadline) { await stop(); throw new Error(`haproxy did not start: ${stderr}`) }
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  return { port, pid: child.pid ?? 0, stop }
}
