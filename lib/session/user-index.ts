import type { Collection } from '../collection.js'
import { InvalidOptionError } from '../errors.js'
import type { KeyRing } from '../seal.js'
import type { TieredStore } from '../tiered-store.js'
import { INDEX_KIND, parseStoredIndex, type StoredIndex, type StoredSession } from './model.js'
import type { DestroyAllOptions, SessionMetrics, SessionPolicy } from './types.js'

/**
 * The per-user index of session ids ("log out everywhere", the per-user cap): one entry per user, named by an HMAC of
 * the user id. User ids are chosen by people (emails), and the partition hash is not keyed, so raw ids could be
 * picked to pile up on one partition. One collection per ring key: entries made before a rotation are in the older
 * one, re-registered under the newest on the session's next write.
 */
export class UserIndex {
  private readonly byKey: ReadonlyArray<{ id: string, entries: Collection<StoredIndex> }>

  constructor (store: TieredStore, ring: KeyRing, private readonly sessions: Collection<StoredSession>,
    private readonly policy: SessionPolicy, private readonly metrics: SessionMetrics) {
    const keys = ring.derive('user-index')
    this.byKey = ring.ids.map((id, i) => ({ id, entries: store.collection(INDEX_KIND, { parse: parseStoredIndex, idKey: keys[i] as Buffer }) }))
  }

  /** Id of the ring key new index entries are made with. */
  get keyId (): string {
    return (this.byKey[0] as { id: string }).id
  }

  /**
   * Adds a session to its user's index, before the session itself is written: a "log out everywhere" that reads
   * the index after this point sees the id, and its tombstone then stops the session write. Sessions pushed out by
   * the per-user cap are destroyed. Index entries live as long as the longest a session can (absoluteTimeoutMs).
   */
  async register (userId: string, sid: string, deadline: number): Promise<void> {
    let evicted: string[] = []
    const now = Date.now()
    const newest = (this.byKey[0] as { entries: Collection<StoredIndex> }).entries
    const res = await newest.update(userId, (cur) => {
      evicted = []
      const s: Record<string, number> = {}
      for (const [id, d] of Object.entries(cur?.s ?? {})) if (d > now) s[id] = d
      s[sid] = deadline
      const ids = Object.keys(s)
      if (ids.length > this.policy.maxSessionsPerUser) {
        ids.sort((a, b) => (s[a] as number) - (s[b] as number))
        for (const id of ids.slice(0, ids.length - this.policy.maxSessionsPerUser)) {
          if (id === sid) continue
          evicted.push(id)
          delete s[id]
        }
      }
      return { s }
    }, { ttlMs: this.policy.absoluteTimeoutMs })
    this.metrics.conflicts += res.conflicts
    if (evicted.length > 0) {
      await Promise.all(evicted.map(async id => await this.sessions.delete(id)))
      this.metrics.destroyed += evicted.length
    }
  }

  /** Best effort: an id left behind is harmless (its tombstone or expiry makes it dead) and pruned later. */
  async unregister (userId: string, sid: string, keyId: string | undefined): Promise<void> {
    const i = Math.max(0, this.byKey.findIndex(k => k.id === keyId))
    await (this.byKey[i] as { entries: Collection<StoredIndex> }).entries.update(userId, (idx) => {
      if (idx === undefined || !Object.hasOwn(idx.s, sid)) return undefined
      const s = { ...idx.s }
      delete s[sid]
      return { s }
    }, { ttlMs: this.policy.absoluteTimeoutMs })
  }

  async destroyAllFor (userId: string, opts: DestroyAllOptions = {}): Promise<number> {
    assertUserId(userId)
    const victims = new Set<string>()
    // Every key of the ring: entries made before a rotation are still in the older index.
    for (const { entries } of this.byKey) {
      let found: string[] = []
      await entries.update(userId, (idx) => {
        found = []
        if (idx === undefined) return undefined
        const keep: Record<string, number> = {}
        for (const [id, d] of Object.entries(idx.s)) {
          if (id === opts.except) keep[id] = d
          else found.push(id)
        }
        return found.length === 0 ? undefined : { s: keep }
      }, { ttlMs: this.policy.absoluteTimeoutMs })
      for (const id of found) victims.add(id)
    }
    await Promise.all([...victims].map(async id => await this.sessions.delete(id)))
    this.metrics.destroyed += victims.size
    return victims.size
  }

  /** The user's session ids, from every ring key's index, whose absolute deadline has not passed: no scan. */
  async ids (userId: string): Promise<string[]> {
    assertUserId(userId)
    const now = Date.now()
    const found = new Set<string>()
    const indexes = await Promise.all(this.byKey.map(async ({ entries }) => await entries.get(userId)))
    for (const idx of indexes) {
      for (const [id, deadline] of Object.entries(idx?.value.s ?? {})) if (deadline > now) found.add(id)
    }
    return [...found]
  }

  /** Take `sid` out of the user's index under every ring key (it may be in an older one). */
  async remove (userId: string, sid: string): Promise<void> {
    await Promise.all(this.byKey.map(async ({ id }) => { await this.unregister(userId, sid, id) }))
  }
}

export function assertUserId (userId: unknown): asserts userId is string {
  if (typeof userId !== 'string' || userId === '') throw new InvalidOptionError('userId', 'must be a non-empty string')
}
