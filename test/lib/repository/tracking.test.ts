/**
 * The client-tracking transport (coherence: { transport: 'tracking' }) on a real Redis: what it does that pub/sub
 * does not (only holders are told; the writer keeps tracking what it wrote or touched; one hub per connection) and
 * the gaps it must treat as such (FLUSHALL's null message, a killed command connection, tracking refused, the
 * tracking table evicting keys). It is the default transport: test/lib/coherence.test.ts and test/fault-history/
 * run the shared guarantees on it, and test/pubsub/ runs them again on pub/sub.
 */
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { RedisRepository, type RepositoryEvent } from '../../../lib/repository/redis.js'
import { TrackingSubscriber } from '../../../lib/repository/tracking-subscriber.js'
import { TieredStore } from '../../../lib/tiered-store.js'
import { partitionOfKey, witnessKey } from '../../../lib/partitions.js'
import { checkStoreOptions } from '../../../plugins/store.js'
import { startRedis, type RedisHandle } from '../../../scripts/redis-server.js'
import { startProxy } from '../../helpers/proxy.js'
import { inc, poll, sleep, violations, writeAll } from '../../helpers/staleness.js'
import { waitFor } from '../../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
const LEASE = 250
/** How often the tracking hub asks CLIENT TRACKINGINFO (lib/repository/tracking-subscriber.ts). */
const TRACKING_CHECK_MS = 1000

async function store (t: Test, url: string, transport: 'tracking' | 'pubsub' = 'tracking', repository = new RedisRepository({ url, commandTimeoutMs: 500 })): Promise<TieredStore> {
  const s = new TieredStore({ repository, secret: SECRET, partitions: 64, coherence: { leaseMs: LEASE, transport } })
  await s.start()
  t.teardown(async () => { await s.close(); await repository.close() })
  return s
}

/** Waits until `s` may answer from its local tier again (its lease renewed after a gap). */
async function localAgain (s: TieredStore, key: string): Promise<boolean> {
  return await waitFor(async () => (await s.get(key))?.source === 'local', { timeoutMs: 3000 })
}

/** A hub on its own private Redis (50 ms beat), with a second connection to play the operator. */
async function privateHub (t: Test): Promise<{ admin: Redis, hub: TrackingSubscriber }> {
  const r = await startRedis({ private: true })
  t.teardown(async () => await r.stop())
  const main = new Redis(r.url, { maxRetriesPerRequest: 0 })
  const admin = new Redis(r.url, { maxRetriesPerRequest: 0 })
  t.teardown(() => { main.disconnect(); admin.disconnect() })
  const hub = new TrackingSubscriber(main, { heartbeatIntervalMs: 50 })
  t.teardown(async () => await hub.close())
  return { admin, hub }
}

/** `a` (on `repository`) holds a copy, under a live lease, of a key that `b` (its own repository) wrote. */
async function holding (t: Test, repository: RedisRepository, name: string): Promise<{ a: TieredStore, b: TieredStore, k: string }> {
  const a = await store(t, redis.url, 'tracking', repository)
  const b = await store(t, redis.url)
  const k = a.key(name, 'cart')
  await b.update(k, inc)
  await a.get(k)
  t.ok(await localAgain(a, k), 'a holds a copy under a live lease')
  return { a, b, k }
}

let redis: RedisHandle
t.before(async () => { redis = await startRedis({ private: true }) })
t.teardown(async () => await redis.stop())

t.test('only the instance holding the key is told; the transport shows in health', async t => {
  const a = await store(t, redis.url)
  const holder = await store(t, redis.url)
  const bystander = await store(t, redis.url)
  t.equal(a.health().coherence, 'tracking')
  const k = a.key('holders-only', 'cart')
  await a.update(k, inc)
  t.match(await holder.get(k), { version: 1, source: 'repository' })
  t.ok(await localAgain(holder, k), 'the holder answers from its copy')
  const heard = { holder: holder.counters.invalidations, bystander: bystander.counters.invalidations, writer: a.counters.invalidations }
  await a.update(k, inc)
  t.ok(await waitFor(() => holder.counters.invalidations > heard.holder), 'the holder was told')
  t.match(await holder.get(k), { version: 2, source: 'repository' }, 'and read the new version')
  t.ok(await waitFor(() => a.counters.invalidations > heard.writer), 'the writer hears its own write (no NOLOOP)')
  await sleep(100)
  t.equal(bystander.counters.invalidations, heard.bystander, 'an instance that never read the key hears nothing')
})

