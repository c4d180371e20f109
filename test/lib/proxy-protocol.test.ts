/**
 * PROXY protocol framing and decoding (lib/proxy-protocol.ts), on bytes written out by hand from the specification
 * (haproxy's proxy-protocol.txt), so the parser's own builder is not what checks the parser.
 */
import t from 'tap'
import fc from 'fast-check'
import { encodeProxyHeaderV2, scanProxyHeader, trustedAddresses } from '../../lib/proxy-protocol.js'
import { isHandoffError } from '../../lib/errors.js'

const SIG = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]
const TLS_CLIENT_HELLO_START = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])

/** v2 PROXY over TCP/IPv4: 203.0.113.7:51234 -> 10.0.0.1:443, then `tlv` bytes counted in the length. */
function v2Tcp4 (tlv: number[] = []): Buffer {
  const addr = [203, 0, 113, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x01, 0xbb]
  const len = addr.length + tlv.length
  return Buffer.from([...SIG, 0x21, 0x11, len >> 8, len & 0xff, ...addr, ...tlv])
}

function v2Tcp6 (src: number[]): Buffer {
  const dst = [0x20, 0x01, 0x0d, 0xb8, ...new Array<number>(11).fill(0), 1]
  return Buffer.from([...SIG, 0x21, 0x21, 0, 36, ...src, ...dst, 0x04, 0xd2, 0x01, 0xbb])
}

t.test('v2 TCP4: client address and exact header length, TLVs included, bytes after it left alone', async t => {
  const tlv = [0x04, 0x00, 0x03, 0xaa, 0xbb, 0xcc] // PP2_TYPE_NOOP, 3 bytes
  const header = v2Tcp4(tlv)
  const scan = scanProxyHeader(Buffer.concat([header, TLS_CLIENT_HELLO_START]))
  t.same(scan, { kind: 'header', version: 2, length: header.length, client: { address: '203.0.113.7', port: 51234, family: 'IPv4' } })
})

t.test('v2 TCP6: address in the text Node gives a direct peer (compressed, IPv4-mapped dotted)', async t => {
  const db8 = [0x20, 0x01, 0x0d, 0xb8, ...new Array<number>(11).fill(0), 0x42]
  t.match(scanProxyHeader(v2Tcp6(db8)), { kind: 'header', client: { address: '2001:db8::42', port: 1234, family: 'IPv6' } })
  const mapped = [...new Array<number>(10).fill(0), 0xff, 0xff, 192, 0, 2, 9]
  t.match(scanProxyHeader(v2Tcp6(mapped)), { kind: 'header', client: { address: '::ffff:192.0.2.9', family: 'IPv6' } })
})

t.test('v2 LOCAL (a balancer health check) and UNSPEC: a header without a client', async t => {
  const local = Buffer.from([...SIG, 0x20, 0x00, 0, 0])
  t.same(scanProxyHeader(local), { kind: 'header', version: 2, length: 16 })
  const unspec = Buffer.from([...SIG, 0x21, 0x00, 0, 0])
  t.same(scanProxyHeader(unspec), { kind: 'header', version: 2, length: 16 })
})

t.test('v2 malformed: wrong version, unknown command, length shorter than the address family needs', async t => {
  const h = v2Tcp4()
  t.match(scanProxyHeader(Buffer.from([...SIG, 0x11, ...h.subarray(13)])), { kind: 'invalid' })
  t.match(scanProxyHeader(Buffer.from([...SIG, 0x2f, ...h.subarray(13)])), { kind: 'invalid' })
  t.match(scanProxyHeader(Buffer.from([...SIG, 0x21, 0x11, 0, 4, 1, 2, 3, 4])), { kind: 'invalid' })
})

t.test('v1: TCP4, TCP6 (normalized), UNKNOWN; bytes after CRLF left alone', async t => {
  const v1 = 'PROXY TCP4 198.51.100.22 10.0.0.1 35646 443\r\n'
  t.same(scanProxyHeader(Buffer.from(v1 + 'GET / HTTP/1.1\r\n')), {
    kind: 'header', version: 1, length: v1.length, client: { address: '198.51.100.22', port: 35646, family: 'IPv4' }
  })
  t.match(scanProxyHeader(Buffer.from('PROXY TCP6 2001:DB8:0:0:0:0:0:42 ::1 4000 443\r\n')), { client: { address: '2001:db8::42', family: 'IPv6' } })
  t.same(scanProxyHeader(Buffer.from('PROXY UNKNOWN\r\n')), { kind: 'header', version: 1, length: 15 })
  t.same(scanProxyHeader(Buffer.from('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n')), { kind: 'header', version: 1, length: 35 })
})

