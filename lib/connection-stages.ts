import { Socket, type Server } from 'node:net'

/**
 * Work done on a new connection's raw socket before the server's own 'connection' listeners (Node's TLS and HTTP
 * servers) get it: reading a PROXY protocol header (plugins/proxy-protocol.ts), peeking at the TLS ClientHello
 * (plugins/tls-sessions.ts). Several plugins do this on one server, and the order matters (the PROXY header comes
 * first on the wire), so they go through one interception of `server.emit` that runs the stages by rank, whatever
 * order the plugins were registered in.
 */
export interface ConnectionStage {
  /** Lower runs first. PROXY header: 0; ClientHello peek: 10. */
  rank: number
  /**
   * Takes the socket; calls `next()` once (with any bytes it read put back by `socket.unshift`) to hand it on, or
   * destroys it. May be asynchronous.
   */
  accept: (socket: Socket, next: () => void) => void
}

type Emit = (event: string | symbol, ...args: unknown[]) => boolean
interface Gate { stages: ConnectionStage[], previous: PropertyDescriptor | undefined }
const GATE = Symbol('fastify-handoff.connectionStages')
type GatedServer = Server & { [GATE]?: Gate }

/** Adds a stage to `server`; returns its removal (the interception goes away with the last stage). */
export function addConnectionStage (server: Server, stage: ConnectionStage): () => void {
  const s = server as GatedServer
  let gate = s[GATE]
  if (gate === undefined) {
    const g: Gate = { stages: [], previous: Object.getOwnPropertyDescriptor(server, 'emit') }
    gate = g
    const emit = server.emit as Emit
    const run = (socket: Socket, from: number): void => {
      const stage = g.stages[from]
      if (stage === undefined) { emit.call(server, 'connection', socket); return }
      let passed = false
      stage.accept(socket, () => {
        if (passed) return
        passed = true
        run(socket, from + 1)
      })
    }
    const intercept: Emit = function (this: Server, event, ...args) {
      if (event === 'connection' && args[0] instanceof Socket && g.stages.length > 0) { run(args[0], 0); return true }
      return emit.call(this, event, ...args)
    }
    Object.defineProperty(server, 'emit', { value: intercept, configurable: true, writable: true, enumerable: false })
    Object.defineProperty(server, GATE, { value: g, configurable: true, writable: false, enumerable: false })
  }
  const g = gate
  g.stages.push(stage)
  g.stages.sort((a, b) => a.rank - b.rank)
  return () => {
    const at = g.stages.indexOf(stage)
    if (at >= 0) g.stages.splice(at, 1)
    if (g.stages.length === 0 && s[GATE] === g) {
      if (g.previous === undefined) Reflect.deleteProperty(server, 'emit')
      else Object.defineProperty(server, 'emit', g.previous)
      Reflect.deleteProperty(server, GATE)
    }
  }
}

export interface FirstBytesReader {
  /** Every byte received so far, after each read; true once it has decided (reading stops before it returns). */
  onBytes: (bytes: Buffer) => boolean
  timeoutMs: number
  /** No decision within timeoutMs; reading has stopped. */
  onTimeout: (bytes: Buffer) => void
  /** The socket ended, failed or closed before a decision; reading has stopped. */
  onGone: () => void
}

/**
 * Reads a connection's first bytes in JS (paused mode) until `onBytes` decides, the time is up, or the socket goes.
 * The bytes stay the caller's: a stage puts back what the next one must see with `socket.unshift`. Returns `stop`.
 */
export function readFirstBytes (socket: Socket, r: FirstBytesReader): () => void {
  let bytes: Buffer = Buffer.alloc(0)
  let stopped = false
  const stop = (): void => {
    if (stopped) return
    stopped = true
    clearTimeout(timer)
    socket.removeListener('readable', onReadable)
    socket.removeListener('error', onGone)
    socket.removeListener('end', onGone)
    socket.removeListener('close', onGone)
  }
  const onGone = (): void => { stop(); r.onGone() }
  const onReadable = (): void => {
    for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
      bytes = bytes.length === 0 ? chunk : Buffer.concat([bytes, chunk])
    }
    // A decision may hand the socket on at once (to the next stage's reader): all synchronous, so this reader's
    // listeners come off before the socket can emit again.
    if (!stopped && r.onBytes(bytes)) stop()
  }
  const timer = setTimeout(() => { stop(); r.onTimeout(bytes) }, r.timeoutMs)
  socket.on('readable', onReadable)
  socket.on('error', onGone)
  socket.on('end', onGone)
  socket.on('close', onGone)
  return stop
}
