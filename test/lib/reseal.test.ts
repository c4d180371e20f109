/** resealOnRead: entries of registered kinds read during a rotation's overlap still open after the old key is dropped. */
import t from 'tap'
import { MemoryRepository } from '../../lib/repository/memory.js'
import { TieredStore } from '../../lib/tiered-store.js'

const K1 = { id: 'k1', secret: 'a-test-secret-that-is-at-least-32-bytes-long' }
const K2 = { id: 'k2', secret: 'another-cluster-secret-also-32-bytes-or-more' }

t.test('a read at [k2, k1] re-seals registered kinds under k2; other kinds stay as they were', async t => {
  const repo = new MemoryRepository()
  const first = new TieredStore({ repository: repo, secret: [K1], partitions: 64 })
  const order = first.key('ord', 'order')
  const session = first.key('ses', 'session')
  await first.update(order, () => ({ amount: 1 }), { ttlMs: 60_000 })
  await first.update(session, () => ({ user: 'bob' }), { ttlMs: 60_000 })

  const overlap = new TieredStore({ repository: repo, secret: [K2, K1], partitions: 64 })
  overlap.resealOnRead('order')
  t.match(await overlap.get(order), { value: { amount: 1 }, version: 2 }, 'read, and written back once (version 2)')
  t.match(await overlap.get(session), { value: { user: 'bob' }, version: 1 }, 'a kind not registered is not rewritten')
  t.equal(overlap.counters.resealed, 1)
  overlap.clearLocal()
  t.match(await overlap.get(order), { version: 2 }, 'sealed with the newest key now: not rewritten again')
  t.equal(overlap.counters.resealed, 1)
  const expiresAt = (await repo.get(order))?.expiresAt ?? 0
  t.ok(expiresAt > Date.now() + 50_000 && expiresAt <= Date.now() + 60_000, 'the re-sealed entry keeps its expiry')

  const last = new TieredStore({ repository: repo, secret: [K2], partitions: 64 })
  t.match(await last.get(order), { value: { amount: 1 } }, 'at [k2] the re-sealed order opens')
  t.equal(await last.get(session), undefined, 'what was not re-sealed does not (the documented rule)')
})

t.test('a single-key ring never rewrites on read', async t => {
  const repo = new MemoryRepository()
  const store = new TieredStore({ repository: repo, secret: [K1], partitions: 64 })
  store.resealOnRead('order')
  const k = store.key('o', 'order')
  await store.update(k, () => ({ a: 1 }))
  store.clearLocal()
  t.match(await store.get(k), { version: 1 })
  t.equal(store.counters.resealed, 0)
})
