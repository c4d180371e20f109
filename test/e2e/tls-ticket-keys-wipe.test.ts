/**
 * TLS ticket keys after Redis forgets them (issue 13): three instance processes (scripts/tls-instance.ts) on one
 * private redis-server; Redis is wiped (FLUSHALL, then kill + restart empty) and one instance is restarted. Every
 * ordered pair of instances must still resume each other's tickets, checked with Node's TLS client and with
 * openssl s_client -sess_out/-sess_in. Every process started here is stopped here, by PID.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { testCerts } from '../../scripts/certs.js'
import { startRedis } from '../../scripts/redis-server.js'
import { runningInstances, spawnTlsInstance, type InstanceConfig, type TlsInstance } from '../../scripts/tls-instance.js'
import { sClient, visit } from '../helpers/tls-clients.js'

const certs = testCerts()
const tmp = mkdtempSync(join(tmpdir(), 'handoff-tls-wipe-'))
process.on('exit', () => { rmSync(tmp, { recursive: true, force: true }) })
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

// Instance processes start slowly on a loaded 2-core machine (tsx compiles each); the run itself is bounded below.
t.setTimeout(300_000)
const redis = await startRedis({ private: true })
t.teardown(async () => { await redis.stop() })

const CHECK_MS = 300
const cfg: InstanceConfig = {
  keyPath: certs.rsa.keyPath,
  certPath: certs.rsa.certPath,
  redisUrl: redis.url,
  prefix: `tlswipe${process.pid}:`,
  commandTimeoutMs: 300,
  tlsSessions: { ticketKeyCheckMs: CHECK_MS }
}
let generation = 0
const start = async (name: string): Promise<TlsInstance> => await spawnTlsInstance(name, cfg, [`--${name}`, `--gen=${generation++}`])
const fleet: TlsInstance[] = await Promise.all(['A', 'B', 'C'].map(start))
t.teardown(async () => { await Promise.all(fleet.map(async i => await i.stop())) })

async function keyIds (): Promise<Array<number | null>> {
  return await Promise.all(fleet.map(async i => (await i.status()).metrics.ticketKeyId ?? null))
}

/** Polls until every instance serves the same key id; returns it (or the last ids seen, if they never agreed). */
async function converged (withinMs: number): Promise<{ ok: boolean, ids: Array<number | null> }> {
  const deadline = Date.now() + withinMs
  for (;;) {
    const ids = await keyIds()
    if (ids[0] !== null && ids.every(x => x === ids[0])) return { ok: true, ids }
    if (Date.now() > deadline) return { ok: false, ids }
    await sleep(100)
  }
}

/** Every ordered pair: a ticket issued by `from` resumes on `to`, with Node's client and with s_client. */
async function everyPairResumes (t: Test, label: string): Promise<void> {
  let n = 0
  for (const from of fleet) {
    for (const to of fleet) {
      if (from === to) continue
      const first = await visit(from.port, certs.ca)
      const second = await visit(to.port, certs.ca, { session: first.session })
      t.equal(second.reused, true, `${label}: ${from.name}'s ticket resumes on ${to.name} (Node client)`)
      const file = join(tmp, `s-${n++}.pem`)
      sClient(from.port, certs.caPath, 'tls13', { out: file })
      t.equal(sClient(to.port, certs.caPath, 'tls13', { in: file }).reused, true, `${label}: ${from.name} -> ${to.name} (s_client)`)
    }
  }
}

async function restart (i: number): Promise<void> {
  const old = fleet[i] as TlsInstance
  await old.stop()
  fleet[i] = await start(old.name)
}

t.test('before any fault: one key id, every pair resumes', async t => {
  const c = await converged(5000)
  t.ok(c.ok, `one key id: ${c.ids.join(', ')}`)
  await everyPairResumes(t, 'baseline')
})

t.test('FLUSHALL, then one instance restarts: a survivor writes its key back, the new instance reads it', async t => {
  const [before] = await keyIds()
  const ticket = await visit((fleet[0] as TlsInstance).port, certs.ca)
  t.equal(redis.cli('FLUSHALL'), 'OK')
  // The survivors notice within a check interval and write their key back (create-if-absent: the first one wins).
  const deadline = Date.now() + 10_000
  let restores = 0
  while (Date.now() < deadline && restores === 0) {
    await sleep(100)
    const s = await Promise.all(fleet.map(async i => await i.status()))
    restores = s.reduce((n, x) => n + Number(x.metrics.ticketKeyRestores ?? 0), 0)
  }
  t.equal(restores, 1, 'exactly one instance wrote the key back')
  t.ok(fleet.some(i => /was missing from the store/.test(i.stderr())), 'and said so in a warning')
  await restart(2)
  const c = await converged(5000)
  t.ok(c.ok, `one key id again: ${c.ids.join(', ')}`)
  t.equal(c.ids[0], before, 'the key in use before the wipe')
  t.equal((await visit((fleet[2] as TlsInstance).port, certs.ca, { session: ticket.session })).reused, true,
    'a ticket issued before the wipe resumes on the restarted instance')
  await everyPairResumes(t, 'after FLUSHALL + restart')
})

t.test('Redis killed and restarted empty, one instance restarts before the others notice: they adopt its key', async t => {
  const [before] = await keyIds()
  const survivors = [fleet[0], fleet[1]] as TlsInstance[]
  const logFrom = survivors.map(i => i.stderr().length)
  const oldTicket = await visit((fleet[0] as TlsInstance).port, certs.ca)
  // Frozen survivors cannot check: the restarted instance finds nothing and creates a new key, the split to repair.
  for (const i of survivors) process.kill(i.pid, 'SIGSTOP')
  try {
    // The instance to restart is stopped before the wipe: left running, its own periodic check could write the old
    // key back before it restarts (a restore, not the split this case is about).
    const leaving = fleet[2] as TlsInstance
    await leaving.stop()
    await redis.restart()
    fleet[2] = await start(leaving.name)
  } finally {
    for (const i of survivors) process.kill(i.pid, 'SIGCONT')
  }
  const fresh = (await (fleet[2] as TlsInstance).status()).metrics.ticketKeyId
  t.not(fresh, before, `the restarted instance created another key (${String(fresh)} vs ${String(before)})`)
  const c = await converged(10_000)
  t.ok(c.ok, `one key id again: ${c.ids.join(', ')}`)
  t.equal(c.ids[0], fresh, 'the stored key (the new instance\'s) won')
  for (const [n, i] of survivors.entries()) {
    const s = await i.status()
    t.equal(s.metrics.ticketKeyAdoptions, 1, `${i.name} adopted the stored key once`)
    t.match(i.stderr().slice(logFrom[n]), /holds another TLS ticket key for this epoch/, `${i.name} warned`)
  }
  // With ticket renewal the replaced key still decrypts until its epoch ends, on the instances that held it.
  t.equal((await visit((fleet[1] as TlsInstance).port, certs.ca, { session: oldTicket.session })).reused, true,
    'a ticket under the replaced key still resumes on a survivor (and is renewed under the new key)')
  await everyPairResumes(t, 'after kill + restart empty')
})

t.test('every instance stops', async t => {
  await Promise.all(fleet.map(async i => await i.stop()))
  t.equal(runningInstances(), 0)
})