t.test('a writer or toucher never keeps a copy nobody tracks: another writer\'s later write reaches it', async t => {
  const a = await store(t, redis.url)
  const b = await store(t, redis.url)
  const k = a.key('writer-tracks', 'cart')
  await a.update(k, inc)
  // b never read the key: only its write (the script reads, writes, then reads again) can have tracked it. Its own
  // echo may drop its copy (no NOLOOP); whatever it holds must be dropped by a's later write.
  await b.update(k, inc)
  await a.update(k, inc) // a's copy (version 1) is stale: the CAS is refused, returns version 2, then writes 3
  t.ok(await waitFor(async () => (await b.get(k))?.version === 3, { timeoutMs: 2000 }), 'b, which only wrote the key, sees a\'s later write')
  t.ok(await localAgain(b, k), 'b holds version 3 again')
  // touch writes the expiry, which ends tracking as a write does.
  t.ok(await b.touch(k, 60_000))
  await a.update(k, inc)
  t.ok(await waitFor(async () => (await b.get(k))?.version === 4, { timeoutMs: 2000 }), 'b, after its touch, sees a\'s later write')
})

t.test('a writer keeps what it wrote: its own echo does not drop it, the next writer\'s invalidation does', async t => {
  const a = await store(t, redis.url)
  const b = await store(t, redis.url)
  const k = a.key('writer-keeps', 'cart')
  // Kept unless something else was heard meanwhile (a late invalidation of b's previous write, say): then dropped,
  // which is the safe side. A lapsed lease on a loaded machine also hides it; most rounds keep it.
  let kept = 0
  for (let i = 1; i <= 20; i++) {
    const heard = a.counters.invalidations
    await a.update(k, inc)
    t.ok(await waitFor(() => a.counters.invalidations > heard), `write ${i}: a heard its own echo`)
    if (a.getLocal(k)?.version === 2 * i - 1) kept++
    await b.update(k, inc)
    const ackedAt = performance.now()
    t.ok(await waitFor(() => a.coherence?.peek(k, partitionOfKey(k))?.version !== 2 * i - 1, { timeoutMs: 2000 }), `write ${i}: b's write dropped a's copy`)
    const e = await a.get(k)
    if (performance.now() - ackedAt > LEASE || e?.source === 'repository') t.equal(e?.version, 2 * i, `write ${i}: a reads b's write`)
  }
  t.ok(kept >= 10, `a answered from its own write's copy after ${kept} of 20 writes`)
})

t.test('FLUSHALL: the null invalidation resyncs, copies are not served again', async t => {
  const r = await startRedis({ private: true })
  t.teardown(async () => await r.stop())
  const a = await store(t, r.url)
  const b = await store(t, r.url)
  const k = a.key('flushall', 'session')
  await a.update(k, () => ({ user: 'before' }))
  t.match(await b.get(k), { value: { user: 'before' } })
  t.match(await b.get(k), { source: 'local' })
  const resyncs = b.counters.resyncs
  r.cli('FLUSHALL')
  t.ok(await waitFor(() => b.counters.resyncs > resyncs, { timeoutMs: 2000 }), 'the null message was a resync')
  await a.update(k, cur => cur === undefined ? { user: 'after' } : undefined)
  t.ok(await waitFor(async () => (await b.get(k))?.value !== undefined), 'b reads again')
  t.match(await b.get(k), { version: 1, value: { user: 'after' } }, 'b does not serve its copy from before the flush')
  t.ok(await waitFor(() => b.counters.resets >= 1, { timeoutMs: 2000 }), 'the witness confirmed the reset')
})

