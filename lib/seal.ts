import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createSecretKey,
  hkdfSync,
  randomFillSync,
  type KeyObject
} from 'node:crypto'
import { CorruptEntryError, InvalidOptionError } from './errors.js'

/**
 * AES-256-GCM envelopes under a rotating key ring.
 *
 * Everything that leaves the process sealed (entries in Redis, TLS session data, ticket keys of the next epoch) goes
 * through a Sealer, and every other secret the plugins need (cookie signing, cart HMAC chains, ticket-key wrapping) is
 * derived from the same ring with its own HKDF purpose, so one cluster secret never serves two uses.
 *
 * Envelope format, version 0x01:
 *
 *   offset  size      field
 *   0       1         format version, 0x01
 *   1       1         key id length n, 1..32
 *   2       n         key id, ASCII [A-Za-z0-9._-]
 *   2+n     12        IV, random per seal
 *   14+n    16        GCM authentication tag
 *   30+n    rest      ciphertext (same length as the plaintext)
 *
 * Authenticated data = bytes 0..2+n (version, id length, id) followed by the caller's AAD. The header is
 * self-delimiting, so the concatenation is unambiguous; binding it means a swapped key id or version byte fails to
 * open instead of being decrypted under another key.
 *
 * A random 96-bit IV keeps the GCM nonce-collision risk within NIST SP 800-38D's bound for up to 2^32 seals per key:
 * rotate the secret well before one key has sealed that many values.
 */

/**
 * IVs come from a pool of CSPRNG bytes refilled 4 KiB at a time, so a seal makes no call into the CSPRNG of its own
 * (one per seal was a visible share of an update's CPU in a profile; no benchmark keeps that figure). Each IV is
 * still 96 fresh random bits, used once.
 */
const ivPool = Buffer.alloc(4096)
let ivPoolAt = ivPool.length
function takeIv (out: Buffer, at: number): void {
  if (ivPoolAt + 12 > ivPool.length) {
    randomFillSync(ivPool)
    ivPoolAt = 0
  }
  ivPool.copy(out, at, ivPoolAt, ivPoolAt + 12)
  ivPool.fill(0, ivPoolAt, ivPoolAt + 12)
  ivPoolAt += 12
}

/** The one envelope format this module writes and reads. */
export const FORMAT_VERSION = 0x01
/** GCM's native nonce size: any other length is hashed into one by GHASH, which buys nothing. */
export const IV_BYTES = 12
/** Full-length tag: truncated GCM tags weaken forgery resistance more than their length suggests. */
export const TAG_BYTES = 16
/** A secret must carry at least the 256 bits of the AES key derived from it. */
const MIN_SECRET_BYTES = 32
/** Ids travel in every envelope, so they are short and printable; the limit also fits the 1-byte length field. */
const KEY_ID_PATTERN = /^[A-Za-z0-9._-]{1,32}$/

const HEADER_FIXED_BYTES = 2
const MIN_ENVELOPE_BYTES = HEADER_FIXED_BYTES + 1 + IV_BYTES + TAG_BYTES
const SUBKEY_BYTES = 32
/** HKDF salt: separates our subkeys from anything else that might be derived from the same secret. */
const HKDF_SALT = Buffer.from('fastify-handoff key ring v1', 'utf8')
/** HMAC label for the id of a lone secret. HMAC keyed by the secret itself is outside the HKDF output space. */
const KEY_ID_LABEL = 'fastify-handoff key id v1'
/** Node refuses HKDF info longer than this. */
const MAX_PURPOSE_BYTES = 1024

/**
 * A cluster secret: one string or Buffer, or a ring of `{ id, secret }` newest first. The newest seals; the older
 * ones still open what they sealed, so a rotation is "put a new secret in front, deploy, drop the oldest later".
 */
export type SecretInput = string | Buffer | ReadonlyArray<{ id: string, secret: string | Buffer }>

interface RingEntry {
  readonly id: string
  readonly secret: Buffer
}

function secretBytes (secret: unknown, where: string): Buffer {
  if (typeof secret === 'string') return Buffer.from(secret, 'utf8')
  // Copied, so a caller reusing or zeroing its buffer cannot change the ring afterwards.
  if (Buffer.isBuffer(secret)) return Buffer.from(secret)
  throw new InvalidOptionError('secret', `${where} must be a string or a Buffer, got ${describeType(secret)}`)
}

