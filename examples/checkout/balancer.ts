/**
 * A layer 4 (TCP) round-robin balancer with TLS passthrough: each new client connection goes to the next live
 * backend, whatever the previous one of the same client was. That is the point of the demo: no stickiness, so the
 * TLS session, the login and the cart must follow the client to any instance. Backends that refuse a connection are
 * skipped. For real deployments see haproxy.cfg.
 *
 * With `proxyProtocol`, each backend connection starts with a PROXY protocol v2 header carrying the client's address
 * (as HAProxy's `send-proxy-v2`), for instances that run the proxy-protocol plugin; `localAddress` is the source
 * address the balancer connects from, the one those instances trust.
 */
import { createServer, connect, type Server, type Socket } from 'node:net'
import { encodeProxyHeaderV2 } from '../../lib/proxy-protocol.js'

export interface Backend { host: string, port: number, name?: string }

export interface BalancerOptions { proxyProtocol?: boolean, localAddress?: string }

export function startBalancer (backends: () => Backend[], port: number, host = '127.0.0.1', opts: BalancerOptions = {}): Promise<Server> {
  let next = 0
  const server = createServer(client => {
    client.on('error', () => {})
    const list = backends()
    let tries = 0
    const attempt = (): void => {
      if (list.length === 0 || tries >= list.length) { client.destroy(); return }
      const b = list[next++ % list.length] as Backend
      tries++
      const upstream: Socket = connect({ port: b.port, host: b.host, ...(opts.localAddress === undefined ? {} : { localAddress: opts.localAddress }) })
      upstream.once('error', () => { upstream.destroy(); if (!client.destroyed) attempt() })
      upstream.once('connect', () => {
        upstream.removeAllListeners('error')
        upstream.on('error', () => client.destroy())
        if (opts.proxyProtocol === true) {
          const { remoteAddress, remotePort, localAddress, localPort } = client
          if (remoteAddress === undefined || remotePort === undefined || localAddress === undefined || localPort === undefined) { client.destroy(); upstream.destroy(); return }
          upstream.write(encodeProxyHeaderV2({ address: remoteAddress, port: remotePort }, { address: localAddress, port: localPort }))
        }
        client.pipe(upstream)
        upstream.pipe(client)
        client.on('close', () => upstream.destroy())
        upstream.on('close', () => client.destroy())
      })
    }
    attempt()
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => resolve(server))
  })
}
