import { BlockList, SocketAddress, isIP, isIPv4, isIPv6 } from 'node:net'
import {
  AddressFamilyType, Command, INETProtocol, IPv4Address, IPv4ProxyAddress, IPv6Address, IPv6ProxyAddress, TransportProtocol,
  V1ProxyProtocol, V2ProxyProtocol
} from 'proxy-protocol-js'
import { InvalidOptionError } from './errors.js'

/**
 * The PROXY protocol (HAProxy's, v1 text and v2 binary): an L4 balancer that passes TLS through to the instances
 * sends one header with the client's address before the client's first byte. This module finds where the header
 * ends in the bytes received so far (framing, which the parser leaves to its caller) and decodes it with
 * proxy-protocol-js. Framework-free; plugins/proxy-protocol.ts does the sockets.
 */

/** The client a balancer announced. */
export interface ProxiedClient {
  address: string
  port: number
  family: 'IPv4' | 'IPv6'
}

export type ProxyHeaderScan =
  /** Too few bytes to tell; wait for more. */
  | { kind: 'incomplete' }
  /** The bytes do not start with a PROXY header. */
  | { kind: 'none' }
  /**
   * A complete, valid header of `length` bytes. `client` is absent when the header carries no client address to use
   * (v2 LOCAL, e.g. HAProxy's own health checks; v1 UNKNOWN; a UNIX or unspecified family): the connection then keeps
   * its own address, as the specification says.
   */
  | { kind: 'header', version: 1 | 2, length: number, client?: ProxiedClient }
  /** A header that is malformed or longer than the specification allows. */
  | { kind: 'invalid', reason: string }

const V1_PREFIX = Buffer.from('PROXY ', 'latin1')
/** v1 header, CRLF included, is at most 107 bytes (specification, 2.1). */
const V1_MAX_LENGTH = 107
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])
/** Signature, version/command, family/transport, 2-byte length. */
const V2_FIXED_LENGTH = 16

/** True when `bytes` is a prefix of `signature` or starts with it. */
function agreesWith (bytes: Buffer, signature: Buffer): boolean {
  const n = Math.min(bytes.length, signature.length)
  return bytes.subarray(0, n).equals(signature.subarray(0, n))
}

/**
 * Looks at the first bytes of a connection. Decides as early as it can: a TLS ClientHello (0x16) or an HTTP method
 * other than "P..." is 'none' from its first byte.
 */
export function scanProxyHeader (bytes: Buffer): ProxyHeaderScan {
  if (bytes.length === 0) return { kind: 'incomplete' }
  if (agreesWith(bytes, V2_SIGNATURE)) {
    if (bytes.length < V2_FIXED_LENGTH) return { kind: 'incomplete' }
    const length = V2_FIXED_LENGTH + bytes.readUInt16BE(14)
    if (bytes.length < length) return { kind: 'incomplete' }
    return decodeV2(bytes.subarray(0, length))
  }
  if (agreesWith(bytes, V1_PREFIX)) {
    if (bytes.length < V1_PREFIX.length) return { kind: 'incomplete' }
    const end = bytes.subarray(0, V1_MAX_LENGTH).indexOf('\r\n', 0, 'latin1')
    if (end < 0) return bytes.length >= V1_MAX_LENGTH ? { kind: 'invalid', reason: `v1 header without CRLF in its first ${V1_MAX_LENGTH} bytes` } : { kind: 'incomplete' }
    return decodeV1(bytes.subarray(0, end + 2).toString('latin1'))
  }
  return { kind: 'none' }
}

function decodeV1 (line: string): ProxyHeaderScan {
  const length = line.length
  // UNKNOWN may be followed by anything up to CRLF (specification, 2.1), which the parser's pattern does not allow.
  if (line.startsWith('PROXY UNKNOWN')) return { kind: 'header', version: 1, length }
  let parsed: V1ProxyProtocol
  try {
    parsed = V1ProxyProtocol.parse(line)
  } catch {
    return { kind: 'invalid', reason: 'malformed v1 header' }
  }
  const { ipAddress, port } = parsed.source
  const v4 = parsed.inetProtocol === INETProtocol.TCP4
  if (v4 ? !isIPv4(ipAddress) : !isIPv6(ipAddress)) return { kind: 'invalid', reason: `v1 ${parsed.inetProtocol} header with a source address that is not one` }
  if (!isPort(port) || !isPort(parsed.destination.port) || isIP(parsed.destination.ipAddress) === 0) return { kind: 'invalid', reason: 'v1 header with a bad port or destination' }
  return { kind: 'header', version: 1, length, client: { address: v4 ? ipAddress : nodeIPv6Text(ipAddress), port, family: v4 ? 'IPv4' : 'IPv6' } }
}

function decodeV2 (header: Buffer): ProxyHeaderScan {
  const length = header.length
  let parsed: V2ProxyProtocol
  try {
    parsed = V2ProxyProtocol.parse(header)
  } catch (err) {
    return { kind: 'invalid', reason: `malformed v2 header: ${(err as { message?: string }).message ?? 'unknown error'}` }
  }
  // LOCAL: the balancer speaking for itself (health checks); no client behind it (specification, 2.2).
  if (parsed.command === Command.LOCAL || parsed.transportProtocol !== TransportProtocol.STREAM) return { kind: 'header', version: 2, length }
  const a = parsed.proxyAddress
  if (parsed.addressFamilyType === AddressFamilyType.INET && a instanceof IPv4ProxyAddress) {
    return { kind: 'header', version: 2, length, client: { address: a.sourceAddress.address.join('.'), port: a.sourcePort, family: 'IPv4' } }
  }
  if (parsed.addressFamilyType === AddressFamilyType.INET6 && a instanceof IPv6ProxyAddress) {
    return { kind: 'header', version: 2, length, client: { address: ipv6FromBytes(a.sourceAddress.address), port: a.sourcePort, family: 'IPv6' } }
  }
  return { kind: 'header', version: 2, length }
}