function checkLength (bytes: Buffer, where: string): void {
  if (bytes.length < MIN_SECRET_BYTES) {
    throw new InvalidOptionError(
      'secret',
      `${where} is ${bytes.length} bytes long; each secret must be at least ${MIN_SECRET_BYTES} bytes ` +
      '(a string counts its UTF-8 bytes). Generate one with ' +
      '`node -e "console.log(require(\'node:crypto\').randomBytes(32).toString(\'base64\'))"`'
    )
  }
}

function describeType (value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  return typeof value
}

/** The id of a lone secret: stable for that secret, different across clusters, and revealing nothing about it. */
function loneSecretId (secret: Buffer): string {
  return createHmac('sha256', secret).update(KEY_ID_LABEL).digest('hex').slice(0, 8)
}

function checkPurpose (purpose: unknown): asserts purpose is string {
  if (typeof purpose !== 'string' || purpose.length === 0) {
    throw new InvalidOptionError('purpose', `must be a non-empty string, got ${describeType(purpose)}`)
  }
  if (Buffer.byteLength(purpose, 'utf8') > MAX_PURPOSE_BYTES) {
    throw new InvalidOptionError('purpose', `must be at most ${MAX_PURPOSE_BYTES} bytes of UTF-8`)
  }
}

/**
 * The cluster's secrets, newest first. Secrets are held in a private field, so neither `util.inspect`, a logger nor
 * `JSON.stringify` can print them; only the ids are public.
 */
export class KeyRing {
  /** Id of the newest secret, the one new seals use. */
  readonly currentId: string
  /** All ids, newest first. */
  readonly ids: readonly string[]
  readonly #entries: readonly RingEntry[]

  constructor (input: SecretInput) {
    const entries: RingEntry[] = []
    if (typeof input === 'string' || Buffer.isBuffer(input)) {
      const secret = secretBytes(input, 'the secret')
      checkLength(secret, 'the secret')
      entries.push({ id: loneSecretId(secret), secret })
    } else if (Array.isArray(input)) {
      if (input.length === 0) {
        throw new InvalidOptionError('secret', 'the key ring is empty; give at least one { id, secret }, newest first')
      }
      const seen = new Set<string>()
      input.forEach((item: unknown, i: number) => {
        if (item === null || typeof item !== 'object') {
          throw new InvalidOptionError('secret', `entry ${i} must be an object { id, secret }, got ${describeType(item)}`)
        }
        const { id, secret } = item as { id?: unknown, secret?: unknown }
        if (typeof id !== 'string' || !KEY_ID_PATTERN.test(id)) {
          throw new InvalidOptionError(
            'secret',
            `entry ${i} has id ${typeof id === 'string' ? JSON.stringify(id) : describeType(id)}; ` +
            'an id is 1 to 32 characters of A-Z a-z 0-9 . _ -'
          )
        }
        if (seen.has(id)) {
          throw new InvalidOptionError('secret', `key id "${id}" appears more than once; ids must be unique`)
        }
        seen.add(id)
        const where = `the secret of key id "${id}"`
        const bytes = secretBytes(secret, where)
        checkLength(bytes, where)
        entries.push({ id, secret: bytes })
      })
    } else {
      throw new InvalidOptionError(
        'secret',
        `must be a string, a Buffer or an array of { id, secret } newest first, got ${describeType(input)}`
      )
    }
    this.#entries = entries
    this.ids = Object.freeze(entries.map((e) => e.id))
    // entries is non-empty: each branch above either pushed or threw.
    this.currentId = (entries[0] as RingEntry).id
  }

  /** Number of secrets in the ring. */
  get size (): number {
    return this.#entries.length
  }

  /**
   * One 32-byte subkey per secret, newest first, by HKDF-SHA256 with `purpose` as info. Deterministic, so every
   * instance derives the same keys; distinct purposes give independent keys, so a leak of, say, the cookie key says
   * nothing about the entry key. Fresh buffers each call: callers may zero them after use.
   */
  derive (purpose: string): Buffer[] {
    checkPurpose(purpose)
    const info = Buffer.from(purpose, 'utf8')
    return this.#entries.map((e) => Buffer.from(hkdfSync('sha256', e.secret, HKDF_SALT, info, SUBKEY_BYTES)))
  }

