/**
 * A rolling deploy under signed-in traffic, as an operator does it: each instance in turn gets SIGTERM (it drains and
 * exits), is started again on its port, and the next one waits until the balancer has it back in rotation. Meanwhile
 * alice's clients (some with a new connection per request, some with keep-alive) read and add to one cart, and bob
 * checks out again and again. No request is retried: every error or unexpected status counts as a failure.
 * Used by the failover drill (npm run demo:failover) and test/e2e/rolling-deploy.test.ts.
 */
import { randomUUID } from 'node:crypto'
import { ShopClient, type Answer } from './client.js'
import type { InstanceHandle } from './cluster.js'

export interface RollingDeployOptions {
  /** The balancers' ports (the example's, HAProxy's): each gets its own clients; bob alternates between them. */
  ports: number[]
  instances: InstanceHandle[]
  /** Resolves once the balancer sends new connections to this instance again. */
  waitInRotation: (instance: InstanceHandle) => Promise<void>
  log?: (line: string) => void
  /** alice's clients opening a new connection per request, per port. Default: 2. */
  newConnectionClients?: number
  /** alice's clients on keep-alive connections, per port. Default: 2. */
  keepAliveClients?: number
  /** Traffic that runs before the first SIGTERM and after the last instance is back, ms. Default: 500. */
  marginMs?: number
  /** Pause of each client after each answer, ms: users read pages, and restarting instances need the CPU. Default: 20. */
  thinkMs?: number
}

export interface RollingDeployReport {
  /** Requests sent while the deploy ran (no retries). */
  requests: number
  /** One line per failed request: client, request, status or error. */
  failures: string[]
  /** Answers in which a signed-in client was no longer signed in. */
  signOuts: number
  /** Adds to alice's cart answered 200, and how many of them the cart does not hold afterwards. */
  addsAcknowledged: number
  addsMissing: number
  /** bob's checkouts answered `placed`; distinct orders among them; charges the provider made; orders not found. */
  checkouts: number
  orders: number
  charges: number
  ordersMissing: number
  /** From the first SIGTERM until the last instance was back in rotation, ms. */
  deployMs: number
  /** Per instance: SIGTERM until exit, and start until back in rotation, ms. */
  steps: Array<{ instance: string, drainAndCloseMs: number, startToReadyMs: number }>
}

const SKUS = ['TEE-BLK', 'MUG-LOGO', 'CAP-RED', 'SOCK-3', 'BAG-TOTE'] as const
// Per client and sku: four clients stay below the cart's 999 per item however long the deploy takes.
const MAX_ADDS_PER_SKU = 150
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

interface Counted { requests: number, failures: string[], signOuts: number, thinkMs: number, since?: number }

/** One request, no retry: anything but 200 or a thrown error is a failure. `port`: another balancer than the client's. */
async function attempt<T = Record<string, unknown>> (c: Counted, who: string, client: ShopClient, method: string, path: string,
  body?: unknown, headers: Record<string, string> = {}, port?: number): Promise<Answer<T> | undefined> {
  c.requests++
  // Failures say when they were sent (the deploy's log says when each step ran).
  const at = c.since === undefined ? '' : ` (sent at ${((Date.now() - c.since) / 1000).toFixed(2)} s)`
  try {
    const a = await client.call<T>(method, path, body, headers, { retries: 0, ...(port === undefined ? {} : { port }) })
    if (a.status !== 200) {
      c.failures.push(`${who} ${method} ${path}${at}: ${a.status} from ${a.instance} ${JSON.stringify(a.body).slice(0, 120)}`)
      return undefined
    }
    return a
  } catch (err) {
    c.failures.push(`${who} ${method} ${path}${at}: ${(err as Error).message}`)
    return undefined
  } finally {
    if (c.thinkMs > 0) await sleep(c.thinkMs)
  }
}