t.test('command connection killed: tracking is re-enabled, no stale read past the lease', async t => {
  const a = await store(t, redis.url)
  const repository = new RedisRepository({ url: redis.url, commandTimeoutMs: 500, redisOptions: { connectionName: 'tracked-reader' } })
  const b = await store(t, redis.url, 'tracking', repository)
  const k = a.key('main-killed', 'cart')
  await a.update(k, inc)
  await b.get(k)
  t.ok(await localAgain(b, k))
  const p = poll(b, k)
  const resyncs = b.counters.resyncs
  redis.cli('CLIENT', 'KILL', 'SKIPME', 'yes', 'ID', /id=(\d+) [^\n]*name=tracked-reader/.exec(redis.cli('CLIENT', 'LIST'))?.[1] ?? '0')
  const acks = await writeAll(a, k, 20, 10)
  await sleep(LEASE * 2)
  const reads = await p.stop()
  t.same(violations(reads, acks, LEASE), [], `${reads.length} reads, none stale past the lease`)
  t.ok(b.counters.resyncs > resyncs, 'the lost command connection was a resync')
  t.ok(await localAgain(b, k), 'local reads resume')
  const info = redis.cli('CLIENT', 'LIST').split('\n').find(l => l.includes('name=tracked-reader')) ?? ''
  t.match(info, /flags=[^ ]*t/, 'the new command connection has tracking on')
  await a.update(k, inc)
  t.ok(await waitFor(async () => (await b.get(k))?.version === 22, { timeoutMs: 2000 }), 'and its reads are tracked again')
})

t.test('command connection silently blackholed, its tracking client gone on the server: copies stop answering as fresh within the lease', async t => {
  // Only a's command connection goes through the proxy; its redirect connection (opened after it, from
  // subscriberOptions) goes straight to Redis and keeps answering its PINGs, so only a proof from the command
  // connection can end the lease. While the path is silent Redis drops that client (its tracking state with it) and the
  // proxy holds the FIN back: nothing tells a, and no write after it is announced to a's redirect.
  const HEARTBEAT = 50
  const proxy = await startProxy(redis.port, redis.host, { holdCloses: true })
  t.teardown(async () => await proxy.close())
  const repository = new RedisRepository({
    url: `redis://${redis.host}:${proxy.port}`, commandTimeoutMs: 500, subscriberOptions: { port: redis.port }, redisOptions: { connectionName: 'blackholed-main' }
  })
  const { a, b, k } = await holding(t, repository, 'main-blackholed')
  const clients = redis.cli('CLIENT', 'LIST')
  const mainId = /id=(\d+) [^\n]*name=blackholed-main/.exec(clients)?.[1]
  t.ok(mainId !== undefined && /name=fastify-handoff:tracking/.test(clients), 'the command connection and its redirect are known')
  const fresh: Array<{ at: number, version: number }> = []
  const probing = { on: true }
  const probe = (async () => {
    while (probing.on) {
      const at = performance.now()
      const copy = a.getLocal(k)
      if (copy !== undefined) fresh.push({ at, version: copy.version })
      await sleep(2)
    }
  })()
  const p = poll(a, k)
  await sleep(HEARTBEAT * 2)
  const holedAt = performance.now()
  proxy.blackhole()
  redis.cli('CLIENT', 'KILL', 'ID', mainId ?? '0')
  const suspensions = a.counters.leaseSuspensions
  const acks = await writeAll(b, k, 20, 20)
  await sleep(LEASE + HEARTBEAT)
  probing.on = false
  await probe
  const reads = await p.stop()
  t.ok(fresh.some(f => f.at < holedAt), 'the copy answered as fresh before')
  t.same(fresh.filter(f => f.at > holedAt + LEASE + HEARTBEAT), [], `no copy answered as fresh later than a lease and a heartbeat after the command connection went silent (last at +${Math.round((fresh.at(-1)?.at ?? holedAt) - holedAt)} ms)`)
  t.same(violations(reads, acks, LEASE + HEARTBEAT), [], `${reads.length} reads, none stale past the lease`)
  t.ok(a.counters.leaseSuspensions > suspensions, 'the lease lapsed')
  t.equal(a.health().localReads, false, 'and stays lapsed while the command connection is silent')
  proxy.restore()
  t.ok(await waitFor(async () => (await a.get(k))?.version === 21, { timeoutMs: 5000 }), 'once the path delivers (the FIN), a reconnects and reads the writes it missed')
  t.ok(await localAgain(a, k), 'local reads resume on the new command connection')
  await b.update(k, inc)
  t.ok(await waitFor(async () => (await a.get(k))?.version === 22, { timeoutMs: 2000 }), 'and its reads are tracked again')
})