  /** Id of the oldest secret: the last one a rotation retires. */
  get oldestId (): string {
    return (this.#entries[this.#entries.length - 1] as RingEntry).id
  }

  /**
   * The oldest secret's subkey for `purpose` (the last of derive()'s). For what every instance must agree on across
   * a rotation: putting a new secret in front, the first step of a rotation, leaves it unchanged, so the rolling
   * deploy itself cannot split the cluster (TLS session id context, cart chain digests, order ids).
   */
  deriveOldest (purpose: string): Buffer {
    checkPurpose(purpose)
    const oldest = this.#entries[this.#entries.length - 1] as RingEntry
    return Buffer.from(hkdfSync('sha256', oldest.secret, HKDF_SALT, Buffer.from(purpose, 'utf8'), SUBKEY_BYTES))
  }
}

interface SealingKey {
  readonly id: string
  /** Envelope header for this key: version, id length, id. Also the first part of the authenticated data. */
  readonly header: Buffer
  readonly key: KeyObject
}

/**
 * Seals and opens envelopes with the subkeys a ring derives for one purpose. Keys are derived and imported once
 * here, so seal and open cost one cipher setup each and no key derivation.
 */
export class Sealer {
  readonly purpose: string
  readonly #current: SealingKey
  readonly #byId: ReadonlyMap<string, SealingKey>

  constructor (ring: KeyRing, purpose = 'entry') {
    checkPurpose(purpose)
    this.purpose = purpose
    const subkeys = ring.derive(purpose)
    const byId = new Map<string, SealingKey>()
    ring.ids.forEach((id, i) => {
      const subkey = subkeys[i] as Buffer
      const idBytes = Buffer.from(id, 'latin1')
      const header = Buffer.allocUnsafe(HEADER_FIXED_BYTES + idBytes.length)
      header[0] = FORMAT_VERSION
      header[1] = idBytes.length
      idBytes.copy(header, HEADER_FIXED_BYTES)
      byId.set(id, { id, header, key: createSecretKey(subkey) })
      // The KeyObject holds its own copy; do not leave the raw subkey lying in the heap.
      subkey.fill(0)
    })
    this.#byId = byId
    this.#current = byId.get(ring.currentId) as SealingKey
  }

  /** Id of the key new envelopes are sealed with. */
  get currentId (): string {
    return this.#current.id
  }

  /** Encrypts `plaintext` under the newest key; `aad` is authenticated but not stored, so open needs the same. */
  seal (plaintext: Buffer, aad: Buffer): Buffer {
    const { header, key } = this.#current
    const ivAt = header.length
    const tagAt = ivAt + IV_BYTES
    const bodyAt = tagAt + TAG_BYTES
    const out = Buffer.allocUnsafe(bodyAt + plaintext.length)
    header.copy(out, 0)
    takeIv(out, ivAt)
    const cipher = createCipheriv('aes-256-gcm', key, out.subarray(ivAt, tagAt), { authTagLength: TAG_BYTES })
    cipher.setAAD(header)
    cipher.setAAD(aad)
    const body = cipher.update(plaintext)
    body.copy(out, bodyAt)
    const rest = cipher.final() // empty for GCM, but final() is what computes the tag
    rest.copy(out, bodyAt + body.length)
    cipher.getAuthTag().copy(out, tagAt)
    return out
  }

