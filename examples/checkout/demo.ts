/**
 * npm run demo: a private redis-server (or the embedded repository when none is installed), three HTTPS shop
 * instances and a TCP round-robin balancer on https://localhost:8443. Ctrl-C stops everything it started.
 */
import { startShopCluster } from './cluster.js'

// The balancer passes each client's address on in a PROXY header, from 127.0.0.2 (on the loopback of Linux only).
const proxyProtocol = process.platform === 'linux'
const cluster = await startShopCluster({ onLog: line => process.stderr.write(`${line}\n`), proxyProtocol })
console.log(`
fastify-handoff checkout demo
  repository: ${cluster.mode === 'redis' ? `Redis at ${cluster.redisUrl ?? ''}` : 'embedded (no redis-server installed: the three instances share one process)'}
  instances:  ${cluster.instances.map(i => `${i.name} https://localhost:${i.port}`).join(', ')}
  balancer:   round-robin, layer 4 (TLS passthrough), no stickiness${proxyProtocol ? ', client address passed on by PROXY protocol v2' : ''}

  Open https://localhost:${cluster.balancerPort}/ (self-signed development certificate: accept it once).
  Log in as alice/alice or bob/bob, fill the cart, check out. Every request may land on another instance:
  the header shows which one served it, whether TLS resumed, and where the cart came from.
  Try: npm run demo:failover   (kills and restarts instances during a checkout)

  Ctrl-C to stop.
`)
let stopping = false
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (stopping) return
    stopping = true
    console.log('\nstopping instances, balancer and redis-server...')
    cluster.stop().then(() => process.exit(0), () => process.exit(1))
  })
}