t.test('v1 malformed: bad address for its family, bad port, no CRLF within 107 bytes', async t => {
  t.match(scanProxyHeader(Buffer.from('PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n')), { kind: 'invalid' })
  t.match(scanProxyHeader(Buffer.from('PROXY TCP4 300.1.1.1 10.0.0.1 1 2\r\n')), { kind: 'invalid' })
  t.match(scanProxyHeader(Buffer.from('PROXY TCP4 1.1.1.1 10.0.0.1 70000 2\r\n')), { kind: 'invalid' })
  t.match(scanProxyHeader(Buffer.from('PROXY TCP4 1.1.1.1 10.0.0.1\r\n')), { kind: 'invalid' })
  t.match(scanProxyHeader(Buffer.from(`PROXY ${'x'.repeat(101)}`)), { kind: 'invalid' })
  t.match(scanProxyHeader(Buffer.from(`PROXY ${'x'.repeat(100)}`)), { kind: 'incomplete' })
})

t.test('decides early: TLS and HTTP on their first differing byte, headers only when complete', async t => {
  t.same(scanProxyHeader(Buffer.alloc(0)), { kind: 'incomplete' })
  t.same(scanProxyHeader(TLS_CLIENT_HELLO_START.subarray(0, 1)), { kind: 'none' })
  t.same(scanProxyHeader(Buffer.from('G')), { kind: 'none' })
  t.same(scanProxyHeader(Buffer.from('P')), { kind: 'incomplete' })
  t.same(scanProxyHeader(Buffer.from('POST / HTTP/1.1\r\n')), { kind: 'none' })
  t.same(scanProxyHeader(Buffer.from('PROXY')), { kind: 'incomplete' })
  t.same(scanProxyHeader(Buffer.from('\r\n\r\nX')), { kind: 'none' })
  const h = v2Tcp4()
  for (let n = 1; n < h.length; n++) t.same(scanProxyHeader(h.subarray(0, n)), { kind: 'incomplete' }, `v2 cut at ${n}`)
  const v1 = Buffer.from('PROXY TCP4 198.51.100.22 10.0.0.1 35646 443\r\n')
  for (let n = 1; n < v1.length; n++) t.same(scanProxyHeader(v1.subarray(0, n)), { kind: 'incomplete' }, `v1 cut at ${n}`)
})

t.test('property: any bytes give an answer, never a throw; a header length never exceeds the input', async () => {
  fc.assert(fc.property(fc.oneof(
    fc.uint8Array({ maxLength: 300 }),
    fc.uint8Array({ maxLength: 300 }).map(rest => Uint8Array.from([...SIG, ...rest])),
    fc.string({ maxLength: 120 }).map(rest => Buffer.from(`PROXY ${rest}`))
  ), bytes => {
    const scan = scanProxyHeader(Buffer.from(bytes))
    return scan.kind !== 'header' || (scan.length <= bytes.length && scan.length > 0)
  }))
})

t.test('trusted addresses: addresses, CIDR blocks, IPv4-mapped peers; bad entries refused naming the option', async t => {
  const trusted = trustedAddresses(['10.0.0.0/8', '192.0.2.1', 'fd00::/8'])
  t.ok(trusted('10.200.3.4'))
  t.ok(trusted('::ffff:10.1.2.3'), 'a dual-stack listener reports IPv4 peers as IPv4-mapped')
  t.ok(trusted('192.0.2.1'))
  t.notOk(trusted('192.0.2.2'))
  t.ok(trusted('fd12::1'))
  t.notOk(trusted('fe80::1'))
  t.notOk(trusted('not an address'))
  for (const bad of [undefined, [], ['10.0.0.0/33'], ['fd00::/129'], ['localhost'], ['10.0.0.0/8/1'], [42], ['10.0.0.0/x']]) {
    let err: unknown
    try { trustedAddresses(bad, 'proxyProtocol.trusted') } catch (e) { err = e }
    t.ok(isHandoffError(err, 'FST_HANDOFF_INVALID_OPTION') && err.message.includes('proxyProtocol.trusted'), `refuses ${JSON.stringify(bad)}`)
  }
})

t.test('encodeProxyHeaderV2: what a balancer sends decodes to the same client, per family', async t => {
  const cases: Array<[string, string, string]> = [
    ['203.0.113.7', '10.0.0.1', '203.0.113.7'],
    ['::ffff:203.0.113.7', '::ffff:10.0.0.1', '203.0.113.7'],
    ['2001:DB8::42', '2001:db8::1', '2001:db8::42'],
    ['2001:db8::42', '10.0.0.1', '2001:db8::42'],
    ['::ffff:198.51.100.9', 'fd00::1', '::ffff:198.51.100.9'],
    ['::', '::1', '::']
  ]
  for (const [source, destination, want] of cases) {
    const header = encodeProxyHeaderV2({ address: source, port: 40000 }, { address: destination, port: 443 })
    t.match(scanProxyHeader(header), { kind: 'header', version: 2, length: header.length, client: { address: want, port: 40000 } }, `${source} -> ${destination}`)
  }
  // Written out from the specification: 203.0.113.7:51234 -> 10.0.0.1:443.
  t.same(encodeProxyHeaderV2({ address: '203.0.113.7', port: 51234 }, { address: '10.0.0.1', port: 443 }), v2Tcp4())
  t.throws(() => encodeProxyHeaderV2({ address: 'example.com', port: 1 }, { address: '10.0.0.1', port: 2 }))
})
