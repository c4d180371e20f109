import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { InvalidOptionError } from '../lib/errors.js'
import { compileOptions, optionPath, type OptionsCheck } from '../lib/options.js'

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

const routePath = {
  anyOf: [{ type: 'string', pattern: '^/' }, { const: false }],
  description: 'a path starting with "/" or false'
} as const

/** The options' schema: types and ranges (lib/options.ts applies it the same way in every plugin). */
export const METRICS_OPTIONS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    endpoint: routePath,
    healthEndpoint: routePath,
    // A Registry from another copy of prom-client is fine: only its methods are used.
    registry: {
      type: 'object',
      required: ['registerMetric', 'metrics'],
      properties: { registerMetric: { typeof: 'function' }, metrics: { typeof: 'function' } },
      description: 'a prom-client Registry'
    },
    prefix: { type: 'string', pattern: '^[a-zA-Z_:][a-zA-Z0-9_:]*$', description: 'a valid Prometheus name prefix' },
    latencyBuckets: {
      type: 'array',
      minItems: 1,
      items: { type: 'number', exclusiveMinimum: 0 },
      description: 'a non-empty array of increasing numbers of seconds, > 0'
    }
  }
} as const

const checkMetricsSchema: OptionsCheck = compileOptions(METRICS_OPTIONS_SCHEMA)

/** Refuses invalid metrics options (unknown keys with a did-you-mean, types, ranges), naming the option. */
export function checkMetricsOptions (opts: unknown, path = ''): void {
  checkMetricsSchema(opts, path)
  const buckets = (opts as HandoffMetricsOptions | undefined)?.latencyBuckets
  if (buckets !== undefined && buckets.some((b, i) => i > 0 && b <= (buckets[i - 1] as number))) {
    throw new InvalidOptionError(optionPath(path, 'latencyBuckets'), `must be increasing, got [${buckets.join(', ')}]`)
  }
}

const metricsPlugin: FastifyPluginAsync<HandoffMetricsOptions> = async (fastify: FastifyInstance, opts) => {
  checkMetricsOptions(opts)
  const prefix = opts.prefix ?? 'handoff_'
  const registry = opts.registry ?? new Registry()
  const store = fastify.handoff.store

  mirrorAll(registry, prefix, 'store', () => store.counters as unknown as Numbers)
  mirrorGauge(registry, `${prefix}store_local_bytes`, 'Bytes held by the local tier', () => store.localBytes)
  mirrorGauge(registry, `${prefix}store_local_entries`, 'Entries held by the local tier', () => store.localEntries)
  mirrorGauge(registry, `${prefix}store_local_hit_ratio`, 'Local hits / (hits + misses) since start', () => store.localHitRatio)
  mirrorGauge(registry, `${prefix}store_degraded`, '1 while the repository is failing (writes answer 503)', () => store.degraded ? 1 : 0)
  mirrorGauge(registry, `${prefix}repository_unavailable_nodes`, 'Redis nodes whose breaker is open (their partitions answer 503)',
    () => store.repository.unavailableNodes?.().length ?? 0)
  mirrorGauge(registry, `${prefix}store_lease_age_seconds`, 'Seconds since the newest answered invalidation heartbeat was sent', () => {
    const age = store.leaseAgeMs
    return age < 0 ? undefined : age / 1000
  })
  // Which invalidation transport this instance runs, as an info-style gauge (1 on the label in use).
  // eslint-disable-next-line no-new
  new Gauge({
    name: `${prefix}store_coherence_transport`,
    help: 'How invalidations reach this instance (label transport: pubsub, tracking, in-process, off)',
    labelNames: ['transport'],
    registers: [registry],
    collect () { this.reset(); this.set({ transport: store.coherenceTransport }, 1) }
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
    if (fastify.hasDecorator('handoffDraining')) {
      mirrorGauge(registry, `${prefix}draining`, '1 from the start of the drain (readiness answers 503)', () => (fastify as unknown as { handoffDraining: boolean }).handoffDraining ? 1 : 0)
    }
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
    fastify.get(opts.healthEndpoint ?? '/health', { config }, async () => ({
      ...store.health(),
      // Store-wide `status` flips with whichever node answered last; this names the nodes that are out.
      unavailableNodes: store.repository.unavailableNodes?.() ?? []
    }))
  }
  fastify.addHook('onClose', async () => { store.setObserver(undefined) })
}

/** Prometheus metrics for the store and every fastify-handoff plugin registered, plus a health route. */
export const handoffMetrics = fp(metricsPlugin, { fastify: '5.x', name: 'fastify-handoff/metrics', dependencies: ['fastify-handoff/store'] })
export default handoffMetrics
