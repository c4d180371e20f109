/**
 * One HTTPS shop instance (npm run example:instance), configured by environment:
 * PORT (8444), HOST (127.0.0.1), REDIS_URL (absent: embedded repository), HANDOFF_SECRET (cluster secret; a
 * development default with a loud warning), INSTANCE_NAME, TLS_CERT / TLS_KEY (paths; default: the shared
 * development certificate), PROXY_PROTOCOL_TRUSTED (comma-separated balancer addresses or CIDR blocks that send a
 * PROXY protocol header, as haproxy.cfg's `send-proxy-v2`; absent: off), DRAIN_MS (5000: on SIGTERM or SIGINT,
 * readiness /ready answers 503 and the instance keeps serving this long, then closes and exits). Prints one JSON
 * line {"instance","port","pid"} when listening.
 */
import { readFileSync } from 'node:fs'
import { buildShop } from './app.js'
import { devCertificate } from './dev-cert.js'
import { DEV_SECRET } from './secret.js'

const env = process.env
let secret = env.HANDOFF_SECRET ?? ''
if (secret === '') {
  secret = DEV_SECRET
  process.stderr.write('\n*** WARNING: HANDOFF_SECRET is not set: using the public development secret. Anyone can forge sessions. ***\n\n')
}
const tls = env.TLS_CERT !== undefined && env.TLS_KEY !== undefined
  ? { cert: readFileSync(env.TLS_CERT), key: readFileSync(env.TLS_KEY) }
  : devCertificate()
const instanceName = env.INSTANCE_NAME ?? `shop-${process.pid}`
const { app } = await buildShop({
  instanceName,
  secret,
  tls,
  ...(env.REDIS_URL === undefined || env.REDIS_URL === '' ? {} : { redisUrl: env.REDIS_URL }),
  logger: { level: env.LOG_LEVEL ?? 'warn' },
  ...(env.PROXY_PROTOCOL_TRUSTED === undefined || env.PROXY_PROTOCOL_TRUSTED === '' ? {} : { proxyProtocol: { trusted: env.PROXY_PROTOCOL_TRUSTED.split(',') } }),
  // The plugin refuses a DRAIN_MS that is not a whole number of ms (FST_HANDOFF_INVALID_OPTION).
  drain: { drainMs: env.DRAIN_MS === undefined || env.DRAIN_MS === '' ? 5000 : Number(env.DRAIN_MS), signals: ['SIGTERM', 'SIGINT'] }
})
const address = await app.listen({ port: Number(env.PORT ?? 8444), host: env.HOST ?? '127.0.0.1' })
const port = Number(new URL(address).port)
process.stdout.write(`${JSON.stringify({ instance: instanceName, port, pid: process.pid })}\n`)
