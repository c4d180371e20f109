/**
 * The invalidation subscriber's own failures, each made real on a private redis-server: a re-subscription refused
 * after a reconnect while PINGs still answer. What must hold: a heartbeat that proves nothing (no subscription behind
 * it) never renews the lease of local reads; the failure is retried with backoff and reported once per streak.
 */
import t, { type Test } from 'tap'
import { RedisRepository, type RedisRepositoryOptions, type RepositoryEvent } from '../../lib/repository/redis.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { startProxy } from '../helpers/proxy.js'
import { inc } from '../helpers/staleness.js'
import { elapse, waitFor } from '../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
// Long enough that a loaded machine does not lapse it by itself between two checks.
const LEASE = 500

interface Instance { store: TieredStore, repository: RedisRepository, events: RepositoryEvent[] }

async function instance (t: Test, url: string, repoOpts: RedisRepositoryOptions = {}, transport?: 'pubsub'): Promise<Instance> {
  const events: RepositoryEvent[] = []
  const repository = new RedisRepository({ url, commandTimeoutMs: 1000, onEvent: e => { if (e.type !== 'error') events.push(e) }, ...repoOpts })
  const store = new TieredStore({ repository, secret: SECRET, partitions: 16, coherence: { leaseMs: LEASE, transport } })
  await store.start()
  t.teardown(async () => { await store.close(); await repository.close() })
  return { store, repository, events }
}

/** The calls of `command` Redis refused (ACL) or failed so far, from INFO commandstats. */
function refusedCalls (redis: RedisHandle, command: string): number {
  const line = redis.cli('INFO', 'commandstats').split('\n').find(l => l.startsWith(`cmdstat_${command}:`)) ?? ''
  return Number(/rejected_calls=(\d+)/.exec(line)?.[1] ?? 0) + Number(/failed_calls=(\d+)/.exec(line)?.[1] ?? 0)
}

let redis: RedisHandle
t.before(async () => { redis = await startRedis({ private: true }) })
t.teardown(async () => await redis.stop())

t.test('a re-subscription refused after a reconnect keeps the lease void while PINGs answer, and is retried until it works', async t => {
  // The subscriber connects as its own ACL user, so its channel permission can be taken away at runtime without
  // touching the command connection (whose write script must SPUBLISH).
  redis.cli('ACL', 'SETUSER', 'sub', 'on', '>sub-password', '~*', '&*', '+@all')
  t.teardown(() => { redis.cli('ACL', 'DELUSER', 'sub') })
  // Pub/sub's SSUBSCRIBE is the subject (whatever HANDOFF_COHERENCE_TRANSPORT says); the tracking transport's twin,
  // a redirect set-up refused, is in test/lib/repository/tracking.test.ts.
  const a = await instance(t, redis.url, { subscriberOptions: { username: 'sub', password: 'sub-password' } }, 'pubsub')
  const b = await instance(t, redis.url, {}, 'pubsub')
  const k = a.store.key('refused', 'cart')
  await b.store.update(k, inc)
  t.match(await a.store.get(k), { version: 1 })
  t.match(await a.store.get(k), { version: 1, source: 'local' }, 'a holds a copy under a live lease')

  const refusedBefore = refusedCalls(redis, 'ssubscribe')
  // Redis 7 disconnects a subscriber whose channels its user may no longer read; the kill makes sure of it.
  redis.cli('ACL', 'SETUSER', 'sub', 'resetchannels')
  redis.cli('CLIENT', 'KILL', 'USER', 'sub')
  t.ok(await waitFor(() => refusedCalls(redis, 'ssubscribe') > refusedBefore, { timeoutMs: 10_000 }), 'the reconnected subscriber tried to subscribe and was refused')
  t.ok(await waitFor(() => redis.cli('CLIENT', 'LIST').split('\n').some(l => l.includes(' user=sub ') && l.includes('cmd=ping')), { timeoutMs: 10_000 }),
    'its connection is back and answers PINGs')
  await elapse(LEASE * 3)
  t.equal(a.store.health().localReads, false, 'PINGs on an unsubscribed connection do not renew the lease')
  t.equal(a.store.getLocal(k), undefined, 'no copy answers')
  await b.store.update(k, inc)
  t.match(await a.store.get(k), { version: 2, source: 'repository' }, 'reads go to Redis, which has the write a missed')
  const refusedMidway = refusedCalls(redis, 'ssubscribe')
  t.ok(await waitFor(() => refusedCalls(redis, 'ssubscribe') > refusedMidway, { timeoutMs: 10_000 }), 'the subscription is retried')
  t.equal(a.events.filter(e => e.type === 'subscribe-failed').length, 1, 'reported once, however many retries')

  redis.cli('ACL', 'SETUSER', 'sub', 'allchannels')
  t.ok(await waitFor(() => a.store.health().localReads, { timeoutMs: 10_000 }), 'the retry succeeds and the lease is held again')
  t.equal(a.events.filter(e => e.type === 'subscribed').length, 1, 'the recovery is reported once')
  await a.store.get(k)
  t.match(await a.store.get(k), { version: 2, source: 'local' })
  await b.store.update(k, inc)
  t.ok(await waitFor(async () => (await a.store.get(k))?.version === 3, { timeoutMs: 5000 }), 'invalidations arrive again')
})

