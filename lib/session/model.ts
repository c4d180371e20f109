import type { StoreValue } from '../tiered-store.js'
import type { SessionUser } from './types.js'

/** Store kinds: `<id>:session` holds a session, `<hmac(user id)>:user-sessions` a user's index. */
export const SESSION_KIND = 'session'
export const INDEX_KIND = 'user-sessions'

/** What the store holds under `<id>:session`. Short names: it is sealed and stored for every session. */
export interface StoredSession {
  /** Fields. */
  readonly d: Readonly<Record<string, StoreValue>>
  /** Created at, ms. */
  readonly c: number
  /** User, when signed in. */
  readonly u?: SessionUser
  /** Id of the ring key the user index entry was made with (re-registered after a rotation). */
  readonly x?: string
  /** The device, as the `describe` option recorded it when the session was created or signed in. */
  readonly m?: StoredDevice
}

/** What `describe` recorded: user agent and client address, each as the application gave it (bounded). */
export interface StoredDevice {
  readonly a?: string
  readonly i?: string
}

/** The per-user index: session id -> its absolute deadline (ms). */
export interface StoredIndex {
  readonly s: Readonly<Record<string, number>>
}

export type Op =
  | { t: 'set', k: string, v: StoreValue }
  | { t: 'del', k: string }
  | { t: 'inc', k: string, by: number }

/** Names no session field may have: they are the prototype machinery of JavaScript objects, not data. */
const RESERVED_NAMES: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype'])

/**
 * A session field name is any string but `__proto__`, `constructor` and `prototype` (TypeError): stored fields are
 * plain JSON objects, whose reads must never reach an inherited property and whose writes must never set a prototype.
 */
export function assertFieldName (name: unknown, what = 'session field'): asserts name is string {
  if (typeof name !== 'string') throw new TypeError(`${what} names must be strings, got ${typeof name}`)
  if (RESERVED_NAMES.has(name)) throw new TypeError(`"${name}" cannot be a ${what} name (__proto__, constructor and prototype are refused)`)
}

/** The first own key of `o` that assertFieldName refuses, if any. */
export function reservedKeyOf (o: object): string | undefined {
  for (const k of Object.keys(o)) if (RESERVED_NAMES.has(k)) return k
  return undefined
}

export function isObject (v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

/** The collection's parse: a stored session of any other shape is treated as a corrupt entry (no session). */
export function parseStoredSession (v: unknown): StoredSession {
  if (!isObject(v) || !isObject(v.d) || typeof v.c !== 'number') throw new TypeError('not a stored session')
  if (v.u !== undefined && !(isObject(v.u) && typeof v.u.id === 'string')) throw new TypeError('not a stored session user')
  if (v.m !== undefined && !isObject(v.m)) throw new TypeError('not a stored session device')
  return v as unknown as StoredSession
}

export function parseStoredIndex (v: unknown): StoredIndex {
  if (!isObject(v) || !isObject(v.s)) throw new TypeError('not a user session index')
  return v as unknown as StoredIndex
}

/** Apply a request's deltas to `cur`, the newest stored value: pure, re-run after every lost compare-and-set. */
export function applyOps (cur: StoredSession, ops: readonly Op[], userChange: SessionUser | null | undefined, indexedWith?: string,
  device?: StoredDevice): StoredSession {
  const d: Record<string, StoreValue> = { ...cur.d }
  for (const op of ops) {
    if (op.t === 'set') d[op.k] = op.v
    else if (op.t === 'del') delete d[op.k]
    else {
      const v = d[op.k]
      d[op.k] = (typeof v === 'number' ? v : 0) + op.by
    }
  }
  const next: { d: Record<string, StoreValue>, c: number, u?: SessionUser, x?: string, m?: StoredDevice } = { d, c: cur.c }
  const u = userChange === undefined ? cur.u : userChange ?? undefined
  if (u !== undefined) {
    next.u = u
    // Which ring key the user's index entry was made with; a rotation is noticed and re-registered on a write.
    const x = indexedWith ?? cur.x
    if (x !== undefined) next.x = x
  }
  const m = device ?? cur.m
  if (m !== undefined) next.m = m
  return next
}
