/**
 * Auth sessions across separate processes: three instances of test/fixtures/session-instance.ts (A, B, C), one
 * private redis-server, plain HTTP with fetch. Every process started here is stopped here, by PID.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { startRedis } from '../../scripts/redis-server.js'
import type { SessionInstanceConfig } from '../fixtures/session-instance.js'
import { waitFor } from '../helpers/wait-for.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const FIXTURE = fileURLToPath(new URL('../fixtures/session-instance.ts', import.meta.url))
const PREFIX = `sessfailover${process.pid}:`

interface Instance { name: string, child: ChildProcess, base: string }

async function startInstance (name: string, cfg: SessionInstanceConfig): Promise<Instance> {
  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE], {
    cwd: ROOT,
    env: { ...process.env, SESSION_INSTANCE: JSON.stringify({ ...cfg, name }) },
    stdio: ['pipe', 'pipe', 'inherit']
  })
  const port = await new Promise<number>((resolve, reject) => {
    let buf = ''
    const timer = setTimeout(() => { reject(new Error(`instance ${name} did not start within 30 s`)) }, 30_000)
    child.stdout?.on('data', (d: Buffer) => {
      buf += d.toString()
      const nl = buf.indexOf('\n')
      if (nl >= 0) { clearTimeout(timer); resolve((JSON.parse(buf.slice(0, nl)) as { port: number }).port) }
    })
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`instance ${name} exited early (${String(code)})`)) })
  })
  return { name, child, base: `http://127.0.0.1:${port}` }
}

async function stop (i: Instance, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (i.child.exitCode !== null || i.child.signalCode !== null) return
  const exited = new Promise(resolve => i.child.once('exit', resolve))
  i.child.kill(signal)
  await exited
}

interface Res { status: number, body: Record<string, unknown>, cookie: string | undefined }

/** One request; `cookie` is the session cookie's `name=value` as the last response set it. */
async function req (i: Instance, method: 'GET' | 'POST', path: string, cookie?: string, body?: object): Promise<Res> {
  const headers: Record<string, string> = {}
  if (cookie !== undefined) headers.cookie = cookie
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await fetch(`${i.base}${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
  const set = res.headers.getSetCookie().map(c => c.split(';')[0] as string).find(c => c.startsWith('handoff.sid='))
  return { status: res.status, body: await res.json() as Record<string, unknown>, cookie: set }
}

function versionOf (cookie: string): number {
  return Number(decodeURIComponent(cookie.slice(cookie.indexOf('=') + 1)).split('.')[1])
}

const redis = await startRedis()
const cfg: SessionInstanceConfig = { redisUrl: redis.url, store: { prefix: PREFIX } }
const [A, B, C] = await Promise.all(['A', 'B', 'C'].map(async n => await startInstance(n, cfg))) as [Instance, Instance, Instance]
t.teardown(async () => {
  await Promise.all([A, B, C].map(async i => { await stop(i) }))
  await redis.stop()
})

t.test('failover: log in on A, act on B, read on C (and A dies): same user, nothing lost', async t => {
  const login = await req(A, 'POST', '/login', undefined, { user: 'alice' })
  t.equal(login.status, 200)
  let cookie = login.cookie as string
  t.ok(cookie, 'A set the session cookie')

  const set = await req(B, 'POST', '/set', cookie, { a: 'written on B', n: 42 })
  t.equal(set.status, 200)
  cookie = set.cookie as string
  const inc = await req(B, 'POST', '/inc', cookie, { field: 3 })
  t.equal(inc.status, 200)
  cookie = inc.cookie as string

  const onC = await req(C, 'GET', '/me', cookie)
  t.match(onC.body, { instance: 'C', user: { id: 'alice' }, version: 3, data: { a: 'written on B', n: 42, counter: 1, f3: 1 } })

  // A still holds version 1 in its local tier (unless the invalidation already dropped it): the cookie's floor says 3.
  const onA = await req(A, 'GET', '/me', cookie)
  t.match(onA.body, { instance: 'A', version: 3, data: { a: 'written on B', counter: 1 } }, 'A reads its own login\'s later state')

  await stop(A, 'SIGKILL')
  const after = await req(C, 'POST', '/inc', cookie, {})
  t.equal(after.status, 200)
  t.match((await req(B, 'GET', '/me', after.cookie)).body, { user: { id: 'alice' }, data: { counter: 2, f3: 1, a: 'written on B' } },
    'the instance that logged the user in is gone; nothing of the session is')
})

t.test('10 concurrent requests on one session over two instances: no lost change', async t => {
  // The anchor, @fastify/session + connect-redis, loses about 74% of these increments in the same test (74-75% on
  // one or two instances, /work/shared/MEASURED.md, "Peers"): it writes the whole session object back, last writer
  // wins. Here each request's changes are field deltas applied under compare-and-set to the newest stored version, so
  // every increment and every field survives.
  const login = await req(B, 'POST', '/login', undefined, { user: 'bob' })
  const cookie = login.cookie as string
  for (let round = 1; round <= 3; round++) {
    const results = await Promise.all(Array.from({ length: 10 }, async (_, i) =>
      await req(i % 2 === 0 ? B : C, 'POST', '/inc', cookie, { field: i })))
    t.same(results.map(r => r.status), Array(10).fill(200), `round ${round}: all answered 200`)
    const newest = results.map(r => r.cookie as string).sort((x, y) => versionOf(y) - versionOf(x))[0] as string
    const me = await req(C, 'GET', '/me', newest)
    const data = me.body.data as Record<string, number>
    t.equal(data.counter, 10 * round, `round ${round}: shared counter ${data.counter ?? 0}/${10 * round}`)
    for (let i = 0; i < 10; i++) t.equal(data[`f${i}`], round, `round ${round}: f${i}`)
  }
  const metrics = await Promise.all([B, C].map(async i => (await req(i, 'GET', '/metrics')).body.session as Record<string, number>))
  t.ok(metrics.reduce((s, m) => s + (m.conflicts ?? 0), 0) > 0, 'the instances did collide, and merged')
})

t.test('logout on one instance while a slow write runs on another: the session stays gone', async t => {
  const cookie = (await req(B, 'POST', '/login', undefined, { user: 'carol' })).cookie as string
  t.match((await req(C, 'GET', '/me', cookie)).body, { user: { id: 'carol' } }, 'C has it warm')
  // The logout starts once the slow request has loaded the session (C counts it), with a second and a half to spare.
  const loads = async (): Promise<number> => {
    const m = (await req(C, 'GET', '/metrics')).body.session as Record<string, number>
    return (m.loadedLocal ?? 0) + (m.loadedRemote ?? 0)
  }
  const loadsBefore = await loads()
  const slow = req(C, 'POST', '/slow-set', cookie, { ms: 1500, a: 'late write' })
  t.ok(await waitFor(async () => await loads() > loadsBefore, { intervalMs: 20 }), 'the slow request has loaded the session')
  const out = await req(B, 'POST', '/logout', cookie)
  t.equal(out.status, 200)
  t.equal(out.cookie, 'handoff.sid=', 'logout clears the cookie')
  const late = await slow
  t.equal(late.status, 409)
  t.equal(late.body.code, 'FST_HANDOFF_SESSION_ENDED')
  for (const i of [B, C]) t.match((await req(i, 'GET', '/me', cookie)).body, { user: null, id: null }, `${i.name}: still logged out`)
})

t.test('logout everywhere from one instance ends the sessions made on the others', async t => {
  const s1 = (await req(B, 'POST', '/login', undefined, { user: 'dave' })).cookie as string
  const s2 = (await req(C, 'POST', '/login', undefined, { user: 'dave' })).cookie as string
  const res = await req(C, 'POST', '/logout-all', s2)
  t.same(res.body, { destroyed: 2 })
  // B drops its copy when the invalidation arrives (bounded by the 250 ms coherence lease, plus machine stalls).
  const gone = async (cookie: string): Promise<boolean> => ((await req(B, 'GET', '/me', cookie)).body.user ?? null) === null
  t.ok(await waitFor(async () => await gone(s1) && await gone(s2)), 'B: both sessions gone')
  t.match((await req(B, 'GET', '/me', s1)).body, { user: null })
  t.match((await req(B, 'GET', '/me', s2)).body, { user: null })
})