export async function runRollingDeploy (opts: RollingDeployOptions): Promise<RollingDeployReport> {
  const log = opts.log ?? (() => {})
  const marginMs = opts.marginMs ?? 500
  const setup: Counted = { requests: 0, failures: [], signOuts: 0, thinkMs: 0 }
  const alice: Array<{ name: string, client: ShopClient, acked: Map<string, number> }> = []
  for (const port of opts.ports) {
    for (let i = 0; i < (opts.newConnectionClients ?? 2); i++) alice.push({ name: `alice-new-conn-${i + 1}@${port}`, client: new ShopClient(port), acked: new Map() })
    for (let i = 0; i < (opts.keepAliveClients ?? 2); i++) alice.push({ name: `alice-keep-alive-${i + 1}@${port}`, client: new ShopClient(port, '127.0.0.1', { keepAlive: true }), acked: new Map() })
  }
  const bob = new ShopClient(opts.ports[0] ?? 0)
  try {
    // Setup before the deploy: sign in (each client its own session; alice's share her cart), empty alice's cart.
    for (const a of alice) await attempt(setup, a.name, a.client, 'POST', '/api/login', { username: 'alice', password: 'alice' })
    await attempt(setup, 'bob', bob, 'POST', '/api/login', { username: 'bob', password: 'bob' })
    const first = alice[0]
    if (first === undefined) throw new Error('at least one client for alice')
    for (const sku of SKUS) await attempt(setup, first.name, first.client, 'DELETE', `/api/cart/items/${sku}`)
    const chargesBefore = (await attempt<{ charges: number }>(setup, 'bob', bob, 'GET', '/api/_provider'))?.body.charges ?? 0
    if (setup.failures.length > 0) throw new Error(`setup failed before the deploy: ${setup.failures.join('; ')}`)

    // Times in failures and in the log count from the start of the traffic.
    const run: Counted = { requests: 0, failures: [], signOuts: 0, thinkMs: opts.thinkMs ?? 20, since: Date.now() }
    const origin = run.since as number
    const run0 = { stopped: false }
    const signedIn = (who: string, a: Answer | undefined, user: string): void => {
      if (a !== undefined && a.body.user !== user) { run.signOuts++; run.failures.push(`${who}: signed out (${JSON.stringify(a.body.user)}) on ${a.instance}`) }
    }
    const aliceLoop = async (a: typeof alice[number]): Promise<void> => {
      for (let i = 0; !run0.stopped && i < 100_000; i++) {
        signedIn(a.name, await attempt(run, a.name, a.client, 'GET', '/api/whoami'), 'alice')
        const sku = SKUS[i % SKUS.length] as string
        if ((a.acked.get(sku) ?? 0) < MAX_ADDS_PER_SKU) {
          const added = await attempt(run, a.name, a.client, 'POST', '/api/cart/items', { sku, qty: 1 })
          if (added !== undefined) a.acked.set(sku, (a.acked.get(sku) ?? 0) + 1)
        }
        await attempt(run, a.name, a.client, 'GET', i % 2 === 0 ? '/api/cart' : '/api/products')
      }
    }
    const placed: Array<{ key: string, orderId: string }> = []
    const bobLoop = async (): Promise<void> => {
      for (let i = 0; !run0.stopped && i < 10_000; i++) {
        const port = opts.ports[i % opts.ports.length] as number
        const who = `bob@${port}`
        signedIn(who, await attempt(run, who, bob, 'GET', '/api/whoami', undefined, {}, port), 'bob')
        if (await attempt(run, who, bob, 'POST', '/api/cart/items', { sku: SKUS[i % SKUS.length], qty: 2 }, {}, port) === undefined) continue
        const billing = { name: 'Bob Example', line1: '2 Main St', city: 'Paris', postcode: '75001', country: 'FR' }
        if (await attempt(run, who, bob, 'PUT', '/api/cart/billing', billing, {}, port) === undefined) continue
        if (await attempt(run, who, bob, 'PUT', '/api/cart/payment', { token: 'tok_visa', brand: 'visa', last4: '4242' }, {}, port) === undefined) continue
        const key = `rolling-${randomUUID()}`
        const r = await attempt<{ status: string, orderId: string }>(run, who, bob, 'POST', '/api/checkout', undefined, { 'idempotency-key': key }, port)
        if (r === undefined) continue
        if (r.body.status === 'placed') placed.push({ key, orderId: r.body.orderId })
        else run.failures.push(`bob checkout ${key}: ${r.body.status}`)
      }
    }
    const traffic = Promise.all([...alice.map(aliceLoop), bobLoop()])

    await sleep(marginMs)
    const steps: RollingDeployReport['steps'] = []
    const deployStart = Date.now()
    for (const instance of opts.instances) {
      const t0 = Date.now()
      log(`  ${((t0 - origin) / 1000).toFixed(2)} s: SIGTERM ${instance.name}: it drains, closes, exits`)
      await instance.terminate()
      const t1 = Date.now()
      await instance.start()
      await opts.waitInRotation(instance)
      const t2 = Date.now()
      steps.push({ instance: instance.name, drainAndCloseMs: t1 - t0, startToReadyMs: t2 - t1 })
      log(`  ${instance.name}: drained and closed in ${t1 - t0} ms, started and back in rotation after ${t2 - t1} ms`)
    }
    const deployMs = Date.now() - deployStart
    await sleep(marginMs)
    run0.stopped = true
    await traffic

    // Afterwards, the checks (not counted as deploy traffic).
    const check: Counted = { requests: 0, failures: [], signOuts: 0, thinkMs: 0 }
    const cart = await attempt<{ items: Array<{ sku: string, quantity: number }> }>(check, first.name, first.client, 'GET', '/api/cart')
    let addsAcknowledged = 0
    let addsMissing = 0
    for (const sku of SKUS) {
      const acked = alice.reduce((n, a) => n + (a.acked.get(sku) ?? 0), 0)
      const held = cart?.body.items.find(x => x.sku === sku)?.quantity ?? 0
      addsAcknowledged += acked
      addsMissing += Math.max(0, acked - held)
    }
    let ordersMissing = 0
    for (const p of placed) {
      const again = await attempt<{ orderId: string }>(check, 'bob', bob, 'POST', '/api/checkout', undefined, { 'idempotency-key': p.key })
      const order = await attempt<{ status: string }>(check, 'bob', bob, 'GET', `/api/orders/${p.orderId}`)
      if (again?.body.orderId !== p.orderId || order?.body.status !== 'placed') ordersMissing++
    }
    const chargesAfter = (await attempt<{ charges: number }>(check, 'bob', bob, 'GET', '/api/_provider'))?.body.charges ?? Number.NaN
    if (check.failures.length > 0) throw new Error(`checks after the deploy failed: ${check.failures.join('; ')}`)
    return {
      requests: run.requests,
      failures: run.failures,
      signOuts: run.signOuts,
      addsAcknowledged,
      addsMissing,
      checkouts: placed.length,
      orders: new Set(placed.map(p => p.orderId)).size,
      charges: chargesAfter - chargesBefore,
      ordersMissing,
      deployMs,
      steps
    }
  } finally {
    for (const a of alice) a.client.close()
    bob.close()
  }
}

export function formatRollingDeploy (r: RollingDeployReport): string {
  return [
    `  requests          ${r.requests} during the deploy (no retries), ${r.failures.length} failed`,
    `  deploy took       ${(r.deployMs / 1000).toFixed(1)} s (${r.steps.map(s => `${s.instance}: drain+close ${s.drainAndCloseMs} ms, start to ready ${s.startToReadyMs} ms`).join('; ')})`,
    `  sign-outs         ${r.signOuts}`,
    `  cart adds         ${r.addsAcknowledged} acknowledged, ${r.addsMissing} missing from the cart`,
    `  checkouts         ${r.checkouts} placed, ${r.orders} distinct orders, ${r.charges} charges, ${r.ordersMissing} not found again`
  ].join('\n')
}
