import { createHash } from 'node:crypto'
import type { Collection } from '../collection.js'
import { InvalidOptionError } from '../errors.js'
import type { KeyRing } from '../seal.js'
import type { TieredStore } from '../tiered-store.js'
import { SessionCookieCodec } from './cookie.js'
import { parseStoredSession, SESSION_KIND, type StoredSession } from './model.js'
import type { DebugLogger, ListSessionsOptions, SessionInfo, SessionMetrics, SessionPolicy } from './types.js'
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

  /**
   * The user's live sessions ("your devices"), newest use first, on whichever instance asks: the user's index names
   * them (no scan), each is read through the store, and only sessions still stored, still this user's and within
   * their absolute timeout are listed.
   */
  async list (userId: string, opts: ListSessionsOptions = {}): Promise<SessionInfo[]> {
    const ids = await this.index.ids(userId)
    const entries = await Promise.all(ids.map(async id => [id, await this.stored.get(id)] as const))
    const now = Date.now()
    const out: SessionInfo[] = []
    for (const [id, e] of entries) {
      if (e === undefined || e.value.u?.id !== userId || e.value.c + this.policy.absoluteTimeoutMs <= now) continue
      const s = e.value
      const info: SessionInfo = {
        handle: sessionHandle(id),
        createdAt: s.c,
        // Each write or refresh sets the expiry to one idle timeout ahead (unless capped by the absolute one).
        lastSeenAt: Math.min(now, Math.max(s.c, e.expiresAt - this.policy.idleTimeoutMs)),
        expiresAt: e.expiresAt,
        current: id === opts.current
      }
      if (typeof s.m?.a === 'string') info.userAgent = s.m.a
      if (typeof s.m?.i === 'string') info.address = s.m.i
      out.push(info)
    }
    return out.sort((a, b) => b.lastSeenAt - a.lastSeenAt || b.createdAt - a.createdAt)
  }

  /**
   * End the user's session named by `handle` (from list): a tombstone, so every instance stops honouring it, as
   * for a logout. False when the user has no such live session.
   */
  async destroy (userId: string, handle: string): Promise<boolean> {
    if (typeof handle !== 'string' || handle === '') throw new InvalidOptionError('handle', 'must be a handle from handoffSessions.list()')
    const id = (await this.index.ids(userId)).find(sid => sessionHandle(sid) === handle)
    if (id === undefined) return false
    const e = await this.stored.get(id)
    // An id can stay in an index after its session changed hands (a user set without regenerate): not this user's.
    if (e !== undefined && e.value.u?.id !== userId) return false
    if (e !== undefined) {
      await this.stored.delete(id)
      this.metrics.destroyed++
    }
    await this.index.remove(userId, id)
    return e !== undefined
  }
}

/** The public handle of a session id: SHA-256 of it (one-way: a handle never gives the id), 24 characters. */
export function sessionHandle (id: string): string {
  return createHash('sha256').update('fastify-handoff session handle v1\n').update(id).digest().subarray(0, 18).toString('base64url')
}