  /**
   * Decrypts an envelope sealed by any key of the ring with the same `aad`. Throws CorruptEntryError naming `label`
   * (default 'entry') and the reason. A function label is only called on failure, for labels that cost something.
   */
  open (envelope: Buffer, aad: Buffer, label?: string | (() => string)): Buffer {
    // Annotated, not inferred: TypeScript only narrows after calls to never-returning functions of declared type.
    const fail: (reason: string) => never = (reason) => {
      throw new CorruptEntryError(typeof label === 'function' ? label() : (label ?? 'entry'), reason)
    }
    if (envelope.length < MIN_ENVELOPE_BYTES) {
      fail(`envelope is ${envelope.length} bytes, shorter than the ${MIN_ENVELOPE_BYTES}-byte minimum: truncated or not sealed`)
    }
    if (envelope[0] !== FORMAT_VERSION) {
      fail(`unknown envelope format version ${envelope[0] ?? 'none'} (this code reads version ${FORMAT_VERSION})`)
    }
    const idLength = envelope[1] ?? 0
    const ivAt = HEADER_FIXED_BYTES + idLength
    const tagAt = ivAt + IV_BYTES
    const bodyAt = tagAt + TAG_BYTES
    if (idLength === 0 || envelope.length < bodyAt) {
      fail(`envelope is ${envelope.length} bytes, too short for its ${idLength}-byte key id, IV and tag: truncated`)
    }
    const id = envelope.toString('latin1', HEADER_FIXED_BYTES, ivAt)
    const sealingKey = this.#byId.get(id)
    if (sealingKey === undefined) {
      // Only echo ids that are well-formed: anything else is attacker-controlled bytes headed for a log line.
      fail(KEY_ID_PATTERN.test(id)
        ? `sealed with key id ${id} which is not in this key ring: another cluster's secret or a retired key`
        : 'malformed key id in the envelope header: corrupt or not sealed by fastify-handoff')
    }
    const decipher = createDecipheriv('aes-256-gcm', sealingKey.key, envelope.subarray(ivAt, tagAt), { authTagLength: TAG_BYTES })
    decipher.setAuthTag(envelope.subarray(tagAt, bodyAt))
    decipher.setAAD(envelope.subarray(0, ivAt))
    decipher.setAAD(aad)
    const body = decipher.update(envelope.subarray(bodyAt))
    try {
      decipher.final()
    } catch {
      body.fill(0) // unauthenticated plaintext must not escape, not even into a reused buffer
      fail('authentication failed: the envelope was tampered with, copied to another key or version, ' +
        'or sealed with a different secret under the same key id')
    }
    return body
  }

  /**
   * The key id an envelope claims, without authenticating it: for metrics during a rotation (how much is still
   * sealed with the old key) or to reseal on read. undefined when the header is malformed.
   */
  openedWith (envelope: Buffer): string | undefined {
    if (envelope.length < MIN_ENVELOPE_BYTES || envelope[0] !== FORMAT_VERSION) return undefined
    const idLength = envelope[1] ?? 0
    if (envelope.length < HEADER_FIXED_BYTES + idLength + IV_BYTES + TAG_BYTES) return undefined
    const id = envelope.toString('latin1', HEADER_FIXED_BYTES, HEADER_FIXED_BYTES + idLength)
    return KEY_ID_PATTERN.test(id) ? id : undefined
  }
}

/**
 * Authenticated data binding an entry to its full key name and version: the version as 8 bytes big-endian, then the
 * key as UTF-8. Fixed width first makes the encoding unambiguous. Sealed with it, an entry copied to another key or
 * replayed at another version fails to open.
 */
export function entryAad (key: string, version: number): Buffer {
  if (!Number.isSafeInteger(version) || version < 0) {
    throw new InvalidOptionError('version', `must be a non-negative safe integer, got ${String(version)}`)
  }
  const keyLength = Buffer.byteLength(key, 'utf8')
  const aad = Buffer.allocUnsafe(8 + keyLength)
  // Two 32-bit halves: exact for every safe integer and cheaper than a BigInt round trip.
  aad.writeUInt32BE(Math.floor(version / 0x1_0000_0000), 0)
  aad.writeUInt32BE(version % 0x1_0000_0000, 4)
  aad.write(key, 8, keyLength, 'utf8')
  return aad
}

/**
 * A label for errors about an entry. Key names contain session and cart ids, which are bearer credentials, so errors
 * (and the logs they end up in) carry a short hash an operator can match against a known key instead.
 */
export function entryLabel (key: string): string {
  return `key sha256:${createHash('sha256').update(key, 'utf8').digest('hex').slice(0, 12)}`
}

/** Seals an entry's serialized value, bound to its key name and version. */
export function sealEntry (sealer: Sealer, key: string, version: number, plaintext: Buffer): Buffer {
  return sealer.seal(plaintext, entryAad(key, version))
}

/** Opens what sealEntry sealed for the same key and version; CorruptEntryError (labelled by entryLabel) otherwise. */
export function openEntry (sealer: Sealer, key: string, version: number, envelope: Buffer): Buffer {
  return sealer.open(envelope, entryAad(key, version), () => entryLabel(key))
}
