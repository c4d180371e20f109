/**
 * Read your own delete or take while an older read or write of the key is still in flight (review of b64b234). Commands
 * on one connection run and are answered in order, invalidations come on another one and may come later: a reply
 * that arrives after this instance's delete or take dropped its copy, but was sent before it, must not fill the copy
 * back. `take` drops the copy only before its round trip, so such a reply filled what the take had just removed, and
 * the next read answered it from the local tier until the take's own invalidation arrived.
 */
import t, { type Test } from 'tap'
import { MemoryRepository } from '../../lib/repository/memory.js'
import type { CasResult, Invalidation, InvalidationListener, StoredEntry, Subscription, SubscriptionScope } from '../../lib/repository/types.js'
import { TieredStore } from '../../lib/tiered-store.js'

const SECRET = 'a-test-secret-that-is-at-least-32-bytes-long'
const tick = async (): Promise<void> => await new Promise(resolve => setImmediate(resolve))

/**
 * Runs each command at once (in call order) and holds its reply until the test lets it go (replies then come in the
 * same order, as on one connection); invalidations are held too (on their way on the other connection).
 */
class HeldRepository extends MemoryRepository {
  readonly held: Invalidation[] = []
  private listener: InvalidationListener | undefined
  /** While set, replies wait for it. */
  gate: Promise<void> | undefined

  override async subscribe (scope: SubscriptionScope, listener: InvalidationListener): Promise<Subscription> {
    this.listener = listener
    const sub = await super.subscribe(scope, {
      onInvalidation: (msg: Invalidation) => { this.held.push(msg) },
      onResync: partitions => listener.onResync(partitions)
    })
    setTimeout(() => this.beat(), 1) // once the store has taken `reliable: false`: the lease starts held
    return { reliable: false, close: sub.close }
  }

  beat (): void { this.listener?.onHeartbeat?.(performance.now()) }
  deliver (): void { for (const m of this.held.splice(0)) this.listener?.onInvalidation(m) }

  override async get (key: string): Promise<StoredEntry | null> {
    const r = await super.get(key)
    await this.gate
    return r
  }

  override async compareAndSet (key: string, expectedVersion: number | null, value: Buffer, ttlMs: number, expectedEpoch?: string): Promise<CasResult> {
    const r = await super.compareAndSet(key, expectedVersion, value, ttlMs, expectedEpoch)
    await this.gate
    return r
  }

  override async take (key: string, tombstoneTtlMs: number): Promise<StoredEntry | null> {
    const r = await super.take(key, tombstoneTtlMs)
    await this.gate
    return r
  }

  override async delete (key: string, tombstoneTtlMs: number): Promise<number> {
    const r = await super.delete(key, tombstoneTtlMs)
    await this.gate
    return r
  }
}

async function setUp (t: Test): Promise<{ repo: HeldRepository, s: TieredStore<{ n: number }>, key: string }> {
  const repo = new HeldRepository()
  const s = new TieredStore<{ n: number }>({ repository: repo, secret: SECRET, partitions: 16, coherence: { leaseMs: 60_000 } })
  await s.start()
  t.teardown(async () => { await s.close(); await repo.close() })
  const key = s.key('id-1', 'k')
  await s.update(key, () => ({ n: 1 }))
  repo.deliver()
  t.equal(s.getLocal(key)?.value.n, 1, 'v1 is held locally')
  return { repo, s, key }
}

for (const op of ['write', 'read'] as const) {
  t.test(`a ${op} sent before this instance's take, answered after the take dropped the copy, does not bring it back`, async t => {
    const { repo, s, key } = await setUp(t)
    let open!: () => void
    repo.gate = new Promise(resolve => { open = resolve })
    if (op === 'read') s.coherence?.clear() // so that the get goes to the repository
    const inFlight = op === 'write' ? s.update(key, () => ({ n: 2 })) : s.get(key)
    await tick() // it ran; its reply is held
    const taking = s.take(key) // drops the copy, runs after it
    await tick()
    repo.gate = undefined
    open() // the replies arrive, in order: the older command's first
    await inFlight
    const taken = await taking
    t.equal(taken?.value.n, op === 'write' ? 2 : 1, 'the take got the value')
    const after = s.getLocal(key)
    t.equal(after, undefined, 'after the take, no local copy answers (its invalidation is still on its way)')
    t.equal(await s.get(key), undefined, 'and a read finds nothing')
  })
}

t.test('the same for delete (which drops again after its reply): nothing answers', async t => {
  const { repo, s, key } = await setUp(t)
  let open!: () => void
  repo.gate = new Promise(resolve => { open = resolve })
  const inFlight = s.update(key, () => ({ n: 2 }))
  await tick()
  const deleting = s.delete(key)
  await tick()
  repo.gate = undefined
  open()
  await inFlight
  await deleting
  t.equal(s.getLocal(key), undefined, 'no local copy answers')
})
