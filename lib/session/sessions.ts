import type { Collection } from '../collection.js'
import type { KeyRing } from '../seal.js'
import type { TieredStore } from '../tiered-store.js'
import { SessionCookieCodec } from './cookie.js'
import { parseStoredSession, SESSION_KIND, type StoredSession } from './model.js'
import type { DebugLogger, SessionMetrics, SessionPolicy } from './types.js'
import { UserIndex } from './user-index.js'

/** Everything the sessions of one registration share between requests: the stored shapes, the cookie, the counters. */
export class Sessions {
  readonly metrics: SessionMetrics = {
    created: 0,
    loadedLocal: 0,
    loadedRemote: 0,
    loadedDegraded: 0,
    saved: 0,
    conflicts: 0,
    destroyed: 0,
    regenerated: 0,
    touched: 0,
    rejectedCookies: 0,
    notFound: 0,
    ended: 0,
    unavailable: 0
  }

  /** Sessions by id (random, server-made: used as is). */
  readonly stored: Collection<StoredSession>
  readonly index: UserIndex
  readonly cookie: SessionCookieCodec
  /** Fields regenerate() always keeps (keepOnRegenerate). */
  readonly keptOnRegenerate = new Set<string>()
  private readonly touching = new Set<string>()

  constructor (readonly store: TieredStore, ring: KeyRing, readonly policy: SessionPolicy) {
    // Per-purpose subkeys: the cookie key says nothing about the entry-sealing key. Newest signs, all verify.
    this.cookie = new SessionCookieCodec(ring.derive('cookie'))
    this.stored = store.collection(SESSION_KIND, { parse: parseStoredSession })
    this.index = new UserIndex(store, ring, this.stored, policy, this.metrics)
  }

  /** Lazy sliding expiry: one TTL extension per session and instance at a time, in the background. */
  touchLater (id: string, ttlMs: number, log: DebugLogger): void {
    if (this.touching.has(id)) return
    this.touching.add(id)
    this.metrics.touched++
    this.stored.touch(id, ttlMs).then(
      () => { this.touching.delete(id) },
      (err: unknown) => {
        this.touching.delete(id)
        // The store logs the outage once; the session simply keeps its current expiry.
        log.debug({ err }, 'fastify-handoff: idle refresh of a session failed')
      }
    )
  }
}
