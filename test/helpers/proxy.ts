/**
 * A loopback TCP proxy for fault injection: `blackhole()` keeps every connection open but silently stops
 * forwarding in both directions, like a network path that goes quiet without resets; `restore()` delivers what
 * was held back (as TCP retransmission would) and forwards again.
 */
import { createServer, connect, type Socket } from 'node:net'

export interface TcpProxy {
  port: number
  blackhole: () => void
  restore: () => void
  /** Destroy every proxied connection (a reset both ends see). */
  dropConnections: () => void
  close: () => Promise<void>
}

export async function startProxy (targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
  let holed = false
  const held: Array<[Socket, Buffer]> = []
  const pairs = new Set<[Socket, Socket]>()
  const server = createServer(client => {
    const upstream = connect(targetPort, targetHost)
    const pair: [Socket, Socket] = [client, upstream]
    pairs.add(pair)
    const end = (): void => { client.destroy(); upstream.destroy(); pairs.delete(pair) }
    client.on('data', d => { if (holed) held.push([upstream, d]); else upstream.write(d) })
    upstream.on('data', d => { if (holed) held.push([client, d]); else client.write(d) })
    client.on('error', end)
    upstream.on('error', end)
    client.on('close', end)
    upstream.on('close', end)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const addr = server.address()
  const port = typeof addr === 'object' && addr !== null ? addr.port : 0
  return {
    port,
    blackhole: () => { holed = true },
    restore: () => {
      holed = false
      for (const [to, d] of held.splice(0)) if (!to.destroyed) to.write(d)
    },
    dropConnections: () => { for (const [a, b] of pairs) { a.destroy(); b.destroy() } pairs.clear() },
    close: async () => {
      for (const [a, b] of pairs) { a.destroy(); b.destroy() }
      pairs.clear()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}