t.test('behind a proxy that keeps client connections open, the command connection\'s server side replaced (data kept): the lost tracking is found within a tracking check, copies stop answering', async t => {
  // A load balancer or mesh that reconnects its server side while the client's connection stays: the command
  // connection goes on answering PINGs and witness reads (Redis kept its data, so the witness is unchanged), but its
  // new server-side client tracks nothing, and no invalidation would ever come. CLIENT TRACKINGINFO finds it.
  const proxy = await startProxy(redis.port, '127.0.0.1', { keepClients: true })
  t.teardown(async () => await proxy.close())
  const a = await store(t, redis.url)
  const b = await store(t, `redis://127.0.0.1:${proxy.port}`)
  const k = a.key('proxy-replaced', 'cart')
  await a.update(k, inc)
  t.match(await b.get(k), { version: 1 })
  t.ok(await localAgain(b, k), 'b answers from its copy')
  const mainId = String(await (b.repository as RedisRepository).client.client('ID'))
  const resyncs = b.counters.resyncs
  redis.cli('CLIENT', 'KILL', 'ID', mainId) // the proxy keeps b's socket and dials again on its next command
  const p = poll(b, k)
  const acks = await writeAll(a, k, 20, 100)
  await sleep(TRACKING_CHECK_MS + LEASE * 2)
  const reads = await p.stop()
  const bound = TRACKING_CHECK_MS + LEASE + 100
  t.same(violations(reads, acks, bound), [], `${reads.length} reads, none stale past a tracking check and a lease (${bound} ms)`)
  t.ok(b.counters.resyncs > resyncs, 'the lost tracking was a resync')
  t.ok(await localAgain(b, k), 'local reads resume')
  await a.update(k, inc)
  t.ok(await waitFor(async () => (await b.get(k))?.version === 22, { timeoutMs: 3000 }), 'and b hears of writes again')
})

t.test('CLIENT TRACKINGINFO refused by an ACL: said once, and the lease goes on', async t => {
  redis.cli('ACL', 'SETUSER', 'noinfo', 'on', '>noinfo-password', '~*', '&*', '+@all', '-client|trackinginfo')
  t.teardown(() => { redis.cli('ACL', 'DELUSER', 'noinfo') })
  const events: RepositoryEvent[] = []
  const repository = new RedisRepository({
    url: `redis://noinfo:noinfo-password@${redis.host}:${redis.port}`, commandTimeoutMs: 500, onEvent: e => { events.push(e) }
  })
  const { a, k } = await holding(t, repository, 'trackinginfo-refused')
  await sleep(TRACKING_CHECK_MS * 3)
  const said = events.filter(e => e.type === 'error' && /TRACKINGINFO refused/.test(e.error.message))
  t.equal(said.length, 1, 'the refusal is reported once, not every second')
  t.match(said[0]?.type === 'error' ? said[0].error.message : '', /\+client\|trackinginfo/, 'naming what to allow')
  t.equal((await a.get(k))?.source, 'local', 'copies still answer: the lease is renewed by the heartbeat as before')
})

t.test('a witness read on the command connection stands in for its PING: at most one PING per heartbeat besides', async t => {
  // The hub on its own Redis, so that Redis's command counts are its own: PINGs on the redirect connection prove
  // delivery every heartbeat; the command connection is proven by any answer, its witness reads included.
  const r = await startRedis({ private: true })
  t.teardown(async () => await r.stop())
  const main = new Redis(r.url, { maxRetriesPerRequest: 0 })
  t.teardown(() => { main.disconnect() })
  let mainPings = 0
  const ping = main.ping.bind(main)
  main.ping = (async () => { mainPings++; return await ping() }) as typeof main.ping
  const hub = new TrackingSubscriber(main, { heartbeatIntervalMs: 50 })
  t.teardown(async () => await hub.close())
  const renewals: number[] = []
  const listener = { onInvalidation: () => {}, onResync: () => {}, onHeartbeat: (sentAt: number) => { renewals.push(sentAt) }, onWitness: () => {} }
  await hub.add({ prefix: 'hub', partitions: 4, transport: 'tracking', witnessIntervalMs: LEASE / 2 }, listener)
  await sleep(300)
  const stats = (): Record<string, number> => Object.fromEntries([...r.cli('INFO', 'commandstats').matchAll(/cmdstat_(\w+):calls=(\d+)/g)].map(m => [m[1], Number(m[2])]))
  const before = stats()
  const pingsBefore = mainPings
  const renewed = renewals.length
  await sleep(2000)
  const after = stats()
  const main2 = mainPings - pingsBefore
  const all = (after.ping ?? 0) - (before.ping ?? 0)
  const reads = (after.getex ?? 0) - (before.getex ?? 0)
  const subPings = all - main2
  t.ok(reads >= 8, `the witness was read (${reads} reads)`)
  t.ok(main2 <= subPings - reads + 2, `${main2} PINGs on the command connection, ${subPings} on the redirect, ${reads} witness reads`)
  t.ok(renewals.length - renewed >= 8, `the lease was renewed all along (${renewals.length - renewed} renewals)`)
})

