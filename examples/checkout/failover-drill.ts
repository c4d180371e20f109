/**
 * npm run demo:failover: a scripted drill. A client logs in, fills a cart and checks out through the balancer
 * while instances are killed and restarted, including the one that is in the middle of charging the card. Then a
 * rolling deploy: each instance in turn gets SIGTERM (it drains), is started again and is back in rotation before
 * the next, under signed-in traffic with no retries.
 * Prints a short report: requests, instances seen, TLS resumptions, retries, orders placed, charges made, and the
 * rolling deploy's requests, failures, sign-outs, adds and orders.
 */
import { startShopCluster, type ShopCluster } from './cluster.js'
import { ShopClient } from './client.js'
import { runRollingDeploy, formatRollingDeploy, type RollingDeployReport } from './rolling-deploy.js'
import { freePort } from '../../scripts/redis-server.js'

export interface DrillReport {
  mode: string
  requests: number
  instancesSeen: Record<string, number>
  tlsResumed: number
  retries: number
  errors: number
  killed: string[]
  ordersPlaced: number
  orderIds: string[]
  charges: number
  cartAfter: number
  user: string | null
  rollingDeploy: RollingDeployReport
}

// The drill's drain period: above the balancer's 2 checks 250 ms apart, short enough for a quick drill.
const DRILL_DRAIN_MS = 2000

export async function runDrill (log: (s: string) => void = console.log): Promise<DrillReport> {
  // Free ports, so the drill runs beside a running demo.
  const cluster: ShopCluster = await startShopCluster({
    ports: [await freePort(), await freePort(), await freePort()],
    balancerPort: await freePort(),
    drainMs: DRILL_DRAIN_MS
  })
  const killed: string[] = []
  try {
    const client = new ShopClient(cluster.balancerPort)
    const [a, b, c] = cluster.instances
    if (a === undefined || b === undefined || c === undefined) throw new Error('three instances expected')
    log(`drill: 3 instances (${cluster.mode}), balancer on ${cluster.balancerPort}`)
    const login = await client.call('POST', '/api/login', { username: 'alice', password: 'alice' })
    log(`  login on ${login.instance}: ${login.status}`)
    const skus = ['TEE-BLK', 'MUG-LOGO', 'CAP-RED', 'SOCK-3', 'BAG-TOTE']
    for (let i = 0; i < skus.length; i++) {
      if (i === 2) { await a.kill(); killed.push(a.name); log(`  killed ${a.name}`) }
      if (i === 4) { await a.restart(); await b.kill(); killed.push(b.name); log(`  restarted ${a.name}, killed ${b.name}`) }
      const r = await client.call('POST', '/api/cart/items', { sku: skus[i], qty: 1 })
      log(`  add ${skus[i] as string} on ${r.instance}: ${r.status}, ${(r.body.items as unknown[] | undefined)?.length ?? 0} items`)
    }
    await b.restart()
    log(`  restarted ${b.name}`)
    await client.call('PUT', '/api/cart/billing', { name: 'Alice Example', line1: '1 Main St', city: 'Berlin', postcode: '10115', country: 'DE' })
    await client.call('PUT', '/api/cart/payment', { token: 'tok_visa', brand: 'visa', last4: '4242' })
    // The first checkout attempt goes straight to c, which charges and then stalls; c is killed mid-checkout.
    const key = `drill-${Date.now()}`
    await client.call('POST', '/api/_provider', { delayAfterMs: 3000 }, {}, { port: c.port })
    const first = client.call('POST', '/api/checkout', undefined, { 'idempotency-key': key }, { port: c.port, retries: 0 }).catch(() => undefined)
    const deadline = Date.now() + 10_000
    while (Date.now() < deadline) {
      const p = await client.call<{ charges: number }>('GET', '/api/_provider')
      if (p.body.charges >= 1) break
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    await c.kill()
    killed.push(c.name)
    log(`  ${c.name} charged the card and was killed before finishing the checkout`)
    await first
    const orderIds = new Set<string>()
    // The client retries the same checkout (same Idempotency-Key) through the balancer, on whatever is alive.
    for (let i = 0; i < 3; i++) {
      const r = await client.call<{ orderId: string, status: string }>('POST', '/api/checkout', undefined, { 'idempotency-key': key })
      log(`  checkout retry ${i + 1} on ${r.instance}: ${r.status} ${r.body.status} ${r.body.orderId}`)
      if (r.body.status === 'placed') orderIds.add(r.body.orderId)
    }
    await c.restart()
    const who = await client.call<{ user: string | null }>('GET', '/api/whoami')
    const after = await client.call<{ items: unknown[] }>('GET', '/api/cart')
    const provider = await client.call<{ charges: number }>('GET', '/api/_provider')
    log(`rolling deploy: SIGTERM each instance in turn (drain ${DRILL_DRAIN_MS} ms), start it again, wait until it is back in rotation`)
    const rollingDeploy = await runRollingDeploy({
      ports: [cluster.balancerPort],
      instances: cluster.instances,
      waitInRotation: async x => {
        const deadline = Date.now() + 120_000
        while (!cluster.inRotation(x)) {
          if (Date.now() > deadline) throw new Error(`${x.name} not back in rotation within 120 s`)
          await new Promise(resolve => setTimeout(resolve, 50))
        }
      },
      log
    })
    return {
      mode: cluster.mode,
      requests: client.stats.requests,
      instancesSeen: Object.fromEntries(client.stats.instances),
      tlsResumed: client.stats.resumed,
      retries: client.stats.retries,
      errors: client.stats.errors.length,
      killed,
      ordersPlaced: orderIds.size,
      orderIds: [...orderIds],
      charges: provider.body.charges,
      cartAfter: after.body.items.length,
      user: who.body.user,
      rollingDeploy
    }
  } finally {
    await cluster.stop()
  }
}

if (import.meta.url === `file://${process.argv[1] ?? ''}`) {
  const r = await runDrill()
  console.log(`
failover drill report
  repository        ${r.mode}
  requests          ${r.requests} (${r.retries} retried after a connection error or 5xx)
  instances seen    ${Object.entries(r.instancesSeen).map(([k, v]) => `${k}: ${v}`).join(', ')}
  instances killed  ${r.killed.join(', ')}
  TLS resumed       ${r.tlsResumed} of ${r.requests} handshakes
  orders placed     ${r.ordersPlaced} (${r.orderIds.join(', ')})
  charges made      ${r.charges}
  still logged in   ${r.user ?? 'no'}; cart after checkout: ${r.cartAfter} items

rolling deploy (SIGTERM, drain, restart; no retries)
${formatRollingDeploy(r.rollingDeploy)}${r.rollingDeploy.failures.map(f => `\n    failed: ${f}`).join('')}
`)
  const d = r.rollingDeploy
  const unnoticed = d.failures.length === 0 && d.signOuts === 0 && d.addsMissing === 0 && d.orders === d.checkouts &&
    d.charges === d.checkouts && d.ordersMissing === 0
  process.exit(r.ordersPlaced === 1 && r.charges === 1 && unnoticed ? 0 : 1)
}
