/**
 * ClientHello peek (lib/client-hello.ts): real ClientHellos from Node's and OpenSSL's clients, a builder written
 * from RFC 8446 4.1.2 (not the parser's code) for property tests, and fuzzing: no input throws, stalls or reads
 * past its end, and every split of a ClientHello over records and reads gives the same answer.
 */
import { spawn } from 'node:child_process'
import net from 'node:net'
import tls from 'node:tls'
import t from 'tap'
import fc from 'fast-check'
import { MAX_CLIENT_HELLO, MAX_CLIENT_HELLO_RECORDS, scanClientHello, TLS1_2, TLS1_3, type ClientHelloScan } from '../../lib/client-hello.js'

interface Hello { legacyVersion: number, sessionId: number[], suites: number[], compression: number[], extensions: Array<{ type: number, data: number[] }> | null }

const u16 = (n: number): number[] => [n >> 8, n & 0xff]
const u24 = (n: number): number[] => [n >> 16, (n >> 8) & 0xff, n & 0xff]

/** The handshake message: type 1, 24-bit length, then the body of RFC 8446 4.1.2. */
function message (h: Hello): number[] {
  const body = [...u16(h.legacyVersion), ...new Array<number>(32).fill(7), h.sessionId.length, ...h.sessionId,
    ...u16(h.suites.length * 2), ...h.suites.flatMap(u16), h.compression.length, ...h.compression]
  if (h.extensions !== null) {
    const ext = h.extensions.flatMap(e => [...u16(e.type), ...u16(e.data.length), ...e.data])
    body.push(...u16(ext.length), ...ext)
  }
  return [1, ...u24(body.length), ...body]
}

/** The message cut into records of the given payload sizes (the last one takes the rest). */
function records (msg: number[], sizes: number[] = []): Buffer {
  const out: number[] = []
  let at = 0
  for (const size of [...sizes, msg.length]) {
    if (at >= msg.length) break
    const part = msg.slice(at, at + Math.max(1, size))
    out.push(0x16, 0x03, 0x01, ...u16(part.length), ...part)
    at += part.length
  }
  return Buffer.from(out)
}

const versionsExt = (versions: number[]): { type: number, data: number[] } => ({ type: 43, data: [versions.length * 2, ...versions.flatMap(u16)] })
const tls13Hello = (sessionId: number[]): Hello => ({
  legacyVersion: TLS1_2,
  sessionId,
  suites: [0x1301, 0x1302, 0xc02f],
  compression: [0],
  extensions: [{ type: 0, data: [0, 4, 0, 0, 1, 0x61] }, { type: 0x0a0a, data: [] }, versionsExt([0x3a3a, TLS1_3, TLS1_2]), { type: 51, data: [0, 0] }]
})

const helloOf = (scan: ClientHelloScan): Exclude<ClientHelloScan, { kind: 'incomplete' | 'unknown' }>['hello'] | undefined => scan.kind === 'hello' ? scan.hello : undefined

t.test('a TLS 1.3 ClientHello: session id, versions in order (GREASE kept), 1.3 offered', async t => {
  const id = Array.from({ length: 32 }, (_, i) => i + 1)
  const h = helloOf(scanClientHello(records(message(tls13Hello(id)))))
  t.same(h, { sessionId: Buffer.from(id), supportedVersions: [0x3a3a, TLS1_3, TLS1_2], legacyVersion: TLS1_2, offersTls13: true, offersPsk: false })
})

t.test('TLS 1.2 only: no supported_versions, or one without 1.3, or no extensions at all', async t => {
  const base = tls13Hello([9, 9, 9])
  const noExt = helloOf(scanClientHello(records(message({ ...base, extensions: null }))))
  t.same(noExt?.offersTls13, false)
  t.same(noExt?.supportedVersions, [])
  t.same(noExt?.sessionId, Buffer.from([9, 9, 9]))
  const only12 = helloOf(scanClientHello(records(message({ ...base, extensions: [versionsExt([TLS1_2, 0x0302])] }))))
  t.same([only12?.offersTls13, only12?.supportedVersions], [false, [TLS1_2, 0x0302]])
  const emptyExt = helloOf(scanClientHello(records(message({ ...base, extensions: [] }))))
  t.same(emptyExt?.offersTls13, false)
})

t.test('pre_shared_key is noticed', async t => {
  const h = tls13Hello([])
  h.extensions?.push({ type: 41, data: [0, 0] })
  t.equal(helloOf(scanClientHello(records(message(h))))?.offersPsk, true)
})

t.test('incomplete until the last byte, split over records and reads anywhere: same answer', async t => {
  const whole = records(message(tls13Hello([1, 2, 3])))
  const want = scanClientHello(whole)
  for (let n = 0; n < whole.length; n++) t.equal(scanClientHello(whole.subarray(0, n)).kind, 'incomplete', `${n} bytes`)
  fc.assert(fc.property(fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 20 }), sizes => {
    const split = records(message(tls13Hello([1, 2, 3])), sizes)
    t.same(scanClientHello(split), want)
    // Bytes after the ClientHello (the client's next flight) change nothing.
    t.same(scanClientHello(Buffer.concat([split, Buffer.from([0x14, 3, 3, 0, 1, 1])])), want)
    for (const cut of [1, 5, 6, split.length - 1]) if (cut < split.length) t.equal(scanClientHello(split.subarray(0, cut)).kind, 'incomplete')
  }), { numRuns: 50 })
})