t.test('a witness read answered with an error proves nothing of the command connection: a PING does, one failed read does not lapse the lease', async t => {
  // The witness reads stand in for the PING on `main` only when they are answered. One refused read (GETEX denied by
  // ACL for that read only) leaves the witness proving the lease for a lease interval, so nothing may lapse; if the
  // refused read still counted as asked, `main` would go unproven for two witness intervals (300 ms at a 50 ms beat).
  const { admin, hub } = await privateHub(t)
  const renewals: number[] = []
  let witnessErrors = 0
  const listener = {
    onInvalidation: () => {},
    onResync: () => {},
    onHeartbeat: (sentAt: number) => { renewals.push(sentAt) },
    onWitness: () => {},
    onWitnessError: () => { witnessErrors++ }
  }
  await hub.add({ prefix: 'hub', partitions: 4, transport: 'tracking', witnessIntervalMs: LEASE / 2 }, listener)
  await sleep(300)
  const from = renewals.length - 1
  // Async (not redis-cli, which would block this process and make the hub's beats late, hence eager).
  await admin.call('ACL', 'SETUSER', 'default', '-getex')
  const refused = await waitFor(() => witnessErrors > 0, { timeoutMs: 2000, intervalMs: 2 })
  await admin.call('ACL', 'SETUSER', 'default', '+getex')
  t.ok(refused, 'one witness read was refused')
  await sleep(LEASE * 2)
  const seen = renewals.slice(from)
  const gaps = seen.slice(1).map((at, i) => at - (seen[i] as number))
  t.ok(seen.length >= 5, `the lease was renewed around the refused read (${seen.length} renewals)`)
  t.ok(Math.max(...gaps) <= LEASE, `no two renewals more than a lease apart (gaps ${gaps.map(g => Math.round(g)).join(', ')} ms)`)
})

t.test('a witness read that finds the node reset proves nothing: no renewal until the redirect is set up again', async t => {
  // The read that sees another witness value drops the redirect (the node lost its data, maybe its tracking state with
  // it); its answer must not renew the lease in the meantime as a proof of the command connection.
  const { admin, hub } = await privateHub(t)
  const events: string[] = []
  let value: string | undefined
  const listener = {
    onInvalidation: () => {},
    onResync: () => { events.push('resync') },
    onHeartbeat: () => { events.push('renewal') },
    onWitness: (_: string, v: string) => { if (value !== undefined && v !== value) events.push('reset'); value = v }
  }
  await hub.add({ prefix: 'hub', partitions: 4, transport: 'tracking', witnessIntervalMs: LEASE / 2 }, listener)
  await sleep(300)
  await admin.set(witnessKey('hub', 0), 'another')
  t.ok(await waitFor(() => events.includes('reset') && events.lastIndexOf('resync') > events.indexOf('reset'), { timeoutMs: 2000 }), 'the reset was seen, then the resync')
  const between = events.slice(events.indexOf('reset') + 1, events.indexOf('resync', events.indexOf('reset')))
  t.same(between, [], 'no renewal between the reset and the resync')
})

