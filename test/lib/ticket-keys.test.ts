import { randomBytes } from 'node:crypto'
import t from 'tap'
import { MemoryRepository } from '../../lib/repository/memory.js'
import {
  TICKET_KEY_BYTES, TicketKeySchedule, TieredTicketKeyStore, ticketKeyId,
  type Clock, type TicketKeyEvent, type TicketKeyScheduleOptions, type TicketKeyStore
} from '../../lib/ticket-keys.js'
import { TieredStore } from '../../lib/tiered-store.js'

const SECRET = 'ticket-key test secret, at least 32 bytes'
const OTHER = 'another cluster secret, at least 32 bytes'
const P = 10_000

/** Manual clock: timers fire only inside advance(), in time order, and the async work they start is drained. */
class FakeClock implements Clock {
  t: number
  private seq = 0
  private readonly timers = new Map<number, { at: number, fn: () => void }>()
  constructor (t: number) { this.t = t }
  now = (): number => this.t
  setTimeout = (fn: () => void, ms: number): unknown => {
    const id = ++this.seq
    this.timers.set(id, { at: this.t + ms, fn })
    return id
  }

  clearTimeout = (h: unknown): void => { this.timers.delete(h as number) }
  get pending (): number { return this.timers.size }

  async advance (ms: number): Promise<void> {
    const target = this.t + ms
    for (;;) {
      let first: [number, { at: number, fn: () => void }] | undefined
      for (const e of this.timers) if (e[1].at <= target && (first === undefined || e[1].at < first[1].at)) first = e
      if (first === undefined) break
      this.timers.delete(first[0])
      this.t = Math.max(this.t, first[1].at)
      first[1].fn()
      await drain()
    }
    this.t = target
  }
}

async function drain (): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise(resolve => setImmediate(resolve))
}

/** An in-memory TicketKeyStore that can fail, hold foreign keys, and records what it was asked. */
class FakeKeyStore implements TicketKeyStore {
  readonly keys = new Map<number, Buffer>()
  readonly foreign = new Set<number>()
  readonly obtained: number[] = []
  readonly removed: number[] = []
  readonly ttls: number[] = []
  down = false
  async obtain (epoch: number, ttlMs: number): Promise<Buffer | undefined> {
    this.obtained.push(epoch)
    this.ttls.push(ttlMs)
    if (this.down) throw new Error('repository unavailable')
    if (this.foreign.has(epoch)) return undefined
    let k = this.keys.get(epoch)
    if (k === undefined) {
      k = randomBytes(TICKET_KEY_BYTES)
      this.keys.set(epoch, k)
    }
    // A copy, as a real store gives: the schedule zeroes the keys it retires.
    return Buffer.from(k)
  }

  readonly confirmed: number[] = []
  async confirm (epoch: number, ttlMs: number, key: Buffer): Promise<{ key: Buffer, written: boolean } | undefined> {
    this.confirmed.push(epoch)
    if (this.down) throw new Error('repository unavailable')
    if (this.foreign.has(epoch)) return undefined
    const k = this.keys.get(epoch)
    if (k !== undefined) return { key: Buffer.from(k), written: false }
    this.keys.set(epoch, Buffer.from(key))
    this.ttls.push(ttlMs)
    return { key: Buffer.from(key), written: true }
  }

  async remove (epoch: number): Promise<void> {
    if (this.down) throw new Error('repository unavailable')
    this.removed.push(epoch)
    this.keys.delete(epoch)
  }
}

interface Instance {
  schedule: TicketKeySchedule
  applied: Array<{ epoch: number, at: number, key: string }>
  events: TicketKeyEvent[]
}

function instance (clock: FakeClock, store: TicketKeyStore, extra: Partial<TicketKeyScheduleOptions> = {}): Instance {
  const applied: Instance['applied'] = []
  const events: TicketKeyEvent[] = []
  const schedule = new TicketKeySchedule({
    store,
    periodMs: P,
    clock,
    apply: (key, epoch) => { applied.push({ epoch, at: clock.now(), key: key.toString('hex') }) },
    onEvent: e => { events.push(e) },
    ...extra
  })
  return { schedule, applied, events }
}

