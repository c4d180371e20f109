/**
 * Client tracking's echoes at the LocalTier level, driven deterministically: the order of replies and invalidations
 * that a real redis-server produces only by chance (test/lib/repository/tracking.test.ts covers the common orders).
 */
import t from 'tap'
import { LocalTier, type FillTicket } from '../../lib/local-tier.js'
import { fromOwner } from '../../lib/repository/cluster-subscriber.js'

const ECHO = { version: Number.POSITIVE_INFINITY, partition: 0, sequence: 0, epoch: 'e' }

function trackingTier (): LocalTier {
  const tier = new LocalTier({ partitions: 4, stripes: 4, maxBytes: 1 << 20, ttlMs: 60_000, leaseMs: 60_000, reliable: false, now: Date.now, repository: 'test' })
  tier.onHeartbeat(performance.now())
  return tier
}

function ack (tier: LocalTier, ticket: FillTicket, version: number): void {
  tier.fill(ticket, { value: { v: version }, version, epoch: 'e', expiresAt: Date.now() + 60_000, bytes: 8 })
}

t.test('a write\'s own echo kept its copy: the next write\'s reply finds nothing to skip over', async t => {
  const tier = trackingTier()
  ack(tier, tier.open('k', 0, true), 6) // W1 acknowledged at v6, its echo not heard yet
  t.equal(tier.get('k', 0, 0)?.version, 6, 'the writer keeps what it wrote')
  tier.onInvalidation({ key: 'k', ...ECHO }) // W1's echo, heard before W2 opened
  t.equal(tier.get('k', 0, 0)?.version, 6, 'its own echo does not drop it')
})

t.test('the echo of a write heard while the same instance\'s next write is in flight: no read of the older version after that write', async t => {
  const tier = trackingTier()
  ack(tier, tier.open('k', 0, true), 6) // W1: v6, echo pending
  const w2 = tier.open('k', 0, true) // W2 in flight
  tier.onInvalidation({ key: 'k', ...ECHO }) // W1's echo arrives while W2's ticket is open
  ack(tier, w2, 7) // W2 acknowledged at v7
  const copy = tier.get('k', 0, 0)
  t.not(copy?.version, 6, 'v6 does not answer after v7 was acknowledged')
  t.ok(copy === undefined || copy.version === 7, 'a read finds v7 or goes to the repository')
  tier.onInvalidation({ key: 'k', ...ECHO }) // W2's echo
  t.not(tier.get('k', 0, 0)?.version, 6, 'nor after W2\'s echo')
})

t.test('back-to-back writes of one instance keep the last copy: the first write\'s echo, heard while the next is in flight, tells of nothing newer', async t => {
  const tier = trackingTier()
  ack(tier, tier.open('k', 0, true), 6) // W1: v6, echo pending
  const w2 = tier.open('k', 0, true) // W2 in flight
  tier.onInvalidation({ key: 'k', ...ECHO }) // W1's echo (sent before W2 ran)
  ack(tier, w2, 7) // W2 acknowledged at v7, nothing heard that was sent after W1
  t.equal(tier.get('k', 0, 0)?.version, 7, 'v7 is held: the next write needs no read')
  tier.onInvalidation({ key: 'k', ...ECHO }) // W2's echo
  t.equal(tier.get('k', 0, 0)?.version, 7, 'W2\'s own echo does not drop it')
  tier.onInvalidation({ key: 'k', ...ECHO }) // another instance's write
  t.equal(tier.get('k', 0, 0), undefined, 'the next invalidation does')
})

t.test('three acknowledged writes whose echoes all come later: three echoes pass, the fourth invalidation drops', async t => {
  const tier = trackingTier()
  for (const v of [6, 7, 8]) ack(tier, tier.open('k', 0, true), v)
  for (let i = 0; i < 3; i++) {
    tier.onInvalidation({ key: 'k', ...ECHO })
    t.equal(tier.get('k', 0, 0)?.version, 8, `echo ${i + 1} of 3 keeps v8`)
  }
  tier.onInvalidation({ key: 'k', ...ECHO })
  t.equal(tier.get('k', 0, 0), undefined, 'the fourth was sent after the last write: v8 is dropped')
})

