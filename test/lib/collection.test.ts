import t, { type Test } from 'tap'
import { Collection } from '../../lib/index.js'
import { MemoryRepository } from '../../lib/repository/memory.js'
import { RedisRepository } from '../../lib/repository/redis.js'
import type { Repository } from '../../lib/repository/types.js'
import { TieredStore } from '../../lib/tiered-store.js'
import { startRedis } from '../../scripts/redis-server.js'
import { waitFor } from '../helpers/wait-for.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'

interface Counter { n: number, tag: string }

function parseCounter (v: unknown): Counter {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new TypeError('not an object')
  const o = v as Record<string, unknown>
  if (typeof o.n !== 'number' || typeof o.tag !== 'string') throw new TypeError('n must be a number and tag a string')
  return { n: o.n, tag: o.tag }
}

async function makeStore (t: Test, repository: Repository): Promise<TieredStore> {
  const store = new TieredStore({ repository, secret: SECRET, partitions: 64 })
  await store.start()
  t.teardown(async () => { await store.close() })
  return store
}

type RepoFactory = (t: Test) => Promise<Repository>

const memory: RepoFactory = async () => new MemoryRepository()
const redis: RepoFactory = async (t) => {
  const server = await startRedis()
  const repository = new RedisRepository({ url: server.url, commandTimeoutMs: 1000 })
  // Teardowns run in reverse: stores close first, then the repository, then the server.
  t.teardown(async () => { await server.stop() })
  t.teardown(async () => { await repository.close() })
  return repository
}

for (const [name, makeRepo] of [['MemoryRepository', memory], ['RedisRepository', redis]] as const) {
  t.test(`${name}: typed get/update/delete/take/touch by id`, async t => {
    const store = await makeStore(t, await makeRepo(t))
    const counters = store.collection<Counter>('counter', { parse: parseCounter })
    t.ok(counters instanceof Collection)
    t.equal(counters.key('abc'), store.key('abc', 'counter'), 'without idKey, the id names the entry as store.key does')

    t.equal(await counters.get('abc'), undefined, 'absent')
    const first = await counters.update('abc', (cur, info) => {
      t.equal(cur, undefined)
      t.equal(info.version, 0)
      return { n: 1, tag: 'x' }
    })
    t.same(first.value, { n: 1, tag: 'x' })
    t.equal(first.version, 1)
    const second = await counters.update('abc', cur => ({ n: (cur?.n ?? 0) + 1, tag: cur?.tag ?? '' }))
    t.same(second.value, { n: 2, tag: 'x' })
    const got = await counters.get('abc', { minVersion: 2 })
    t.same(got?.value, { n: 2, tag: 'x' })
    t.equal(got?.version, 2)
    // A copy can be dropped on a loaded machine (a lapsed lease: lost hits, never a stale one): a later read keeps one.
    t.ok(await waitFor(async () => { await counters.get('abc'); return counters.getLocal('abc') !== undefined }), 'a read keeps a local copy')
    t.same(counters.getLocal('abc')?.value, { n: 2, tag: 'x' }, 'the local tier answers through parse too')

    t.equal(await counters.touch('abc', 60_000), true, 'touch extends a live entry')
    t.equal(await counters.touch('missing', 60_000), false, 'and says so when there is nothing to extend')

    const taken = await counters.take('abc')
    t.same(taken?.value, { n: 2, tag: 'x' }, 'take returns the parsed value')
    t.equal(await counters.get('abc'), undefined, 'and leaves nothing')
    let sawDeleted = false
    const after = await counters.update('abc', (cur, info) => { sawDeleted = info.deleted; return undefined })
    t.equal(sawDeleted, true, 'take left a tombstone')
    t.equal(after.written, false)

    await counters.update('def', () => ({ n: 5, tag: 'y' }))
    const v = await counters.delete('def')
    t.ok(v > 1, 'delete returns the tombstone version')
    t.equal(await counters.get('def'), undefined)
  })

  t.test(`${name}: a stored value that does not parse is a corrupt entry`, async t => {
    const store = await makeStore(t, await makeRepo(t))
    const counters = store.collection<Counter>('counter', { parse: parseCounter })
    // Written by something that is not this collection: the right key, the wrong shape.
    await store.update(counters.key('bad'), () => ({ n: 'one' }))
    const before = store.counters.corrupt
    t.equal(await counters.get('bad'), undefined, 'get: absent')
    t.equal(store.counters.corrupt, before + 1, 'counted as corrupt')
    t.equal(counters.getLocal('bad'), undefined, 'getLocal: absent')
    t.equal(await counters.take('bad'), undefined, 'take: absent')
    await store.update(counters.key('bad2'), () => [1, 2, 3])
    let seen: { cur: Counter | undefined, version: number } | undefined
    const res = await counters.update('bad2', (cur, info) => { seen = { cur, version: info.version }; return { n: 1, tag: 'fixed' } })
    t.same(seen, { cur: undefined, version: 1 }, 'update: mutate sees no value, but the stored version')
    t.equal(res.version, 2, 'and its write replaces the unparseable entry')
    t.same((await counters.get('bad2'))?.value, { n: 1, tag: 'fixed' })
    t.ok(store.counters.corrupt >= before + 4, 'every unparseable read is counted')
  })

  t.test(`${name}: ids hashed with idKey`, async t => {
    const store = await makeStore(t, await makeRepo(t))
    const idKey = Buffer.alloc(32, 7)
    const users = store.collection<Counter>('user-idx', { parse: parseCounter, idKey })
    const k = users.key('alice@example.com')
    t.notOk(k.includes('alice'), 'the raw id is not in the key')
    t.equal(k, users.key('alice@example.com'), 'stable')
    t.not(k, users.key('bob@example.com'))
    t.not(k, store.collection<Counter>('user-idx', { parse: parseCounter, idKey: Buffer.alloc(32, 8) }).key('alice@example.com'),
      'another key, another name')
    t.match(k, /:[A-Za-z0-9_-]{32}:user-idx$/, '24 bytes of HMAC, base64url')
    await users.update('alice@example.com', () => ({ n: 1, tag: 'a' }))
    const again = store.collection<Counter>('user-idx', { parse: parseCounter, idKey: Buffer.alloc(32, 7) })
    t.same((await again.get('alice@example.com'))?.value, { n: 1, tag: 'a' }, 'same kind and idKey, same entry')
  })
}