t.test('defaults follow the period', async t => {
  const s = new TicketKeySchedule({ store: new FakeKeyStore(), apply: () => {}, periodMs: 43_200_000 })
  t.equal(s.leadMs, 60_000)
  t.equal(s.maxClockSkewMs, 5000)
  t.equal(s.retryMs, 5000)
  const short = new TicketKeySchedule({ store: new FakeKeyStore(), apply: () => {}, periodMs: 2000 })
  t.equal(short.leadMs, 500)
  t.equal(short.maxClockSkewMs, 500)
  t.equal(short.retryMs, 100)
})

t.test('options are checked', async t => {
  const store = new FakeKeyStore()
  t.throws(() => new TicketKeySchedule({ store, apply: () => {}, periodMs: 999 }), { message: /ticketKeyPeriodMs.*between 1000/ })
  t.throws(() => new TicketKeySchedule({ store, apply: () => {}, periodMs: 4000, maxClockSkewMs: 1001 }), { message: /maxClockSkewMs.*between 0 and 1000/ })
  t.throws(() => new TicketKeySchedule({ store, apply: () => {}, periodMs: 4000, leadMs: 0 }), { message: /leadMs/ })
  t.throws(() => new TicketKeySchedule({ store, apply: () => {}, periodMs: 1.5 as number }), { code: 'FST_HANDOFF_INVALID_OPTION' })
})

t.test('two instances share one key per epoch, prepare it ahead and switch exactly at the boundary', async t => {
  const e = 100
  const clock = new FakeClock(e * P + 1000)
  const store = new FakeKeyStore()
  const a = instance(clock, store)
  const b = instance(clock, store)
  await a.schedule.start()
  await b.schedule.start()
  t.equal(a.applied.length, 1)
  t.equal(a.applied[0]?.epoch, e)
  t.equal(a.applied[0]?.key, b.applied[0]?.key, 'same key on both')
  t.equal(store.keys.size, 1, 'created once')
  t.equal(a.schedule.currentEpoch, e)

  const lead = a.schedule.leadMs
  await clock.advance((e + 1) * P - lead - 1 - clock.now())
  t.notOk(store.obtained.includes(e + 1), 'next key not read before the lead time')
  await clock.advance(1)
  t.equal(a.schedule.preparedEpoch, e + 1, 'next key prepared at boundary - lead')
  t.equal(b.schedule.preparedEpoch, e + 1)
  await clock.advance(lead - 1)
  t.equal(a.applied.length, 1, 'still on the old key 1 ms before the boundary')
  store.down = true // the switch itself needs no repository
  await clock.advance(1)
  t.same(a.applied.map(x => [x.epoch, x.at]), [[e, e * P + 1000], [e + 1, (e + 1) * P]], 'A switched at the boundary')
  t.same(b.applied.map(x => [x.epoch, x.at]), [[e, e * P + 1000], [e + 1, (e + 1) * P]], 'B switched at the boundary')
  t.equal(a.applied[1]?.key, b.applied[1]?.key, 'to the same key')
  t.not(a.applied[1]?.key, a.applied[0]?.key, 'a new key')
  t.equal(a.schedule.counters.rotations, 1)
  t.same(a.events.filter(x => x.type === 'applied'), [{ type: 'applied', epoch: e, rotation: false }, { type: 'applied', epoch: e + 1, rotation: true }])
  store.down = false
  a.schedule.stop()
  b.schedule.stop()
})

t.test('retired keys are deleted maxClockSkewMs after their epoch, with a TTL as backstop', async t => {
  const e = 7
  const clock = new FakeClock(e * P + 1)
  const store = new FakeKeyStore()
  const a = instance(clock, store, { maxClockSkewMs: 2000 })
  await a.schedule.start()
  const ttl = store.ttls[0] ?? 0
  t.ok(ttl >= (e + 1) * P + 2000 - clock.now(), `TTL ${ttl} reaches past the planned deletion`)
  t.ok(ttl <= 2 * P, 'and not much further')
  await clock.advance((e + 1) * P + 2000 - 1 - clock.now())
  t.same(store.removed, [], 'not yet')
  await clock.advance(1)
  t.same(store.removed, [e], 'deleted at boundary + skew')
  t.same(a.events.filter(x => x.type === 'removed'), [{ type: 'removed', epoch: e }])
  t.equal(a.schedule.counters.removed, 1)
  a.schedule.stop()
})

