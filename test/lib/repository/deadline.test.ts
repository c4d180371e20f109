import t from 'tap'
import { CommandGuard, GuardTicker, GuardsByNode } from '../../../lib/repository/deadline.js'

/** A command Redis never answers (a frozen server), settled only by the test. */
function hanging<T = string> (): { work: () => Promise<T>, answer: (v: T) => void, calls: () => number } {
  let answer: (v: T) => void = () => {}
  let calls = 0
  return {
    work: async () => { calls++; return await new Promise<T>(resolve => { answer = resolve }) },
    answer: v => answer(v),
    calls: () => calls
  }
}

/** Settled state of a promise without waiting for it. */
async function state (p: Promise<unknown>): Promise<'pending' | 'resolved' | 'rejected'> {
  let s: 'pending' | 'resolved' | 'rejected' = 'pending'
  p.then(() => { s = 'resolved' }, () => { s = 'rejected' })
  await new Promise(resolve => setImmediate(resolve))
  return s
}

function guardWithClock (timeoutMs = 1000): { guard: CommandGuard, clock: { now: number }, trips: string[] } {
  const clock = { now: 0 }
  const trips: string[] = []
  // A ticker that never fires on its own in these tests: the clock is advanced and expire() called by hand.
  const ticker = new GuardTicker(60_000)
  const guard = new CommandGuard({ timeoutMs, now: () => clock.now, onTrip: r => trips.push(r), ticker })
  t.teardown(() => ticker.stop())
  return { guard, clock, trips }
}

t.test('an answered command resolves with its value and leaves nothing pending', async t => {
  const { guard } = guardWithClock()
  t.equal(await guard.run(async () => 'PONG'), 'PONG')
  t.equal(guard.pendingCount, 0)
  t.equal(guard.tripped, false)
  await t.rejects(guard.run(async () => { throw new Error('ERR refused') }), { message: 'ERR refused' }, 'a Redis error passes through')
  t.equal(guard.tripped, false, 'an error answer is an answer: it does not trip the guard')
})

t.test('a command older than the timeout fails with FST_HANDOFF_UNAVAILABLE and trips the guard, once', async t => {
  const { guard, clock, trips } = guardWithClock(1000)
  const h = hanging()
  const p = guard.run(h.work)
  clock.now = 999
  t.equal(guard.expire(), true, 'still pending at 999 ms')
  t.equal(await state(p), 'pending')
  t.equal(guard.tripped, false)
  clock.now = 1000
  t.equal(guard.expire(), false, 'nothing left to check')
  await t.rejects(p, { code: 'FST_HANDOFF_UNAVAILABLE', message: /no answer within 1000 ms/ })
  t.equal(guard.tripped, true)
  t.same(trips, ['no answer within 1000 ms'])
  h.answer('late')
  t.equal(guard.pendingCount, 0, 'a late answer changes nothing')
})

t.test('the check stops at the first young command: commands expire in the order they started', async t => {
  const { guard, clock } = guardWithClock(1000)
  const a = hanging()
  const b = hanging()
  const pa = guard.run(a.work)
  clock.now = 500
  const pb = guard.run(b.work)
  clock.now = 1200
  t.equal(guard.expire(), true)
  await t.rejects(pa, { code: 'FST_HANDOFF_UNAVAILABLE' })
  t.equal(await state(pb), 'pending', 'started at 500: 700 ms old, still within its time')
  b.answer('ok')
  t.equal(await pb, 'ok', 'a command that answers in time succeeds although the guard tripped meanwhile')
})

t.test('tripped: run fails at once without sending; bound still sends (the probe); reset closes the circuit', async t => {
  const { guard, trips } = guardWithClock()
  guard.trip('frozen')
  const h = hanging()
  await t.rejects(guard.run(h.work), { code: 'FST_HANDOFF_UNAVAILABLE', message: /frozen/ })
  t.equal(h.calls(), 0, 'nothing was sent to the node')
  t.equal(await guard.bound(async () => 'PONG'), 'PONG', 'the probe goes through while tripped')
  guard.trip('again')
  t.same(trips, ['frozen'], 'one onTrip per outage')
  guard.reset()
  t.equal(guard.tripped, false)
  t.equal(await guard.run(async () => 1), 1)
  guard.trip('second outage')
  t.same(trips, ['frozen', 'second outage'])
})

