import { Socket, type Server } from 'node:net'
import tls from 'node:tls'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { addConnectionStage, readFirstBytes } from '../lib/connection-stages.js'
import { compileOptions, optionPath, type OptionsCheck } from '../lib/options.js'
import { scanProxyHeader, trustedAddresses, type ProxiedClient } from '../lib/proxy-protocol.js'

/**
 * The client's address behind an L4 balancer. TLS ends at the instances, so the balancer passes TCP through and
 * the instance sees only the balancer's address. With the PROXY protocol (HAProxy `send-proxy-v2`, v1 or v2) the
 * balancer sends the client's address first; this plugin reads that header on the raw TCP connection, before TLS
 * starts, and makes `request.ip`, `request.socket.remoteAddress` and Fastify's request logs show the client.
 * Only trusted balancer addresses may send one (see docs/proxy-protocol.md).
 */

export interface ProxyProtocolOptions {
  /**
   * Balancer addresses and CIDR blocks allowed to send a PROXY header, e.g. `['10.0.0.0/24']` or `['127.0.0.1']`.
   * A connection from one of them must start with a valid header (v1 or v2), else it is closed. Required, at least
   * one entry; no default.
   */
  trusted: string[]
  /**
   * How long a new connection has to send its complete header (from any other address: bytes enough to show it
   * sends none, usually its first byte) before it is closed, ms. 1 to 60000. Default: 2000.
   */
  headerTimeoutMs?: number
  /**
   * Connections from addresses not in `trusted`: true serves them as they are, with their own address (a PROXY
   * header from them is refused: the connection is closed); false closes them at once. Default: true.
   */
  allowDirect?: boolean
}

/** Per-instance counters, live. */
export interface ProxyProtocolMetrics {
  /** Connections whose header announced a client: their requests carry that client's address. */
  proxied: number
  /** Trusted headers without a client address (v2 LOCAL, e.g. HAProxy's health checks; v1 UNKNOWN). */
  local: number
  /** Connections from other addresses, without a header, served with their own address. */
  direct: number
  /** Closed for their address: a header (or what starts like one) from outside `trusted`, or any connection from there when `allowDirect` is false. */
  refusedUntrusted: number
  /** Closed: from a trusted address without a header, or with a malformed one. */
  refusedInvalid: number
  /** Closed: no complete header (or no first byte) within `headerTimeoutMs`. */
  timeouts: number
}

export interface HandoffProxyProtocolDecorator {
  metrics: Readonly<ProxyProtocolMetrics>
  /** The options in force, defaults applied. */
  options: Readonly<Required<ProxyProtocolOptions>>
}

declare module 'fastify' {
  interface FastifyInstance {
    handoffProxyProtocol: HandoffProxyProtocolDecorator
  }
}

/** Defaults, in one place. */
export const PROXY_PROTOCOL_DEFAULTS: Readonly<Required<Omit<ProxyProtocolOptions, 'trusted'>>> = Object.freeze({
  headerTimeoutMs: 2000,
  allowDirect: true
})

const TRUSTED_ALLOWED = 'a non-empty array of balancer addresses or CIDR blocks, e.g. ["10.0.0.0/8"]'

/** The options' schema: types and ranges (lib/options.ts applies it the same way in every plugin). */
export const PROXY_PROTOCOL_OPTIONS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['trusted'],
  properties: {
    // Each entry's address and prefix length are parsed after the schema (trustedAddresses), which quotes a bad one.
    trusted: { type: 'array', minItems: 1, description: TRUSTED_ALLOWED },
    headerTimeoutMs: { type: 'integer', minimum: 1, maximum: 60_000 },
    allowDirect: { type: 'boolean' }
  }
} as const

const checkProxyProtocolSchema: OptionsCheck = compileOptions(PROXY_PROTOCOL_OPTIONS_SCHEMA)

/**
 * Refuses invalid PROXY protocol options (unknown keys with a did-you-mean, types, ranges, entries of `trusted` that
 * are no address or CIDR block), naming the option under `path`. Returns the check of an address against `trusted`.
 */
export function checkProxyProtocolOptions (opts: unknown, path = ''): (address: string) => boolean {
  checkProxyProtocolSchema(opts, path)
  return trustedAddresses((opts as ProxyProtocolOptions).trusted, optionPath(path, 'trusted'))
}

/** Checks every option and applies the defaults. `trusted` comes back as given, each entry checked. */
export function resolveProxyProtocolOptions (opts: ProxyProtocolOptions, path = ''): Required<ProxyProtocolOptions> & { isTrusted: (address: string) => boolean } {
  const isTrusted = checkProxyProtocolOptions(opts, path)
  return {
    trusted: [...opts.trusted],
    headerTimeoutMs: opts.headerTimeoutMs ?? PROXY_PROTOCOL_DEFAULTS.headerTimeoutMs,
    allowDirect: opts.allowDirect ?? PROXY_PROTOCOL_DEFAULTS.allowDirect,
    isTrusted
  }
}

/**
 * Makes a socket report the client's address: own properties shadow net.Socket's getters, which read the kernel's
 * peer (the balancer). Fastify's `request.ip` and its request log read `socket.remoteAddress`.
 */
function announce (socket: Socket, client: ProxiedClient): void {
  Object.defineProperties(socket, {
    remoteAddress: { value: client.address, configurable: true, enumerable: true },
    remotePort: { value: client.port, configurable: true, enumerable: true },
    remoteFamily: { value: client.family, configurable: true, enumerable: true }
  })
}