t.test('decides "unknown" at once on what is no ClientHello', async t => {
  t.equal(scanClientHello(Buffer.from('G')).kind, 'unknown', 'HTTP')
  t.equal(scanClientHello(Buffer.from('PROXY TCP4 ')).kind, 'unknown', 'a PROXY header (its stage runs first)')
  t.equal(scanClientHello(Buffer.from([0x16, 0x02])).kind, 'unknown', 'bad record version')
  t.equal(scanClientHello(Buffer.from([0x16, 0x03, 0x01, 0, 0])).kind, 'unknown', 'empty record')
  t.equal(scanClientHello(Buffer.from([0x16, 0x03, 0x01, 0x40, 0x01])).kind, 'unknown', 'record over 2^14')
  t.equal(scanClientHello(Buffer.from([0x16, 0x03, 0x01, 0, 4, 2, 0, 0, 0])).kind, 'unknown', 'a ServerHello')
  t.equal(scanClientHello(Buffer.from([0x16, 0x03, 0x01, 0, 4, 1, ...u24(MAX_CLIENT_HELLO + 1)])).kind, 'unknown', 'longer than the bound')
  const tiny = records(message(tls13Hello([])), new Array<number>(MAX_CLIENT_HELLO_RECORDS + 1).fill(1))
  t.equal(scanClientHello(tiny).kind, 'unknown', `split over more than ${MAX_CLIENT_HELLO_RECORDS} records`)
})

t.test('malformed bodies are "unknown", never a wrong answer', async t => {
  const h = tls13Hello([1])
  const bad = (label: string, m: number[]): void => { t.equal(scanClientHello(records(m)).kind, 'unknown', label) }
  const m = message(h)
  bad('session id over 32', message({ ...h, sessionId: new Array<number>(33).fill(1) }))
  bad('odd cipher suites length', (() => { const x = [...m]; x[4 + 2 + 32 + 1 + 1 + 1] = 5; return x })())
  bad('no compression methods', message({ ...h, compression: [] }))
  bad('extension longer than the message', message({ ...h, extensions: [{ type: 43, data: [4, 3, 4] }] }))
  bad('supported_versions with an odd list', message({ ...h, extensions: [{ type: 43, data: [3, 3, 4, 3] }] }))
  bad('two supported_versions', message({ ...h, extensions: [versionsExt([TLS1_2]), versionsExt([TLS1_3])] }))
  const trailing = [...m, 0]
  trailing[3] = (trailing[3] as number) + 1 // the message length counts the extra byte
  bad('a byte after the extensions', trailing)
})

t.test('fuzz: any bytes, a ClientHello with bytes changed, or cut anywhere: no throw, a valid answer, bounded', async t => {
  const valid = (s: ClientHelloScan): boolean => s.kind === 'incomplete' || s.kind === 'unknown' ||
    (s.kind === 'hello' && s.hello.sessionId.length <= 32 && Array.isArray(s.hello.supportedVersions))
  const hello = records(message(tls13Hello([5, 6, 7, 8])))
  fc.assert(fc.property(fc.oneof(
    fc.uint8Array({ maxLength: 600 }),
    fc.uint8Array({ maxLength: 600 }).map(rest => Uint8Array.from([0x16, 0x03, 0x01, ...rest])),
    fc.tuple(fc.array(fc.tuple(fc.nat(hello.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), fc.nat(hello.length))
      .map(([changes, cut]) => { const b = Uint8Array.from(hello); for (const [at, v] of changes) b[at] = v; return b.subarray(0, cut) })
  ), bytes => valid(scanClientHello(bytes))), { numRuns: 3000 })
  // Huge claimed lengths are refused from their header, without waiting for the bytes.
  t.equal(scanClientHello(Buffer.from([0x16, 0x03, 0x03, 0x40, 0x00, 1, 0xff, 0xff, 0xff])).kind, 'unknown')
})

/** The first flight a real client sends, caught by a plain TCP server. */
async function capture (connect: (port: number) => () => void): Promise<Buffer> {
  return await new Promise((resolve, reject) => {
    const server = net.createServer(s => {
      let got = Buffer.alloc(0)
      s.on('data', d => {
        got = Buffer.concat([got, d])
        const scan = scanClientHello(got)
        if (scan.kind !== 'incomplete') { s.destroy(); stop(); server.close(); resolve(got) }
      })
      s.on('error', () => {})
    })
    let stop = (): void => {}
    server.listen(0, '127.0.0.1', () => { stop = connect((server.address() as net.AddressInfo).port) })
    server.on('error', reject)
  })
}

t.test('Node\'s TLS client: TLS 1.3 offers 1.3 with a 32-byte random id; maxVersion 1.2 does not', async t => {
  const node = async (opts: tls.ConnectionOptions): Promise<ClientHelloScan> => scanClientHello(await capture(port => {
    const c = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ...opts })
    c.on('error', () => {})
    return () => c.destroy()
  }))
  const h13 = helloOf(await node({}))
  t.equal(h13?.offersTls13, true)
  t.equal(h13?.sessionId.length, 32, 'RFC 8446 D.4 middlebox compatibility id')
  const h12 = helloOf(await node({ maxVersion: 'TLSv1.2' }))
  t.equal(h12?.offersTls13, false)
})

t.test('openssl s_client: -tls1_3 offers 1.3, -tls1_2 does not', async t => {
  const openssl = async (flag: string): Promise<ClientHelloScan> => scanClientHello(await capture(port => {
    const p = spawn('openssl', ['s_client', flag, '-connect', `127.0.0.1:${port}`, '-servername', 'localhost'], { stdio: ['pipe', 'ignore', 'ignore'] })
    p.on('error', () => {})
    return () => p.kill()
  }))
  t.equal(helloOf(await openssl('-tls1_3'))?.offersTls13, true)
  const h12 = helloOf(await openssl('-tls1_2'))
  t.equal(h12?.offersTls13, false)
  t.ok(h12 !== undefined, 'parsed')
})