t.test('two stores on one repository share one redirect connection', async t => {
  const repository = new RedisRepository({ url: redis.url, commandTimeoutMs: 500 })
  t.teardown(async () => await repository.close())
  const stores = [
    new TieredStore({ repository, secret: SECRET, prefix: 'one:', partitions: 16, coherence: { transport: 'tracking' } }),
    new TieredStore({ repository, secret: SECRET, prefix: 'two:', partitions: 16, coherence: { transport: 'tracking' } })
  ]
  // Redirect connections by client id: an earlier test's, closed but not yet gone from CLIENT LIST, is not counted.
  const redirectIds = (): string[] => redis.cli('CLIENT', 'LIST').split('\n').filter(l => l.includes('name=fastify-handoff:tracking'))
    .map(l => /id=(\d+)/.exec(l)?.[1] ?? '')
  const earlier = new Set(redirectIds())
  const redirects = (): number => redirectIds().filter(id => !earlier.has(id)).length
  for (const s of stores) await s.start()
  t.equal(redirects(), 1, 'one redirect connection for the repository\'s command connection')
  const writer = await store(t, redis.url)
  const w1 = new TieredStore({ repository: writer.repository, secret: SECRET, prefix: 'two:', partitions: 16, coherence: { transport: 'tracking' } })
  await w1.start()
  const k = stores[1]?.key('shared-hub', 'cart') as string
  await w1.update(k, inc)
  await stores[1]?.get(k)
  await w1.update(k, inc)
  t.ok(await waitFor(async () => (await stores[1]?.get(k))?.version === 2, { timeoutMs: 2000 }), 'the second store is told of its keys')
  await w1.close()
  await stores[0]?.close()
  t.equal(redirects(), 2, 'closing one store keeps the connection for the other (plus the writer\'s)')
  await stores[1]?.close()
  t.ok(await waitFor(() => redirects() === 1), 'closing the last one closes it')
})

t.test('the tracking table evicting keys sends invalidations: copies are dropped, never kept stale', async t => {
  const r = await startRedis({ private: true, args: ['--tracking-table-max-keys', '10'] })
  t.teardown(async () => await r.stop())
  const a = await store(t, r.url)
  const b = await store(t, r.url)
  const keys = Array.from({ length: 40 }, (_, i) => a.key(`evict-${i}`, 'cart'))
  for (const k of keys) await a.update(k, inc)
  const heard = b.counters.invalidations
  for (const k of keys) await b.get(k)
  t.ok(await waitFor(() => b.counters.invalidations >= heard + 10), `Redis evicted tracked keys and said so (${b.counters.invalidations - heard} invalidations without a write)`)
  const tracked = Number(/tracking_total_keys:(\d+)/.exec(r.cli('INFO', 'stats'))?.[1] ?? NaN)
  t.ok(tracked <= 10, `the table stays within its bound (${tracked} keys)`)
  let local = 0
  for (const k of keys) if ((await b.get(k))?.source === 'local') local++
  t.ok(local <= 12, `b keeps local copies only of keys Redis still tracks (${local} of 40)`)
  // Every key b still holds is tracked: a write to any of them reaches b.
  for (const k of keys) await a.update(k, inc)
  await sleep(LEASE * 2)
  for (const k of keys) t.equal((await b.get(k))?.version, 2, 'no copy is stale')
})

t.test('a redirect set-up refused after a reconnect keeps the lease void while PINGs answer, and is retried until it works', async t => {
  // The redirect connection connects as its own ACL user, so its channel permission can be taken away at runtime.
  redis.cli('ACL', 'SETUSER', 'trk', 'on', '>trk-password', '~*', '&*', '+@all')
  t.teardown(() => { redis.cli('ACL', 'DELUSER', 'trk') })
  const events: RepositoryEvent[] = []
  const repository = new RedisRepository({
    url: redis.url, commandTimeoutMs: 500, subscriberOptions: { username: 'trk', password: 'trk-password' }, onEvent: e => { if (e.type !== 'error') events.push(e) }
  })
  const { a, b, k } = await holding(t, repository, 'setup-refused')
  redis.cli('ACL', 'SETUSER', 'trk', 'resetchannels')
  redis.cli('CLIENT', 'KILL', 'USER', 'trk')
  t.ok(await waitFor(() => events.some(e => e.type === 'subscribe-failed'), { timeoutMs: 10_000 }), 'the re-subscription was refused and reported')
  await sleep(LEASE * 3)
  t.equal(a.health().localReads, false, 'no heartbeat renews the lease without a redirect set up')
  t.equal(a.getLocal(k), undefined, 'no copy answers')
  await b.update(k, inc)
  t.match(await a.get(k), { version: 2, source: 'repository' }, 'reads go to Redis, which has the write a missed')
  await sleep(300)
  t.equal(events.filter(e => e.type === 'subscribe-failed').length, 1, 'reported once, however many retries')
  redis.cli('ACL', 'SETUSER', 'trk', 'allchannels')
  t.ok(await waitFor(() => a.health().localReads, { timeoutMs: 10_000 }), 'the retry succeeds and the lease is held again')
  t.equal(events.filter(e => e.type === 'subscribed').length, 1, 'the recovery is reported once')
  t.ok(await localAgain(a, k))
  await b.update(k, inc)
  t.ok(await waitFor(async () => (await a.get(k))?.version === 3, { timeoutMs: 5000 }), 'invalidations arrive again')
})