function isPort (n: number): boolean { return Number.isInteger(n) && n >= 0 && n <= 65535 }

/**
 * IPv6 text exactly as Node reports a peer's address (libuv's inet_ntop, through net.SocketAddress), so a proxied
 * client's `request.ip` reads as it would on a direct connection ("::ffff:10.0.0.5", "2001:db8::1").
 */
function nodeIPv6Text (text: string): string {
  return new SocketAddress({ address: text, family: 'ipv6' }).address
}

function ipv6FromBytes (bytes: ArrayLike<number>): string {
  const words: string[] = []
  for (let i = 0; i < 16; i += 2) words.push((((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0)).toString(16))
  return nodeIPv6Text(words.join(':'))
}

/** The 16 bytes of an IPv6 address given in any valid text form. */
function ipv6ToBytes (text: string): number[] {
  let normal = nodeIPv6Text(text)
  const tail: string[] = []
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(normal) // Node writes only ::ffff:a.b.c.d this way
  if (dotted !== null) {
    const q = dotted.slice(1).map(Number)
    tail.push((((q[0] ?? 0) << 8) | (q[1] ?? 0)).toString(16), (((q[2] ?? 0) << 8) | (q[3] ?? 0)).toString(16))
    normal = normal.slice(0, dotted.index) + tail.join(':')
  }
  const [left = '', right] = normal.split('::')
  const head = left === '' ? [] : left.split(':')
  const rest = right === undefined || right === '' ? [] : right.split(':')
  const words = [...head, ...new Array<string>(8 - head.length - rest.length).fill('0'), ...rest].map(w => parseInt(w, 16))
  return words.flatMap(w => [w >> 8, w & 0xff])
}

export interface Endpoint { address: string, port: number }

/**
 * A PROXY protocol v2 header (PROXY command, TCP) announcing `source` connected to `destination`, what a balancer
 * sends first on each connection to a backend. IPv4-mapped IPv6 addresses are sent as IPv4; when the two families
 * differ, IPv4 is sent as IPv4-mapped IPv6.
 */
export function encodeProxyHeaderV2 (source: Endpoint, destination: Endpoint): Buffer {
  const unmap = (a: string): string => /^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(a) ? a.slice(7) : a
  const src = unmap(source.address)
  const dst = unmap(destination.address)
  if (isIP(src) === 0 || isIP(dst) === 0) throw new InvalidOptionError('address', `not IP addresses: ${source.address}, ${destination.address}`)
  if (isIPv4(src) && isIPv4(dst)) {
    const v4 = (a: string): IPv4Address => IPv4Address.createFrom(a.split('.').map(Number))
    return Buffer.from(new V2ProxyProtocol(Command.PROXY, TransportProtocol.STREAM,
      new IPv4ProxyAddress(v4(src), source.port, v4(dst), destination.port)).build())
  }
  const v6 = (a: string): IPv6Address => IPv6Address.createFrom(ipv6ToBytes(isIPv4(a) ? `::ffff:${a}` : a))
  return Buffer.from(new V2ProxyProtocol(Command.PROXY, TransportProtocol.STREAM,
    new IPv6ProxyAddress(v6(src), source.port, v6(dst), destination.port)).build())
}

/**
 * The set of balancer addresses allowed to send a header: addresses ("10.0.0.5", "::1") and CIDR blocks
 * ("10.0.0.0/8", "fd00::/8"). IPv4 entries also match IPv4-mapped IPv6 peers ("::ffff:10.0.0.5"), which a server
 * listening on "::" reports. An entry that is neither is refused, naming `option`.
 */
export function trustedAddresses (list: unknown, option = 'trusted'): (address: string) => boolean {
  if (!Array.isArray(list) || list.length === 0) {
    throw new InvalidOptionError(option, 'must be a non-empty array of balancer addresses or CIDR blocks, e.g. ["10.0.0.0/8"]')
  }
  const blocks = new BlockList()
  for (const entry of list as unknown[]) {
    if (typeof entry !== 'string') throw new InvalidOptionError(option, `entries must be strings, got ${typeof entry}`)
    const [address = '', prefix, extra] = entry.trim().split('/')
    const family = isIP(address)
    if (family === 0 || extra !== undefined) throw new InvalidOptionError(option, `"${entry}" is not an IP address or CIDR block`)
    const type = family === 4 ? 'ipv4' : 'ipv6'
    if (prefix === undefined) {
      blocks.addAddress(address, type)
      continue
    }
    const bits = Number(prefix)
    if (!/^\d{1,3}$/.test(prefix) || bits > (family === 4 ? 32 : 128)) throw new InvalidOptionError(option, `"${entry}" has a bad prefix length`)
    blocks.addSubnet(address, bits, type)
  }
  return address => {
    const family = isIP(address)
    return family !== 0 && blocks.check(address, family === 4 ? 'ipv4' : 'ipv6')
  }
}