t.test('repository down: keeps the current key, reports once, retries, recovers and switches', async t => {
  const e = 50
  const clock = new FakeClock(e * P + 100)
  const store = new FakeKeyStore()
  const a = instance(clock, store)
  await a.schedule.start()
  store.down = true
  await clock.advance((e + 1) * P + 3 * a.schedule.retryMs - clock.now())
  t.equal(a.schedule.currentEpoch, e, 'still on the old key after the boundary')
  t.equal(a.applied.length, 1, 'nothing applied')
  t.equal(a.events.filter(x => x.type === 'unavailable').length, 1, 'reported once')
  t.ok(a.schedule.counters.errors > 3, `retried (${a.schedule.counters.errors} failures)`)
  t.ok(a.schedule.degraded)
  const calls = store.obtained.length
  await clock.advance(a.schedule.retryMs * 10)
  t.ok(store.obtained.length - calls <= 11, 'retries are paced by retryMs')
  store.down = false
  await clock.advance(a.schedule.retryMs)
  t.equal(a.schedule.currentEpoch, e + 1, 'switched once the key could be read')
  t.equal(a.events.filter(x => x.type === 'recovered').length, 1)
  t.notOk(a.schedule.degraded)
  t.notOk(JSON.stringify(a.events).includes(a.applied[1]?.key ?? 'none'), 'no key in any event')
  a.schedule.stop()
})

t.test('repository down at start: no shared key, retries, applies when it answers', async t => {
  const clock = new FakeClock(3 * P + 10)
  const store = new FakeKeyStore()
  store.down = true
  const a = instance(clock, store)
  await a.schedule.start()
  t.equal(a.schedule.currentEpoch, undefined)
  t.equal(a.applied.length, 0)
  store.down = false
  await clock.advance(a.schedule.retryMs)
  t.equal(a.schedule.currentEpoch, 3)
  t.equal(a.applied.length, 1)
  a.schedule.stop()
})

t.test('an unusable key (another secret, or retired) is reported once and not hammered', async t => {
  const clock = new FakeClock(5 * P + 10)
  const store = new FakeKeyStore()
  store.foreign.add(5)
  const a = instance(clock, store)
  await a.schedule.start()
  await clock.advance(P / 2)
  t.equal(a.applied.length, 0)
  t.same(a.events, [{ type: 'unusable', epoch: 5 }])
  t.ok(store.obtained.filter(x => x === 5).length <= 2, 'no retry loop')
  await clock.advance(P)
  t.equal(a.schedule.currentEpoch, 6, 'the next epoch works again')
  a.schedule.stop()
})

t.test('a wall clock stepping back does not return to an older key', async t => {
  const clock = new FakeClock(20 * P + 10)
  const store = new FakeKeyStore()
  const a = instance(clock, store)
  await a.schedule.start()
  clock.t -= P
  await a.schedule.run()
  t.equal(a.schedule.currentEpoch, 20)
  t.equal(a.applied.length, 1)
  a.schedule.stop()
})

t.test('reapply installs the current key again; stop wipes keys and timers', async t => {
  const clock = new FakeClock(30 * P + 10)
  const store = new FakeKeyStore()
  let last: Buffer | undefined
  const a = instance(clock, store, { apply: k => { last = k } })
  await a.schedule.start()
  const held = last
  last = undefined
  a.schedule.reapply()
  t.equal(last, held)
  t.ok(clock.pending > 0)
  a.schedule.stop()
  t.equal(clock.pending, 0, 'no timer left')
  t.ok(held?.every(b => b === 0), 'key bytes zeroed')
  t.equal(a.schedule.currentEpoch, undefined)
})

t.test('an apply that throws is reported and retried, never an unhandled rejection', async t => {
  const clock = new FakeClock(40 * P + 10)
  const store = new FakeKeyStore()
  let fail = true
  const a = instance(clock, store, { apply: () => { if (fail) throw new Error('boom') } })
  await a.schedule.start()
  t.match(a.events[0], { type: 'error', reason: 'boom' })
  fail = false
  await clock.advance(a.schedule.retryMs)
  t.equal(a.schedule.currentEpoch, 40)
  a.schedule.stop()
})