t.test('a Redis or proxy that refuses CLIENT TRACKING: a clear error at start', async t => {
  const r = await startRedis({ private: true })
  t.teardown(async () => await r.stop())
  r.cli('ACL', 'SETUSER', 'default', '-client|tracking')
  const repository = new RedisRepository({ url: r.url, commandTimeoutMs: 500 })
  t.teardown(async () => await repository.close())
  const s = new TieredStore({ repository, secret: SECRET, coherence: { transport: 'tracking' } })
  await t.rejects(s.start(), { code: 'FST_HANDOFF_UNAVAILABLE', message: /CLIENT TRACKING refused.*transport: 'pubsub'/ })
  const fallback = new TieredStore({ repository, secret: SECRET, coherence: { transport: 'pubsub' } })
  await fallback.start()
  t.equal(fallback.health().coherence, 'pubsub', 'pub/sub still works there')
  await fallback.close()
})

t.test('a hub whose start failed is closed for good: adding to it again is refused, opens nothing', async t => {
  const r = await startRedis({ private: true })
  t.teardown(async () => await r.stop())
  r.cli('ACL', 'SETUSER', 'default', '-client|tracking')
  const main = new Redis(r.url, { maxRetriesPerRequest: 0 })
  t.teardown(() => { main.disconnect() })
  const hub = new TrackingSubscriber(main, { heartbeatIntervalMs: 20 })
  t.teardown(async () => await hub.close())
  let heartbeats = 0
  const listener = { onInvalidation: () => {}, onResync: () => {}, onHeartbeat: () => { heartbeats++ } }
  const scope = { prefix: 'hub', partitions: 4, transport: 'tracking' as const }
  await t.rejects(hub.add(scope, listener), { code: 'FST_HANDOFF_UNAVAILABLE', message: /CLIENT TRACKING refused/ })
  t.ok(hub.isClosed, 'the failed start closed the hub')
  r.cli('ACL', 'SETUSER', 'default', '+client|tracking')
  const redirects = (): number => r.cli('CLIENT', 'LIST').split('\n').filter(l => l.includes('name=fastify-handoff:tracking')).length
  await t.rejects(hub.add(scope, listener), { code: 'FST_HANDOFF_UNAVAILABLE', message: /closed/ }, 'a closed hub is not started again')
  await sleep(100)
  t.equal(redirects(), 0, 'no redirect connection was opened for it')
  t.equal(heartbeats, 0)
  // The repository makes a fresh hub in its place: the same connection gets tracking once it is allowed.
  const repository = new RedisRepository({ url: r.url, commandTimeoutMs: 500 })
  t.teardown(async () => await repository.close())
  r.cli('ACL', 'SETUSER', 'default', '-client|tracking')
  const s = new TieredStore({ repository, secret: SECRET, partitions: 4, coherence: { leaseMs: LEASE, transport: 'tracking' } })
  await t.rejects(s.start(), { code: 'FST_HANDOFF_UNAVAILABLE' })
  r.cli('ACL', 'SETUSER', 'default', '+client|tracking')
  const again = new TieredStore({ repository, secret: SECRET, partitions: 4, coherence: { leaseMs: LEASE, transport: 'tracking' } })
  await again.start()
  t.teardown(async () => await again.close())
  t.ok(await waitFor(() => again.health().localReads, { timeoutMs: 5000 }), 'the store on the same repository holds its lease')
})