t.test('Redis restarted empty behind a proxy that keeps connections open: the witness change re-subscribes', async t => {
  // Its own server: this test kills and restarts it.
  const own = await startRedis({ private: true })
  t.teardown(async () => await own.stop())
  const proxy = await startProxy(own.port, own.host, { keepClients: true })
  t.teardown(async () => await proxy.close())
  // a reaches Redis only through the proxy; b directly (its connections see the restart and reconnect).
  // Dead-connection detection (an unanswered PING) off: what must re-subscribe here is the witness change.
  const a = await instance(t, `redis://${own.host}:${proxy.port}`, { subscriberDeadAfterMs: 60_000 })
  const b = await instance(t, own.url)
  const k = a.store.key('restarted', 'session')
  await b.store.update(k, inc)
  await a.store.get(k)
  t.match(await a.store.get(k), { version: 1, source: 'local' })

  // Held, not lost: nothing a sends or Redis answers while the server is replaced may vanish in the proxy (a real
  // proxy that keeps client connections open would not drop bytes silently either; ioredis would then pair replies
  // with the wrong commands). What a's connections then send reaches the new server.
  proxy.blackhole()
  await elapse(100)
  await own.restart()
  proxy.restore()
  t.ok(await waitFor(() => a.store.counters.resets >= 1, { timeoutMs: 10_000 }), 'a saw the witness change: a reset')
  t.equal(a.store.getLocal(k), undefined, 'its copies of the node were dropped')
  // Whatever a's subscriber connection was doing, b's writes on the new server must reach it from now on. (b's own
  // connection saw the restart: wait until it is back.)
  t.ok(await waitFor(() => b.repository.client.status === 'ready', { timeoutMs: 10_000 }), 'b reconnected')
  await b.store.update(k, inc)
  t.ok(await waitFor(async () => (await a.store.get(k))?.version === 1, { timeoutMs: 5000 }), 'a reads what the new server holds')
  t.ok(await waitFor(() => a.store.health().localReads, { timeoutMs: 10_000 }), 'the lease is held again')
  await a.store.get(k)
  t.match(await a.store.get(k), { version: 1, source: 'local' }, 'a holds a copy of the new value')
  await b.store.update(k, inc)
  t.ok(await waitFor(async () => (await a.store.get(k))?.version === 2, { timeoutMs: 5000 }),
    'the next write\'s invalidation reaches a: its subscriber is subscribed on the restarted server')
  t.equal(a.store.getLocal(k)?.version ?? 2, 2, 'and no stale copy answers')
})

t.test('a witness that cannot be read is counted and suspends the lease of that node\'s copies, while PINGs answer', async t => {
  // Its own ACL user for the command connection (the witness read runs there), so GETEX alone can be refused.
  redis.cli('ACL', 'SETUSER', 'cmd', 'on', '>cmd-password', '~*', '&*', '+@all')
  t.teardown(() => { redis.cli('ACL', 'DELUSER', 'cmd') })
  const a = await instance(t, `redis://cmd:cmd-password@${redis.host}:${redis.port}`)
  const k = a.store.key('witness-refused', 'session')
  await a.store.update(k, inc)
  t.match(await a.store.get(k), { version: 1, source: 'local' })
  t.equal(a.store.counters.witnessErrors, 0)

  redis.cli('ACL', 'SETUSER', 'cmd', '-getex')
  t.ok(await waitFor(() => a.store.counters.witnessErrors > 0, { timeoutMs: 5000 }), 'the failed witness read is counted')
  t.ok(await waitFor(() => !a.store.health().localReads, { timeoutMs: 5000 }), 'the lease lapses although PINGs are answered')
  await elapse(LEASE * 2)
  t.equal(a.store.health().localReads, false, 'and stays lapsed while the witness cannot be read')
  t.equal(a.store.getLocal(k), undefined, 'no copy answers as fresh')
  t.match(await a.store.get(k), { version: 1, source: 'repository', degraded: false }, 'reads go to Redis, which answers them')
  const errors = a.store.counters.witnessErrors
  t.ok(await waitFor(() => a.store.counters.witnessErrors > errors, { timeoutMs: 5000 }), 'every failed read counts')

  redis.cli('ACL', 'SETUSER', 'cmd', '+getex')
  t.ok(await waitFor(() => a.store.health().localReads, { timeoutMs: 5000 }), 'the lease is held again once the witness reads')
  await a.store.get(k)
  t.match(await a.store.get(k), { version: 1, source: 'local' })
})
