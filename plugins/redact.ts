import { redactCardNumbers } from '../lib/pan.js'

/** What Fastify's default `req` serializer reads from a request; the serializer below reads the same. */
export interface SerializableRequest {
  method: string
  url: string
  headers?: Record<string, string | string[] | undefined>
  host?: string
  ip?: string
  socket?: { remotePort?: number } | null
}

export interface SerializedRequest {
  [field: string]: unknown
  method: string
  url: string
  version: string | undefined
  host: string | undefined
  remoteAddress: string | undefined
  remotePort: number | undefined
}

/**
 * Fastify's default request serializer (fastify/lib/logger-pino.js, the same fields) with card-number-like runs in
 * the URL replaced by "[REDACTED]", so that `DELETE /api/cart/items/4111111111111111` is not written to the access
 * log. A plugin cannot install it for every route: the logger's serializers are fixed when Fastify creates it, and
 * a child logger factory set by a plugin (setChildLoggerFactory) reaches only the routes declared after it in its
 * context, since each route captures the factory when it is declared. So pass it when creating Fastify:
 *
 *   Fastify({ logger: { serializers: { req: redactedRequestSerializer } } })
 */
export function redactedRequestSerializer (req: SerializableRequest): SerializedRequest {
  const version = req.headers?.['accept-version']
  return {
    method: req.method,
    url: redactCardNumbers(req.url, { url: true }),
    version: Array.isArray(version) ? version.join(', ') : version,
    host: req.host,
    remoteAddress: req.ip,
    remotePort: req.socket?.remotePort ?? undefined
  }
}