/** Runs before any other connection stage (the header is the first thing on the wire). */
export const PROXY_HEADER_STAGE_RANK = 0

const proxyProtocolPlugin: FastifyPluginAsync<ProxyProtocolOptions> = async (fastify: FastifyInstance, rawOpts) => {
  const o = resolveProxyProtocolOptions(rawOpts)
  const { isTrusted, ...options } = o
  const server = fastify.server as unknown as Server
  const isTls = server instanceof tls.Server
  const log = fastify.log
  const metrics: ProxyProtocolMetrics = { proxied: 0, local: 0, direct: 0, refusedUntrusted: 0, refusedInvalid: 0, timeouts: 0 }
  /** Connections still in their header phase, closed when the server closes. */
  const pending = new Set<Socket>()
  /**
   * TLS: the TLSSocket that Node builds on a raw socket reads its peer from the kernel again, and Node offers no
   * public link from it to the raw socket. The kernel peer (balancer address and port) is unique among this
   * listener's open connections, so it is the key until 'secureConnection' hands us the TLSSocket.
   */
  const tlsClients = new Map<string, ProxiedClient>()
  let closing = false

  const handOver = (socket: Socket, peerKey: string, rest: Buffer, client: ProxiedClient | undefined, next: () => void): void => {
    if (closing) { socket.destroy(); return }
    if (rest.length > 0) socket.unshift(rest)
    if (client !== undefined) {
      announce(socket, client)
      if (isTls) {
        tlsClients.set(peerKey, client)
        socket.once('close', () => tlsClients.delete(peerKey))
      }
    }
    next()
  }

  const accept = (socket: Socket, next: () => void): void => {
    const peer = socket.remoteAddress
    if (closing || peer === undefined) { socket.destroy(); return }
    const peerKey = `${peer}|${String(socket.remotePort)}`
    const fromBalancer = isTrusted(peer)
    if (!fromBalancer && !o.allowDirect) {
      metrics.refusedUntrusted++
      socket.destroy()
      return
    }
    pending.add(socket)
    const refuse = (counter: 'refusedUntrusted' | 'refusedInvalid' | 'timeouts', why: string): true => {
      pending.delete(socket)
      metrics[counter]++
      log.info({ peer, reason: why }, 'fastify-handoff: PROXY protocol: connection refused')
      socket.destroy()
      return true
    }
    readFirstBytes(socket, {
      timeoutMs: o.headerTimeoutMs,
      onTimeout: () => { refuse('timeouts', `no complete PROXY header within ${o.headerTimeoutMs} ms`) },
      onGone: () => { pending.delete(socket); socket.destroy() },
      onBytes: seen => {
        const scan = scanProxyHeader(seen)
        switch (scan.kind) {
          case 'incomplete':
            // Six bytes that agree with a signature ("PROXY ", or v2's "\r\n\r\n\0\r") start no TLS record and no HTTP
            // request: from outside `trusted` that is a header already, refused without waiting for the rest.
            if (!fromBalancer && seen.length >= 6) return refuse('refusedUntrusted', 'PROXY header from an address not in trusted')
            return false
          case 'none':
            if (fromBalancer) return refuse('refusedInvalid', 'no PROXY header from a trusted balancer address')
            pending.delete(socket)
            metrics.direct++
            handOver(socket, peerKey, seen, undefined, next)
            return true
          case 'invalid':
            return refuse(fromBalancer ? 'refusedInvalid' : 'refusedUntrusted', scan.reason)
          case 'header':
            if (!fromBalancer) return refuse('refusedUntrusted', 'PROXY header from an address not in trusted')
            pending.delete(socket)
            metrics[scan.client === undefined ? 'local' : 'proxied']++
            handOver(socket, peerKey, seen.subarray(scan.length), scan.client, next)
            return true
        }
      }
    })
  }

  const applyToTlsSocket = (socket: unknown): void => {
    if (!(socket instanceof Socket)) return
    const peerKey = `${String(socket.remoteAddress)}|${String(socket.remotePort)}`
    const client = tlsClients.get(peerKey)
    if (client === undefined) return
    tlsClients.delete(peerKey)
    announce(socket, client)
  }

  // Every accepted connection passes through here first, whoever listens for 'connection' (Node's TLS and HTTP
  // servers, and any listener added later); they get it once its header is consumed. Other stages (the ClientHello
  // peek of fastify-handoff/tls-sessions) run after this one, whatever the registration order.
  const removeStage = addConnectionStage(server, { rank: PROXY_HEADER_STAGE_RANK, accept })
  // Before Node's HTTP server sees the TLS socket: it reads the peer from the kernel again.
  const onSecureConnection = (socket: unknown): void => { applyToTlsSocket(socket) }
  const onTlsClientError = (_err: unknown, socket: unknown): void => { applyToTlsSocket(socket) }
  if (isTls) {
    server.prependListener('secureConnection', onSecureConnection)
    server.prependListener('tlsClientError', onTlsClientError)
  }

  fastify.decorate('handoffProxyProtocol', { metrics, options: Object.freeze(options) })

  fastify.addHook('preClose', (done) => {
    closing = true
    for (const socket of pending) socket.destroy()
    pending.clear()
    done()
  })
  fastify.addHook('onClose', (_instance, done) => {
    removeStage()
    server.off('secureConnection', onSecureConnection)
    server.off('tlsClientError', onTlsClientError)
    tlsClients.clear()
    done()
  })
}

export const proxyProtocol = fp(proxyProtocolPlugin, { fastify: '5.x', name: 'fastify-handoff/proxy-protocol' })
export default proxyProtocol
