/**
 * The per-request session state and the cookie decision, without Fastify: lib/session on a TieredStore over the
 * embedded repository. (HTTP behaviour, on Redis, is in test/plugins/auth-session.test.ts.)
 */
import t from 'tap'
import { MemoryRepository } from '../../lib/repository/memory.js'
import { KeyRing } from '../../lib/seal.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { Sessions } from '../../lib/session/sessions.js'
import { decideCookie, SessionState, type CookieAtStart, type CurrentSession } from '../../lib/session/state.js'
import type { FieldKey, NumericField, SessionPolicy } from '../../lib/session/types.js'

const policy: SessionPolicy = { idleTimeoutMs: 60_000, absoluteTimeoutMs: 3_600_000, refreshAfter: 0.25, maxBytes: 16_384, maxSessionsPerUser: 10 }
const log = { debug: () => {} }
const ring = new KeyRing('a session-state test secret of 32+ bytes')

async function setup (): Promise<Sessions> {
  const store = new TieredStore({ repository: new MemoryRepository(), secret: ring, partitions: 64 })
  await store.start()
  t.teardown(async () => { await store.close() })
  return new Sessions(store, ring, policy)
}

/** Untyped names, as a JavaScript caller (or a request body) would pass them. */
const field = (name: string): FieldKey => name as FieldKey
const numeric = (name: string): NumericField => name as NumericField

t.test('field names: __proto__, constructor and prototype are refused with a TypeError; reads see own fields only', async t => {
  const rt = await setup()
  const fresh = new SessionState(rt, log)
  for (const name of ['__proto__', 'constructor', 'prototype']) {
    t.throws(() => fresh.get(field(name)), TypeError, `get('${name}')`)
    t.throws(() => { fresh.set(field(name), 1 as never) }, TypeError, `set('${name}')`)
    t.throws(() => { fresh.delete(field(name)) }, TypeError, `delete('${name}')`)
    t.throws(() => fresh.increment(numeric(name)), TypeError, `increment('${name}')`)
    await t.rejects(fresh.regenerate([field(name)]), TypeError, `regenerate(['${name}'])`)
  }
  t.throws(() => fresh.get(42 as unknown as FieldKey), TypeError, 'a name that is not a string')
  t.equal(fresh.changed, false, 'nothing was recorded')
  for (const name of ['toString', 'hasOwnProperty', 'valueOf', '__defineGetter__']) {
    t.equal(fresh.get(field(name)), undefined, `get('${name}') of a new session: undefined, not inherited`)
  }

  fresh.set(field('theme'), 'dark' as never)
  fresh.user = { id: 'alice' }
  await fresh.save()
  const id = fresh.id as string
  const entry = await rt.stored.get(id)
  t.ok(entry, 'stored')
  const loaded = new SessionState(rt, log)
  loaded.loaded({ id, version: entry?.version ?? 0, renew: false }, entry)
  t.equal(loaded.get(field('theme')), 'dark')
  t.equal(loaded.get(field('toString')), undefined, 'a loaded session: inherited names read as undefined too')
  t.equal(loaded.get(field('missing')), undefined)
  t.throws(() => loaded.get(field('constructor')), TypeError)
})

t.test('the cookie decision: one function of what the cookie named at the start and the session now', async t => {
  const now = 1_000_000
  const current: CurrentSession = { id: 'S1', base: { d: {}, c: now - 1000 }, version: 3, expiresAt: now + policy.idleTimeoutMs }
  const live: CookieAtStart = { kind: 'live', id: 'S1', renew: false, regressed: false }
  const decide = (start: CookieAtStart, cur: CurrentSession | undefined, wrote = false, endedHere = false): string =>
    decideCookie({ start, current: cur, wrote, endedHere }, policy, now).action
  t.equal(decide(live, current), 'none', 'a warm read: no cookie, no touch')
  t.equal(decide(live, current, true), 'set', 'a write: the new version')
  t.equal(decide({ ...live, renew: true }, current), 'set', 'signed with an older key: re-issued')
  t.equal(decide({ ...live, regressed: true }, current), 'set', 'below the cookie\'s floor: re-issued')
  t.equal(decide(live, { ...current, id: 'S2' }), 'set', 'another session than the cookie named (regenerated)')
  t.equal(decide(live, { ...current, expiresAt: now + policy.idleTimeoutMs / 2 }), 'touch', 'half the idle window used: touch')
  t.equal(decide({ kind: 'none' }, undefined), 'none', 'no cookie, nothing stored')
  t.equal(decide({ kind: 'rejected' }, undefined), 'clear', 'a cookie that is not ours')
  t.equal(decide({ kind: 'gone', id: 'S1' }, undefined), 'clear', 'a cookie whose session was gone when the request started')
  t.equal(decide(live, undefined, false, true), 'clear', 'this request ended its session (logout)')
  t.equal(decide(live, undefined), 'none', 'the session ended under this request: the client may hold a newer cookie')
  const set = decideCookie({ start: live, current, wrote: true, endedHere: false }, policy, now)
  t.same(set, { action: 'set', id: 'S1', version: 3, maxAgeS: Math.ceil((current.base.c + policy.absoluteTimeoutMs - now) / 1000) },
    'Max-Age runs to the absolute deadline')
})