t.test('failAll rejects every pending command with its reason', async t => {
  const { guard } = guardWithClock()
  const a = hanging()
  const b = hanging()
  const pa = guard.run(a.work)
  const pb = guard.bound(b.work)
  guard.failAll('repository closed')
  await t.rejects(pa, { code: 'FST_HANDOFF_UNAVAILABLE', message: /repository closed/ })
  await t.rejects(pb, { code: 'FST_HANDOFF_UNAVAILABLE', message: /repository closed/ })
  t.equal(guard.pendingCount, 0)
  t.equal(guard.tripped, false, 'closing is not an outage')
  a.answer('late')
})

t.test('work that throws synchronously fails its command and leaves nothing pending', async t => {
  const { guard } = guardWithClock()
  await t.rejects(guard.run(() => { throw new Error('ERR bad') }), { message: 'ERR bad' })
  t.equal(guard.pendingCount, 0)
})

t.test('one ticker checks several guards in real time, and each trips alone', async t => {
  const ticker = new GuardTicker(GuardTicker.periodFor(30))
  // The ticker's interval is unref'd (a Redis socket keeps a real process alive): keep this one alive meanwhile.
  const keepAlive = setTimeout(() => {}, 10_000)
  t.teardown(() => { ticker.stop(); clearTimeout(keepAlive) })
  const tripped: string[] = []
  const frozen = new CommandGuard({ timeoutMs: 30, ticker, onTrip: () => tripped.push('frozen') })
  const healthy = new CommandGuard({ timeoutMs: 30, ticker, onTrip: () => tripped.push('healthy') })
  const h = hanging()
  const p = frozen.run(h.work)
  const answers = await Promise.all(Array.from({ length: 5 }, async (_, i) => await healthy.run(async () => i)))
  await t.rejects(p, { code: 'FST_HANDOFF_UNAVAILABLE' }, 'the shared interval expired the hanging command')
  t.same(answers, [0, 1, 2, 3, 4])
  t.same(tripped, ['frozen'])
  t.equal(healthy.tripped, false)
})

t.test('GuardsByNode: a guard per node, tripped and dropped one by one', async t => {
  const clock = { now: 0 }
  const trips: Array<[string, string]> = []
  const guards = new GuardsByNode({ timeoutMs: 100, now: () => clock.now, onTrip: (node, reason) => trips.push([node, reason]) })
  t.teardown(() => guards.failAll('test over'))
  t.equal(guards.of('a:1'), guards.of('a:1'), 'one guard per node name')
  const h = hanging()
  const pa = guards.of('a:1').run(h.work)
  clock.now = 100
  guards.of('a:1').expire()
  await t.rejects(pa, { code: 'FST_HANDOFF_UNAVAILABLE' })
  t.same(trips, [['a:1', 'no answer within 100 ms']])
  t.same(guards.tripped(), ['a:1'])
  t.equal(await guards.of('b:2').run(async () => 'ok'), 'ok', 'another node is not affected')
  await t.rejects(guards.of('a:1').run(async () => 'x'), { code: 'FST_HANDOFF_UNAVAILABLE' })

  const stuck = hanging()
  const ps = guards.of('a:1').bound(stuck.work)
  guards.drop('a:1', 'a:1 left the topology')
  await t.rejects(ps, { message: /left the topology/ }, 'what was still pending on a dropped node fails')
  t.same(guards.tripped(), [])
  t.equal(await guards.of('a:1').run(async () => 'fresh'), 'fresh', 'a node seen again starts with a closed circuit')
  guards.of('b:2').trip('x')
  guards.resetAll()
  t.same(guards.tripped(), [])
})
