/**
 * TLS clients for the end-to-end tests: Node's tls.connect with one HTTP request per connection, and the openssl
 * s_client CLI with -sess_out/-sess_in. Loopback only; every call is bounded by a timeout.
 */
import { spawnSync } from 'node:child_process'
import { constants } from 'node:crypto'
import tls from 'node:tls'

export type TlsMode = 'tls13' | 'tls12' | 'tls12-no-ticket'

export interface Visit {
  reused: boolean
  protocol: string | null
  /** The first session (ticket) the server sent on this connection, if any. */
  session: Buffer | undefined
  /** How many sessions (TLS 1.3 NewSessionTickets) arrived on this connection. */
  tickets: number
  /** The JSON body of GET /tls (scripts/tls-instance.ts). */
  body: { resumed: boolean, protocol: string, pid: number } | undefined
}

export function tlsClientOptions (mode: TlsMode): tls.ConnectionOptions {
  if (mode === 'tls13') return { minVersion: 'TLSv1.3' }
  if (mode === 'tls12') return { maxVersion: 'TLSv1.2' }
  // The client leaves out the session ticket extension: the server can only resume from its session cache.
  return { maxVersion: 'TLSv1.2', secureOptions: constants.SSL_OP_NO_TICKET }
}

/** One TLS connection with one `GET /tls` and `Connection: close`, offering `session` when given. */
export async function visit (port: number, ca: Buffer, opts: { mode?: TlsMode, session?: Buffer | undefined } = {}): Promise<Visit> {
  return await new Promise((resolve, reject) => {
    let session: Buffer | undefined
    let tickets = 0
    let data = ''
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      ca,
      ...tlsClientOptions(opts.mode ?? 'tls13'),
      ...(opts.session === undefined ? {} : { session: opts.session })
    })
    socket.setTimeout(5000, () => socket.destroy(new Error('client timeout')))
    socket.on('session', s => { tickets++; session ??= s })
    // Read at once: after 'close' the native handle is gone and both read as null.
    let reused = false
    let protocol: string | null = null
    socket.on('secureConnect', () => {
      reused = socket.isSessionReused()
      protocol = socket.getProtocol()
      socket.write('GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
    })
    socket.on('data', d => { data += String(d) })
    socket.on('error', reject)
    socket.on('close', () => {
      const at = data.indexOf('\r\n\r\n')
      let body: Visit['body']
      try { body = at < 0 ? undefined : JSON.parse(data.slice(at + 4)) as Visit['body'] } catch { body = undefined }
      resolve({ reused, protocol, session, tickets, body })
    })
  })
}

/** openssl s_client, one HTTP request; whether it reported the session "Reused,". */
export function sClient (port: number, caPath: string, mode: TlsMode, sess: { out?: string, in?: string, msg?: boolean }): { reused: boolean, output: string } {
  const args = ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', '-CAfile', caPath,
    '-verify_return_error', '-ign_eof']
  if (mode === 'tls13') args.push('-tls1_3')
  else args.push('-tls1_2')
  if (mode === 'tls12-no-ticket') args.push('-no_ticket')
  if (sess.out !== undefined) args.push('-sess_out', sess.out)
  if (sess.in !== undefined) args.push('-sess_in', sess.in)
  // Every TLS message in the output ("<<< TLS 1.3, Handshake [length 00f5], NewSessionTicket"): what the server sent.
  if (sess.msg === true) args.push('-msg')
  const r = spawnSync('openssl', args, { input: 'GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n', encoding: 'utf8', timeout: 10_000 })
  const output = `${r.stdout}\n${r.stderr}`
  if (!/\b(New|Reused), /.test(output)) throw new Error(`s_client gave no session line (status ${String(r.status)}): ${output.slice(-500)}`)
  return { reused: /\bReused, /.test(output), output }
}
