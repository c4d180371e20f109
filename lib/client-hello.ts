/**
 * The first flight of a TLS connection, read before TLS starts: just enough of the ClientHello to tell whether the
 * client offers TLS 1.3 (the supported_versions extension) and which legacy_session_id it sends. Node's
 * 'resumeSession' event gives neither the protocol version nor the connection, and fires for TLS 1.3 ClientHellos
 * too (their legacy_session_id is random, RFC 8446 D.4), so this is how a session-id lookup that cannot hit is
 * recognised. Framework-free, synchronous, bounded; plugins/tls-sessions.ts does the sockets.
 *
 * Why not read-tls-client-hello (npm): it reads the socket itself through a promise per field (dozens per
 * connection, on a path whose point is to cost nothing), waits without a bound, and parses every extension; here one
 * pass over the bytes already received decides, and a caller can give up at any time.
 */

/** A TLS record header: type, legacy version, length. */
const RECORD_HEADER = 5
const CONTENT_HANDSHAKE = 0x16
const HANDSHAKE_CLIENT_HELLO = 0x01
/** Largest record payload a client may send (RFC 8446 5.1). */
const MAX_RECORD_PAYLOAD = 1 << 14
/**
 * Largest ClientHello read: browsers send 0.5-2 KB (a post-quantum key share included), a PSK adds a ticket of a
 * few hundred bytes. A larger one is not parsed: the connection goes on as any other ('unknown').
 */
export const MAX_CLIENT_HELLO = 16 * 1024
/** Records a ClientHello may be split over: clients send one; 1-byte records are a way to make a reader work. */
export const MAX_CLIENT_HELLO_RECORDS = 64
const EXT_SUPPORTED_VERSIONS = 43
const EXT_PRE_SHARED_KEY = 41
export const TLS1_2 = 0x0303
export const TLS1_3 = 0x0304

export interface ClientHelloInfo {
  /** legacy_session_id, 0 to 32 bytes (a copy). */
  sessionId: Buffer
  /** Versions from supported_versions in the client's order (GREASE values included); empty when it sent none. */
  supportedVersions: number[]
  /** legacy_version: what a client without supported_versions offers at most. */
  legacyVersion: number
  /** True when the client offers TLS 1.3 (only possible through supported_versions, RFC 8446 4.2.1). */
  offersTls13: boolean
  /** True when it carries a pre_shared_key extension (a TLS 1.3 resumption attempt). */
  offersPsk: boolean
}

export type ClientHelloScan =
  /** Too few bytes to tell; read more. */
  | { kind: 'incomplete' }
  /** A complete, well-formed ClientHello. */
  | { kind: 'hello', hello: ClientHelloInfo }
  /**
   * Not something this parser decides on: no TLS handshake record, not a ClientHello, malformed, or larger than
   * MAX_CLIENT_HELLO. The bytes go to TLS unchanged, which answers as it always does.
   */
  | { kind: 'unknown', reason: string }

const INCOMPLETE: ClientHelloScan = Object.freeze({ kind: 'incomplete' })
function unknown (reason: string): ClientHelloScan { return { kind: 'unknown', reason } }

/**
 * Looks at the bytes a connection sent so far (from its first byte). Never throws, never reads past `bytes`, and
 * decides 'unknown' as soon as the bytes cannot start a ClientHello, so a caller need not wait on garbage. The
 * handshake message may be split over several records and the records over any number of reads.
 */