t.test('two stores on one Redis: a collection names the same entries on both', async t => {
  const server = await startRedis()
  t.teardown(async () => { await server.stop() })
  const stores: TieredStore[] = []
  for (let i = 0; i < 2; i++) {
    const repository = new RedisRepository({ url: server.url, commandTimeoutMs: 1000 })
    t.teardown(async () => { await repository.close() })
    stores.push(await makeStore(t, repository))
  }
  const [a, b] = stores as [TieredStore, TieredStore]
  const idKey = Buffer.alloc(32, 1)
  await a.collection<Counter>('c', { parse: parseCounter, idKey }).update('u', () => ({ n: 3, tag: 'from a' }))
  const seen = await b.collection<Counter>('c', { parse: parseCounter, idKey }).get('u', { minVersion: 1 })
  t.same(seen?.value, { n: 3, tag: 'from a' })
})

t.test('bad arguments are refused with FST_HANDOFF_INVALID_OPTION', async t => {
  const store = await makeStore(t, new MemoryRepository())
  t.throws(() => store.collection('has space', { parse: parseCounter }), { code: 'FST_HANDOFF_INVALID_OPTION' })
  t.throws(() => store.collection('', { parse: parseCounter }), { code: 'FST_HANDOFF_INVALID_OPTION' })
  t.throws(() => store.collection('ok', {} as unknown as { parse: typeof parseCounter }), { code: 'FST_HANDOFF_INVALID_OPTION' })
  t.throws(() => store.collection('ok', { parse: parseCounter, idKey: Buffer.alloc(4) }), { code: 'FST_HANDOFF_INVALID_OPTION' })
  const c = store.collection('ok', { parse: parseCounter })
  t.throws(() => c.key(''), { code: 'FST_HANDOFF_INVALID_OPTION' })
  await t.rejects(c.get(''), { code: 'FST_HANDOFF_INVALID_OPTION' })
})
