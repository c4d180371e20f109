import t from 'tap'
import { Redis } from 'ioredis'
import { RedisRepository } from '../../../lib/repository/redis.js'
import { startRedis, type RedisHandle } from '../../../scripts/redis-server.js'
import { waitFor } from '../../helpers/wait-for.js'
import { countSocketWrites, streamOf } from '../../helpers/socket-writes.js'
import { startSentinels } from '../../helpers/sentinel.js'

function countWrites (repo: RedisRepository): () => number {
  return countSocketWrites(streamOf(repo.client))
}

async function readsProcessed (repo: RedisRepository): Promise<number> {
  const info = await repo.command(async c => await (c as unknown as { info: (s: string) => Promise<string> }).info('stats'))
  return Number(/total_reads_processed:(\d+)/.exec(info)?.[1])
}

async function open (server: RedisHandle, opts: { coalesceWrites?: boolean, commandTimeoutMs?: number } = {}): Promise<RedisRepository> {
  const repo = new RedisRepository({ url: server.url, ...opts })
  await repo.connect()
  return repo
}

const server = await startRedis({ private: true })
t.teardown(async () => { await server.stop() })

t.test('commands issued in one turn leave in one socket write and are read by Redis at once', async t => {
  const repo = await open(server)
  t.teardown(async () => { await repo.close() })
  await repo.get('warm:{p1}:a') // script loaded, connection settled
  const before = await readsProcessed(repo)
  const writes = countWrites(repo)
  const ops: Array<Promise<unknown>> = []
  for (let i = 0; i < 20; i++) ops.push(repo.compareAndSet(`one-turn:{p${i % 4}}:k${i}`, null, Buffer.from(`v${i}`), 10_000))
  await Promise.all(ops)
  t.equal(writes(), 1, 'one write system call for the 20 commands of the turn')
  // The INFO that reads the counter is itself one read: 20 commands in one read, then that INFO.
  t.equal(await readsProcessed(repo) - before, 2, 'Redis read the 20 commands in one read')
})

t.test('without coalescing each command is its own write (what the test above would see)', async t => {
  const repo = await open(server, { coalesceWrites: false })
  t.teardown(async () => { await repo.close() })
  await repo.get('warm:{p1}:a')
  const writes = countWrites(repo)
  const ops: Array<Promise<unknown>> = []
  for (let i = 0; i < 20; i++) ops.push(repo.get(`uncoalesced:{p${i % 4}}:k${i}`))
  await Promise.all(ops)
  t.equal(writes(), 20)
})

t.test('commands of later turns are not held back: a command issued alone is answered without waiting', async t => {
  const repo = await open(server)
  t.teardown(async () => { await repo.close() })
  await repo.compareAndSet('alone:{p1}:k', null, Buffer.from('x'), 10_000)
  for (let i = 0; i < 50; i++) {
    const started = performance.now()
    await repo.get('alone:{p1}:k')
    t.ok(performance.now() - started < 100, 'answered within one turn and a round trip')
    if (i % 10 === 0) await new Promise(resolve => setTimeout(resolve, 1)) // issued from a timer, too
  }
})

t.test('results are the same as without coalescing, for a turn of mixed operations', async t => {
  const runOps = async (repo: RedisRepository, tag: string): Promise<unknown[]> => {
    const k = (i: number): string => `mixed-${tag}:{p${i % 3}}:k${i}`
    for (let i = 0; i < 6; i++) await repo.compareAndSet(k(i), null, Buffer.from(`first${i}`), 10_000)
    const ops: Array<Promise<unknown>> = [
      repo.get(k(0)),
      repo.compareAndSet(k(1), 1, Buffer.from('second'), 10_000), // succeeds
      repo.compareAndSet(k(1), 1, Buffer.from('lost'), 10_000), // same turn, same base: refused
      repo.compareAndSet(k(2), 7, Buffer.from('stale'), 10_000), // wrong version
      repo.take(k(3), 5000),
      repo.delete(k(4), 5000),
      repo.touch(k(5), 20_000),
      repo.get(k(1)),
      repo.get(k(4)),
      repo.compareAndSet(k(9), null, Buffer.from('created'), 10_000)
    ]
    const r = await Promise.all(ops)
    // Expiry times and epochs differ between runs: compare the rest.
    return JSON.parse(JSON.stringify(r, (key, v) => key === 'expiresAt' || key === 'epoch' ? undefined : v))
  }
  const on = await open(server)
  const off = await open(server, { coalesceWrites: false })
  t.teardown(async () => { await on.close(); await off.close() })
  const a = await runOps(on, 'on')
  const b = await runOps(off, 'off')
  t.same(a, b)
  t.match(a[1], { ok: true, version: 2 })
  t.match(a[2], { ok: false })
})