t.test('TieredTicketKeyStore: create-if-absent, shared, never overwritten, never resurrected', async t => {
  const repository = new MemoryRepository()
  t.teardown(async () => { await repository.close() })
  const mk = async (secret: string): Promise<TieredStore> => {
    const s = new TieredStore({ repository, secret, coherence: false })
    await s.start()
    return s
  }
  const s1 = await mk(SECRET)
  const s2 = await mk(SECRET)
  const foreign = await mk(OTHER)
  const k1 = new TieredTicketKeyStore(s1)
  const k2 = new TieredTicketKeyStore(s2)
  const a = await k1.obtain(1, 60_000)
  const b = await k2.obtain(1, 60_000)
  t.equal(a?.length, 48)
  t.same(a, b, 'both instances get the same key')
  const entry = await s1.get(k1.keyOf(1))
  t.equal(entry?.version, 1, 'the second obtain wrote nothing (no version bump)')

  // Same namespace forced: the foreign cluster's store finds an entry it cannot open and must leave it alone.
  const clash = new TieredTicketKeyStore(foreign, { namespace: k1.namespace })
  t.equal(await clash.obtain(1, 60_000), undefined, 'another secret: unusable, not replaced')
  t.same(await k2.obtain(1, 60_000), a, 'the cluster key is intact')
  t.not(new TieredTicketKeyStore(foreign).namespace, k1.namespace, 'by default another secret uses another namespace')
  t.equal(new TieredTicketKeyStore(await mk(SECRET)).namespace, k1.namespace)

  await k1.remove(1)
  t.equal(await k2.obtain(1, 60_000), undefined, 'a deleted (retired) key is not created again')
  t.equal((await k2.obtain(2, 60_000))?.length, 48, 'other epochs unaffected')
  t.throws(() => new TieredTicketKeyStore(s1, { namespace: 'a b' }), { code: 'FST_HANDOFF_INVALID_OPTION' })
  await Promise.all([s1.close(), s2.close(), foreign.close()])
})

t.test('after a wipe, an instance started anew creates another key; the others adopt it within checkMs', async t => {
  const e = 60
  const clock = new FakeClock(e * P + 100)
  const store = new FakeKeyStore()
  const a = instance(clock, store, { checkMs: 500 })
  const b = instance(clock, store, { checkMs: 500 })
  await a.schedule.start()
  await b.schedule.start()
  const k1 = a.applied[0]?.key ?? ''
  t.equal(a.schedule.checkMs, 500)
  store.keys.clear() // FLUSHALL, or Redis restarted empty
  const c = instance(clock, store, { checkMs: 500 })
  await c.schedule.start()
  const k2 = c.applied[0]?.key ?? ''
  t.not(k2, k1, 'the new instance found nothing and created another key')
  t.not(a.schedule.currentKeyId, c.schedule.currentKeyId, 'a split, visible in the key ids')
  await clock.advance(500)
  for (const [name, x] of [['A', a], ['B', b]] as const) {
    t.equal(x.applied.at(-1)?.key, k2, `${name} adopted the stored key`)
    t.equal(x.applied.at(-1)?.epoch, e, `${name}: same epoch`)
    t.same(x.events.filter(ev => ev.type === 'adopted'), [{
      type: 'adopted', epoch: e, from: ticketKeyId(Buffer.from(k1, 'hex')), to: ticketKeyId(Buffer.from(k2, 'hex')), prepared: false
    }], `${name}: one 'adopted' event with both ids`)
    t.equal(x.schedule.counters.adopted, 1)
    t.equal(x.schedule.counters.rotations, 0, 'not a rotation')
    t.same(x.schedule.decryptionKeys().map(k => k.toString('hex')), [k2, k1], `${name}: still decrypts the replaced key`)
  }
  t.equal(a.schedule.currentKeyId, c.schedule.currentKeyId, 'one key id again')
  t.equal(c.events.filter(ev => ev.type === 'adopted' || ev.type === 'restored').length, 0, 'C had the stored key all along')
  await clock.advance(5000)
  t.equal(a.applied.length, 2, 'checks that find the same key change nothing')
  t.ok(store.confirmed.length >= 20, `checked periodically (${store.confirmed.length} checks)`)
  // The replaced key decrypts until its epoch's key would be deleted (end of epoch + skew), then it is wiped.
  await clock.advance((e + 1) * P + a.schedule.maxClockSkewMs - 1 - clock.now())
  t.same(a.schedule.decryptionKeys().slice(1).map(k => k.toString('hex')), [k1, k2],
    'after the boundary: the new epoch key, then the replaced and the retired one')
  const replaced = a.schedule.decryptionKeys()[1]
  await clock.advance(1)
  t.equal(a.schedule.decryptionKeys().length, 1, 'at the deletion time only the new epoch key is left')
  t.ok(replaced?.every(b => b === 0), 'and the replaced key\'s bytes are wiped')
  t.ok(store.removed.includes(e), 'the retired key was deleted from the store')
  for (const x of [a, b, c]) x.schedule.stop()
})

