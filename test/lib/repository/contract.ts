/**
 * One contract for every Repository: MemoryRepository and RedisRepository must behave the same, since the
 * embedded repository is the default and Redis the production choice.
 */
import type { Test } from 'tap'
import type { Invalidation, Repository } from '../../../lib/repository/types.js'
import { entryKey } from '../../../lib/partitions.js'
import { elapse, waitFor } from '../../helpers/wait-for.js'

type Tap = Test

export function repositoryContract (t: Tap, name: string, make: () => Promise<Repository>): void {
  let n = 0
  const key = (p = 3): string => entryKey(`contract:${name}:`, p, `id${n++}-${Date.now()}`, 'k')

  t.test(`${name}: get of an absent key is null`, async t => {
    const repo = await make()
    t.equal(await repo.get(key()), null)
  })

  t.test(`${name}: a key without a partition tag is refused, and nothing is stored`, async t => {
    const repo = await make()
    const k = `contract:${name}:untagged-${n++}`
    await t.rejects(repo.compareAndSet(k, null, Buffer.from('x'), 10_000))
    await t.rejects(repo.delete(k, 10_000))
    // A repository that routes by partition (sharded) refuses to read it too; one that can read it finds nothing.
    const after = await repo.get(k).catch((err: Error & { code?: string }) => err.code)
    t.ok(after === null || after === 'FST_HANDOFF_INVALID_OPTION', `nothing stored (got ${String(after)})`)
  })

  t.test(`${name}: create if absent, then versions grow by one per write`, async t => {
    const repo = await make()
    const k = key()
    const a = await repo.compareAndSet(k, null, Buffer.from('one'), 10_000)
    t.match(a, { ok: true, version: 1 })
    const got = await repo.get(k)
    t.same(got?.value, Buffer.from('one'))
    t.equal(got?.version, 1)
    t.ok((got?.expiresAt ?? 0) > Date.now() + 5000, 'expiry is absolute and in the future')
    const b = await repo.compareAndSet(k, 1, Buffer.from('two'), 10_000)
    t.match(b, { ok: true, version: 2 })
    t.same((await repo.get(k))?.value, Buffer.from('two'))
  })

  t.test(`${name}: create-if-absent on an existing key returns the current entry and writes nothing`, async t => {
    const repo = await make()
    const k = key()
    await repo.compareAndSet(k, null, Buffer.from('first'), 10_000)
    const r = await repo.compareAndSet(k, null, Buffer.from('second'), 10_000)
    t.equal(r.ok, false)
    if (!r.ok) {
      t.equal(r.current?.version, 1)
      t.same(r.current?.value, Buffer.from('first'))
    }
    t.same((await repo.get(k))?.value, Buffer.from('first'))
  })

  t.test(`${name}: a stale expected version is refused with the current entry`, async t => {
    const repo = await make()
    const k = key()
    await repo.compareAndSet(k, null, Buffer.from('a'), 10_000)
    await repo.compareAndSet(k, 1, Buffer.from('b'), 10_000)
    const r = await repo.compareAndSet(k, 1, Buffer.from('lost'), 10_000)
    t.equal(r.ok, false)
    if (!r.ok) t.same(r.current, { value: Buffer.from('b'), version: 2, expiresAt: r.current?.expiresAt, epoch: r.current?.epoch })
    if (!r.ok) t.match(r.current?.epoch, /^[0-9a-f]{16}$/, 'the current entry names the epoch it was written in')
    const absent = await repo.compareAndSet(key(), 5, Buffer.from('x'), 10_000)
    t.same(absent, { ok: false, current: null }, 'expecting a version of an absent key fails with current null')
    const zero = await repo.compareAndSet(key(), 0, Buffer.from('x'), 10_000)
    t.match(zero, { ok: true, version: 1 }, 'expected version 0 means absent')
  })

  t.test(`${name}: binary values survive byte for byte`, async t => {
    const repo = await make()
    const k = key()
    const bytes = Buffer.alloc(4096)
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7) & 0xff
    await repo.compareAndSet(k, null, bytes, 10_000)
    t.same((await repo.get(k))?.value, bytes)
  })

  t.test(`${name}: delete leaves a versioned tombstone that stops an in-flight write`, async t => {
    const repo = await make()
    const k = key()
    await repo.compareAndSet(k, null, Buffer.from('session'), 10_000)
    const tomb = await repo.delete(k, 10_000)
    t.equal(tomb, 2)
    const got = await repo.get(k)
    t.same(got?.value, null, 'a tombstone has no value')
    t.equal(got?.version, 2)
    const late = await repo.compareAndSet(k, 1, Buffer.from('resurrected'), 10_000)
    t.equal(late.ok, false, 'a write that read version 1 before the delete cannot bring it back')
    const create = await repo.compareAndSet(k, null, Buffer.from('new'), 10_000)
    t.equal(create.ok, false, 'create-if-absent does not overwrite a tombstone')
    const deliberate = await repo.compareAndSet(k, 2, Buffer.from('after logout'), 10_000)
    t.match(deliberate, { ok: true, version: 3 }, 'a writer that saw the tombstone may write on top of it')
    t.equal(await repo.delete(key(), 10_000), 1, 'deleting an absent key still leaves a tombstone')
  })

  t.test(`${name}: take reads and deletes atomically, once`, async t => {
    const repo = await make()
    const k = key()
    await repo.compareAndSet(k, null, Buffer.from('ticket'), 10_000)
    const [a, b] = await Promise.all([repo.take(k, 10_000), repo.take(k, 10_000)])
    const winners = [a, b].filter(x => x !== null)
    t.equal(winners.length, 1, 'exactly one of two concurrent takes gets the value')
    t.same(winners[0]?.value, Buffer.from('ticket'))
    t.equal(winners[0]?.version, 1)
    t.equal(await repo.take(k, 10_000), null)
    const absent = key()
    t.equal(await repo.take(absent, 10_000), null, 'take of an absent key is null')
    t.equal(await repo.get(absent), null, 'and writes nothing (no tombstone, no invalidation)')
  })

  t.test(`${name}: touch extends a live entry without a new version`, async t => {
    const repo = await make()
    const k = key()
    // 1 s: the touch must come within the first TTL, which a loaded machine cannot promise for 300 ms.
    await repo.compareAndSet(k, null, Buffer.from('v'), 1000)
    t.equal(await repo.touch(k, 60_000), true)
    await elapse(1300) // about time itself: past the first TTL
    const got = await repo.get(k)
    t.equal(got?.version, 1, 'still there after its first TTL, same version')
    t.ok((got?.expiresAt ?? 0) > Date.now() + 50_000)
    t.equal(await repo.touch(key(), 1000), false, 'absent')
    await repo.delete(k, 1000)
    t.equal(await repo.touch(k, 1000), false, 'tombstone')
  })

  t.test(`${name}: entries expire after their TTL`, async t => {
    const repo = await make()
    const k = key()
    // 1 s: the first read must come within the TTL, which a loaded machine cannot promise for 150 ms.
    const setAt = Date.now()
    await repo.compareAndSet(k, null, Buffer.from('short'), 1000)
    t.not(await repo.get(k), null)
    t.ok(await waitFor(async () => await repo.get(k) === null, { timeoutMs: 6000, intervalMs: 50 }), 'expired')
    t.ok(Date.now() - setAt >= 1000, 'not before its TTL')
  })

  t.test(`${name}: concurrent compare-and-set: exactly one writer wins each version`, async t => {
    const repo = await make()
    const k = key()
    await repo.compareAndSet(k, null, Buffer.from('0'), 10_000)
    const results = await Promise.all(Array.from({ length: 20 }, async (_, i) => await repo.compareAndSet(k, 1, Buffer.from(String(i)), 10_000)))
    t.equal(results.filter(r => r.ok).length, 1)
    t.equal((await repo.get(k))?.version, 2)
  })

  t.test(`${name}: every write, delete and take publishes an invalidation with a per-partition sequence`, async t => {
    const repo = await make()
    const prefix = `contract:${name}:sub${n++}:`
    const seen: Invalidation[] = []
    let resyncs = 0
    const sub = await repo.subscribe({ prefix, partitions: 16 }, {
      onInvalidation: m => seen.push(m),
      onResync: () => { resyncs++ }
    })
    t.ok(resyncs >= 1, 'a new subscription starts with a resync')
    const k1 = entryKey(prefix, 5, 'a', 'k')
    const k2 = entryKey(prefix, 5, 'b', 'k')
    const k3 = entryKey(prefix, 9, 'c', 'k')
    await repo.compareAndSet(k1, null, Buffer.from('x'), 10_000)
    await repo.compareAndSet(k1, 1, Buffer.from('y'), 10_000)
    await repo.compareAndSet(k2, null, Buffer.from('z'), 10_000)
    await repo.delete(k1, 10_000)
    await repo.compareAndSet(k3, null, Buffer.from('w'), 10_000)
    await repo.take(k3, 10_000)
    await repo.compareAndSet(k2, 99, Buffer.from('refused'), 10_000)
    // A marker written after the refused write, in the same partition (delivered in order): once it is in, anything
    // the refused write would have published is in too.
    const marker = entryKey(prefix, 5, 'marker', 'k')
    await repo.compareAndSet(marker, null, Buffer.from('m'), 10_000)
    t.ok(await waitFor(() => seen.length >= 7 && seen.some(m => m.key === marker), { timeoutMs: 5000 }), 'the marker arrived')
    const markerMessage = seen.find(m => m.key === marker)
    seen.splice(seen.findIndex(m => m.key === marker), 1)
    // Delivery is ordered within a partition (one channel); two partitions may live on two nodes, whose messages
    // arrive on two connections in either order: compare partition by partition.
    const byPartition = [...seen].sort((a, b) => a.partition - b.partition)
    t.same(byPartition.map(m => [m.key, m.version, m.partition]), [
      [k1, 1, 5], [k1, 2, 5], [k2, 1, 5], [k1, 3, 5], [k3, 1, 9], [k3, 2, 9]
    ], 'one message per stored change, none for a refused write')
    const p5 = seen.filter(m => m.partition === 5).map(m => m.sequence)
    for (let i = 1; i < p5.length; i++) t.equal(p5[i], (p5[i - 1] ?? 0) + 1, 'sequence grows by one per partition')
    t.equal(markerMessage?.sequence, (p5[p5.length - 1] ?? 0) + 1, 'the refused write took no sequence number')
    await sub.close()
  })
}
