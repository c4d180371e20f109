/**
 * A private HAProxy for the tests, running examples/checkout/haproxy.cfg itself with the test's ports put in (so the
 * health-check settings under test are the ones the example ships), plus an admin socket to read server states.
 * Stopped by PID.
 */
import { spawn, spawnSync } from 'node:child_process'
import { connect } from 'node:net'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export const EXAMPLE_HAPROXY_CFG = new URL('../../examples/checkout/haproxy.cfg', import.meta.url)

/** The haproxy binary's version line, or undefined when it is not installed. */
export function haproxyVersion (): string | undefined {
  const r = spawnSync('haproxy', ['-v'], { encoding: 'utf8' })
  if (r.error !== undefined || r.status !== 0) return undefined
  return r.stdout.split('\n')[0]
}

export interface HaproxyHandle {
  port: number
  /** `UP`, `DOWN`, `UP 1/2` (one failed check), `DOWN 1/2` (one passed), `MAINT`... of a server in backend `shop`. */
  serverStatus: (name: string) => Promise<string | undefined>
  stop: () => Promise<void>
}

/** The example's configuration with the frontend on `port` and its servers (8444, 8445, ... in order) on `ports`. */
export function exampleConfig (port: number, ports: number[], adminSocket: string): string {
  let cfg = readFileSync(EXAMPLE_HAPROXY_CFG, 'utf8')
  cfg = cfg.replace(/^(\s*)bind\s+\S*:8443\b/m, `$1bind 127.0.0.1:${port}`)
  ports.forEach((p, i) => { cfg = cfg.replace(new RegExp(`127\\.0\\.0\\.1:${8444 + i}\\b`), `127.0.0.1:${p}`) })
  // maxconn: the example's 20000 needs 40k file descriptors, more than a test machine's limit; 1000 is plenty here.
  cfg = cfg.replace(/^(\s*)maxconn\s+\d+/m, '$1maxconn 1000')
  // The instances these tests start do not run the proxy-protocol plugin (its own tests cover HAProxy's
  // send-proxy-v2): without it a PROXY header would open their TLS stream, so the servers get plain TCP here.
  cfg = cfg.replace(/ send-proxy-v2\b/g, '')
  return cfg.replace(/^global\s*$/m, `global\n  stats socket ${adminSocket} mode 600 level admin`)
}

async function adminCommand (socket: string, command: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    const c = connect(socket)
    let out = ''
    c.on('data', d => { out += String(d) })
    c.on('end', () => resolve(out))
    c.on('error', reject)
    c.end(`${command}\n`)
  })
}

export async function startHaproxy (port: number, ports: number[]): Promise<HaproxyHandle> {
  const dir = mkdtempSync(join(tmpdir(), 'handoff-haproxy-'))
  const socket = join(dir, 'admin.sock')
  const cfgPath = join(dir, 'haproxy.cfg')
  writeFileSync(cfgPath, exampleConfig(port, ports, socket))
  const check = spawnSync('haproxy', ['-c', '-q', '-f', cfgPath], { encoding: 'utf8' })
  if (check.status !== 0) throw new Error(`haproxy refused the configuration: ${check.stderr}${check.stdout}`)
  // -db: foreground, no daemon; killed by PID (here and on exit of the test process).
  const child = spawn('haproxy', ['-db', '-f', cfgPath], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', d => { stderr += String(d) })
  const killOnExit = (): void => { try { child.kill('SIGKILL') } catch {} }
  process.on('exit', killOnExit)
  const serverStatus = async (name: string): Promise<string | undefined> => {
    const csv = (await adminCommand(socket, 'show stat')).split('\n')
    const header = (csv[0] ?? '').replace(/^# /, '').split(',')
    const statusAt = header.indexOf('status')
    const row = csv.find(l => l.startsWith(`shop,${name},`))
    return row === undefined ? undefined : row.split(',')[statusAt]
  }
  const deadline = Date.now() + 10_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`haproxy exited with ${child.exitCode}: ${stderr}`)
    try { if (await serverStatus('shop-a') !== undefined) break } catch {}
    if (Date.now() > deadline) throw new Error(`haproxy did not open its admin socket within 10 s: ${stderr}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return {
    port,
    serverStatus,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise(resolve => child.once('exit', resolve))
        child.kill('SIGTERM')
        await exited
      }
      process.removeListener('exit', killOnExit)
      rmSync(dir, { recursive: true, force: true })
    }
  }
}
