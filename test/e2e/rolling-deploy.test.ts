/**
 * Rolling deploys that no user notices: three example instances (separate processes, one private redis-server)
 * behind a balancer that health-checks their readiness route. Each instance in turn gets SIGTERM, drains for
 * DRAIN_MS, closes and exits, is started again on its port, and the next waits until it is back in rotation. Under
 * concurrent signed-in traffic (alice: two clients with a new connection per request, two with keep-alive, reading
 * and adding to her cart; bob: checking out again and again), with no retry anywhere: 0 failed requests, 0
 * sign-outs, every acknowledged add in the cart, one order and one charge per checkout.
 *
 * Through the example's own balancer (examples/checkout/balancer.ts) and, at the same time with clients of their own,
 * through HAProxy running examples/checkout/haproxy.cfg when haproxy is installed (without it: one comment line and
 * the example balancer alone; a failure when CI=true). ROLLING_DEPLOY_DRAIN_MS=0 runs the same deploy without a
 * drain period (the control: requests then fail).
 */
import t, { type Test } from 'tap'
import { startShopCluster, type InstanceHandle } from '../../examples/checkout/cluster.js'
import { runRollingDeploy, formatRollingDeploy, type RollingDeployReport } from '../../examples/checkout/rolling-deploy.js'
import { freePort } from '../../scripts/redis-server.js'
import { haproxyVersion, startHaproxy } from '../helpers/haproxy.js'

// Above each balancer's time to take an instance out: 2 checks 250 ms apart here, 2 checks 500 ms apart in haproxy.cfg.
const DRAIN_MS = Number(process.env.ROLLING_DEPLOY_DRAIN_MS ?? 2000)
const CI = process.env.CI === 'true' || process.env.CI === '1'

async function waitFor (what: string, ok: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

function assertNobodyNoticed (t: Test, r: RollingDeployReport, via: string): void {
  // The figures the docs quote: printed on every run.
  process.stderr.write(`\nrolling deploy via ${via}, drainMs ${DRAIN_MS}\n${formatRollingDeploy(r)}\n`)
  t.ok(r.requests > 100, `traffic ran during the deploy (${r.requests} requests)`)
  t.same(r.failures, [], '0 failed requests')
  t.equal(r.signOuts, 0, '0 sign-outs')
  t.ok(r.addsAcknowledged > 0, `adds acknowledged during the deploy (${r.addsAcknowledged})`)
  t.equal(r.addsMissing, 0, 'every acknowledged add is in the cart')
  t.ok(r.checkouts > 0, `checkouts during the deploy (${r.checkouts})`)
  t.equal(r.orders, r.checkouts, 'one order per checkout')
  t.equal(r.charges, r.checkouts, 'one charge per checkout')
  t.equal(r.ordersMissing, 0, 'every order found again, and its key answers the same order')
  t.equal(r.steps.length, 3, 'three instances restarted')
}

// Each process start is mostly module loading: about 2 s idle, 15-30 s seen on this 2-core machine under the load of
// other test runs. The deploy itself is bounded by the drain periods (3 x DRAIN_MS) plus those starts.
t.setTimeout(300_000)

const haproxy = haproxyVersion()
if (haproxy === undefined && !CI) t.comment('haproxy is not installed: the deploy runs through the example balancer only (apt-get install haproxy)')

t.test('rolling deploy of three instances under signed-in traffic: nobody notices', async t => {
  if (haproxy === undefined && CI) t.fail('haproxy is not installed and CI is set: .ci/run should install it (apt-get install haproxy)')
  const cluster = await startShopCluster({
    ports: [await freePort(), await freePort(), await freePort()],
    balancerPort: await freePort(),
    drainMs: DRAIN_MS,
    readinessIntervalMs: 250,
    onLog: line => t.comment(line)
  })
  t.teardown(async () => await cluster.stop())
  t.equal(cluster.mode, 'redis', 'separate instance processes on a private redis-server')
  // Both balancers in front of the same instances, each with its own clients: one deploy, both checked.
  const proxy = haproxy === undefined ? undefined : await startHaproxy(await freePort(), cluster.instances.map(x => x.port))
  if (proxy !== undefined) {
    t.teardown(async () => await proxy.stop())
    t.comment(`${haproxy ?? ''} on port ${proxy.port}`)
  }
  const haproxyUp = async (x: InstanceHandle): Promise<boolean> => proxy === undefined || await proxy.serverStatus(x.name) === 'UP'
  for (const x of cluster.instances) await waitFor(`haproxy sees ${x.name} up`, async () => await haproxyUp(x))
  const report = await runRollingDeploy({
    ports: proxy === undefined ? [cluster.balancerPort] : [cluster.balancerPort, proxy.port],
    // Each balancer gets alice with a new connection per request and alice with keep-alive (two of each alone).
    ...(proxy === undefined ? {} : { newConnectionClients: 1, keepAliveClients: 1 }),
    instances: cluster.instances,
    waitInRotation: async (x: InstanceHandle) => {
      await waitFor(`${x.name} back in rotation`, async () => cluster.inRotation(x) && await haproxyUp(x))
    },
    log: line => t.comment(line)
  })
  assertNobodyNoticed(t, report, proxy === undefined
    ? 'the example balancer (readiness every 250 ms, fall 2)'
    : `the example balancer (readiness every 250 ms, fall 2, port ${cluster.balancerPort}) and HAProxy (inter 500ms fall 2 rise 2, port ${proxy.port})`)
})