export function scanClientHello (bytes: Uint8Array): ClientHelloScan {
  // Reassemble the handshake message from the records received so far.
  let messageLength = -1
  const parts: Uint8Array[] = []
  let have = 0
  let offset = 0
  while (true) {
    if (bytes.length - offset < RECORD_HEADER) {
      if (offset < bytes.length && bytes[offset] !== CONTENT_HANDSHAKE) return unknown('not a TLS handshake record')
      if (offset + 1 < bytes.length && bytes[offset + 1] !== 0x03) return unknown('bad record version')
      return INCOMPLETE
    }
    if (bytes[offset] !== CONTENT_HANDSHAKE) return unknown('not a TLS handshake record')
    // Record legacy_version: 0x0300 to 0x03ff (clients send 0x0301 or 0x0303).
    if (bytes[offset + 1] !== 0x03) return unknown('bad record version')
    const recordLength = ((bytes[offset + 3] as number) << 8) | (bytes[offset + 4] as number)
    if (recordLength === 0 || recordLength > MAX_RECORD_PAYLOAD) return unknown('bad record length')
    if (parts.length === MAX_CLIENT_HELLO_RECORDS) return unknown(`ClientHello split over more than ${MAX_CLIENT_HELLO_RECORDS} records`)
    const start = offset + RECORD_HEADER
    const end = Math.min(start + recordLength, bytes.length)
    parts.push(bytes.subarray(start, end))
    have += end - start
    if (messageLength < 0 && have >= 4) {
      const head = firstBytes(parts, 4)
      if (head[0] !== HANDSHAKE_CLIENT_HELLO) return unknown('first handshake message is not a ClientHello')
      messageLength = ((head[1] as number) << 16) | ((head[2] as number) << 8) | (head[3] as number)
      if (messageLength > MAX_CLIENT_HELLO) return unknown(`ClientHello longer than ${MAX_CLIENT_HELLO} bytes`)
    }
    if (messageLength >= 0 && have >= 4 + messageLength) break
    if (end < start + recordLength) return INCOMPLETE // the rest of this record is still on its way
    offset = end
  }
  const message = firstBytes(parts, 4 + messageLength).subarray(4)
  return parseBody(message)
}

/** The first `n` bytes of the concatenated parts (a view when the first part holds them all). */
function firstBytes (parts: Uint8Array[], n: number): Uint8Array {
  const first = parts[0] as Uint8Array
  if (first.length >= n) return first.subarray(0, n)
  const out = new Uint8Array(n)
  let o = 0
  for (const p of parts) {
    const take = Math.min(p.length, n - o)
    out.set(p.subarray(0, take), o)
    o += take
    if (o === n) break
  }
  return out
}

/** ClientHello body (RFC 8446 4.1.2, RFC 5246 7.4.1.2): every length checked against what is left. */
function parseBody (m: Uint8Array): ClientHelloScan {
  const bad = (what: string): ClientHelloScan => unknown(`malformed ClientHello: ${what}`)
  let i = 0
  const u8 = (): number => m[i++] as number
  const u16 = (): number => { const v = ((m[i] as number) << 8) | (m[i + 1] as number); i += 2; return v }
  if (m.length < 2 + 32 + 1) return bad('too short')
  const legacyVersion = u16()
  i += 32 // random
  const sessionIdLength = u8()
  if (sessionIdLength > 32 || i + sessionIdLength > m.length) return bad('session id')
  const sessionId = Buffer.from(m.subarray(i, i + sessionIdLength))
  i += sessionIdLength
  if (i + 2 > m.length) return bad('cipher suites')
  const suitesLength = u16()
  if (suitesLength < 2 || suitesLength % 2 !== 0 || i + suitesLength > m.length) return bad('cipher suites')
  i += suitesLength
  if (i + 1 > m.length) return bad('compression methods')
  const compressionLength = u8()
  if (compressionLength < 1 || i + compressionLength > m.length) return bad('compression methods')
  i += compressionLength
  const supportedVersions: number[] = []
  let offersPsk = false
  if (i < m.length) {
    if (i + 2 > m.length) return bad('extensions')
    const extensionsLength = u16()
    if (i + extensionsLength !== m.length) return bad('extensions length')
    let sawVersions = false
    while (i < m.length) {
      if (i + 4 > m.length) return bad('extension header')
      const type = u16()
      const length = u16()
      if (i + length > m.length) return bad('extension length')
      if (type === EXT_SUPPORTED_VERSIONS) {
        if (sawVersions) return bad('two supported_versions extensions')
        sawVersions = true
        const listLength = m[i] as number
        if (length < 3 || listLength !== length - 1 || listLength % 2 !== 0) return bad('supported_versions')
        for (let v = i + 1; v < i + length; v += 2) supportedVersions.push(((m[v] as number) << 8) | (m[v + 1] as number))
      } else if (type === EXT_PRE_SHARED_KEY) {
        offersPsk = true
      }
      i += length
    }
  }
  return {
    kind: 'hello',
    hello: { sessionId, supportedVersions, legacyVersion, offersTls13: supportedVersions.includes(TLS1_3), offersPsk }
  }
}
