import type { StoredEntry } from './repository/types.js'
import { type KeyRing, Sealer, entryLabel, openEntry, sealEntry } from './seal.js'

export interface CodecLogger {
  warn: (obj: object, msg?: string) => void
}

/** What encode makes of a value: the JSON the store keeps, its plain bytes (for size limits) and the sealed envelope. */
export interface Encoded {
  json: string
  plain: Buffer
}

/** At most one corrupt-entry line per this many ms: another cluster writing under our prefix must not flood the logs. */
const CORRUPT_LOG_INTERVAL_MS = 60_000

/** Freezes a JSON value and everything in it: values handed out are shared with the local tier. */
export function deepFreeze<T> (v: T): T {
  if (v !== null && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v)
    if (Array.isArray(v)) {
      // By index: Object.keys of an array makes a string per element (a cart's chain and items on every write).
      for (let i = 0; i < v.length; i++) deepFreeze(v[i])
    } else {
      for (const k of Object.keys(v)) deepFreeze((v as Record<string, unknown>)[k])
    }
  }
  return v
}

/**
 * How the store's values become stored bytes and back: JSON, sealed with the cluster's key ring (AES-256-GCM, bound to
 * the key and the version), frozen when opened. An entry that cannot be opened (foreign, tampered, sealed under a
 * retired key) is treated as absent, counted, and logged at most once a minute.
 */
export class EntryCodec<T> {
  private readonly sealer: Sealer
  private corruptLoggedAt = Number.NEGATIVE_INFINITY
  private corruptSuppressed = 0

  constructor (
    keyRing: KeyRing,
    private readonly counters: { corrupt: number },
    private readonly logger: CodecLogger | undefined,
    private readonly now: () => number
  ) {
    this.sealer = new Sealer(keyRing, 'entry')
  }

  /** The JSON of `value` and its bytes, before any size check. */
  encode (value: T): Encoded {
    const json = JSON.stringify(value)
    return { json, plain: Buffer.from(json) }
  }

  /** The envelope stored under `key` as `version`. */
  seal (key: string, version: number, plain: Buffer): Buffer {
    return sealEntry(this.sealer, key, version, plain)
  }

  /** What every other instance will read of an encoded value: the JSON round trip, frozen (never the caller's object). */
  frozen (encoded: Encoded): T {
    return deepFreeze(JSON.parse(encoded.json) as T)
  }

  /** The value of a stored entry; undefined for a tombstone or an entry that cannot be opened (counted as corrupt). */
  decode (key: string, stored: StoredEntry): T | undefined {
    if (stored.value === null) return undefined
    try {
      const plain = openEntry(this.sealer, key, stored.version, stored.value)
      return deepFreeze(JSON.parse(plain.toString('utf8')) as T)
    } catch (err) {
      this.corrupt(key, err)
      return undefined
    }
  }

  /** The id of the ring key that sealed `envelope`, when one of the ring's keys opens it. */
  sealedWith (envelope: Buffer): string | undefined {
    return this.sealer.openedWith(envelope)
  }

  /** Count (and log, at most once a minute) an entry that is not ours or cannot be opened. */
  corrupt (key: string, err: unknown): void {
    this.counters.corrupt++
    const now = this.now()
    if (now - this.corruptLoggedAt < CORRUPT_LOG_INTERVAL_MS) { this.corruptSuppressed++; return }
    this.logger?.warn({
      entry: entryLabel(key),
      reason: err instanceof Error ? err.message : String(err),
      suppressedSinceLast: this.corruptSuppressed
    }, 'fastify-handoff: an entry could not be opened and is treated as absent')
    this.corruptLoggedAt = now
    this.corruptSuppressed = 0
  }
}
