/**
 * A loopback TCP proxy for fault injection: `blackhole()` keeps every connection open but silently stops
 * forwarding in both directions, like a network path that goes quiet without resets; `restore()` delivers what
 * was held back (as TCP retransmission would) and forwards again.
 * With `keepClients`, a lost upstream connection (the server killed) does not close the client's: the next bytes
 * the client sends go over a new upstream connection, as behind a load balancer or a service mesh that keeps
 * client connections open while the server behind it restarts.
 * With `holdCloses`, a server-side close during a blackhole is held back too (delivered on `restore()`), as a FIN
 * on a silent path would be: the client keeps a connection whose server side is gone, and does not know it.
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

export async function startProxy (targetPort: number, targetHost = '127.0.0.1', opts: { keepClients?: boolean, holdCloses?: boolean } = {}): Promise<TcpProxy> {
  let holed = false
  // What a blackhole holds back, in order: each delivers one chunk where it goes now (a restored upstream included).
  const held: Array<() => void> = []
  const pairs = new Set<[Socket, Socket]>()
  const server = createServer(client => {
    const pair: [Socket, Socket] = [client, client]
    const end = (): void => { client.destroy(); pair[1].destroy(); pairs.delete(pair) }
    // With keepClients: bytes the client sends while no upstream is connected wait here, for the next one.
    let waiting: Buffer[] | undefined
    const dial = (): void => {
      const upstream = connect(targetPort, targetHost)
      pair[1] = upstream
      pairs.add(pair)
      upstream.on('connect', () => {
        const queued = waiting ?? []
        waiting = undefined
        for (const d of queued) upstream.write(d)
      })
      const deliver = (d: Buffer): void => { if (!client.destroyed) client.write(d) }
      upstream.on('data', d => { if (holed) held.push(() => deliver(d)); else deliver(d) })
      let lost = false
      const onLost = (): void => {
        if (lost) return
        lost = true
        if (opts.keepClients !== true) {
          if (holed && opts.holdCloses === true) held.push(end)
          else end()
          return
        }
        upstream.destroy()
        pairs.delete(pair)
        // Redial while the client has something to send (the server may still be down).
        if (waiting !== undefined && !client.destroyed) setTimeout(dial, 50)
      }
      upstream.on('error', onLost)
      upstream.on('close', onLost)
    }
    dial()
    const send = (d: Buffer): void => {
      const upstream = pair[1]
      if (upstream.destroyed || upstream.connecting) {
        if (opts.keepClients !== true && upstream.destroyed) return
        const first = waiting === undefined
        ;(waiting ??= []).push(d)
        if (first && upstream.destroyed) dial()
        return
      }
      upstream.write(d)
    }
    client.on('data', d => { if (holed) held.push(() => send(d)); else send(d) })
    client.on('error', end)
    client.on('close', end)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const addr = server.address()
  const port = typeof addr === 'object' && addr !== null ? addr.port : 0
  return {
    port,
    blackhole: () => { holed = true },
    restore: () => {
      holed = false
      for (const deliver of held.splice(0)) deliver()
    },
    dropConnections: () => { for (const [a, b] of pairs) { a.destroy(); b.destroy() } pairs.clear() },
    close: async () => {
      for (const [a, b] of pairs) { a.destroy(); b.destroy() }
      pairs.clear()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}