t.test('an echo count is never spent on a write still in flight: two more invalidations during it void its fill', async t => {
  const tier = trackingTier()
  ack(tier, tier.open('k', 0, true), 6) // W1: v6, one echo pending
  const w2 = tier.open('k', 0, true)
  tier.onInvalidation({ key: 'k', ...ECHO }) // W1's echo or older: passes
  tier.onInvalidation({ key: 'k', ...ECHO }) // W2's echo, or W1's (the first was older)
  tier.onInvalidation({ key: 'k', ...ECHO }) // then one may be from a write after W2
  ack(tier, w2, 7)
  t.equal(tier.get('k', 0, 0), undefined, 'neither v6 nor v7 answers: a read goes to the repository')
})

t.test('a write whose fill was shared with a read counts no echo: the next invalidation drops its copy', async t => {
  const tier = trackingTier()
  const read = tier.open('k', 0)
  const w = tier.open('k', 0, true) // shares the read's ticket: any invalidation voids it
  ack(tier, read, 5)
  ack(tier, w, 6)
  t.equal(tier.get('k', 0, 0)?.version, 6, 'the write\'s copy is kept')
  tier.onInvalidation({ key: 'k', ...ECHO })
  t.equal(tier.get('k', 0, 0), undefined, 'its echo (or anything) drops it: nothing was counted')
})

t.test('a reconnect forgets the counts: echoes lost with the connection are not waited for after the renewal', async t => {
  let clock = 1000
  const tier = new LocalTier({ partitions: 4, stripes: 4, maxBytes: 1 << 20, ttlMs: 60_000, leaseMs: 100, reliable: false, now: Date.now, clock: () => clock, repository: 'test' })
  tier.onHeartbeat(clock)
  ack(tier, tier.open('k', 0, true), 6) // W1: v6, one echo counted; then the connection is lost, and the echo with it
  tier.onResync()
  clock += 10
  tier.onHeartbeat(clock) // tracking on again, the lease renewed (a new generation)
  ack(tier, tier.open('k', 0), 7) // a read after the renewal: v7
  t.equal(tier.get('k', 0, 0)?.version, 7, 'the read\'s copy answers')
  tier.onInvalidation({ key: 'k', ...ECHO }) // another instance's write: no echo of W1 can come any more
  t.equal(tier.get('k', 0, 0), undefined, 'it drops the copy')
})

t.test('a Cluster slot moving: a version-less message from a shard that does not own the partition resyncs it first (review of b64b234)', async t => {
  // W1 ran on the slot's old primary A: its echo is on A's redirect connection, delayed (a lost packet). The key
  // migrates to B; the next writes and reads of it go there (ASK), and B's redirect connection delivers at once.
  // Without the resync, W2's echo from B would be spent against W1's count and v7 would answer after v8's
  // invalidation arrived, until A's late echo of W1 came.
  const tier = trackingTier()
  const fromB = fromOwner(new Set([1, 2, 3]), tier) // B's plan: partition 0 is still A's
  ack(tier, tier.open('k', 0, true), 6) // W1 on A: v6, one echo counted (on its way from A)
  const w2 = tier.open('k', 0, true) // W2 on B (ASK), in flight
  fromB({ key: 'k', ...ECHO }) // W2's echo, from B
  ack(tier, w2, 7) // W2 acknowledged at v7
  fromB({ key: 'k', ...ECHO }) // another instance wrote v8 on B: its invalidation, from B
  t.equal(tier.get('k', 0, 0), undefined, 'v7 does not answer once v8\'s invalidation has arrived')
  tier.onHeartbeat(performance.now()) // A still leases partition 0 until the plan moves it
  t.equal(tier.get('k', 0, 0), undefined, 'nor after the lease is renewed: the resync started a new generation')
  const fromA = fromOwner(new Set([0]), tier)
  ack(tier, tier.open('j', 0, true), 3)
  fromA({ key: 'j', ...ECHO })
  t.equal(tier.get('j', 0, 0)?.version, 3, 'messages from the owner are passed on as they are: the echo count still works')
})