t.test('the option and its environment default are checked', async t => {
  const repository = new RedisRepository({ url: redis.url, commandTimeoutMs: 500 })
  t.teardown(async () => await repository.close())
  t.throws(() => new TieredStore({ repository, secret: SECRET, coherence: { transport: 'push' as 'pubsub' } }),
    { code: 'FST_HANDOFF_INVALID_OPTION', message: /coherence\.transport/ })
  const saved = process.env.HANDOFF_COHERENCE_TRANSPORT
  t.teardown(() => { if (saved === undefined) delete process.env.HANDOFF_COHERENCE_TRANSPORT; else process.env.HANDOFF_COHERENCE_TRANSPORT = saved })
  delete process.env.HANDOFF_COHERENCE_TRANSPORT
  t.equal(new TieredStore({ repository, secret: SECRET }).coherenceTransport, 'tracking', 'tracking is the default')
  process.env.HANDOFF_COHERENCE_TRANSPORT = ''
  t.equal(new TieredStore({ repository, secret: SECRET }).coherenceTransport, 'tracking', 'an empty variable is no choice')
  process.env.HANDOFF_COHERENCE_TRANSPORT = 'pubsub'
  t.equal(new TieredStore({ repository, secret: SECRET }).coherenceTransport, 'pubsub', 'the environment sets the default')
  t.equal(new TieredStore({ repository, secret: SECRET, coherence: { leaseMs: 100 } }).coherenceTransport, 'pubsub', 'also when only the lease is given')
  process.env.HANDOFF_COHERENCE_TRANSPORT = 'tracking'
  t.equal(new TieredStore({ repository, secret: SECRET }).coherenceTransport, 'tracking')
  t.equal(new TieredStore({ repository, secret: SECRET, coherence: { transport: 'pubsub' } }).coherenceTransport, 'pubsub', 'the option wins')
  t.equal(new TieredStore({ repository, secret: SECRET, coherence: false }).coherenceTransport, 'off')
  // The plugins' option policy refuses it at registration too.
  const secret = SECRET
  t.doesNotThrow(() => checkStoreOptions({ secret, coherence: { leaseMs: 100, transport: 'tracking' } }))
  t.throws(() => checkStoreOptions({ secret, coherence: { transport: 'push' } }), { code: 'FST_HANDOFF_INVALID_OPTION', message: /coherence\.transport.*"pubsub", "tracking"/ })
  process.env.HANDOFF_COHERENCE_TRANSPORT = 'nope'
  t.throws(() => new TieredStore({ repository, secret: SECRET }), { code: 'FST_HANDOFF_INVALID_OPTION', message: /HANDOFF_COHERENCE_TRANSPORT/ })
})

t.test('pub/sub as before: every instance is told of every write', async t => {
  const a = await store(t, redis.url, 'pubsub')
  const bystander = await store(t, redis.url, 'pubsub')
  t.equal(bystander.health().coherence, 'pubsub')
  const heard = bystander.counters.invalidations
  await a.update(a.key('pubsub-fanout', 'cart'), inc)
  t.ok(await waitFor(() => bystander.counters.invalidations > heard), 'an instance that never read the key still hears the write')
})

t.test('a fleet moving between transports one instance at a time: pub/sub and tracking instances hear each other\'s writes', async t => {
  // Both transports run the same write script (it still bumps the sequence and SPUBLISHes), and any write is a
  // modification Redis tells the tracking readers of: a rolling switch of the default keeps the fleet coherent.
  const onPubsub = await store(t, redis.url, 'pubsub')
  const onTracking = await store(t, redis.url, 'tracking')
  const k = onPubsub.key('mixed-fleet', 'cart')
  await onPubsub.update(k, inc)
  t.match(await onTracking.get(k), { version: 1 })
  t.ok(await localAgain(onTracking, k), 'the tracking instance holds a copy')
  t.ok(await localAgain(onPubsub, k), 'and the pub/sub one')
  let heard = onTracking.counters.invalidations
  await onPubsub.update(k, inc)
  t.ok(await waitFor(() => onTracking.counters.invalidations > heard), 'a pub/sub writer\'s write reaches the tracking holder')
  t.match(await onTracking.get(k), { version: 2, source: 'repository' }, 'which reads the new version')
  t.ok(await localAgain(onPubsub, k), 'the pub/sub instance holds a copy again')
  heard = onPubsub.counters.invalidations
  await onTracking.update(k, inc)
  t.ok(await waitFor(() => onPubsub.counters.invalidations > heard), 'a tracking writer\'s write reaches the pub/sub holder')
  t.match(await onPubsub.get(k), { version: 3, source: 'repository' }, 'which reads the new version')
})