t.test('after a wipe, the first instance to check writes its key back; a new instance then reads that one', async t => {
  const e = 70
  const clock = new FakeClock(e * P + 100)
  const store = new FakeKeyStore()
  const a = instance(clock, store, { checkMs: 500 })
  await a.schedule.start()
  const k1 = a.applied[0]?.key ?? ''
  store.keys.clear()
  await clock.advance(500)
  t.same(a.events.filter(ev => ev.type === 'restored'), [{ type: 'restored', epoch: e, keyId: ticketKeyId(Buffer.from(k1, 'hex')) }])
  t.equal(a.schedule.counters.restored, 1)
  t.equal(store.keys.get(e)?.toString('hex'), k1, 'the key is stored again')
  const c = instance(clock, store, { checkMs: 500 })
  await c.schedule.start()
  t.equal(c.applied[0]?.key, k1, 'the new instance serves the restored key')
  t.equal(a.applied.length, 1, 'A never switched')
  // The next epoch's key, prepared ahead, is checked too.
  await clock.advance((e + 1) * P - a.schedule.leadMs - clock.now())
  t.equal(a.schedule.preparedEpoch, e + 1)
  const prepared = store.keys.get(e + 1)?.toString('hex')
  store.keys.set(e + 1, randomBytes(TICKET_KEY_BYTES)) // another key for e + 1 appeared (wipe + another instance)
  await clock.advance(500)
  t.equal(a.events.filter(ev => ev.type === 'adopted' && ev.prepared).length, 1, 'the prepared key was replaced by the stored one')
  await clock.advance((e + 1) * P - clock.now())
  t.equal(a.applied.at(-1)?.key, store.keys.get(e + 1)?.toString('hex'), 'and that one is applied at the boundary')
  t.not(a.applied.at(-1)?.key, prepared)
  a.schedule.stop()
  c.schedule.stop()
})

t.test('checks while the repository is down: reported once, retried, the key in use is kept', async t => {
  const clock = new FakeClock(80 * P + 100)
  const store = new FakeKeyStore()
  const a = instance(clock, store, { checkMs: 500 })
  await a.schedule.start()
  store.down = true
  await clock.advance(2000)
  t.equal(a.events.filter(ev => ev.type === 'unavailable').length, 1)
  t.equal(a.applied.length, 1)
  store.down = false
  await clock.advance(a.schedule.retryMs)
  t.equal(a.events.filter(ev => ev.type === 'recovered').length, 1)
  a.schedule.stop()
})

t.test('TieredTicketKeyStore.confirm: reads past a local copy, writes back once, the others get that key', async t => {
  const repository = new MemoryRepository()
  t.teardown(async () => { await repository.close() })
  // Coherence on: local copies live for minutes, and a wipe publishes no invalidation.
  const s1 = new TieredStore({ repository, secret: SECRET })
  const s2 = new TieredStore({ repository, secret: SECRET })
  await Promise.all([s1.start(), s2.start()])
  const k1 = new TieredTicketKeyStore(s1)
  const k2 = new TieredTicketKeyStore(s2)
  const held = await k1.obtain(5, 60_000)
  t.ok(held)
  t.same((await k1.confirm(5, 60_000, Buffer.from(held ?? '')))?.written, false, 'present: nothing written')
  const entries = (repository as unknown as { entries: Map<string, unknown> }).entries
  entries.clear() // FLUSHALL
  t.ok(s1.getLocal(k1.keyOf(5)) !== undefined, 'the local tier still has a copy')
  const mine = Buffer.from(held ?? '')
  const back = await k1.confirm(5, 60_000, mine)
  t.equal(back?.written, true, 'missing in the repository: written back')
  t.same(back?.key, held)
  t.ok(mine.every(b => b === 0), 'the caller\'s copy is wiped')
  const other = await k2.confirm(5, 60_000, randomBytes(TICKET_KEY_BYTES))
  t.same(other, { key: held, written: false }, 'another instance gets the written-back key, not its own')
  t.same(await k2.obtain(5, 60_000), held)
  await k1.remove(5)
  t.equal(await k2.confirm(5, 60_000, randomBytes(TICKET_KEY_BYTES)), undefined, 'a retired key is not written back')
  await Promise.all([s1.close(), s2.close()])
})
