import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { InvalidOptionError } from '../lib/errors.js'

export interface HandoffMetricsOptions {
  /** Route serving the Prometheus text format; `false` for none (use `fastify.handoffMetrics.registry`). Default: '/metrics'. */
  endpoint?: string | false
  /**
   * Route answering `{ status: 'ok' | 'degraded', ... }`. Always 200 while the process can serve: when Redis is down
   * every instance is degraded, and a balancer that took them all out would turn degraded service into an outage.
   * `false` for none. Default: '/health'.
   */
  healthEndpoint?: string | false
  /** Registry to add the metrics to. Default: a new one (so nothing clashes with the application's). */
  registry?: Registry
  /** Prefix of every metric name. Default: 'handoff_'. */
  prefix?: string
  /** Repository latency histogram buckets, seconds. Default: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]. */
  latencyBuckets?: number[]
}

export interface HandoffMetricsDecorator {
  registry: Registry
}

declare module 'fastify' {
  interface FastifyInstance {
    handoffMetrics: HandoffMetricsDecorator
  }
}

type Numbers = Readonly<Record<string, unknown>>

/** A counter whose value is read from `source()[field]` at scrape time: the plugins keep plain counters. */
function mirrorCounter (registry: Registry, name: string, help: string, read: () => number | undefined): void {
  // eslint-disable-next-line no-new
  new Counter({
    name,
    help,
    registers: [registry],
    collect () {
      const v = read()
      this.reset()
      if (v !== undefined && Number.isFinite(v)) this.inc(v)
    }
  })
}

function mirrorGauge (registry: Registry, name: string, help: string, read: () => number | undefined): void {
  // eslint-disable-next-line no-new
  new Gauge({
    name,
    help,
    registers: [registry],
    collect () {
      const v = read()
      if (v !== undefined && Number.isFinite(v)) this.set(v)
    }
  })
}

const snake = (s: string): string => s.replace(/[A-Z]/g, c => `_${c.toLowerCase()}`)

/** Every numeric field of a plugin's counters object becomes `<prefix><group>_<field>_total`. */
function mirrorAll (registry: Registry, prefix: string, group: string, source: () => Numbers | undefined, gauges: ReadonlySet<string> = new Set()): void {
  const sample = source()
  if (sample === undefined) return
  for (const [field, v] of Object.entries(sample)) {
    if (typeof v !== 'number' && v !== null) continue
    const read = (): number | undefined => { const x = source()?.[field]; return typeof x === 'number' ? x : undefined }
    const help = `fastify-handoff ${group}: ${field}`
    if (gauges.has(field)) mirrorGauge(registry, `${prefix}${group}_${snake(field)}`, help, read)
    else mirrorCounter(registry, `${prefix}${group}_${snake(field)}_total`, help, read)
  }
}

const metricsPlugin: FastifyPluginAsync<HandoffMetricsOptions> = async (fastify: FastifyInstance, opts) => {
  const prefix = opts.prefix ?? 'handoff_'
  if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(prefix)) throw new InvalidOptionError('prefix', `must be a valid Prometheus name prefix, got ${JSON.stringify(prefix)}`)
  for (const name of ['endpoint', 'healthEndpoint'] as const) {
    const v = opts[name]
    if (v !== undefined && v !== false && (typeof v !== 'string' || !v.startsWith('/'))) {
      throw new InvalidOptionError(name, `must be a path starting with "/" or false, got ${JSON.stringify(v)}`)
    }
  }
  const registry = opts.registry ?? new Registry()
  const store = fastify.handoff.store

  mirrorAll(registry, prefix, 'store', () => store.counters as unknown as Numbers)
  mirrorGauge(registry, `${prefix}store_local_bytes`, 'Bytes held by the local tier', () => store.localBytes)
  mirrorGauge(registry, `${prefix}store_local_entries`, 'Entries held by the local tier', () => store.localEntries)
  mirrorGauge(registry, `${prefix}store_local_hit_ratio`, 'Local hits / (hits + misses) since start', () => store.localHitRatio)
  mirrorGauge(registry, `${prefix}store_degraded`, '1 while the repository is failing (writes answer 503)', () => store.degraded ? 1 : 0)
  mirrorGauge(registry, `${prefix}store_lease_age_seconds`, 'Seconds since the newest answered invalidation heartbeat was sent', () => {
    const age = store.leaseAgeMs
    return age < 0 ? undefined : age / 1000
  })
  const latency = new Histogram({
    name: `${prefix}repository_latency_seconds`,
    help: 'Repository (Redis) call latency',
    labelNames: ['op', 'outcome'],
    buckets: opts.latencyBuckets ?? [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [registry]
  })
  store.setObserver((op, ms, ok) => latency.observe({ op, outcome: ok ? 'ok' : 'error' }, ms / 1000))

  // The feature plugins are optional: mirror whichever is registered by the time the server is ready.
  fastify.addHook('onReady', async () => {
    const f = fastify as unknown as Record<string, { metrics?: Numbers } | undefined>
    mirrorAll(registry, prefix, 'tls', () => f.handoffTls?.metrics, new Set(['ticketKeyEpoch', 'ticketKeyId', 'ticketKeyAppliedAt', 'ticketRenewalActive']))
    mirrorAll(registry, prefix, 'session', () => f.handoffSessions?.metrics)
    mirrorAll(registry, prefix, 'cart', () => f.handoffCart?.metrics)
  })

  fastify.decorate('handoffMetrics', { registry })
  // Neither route needs the auth session (its plugin may not even be registered).
  const config = { handoffSession: false } as Record<string, unknown>
  if (opts.endpoint !== false) {
    fastify.get(opts.endpoint ?? '/metrics', { config }, async (_req, reply) => {
      reply.type(registry.contentType)
      return await registry.metrics()
    })
  }
  if (opts.healthEndpoint !== false) {
    fastify.get(opts.healthEndpoint ?? '/health', { config }, async () => store.health())
  }
  fastify.addHook('onClose', async () => { store.setObserver(undefined) })
}

/** Prometheus metrics for the store and every fastify-handoff plugin registered, plus a health route. */
export const handoffMetrics = fp(metricsPlugin, { fastify: '5.x', name: 'fastify-handoff/metrics', dependencies: ['fastify-handoff/store'] })
export default handoffMetrics