t.test('a connection destroyed while corked fails that turn\'s commands at once, applies none, and recovers', async t => {
  const repo = await open(server, { commandTimeoutMs: 2000 })
  t.teardown(async () => { await repo.close() })
  await repo.get('warm:{p1}:a')
  const ops: Array<Promise<unknown>> = []
  for (let i = 0; i < 10; i++) ops.push(repo.compareAndSet(`destroyed:{p${i % 4}}:k${i}`, null, Buffer.from('v'), 10_000))
  const started = performance.now()
  streamOf(repo.client).destroy() // still corked: nothing was sent
  const settled = await Promise.allSettled(ops)
  t.ok(performance.now() - started < 1000, 'settled well before the command timeout: nothing hangs')
  t.ok(settled.every(s => s.status === 'rejected'), 'no write is acknowledged')
  t.match((settled[0] as PromiseRejectedResult).reason, { code: 'FST_HANDOFF_UNAVAILABLE' })
  await waitFor(async () => await repo.get('warm:{p1}:a').then(() => true, () => false), { timeoutMs: 5000 })
  for (let i = 0; i < 10; i++) t.equal(await repo.get(`destroyed:{p${i % 4}}:k${i}`), null, 'the unsent write was not applied')
  t.match(await repo.compareAndSet('destroyed:{p1}:after', null, Buffer.from('v'), 10_000), { ok: true })
  t.same(repo.unavailableNodes(), [])
})

t.test('Redis killed and restarted while turns of writes are corked: no acknowledged write is lost, nothing hangs', async t => {
  // appendfsync always: a write Redis acknowledged survives SIGKILL, so a lost one would be the client's fault.
  const durable = await startRedis({ private: true, args: ['--appendonly', 'yes', '--appendfsync', 'always'] })
  t.teardown(async () => { await durable.stop() })
  const repo = await open(durable, { commandTimeoutMs: 1500 })
  t.teardown(async () => { await repo.close() })
  const acked = new Map<string, number>()
  const state = { stop: false }
  let outcomes = 0
  const writer = (async () => {
    let round = 0
    while (!state.stop) {
      round++
      const ops = Array.from({ length: 8 }, async (_, i) => {
        const key = `killed:{p${i % 4}}:k${i}`
        const cur = await repo.get(key).catch(() => undefined)
        if (cur === undefined) return
        const r = await repo.compareAndSet(key, cur?.version ?? null, Buffer.from(`r${round}`), 60_000).catch(() => undefined)
        outcomes++
        if (r?.ok === true) acked.set(key, Math.max(acked.get(key) ?? 0, r.version))
      })
      await Promise.all(ops)
      await new Promise(resolve => setImmediate(resolve))
    }
  })()
  await waitFor(() => acked.size === 8, { timeoutMs: 5000 })
  await durable.restart()
  await waitFor(async () => await repo.get('killed:{p0}:k0').then(() => true, () => false), { timeoutMs: 10_000 })
  const resumedAt = outcomes
  await waitFor(() => outcomes > resumedAt + 50, { timeoutMs: 10_000 })
  state.stop = true
  await writer
  for (const [key, version] of acked) {
    const e = await repo.get(key)
    t.ok(e !== null && e.version >= version, `${key}: acknowledged version ${version} kept (now ${e?.version ?? 'absent'})`)
  }
})

t.test('Sentinel: the commands of one turn leave in one socket write to the primary', async t => {
  const s = await startSentinels()
  t.teardown(async () => { await s.stop() })
  const repo = new RedisRepository({
    client: new Redis({ sentinels: s.sentinelAddresses, name: s.name, enableOfflineQueue: false, maxRetriesPerRequest: 0 }),
    ownsClient: true
  })
  await repo.connect()
  t.teardown(async () => { await repo.close() })
  await repo.get('warm:{p1}:a')
  const writes = countWrites(repo)
  const results = await Promise.all(Array.from({ length: 20 }, async (_, i) =>
    await repo.compareAndSet(`sentinel-turn:{p${i % 4}}:k${i}`, null, Buffer.from('v'), 10_000)))
  t.equal(writes(), 1)
  t.ok(results.every(r => r.ok))
})

t.test('close() in the turn that corked commands: every command settles, none hangs', async t => {
  const repo = await open(server, { commandTimeoutMs: 2000 })
  await repo.get('warm:{p1}:a')
  const ops: Array<Promise<unknown>> = []
  for (let i = 0; i < 10; i++) ops.push(repo.compareAndSet(`closing:{p${i % 4}}:k${i}`, null, Buffer.from('v'), 10_000))
  const started = performance.now()
  const closing = repo.close()
  const settled = await Promise.allSettled(ops)
  await closing
  t.ok(performance.now() - started < 1000, 'settled well before the command timeout')
  // QUIT lets the replies to what was sent before it arrive: the corked commands went out with it, in order.
  t.ok(settled.every(s => s.status === 'fulfilled' && (s.value as { ok: boolean }).ok), 'answered before the connection closed')
  await t.rejects(repo.get('closing:{p0}:k0'), { code: 'FST_HANDOFF_CLOSED' })
})

t.test('Redis frozen (SIGSTOP) under a corked turn: the command timeout still fails those commands, and the node recovers', async t => {
  const repo = await open(server, { commandTimeoutMs: 300 })
  t.teardown(async () => { server.resume(); await repo.close() })
  await repo.get('warm:{p1}:a')
  server.pause()
  const started = performance.now()
  const settled = await Promise.allSettled(Array.from({ length: 10 }, async (_, i) =>
    await repo.compareAndSet(`frozen:{p${i % 4}}:k${i}`, null, Buffer.from('v'), 10_000)))
  const took = performance.now() - started
  t.ok(settled.every(s => s.status === 'rejected'), 'no answer, no acknowledgement')
  t.ok(took >= 300 && took < 1500, `failed by the command timeout (${Math.round(took)} ms)`)
  server.resume()
  t.ok(await waitFor(async () => await repo.get('warm:{p1}:a').then(() => true, () => false), { timeoutMs: 5000 }), 'serves again')
})
