import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { InvalidOptionError } from '../lib/errors.js'
import { compileOptions, optionPath, type OptionsCheck } from '../lib/options.js'

export interface HandoffDrainOptions {
  /**
   * How long (ms) an instance keeps serving once the drain begins, answering 503 on the readiness route so that the
   * balancer takes it out, before it stops accepting connections (`fastify.close()`). Make it longer than the
   * balancer needs to notice: health-check interval × failures to mark down, plus one interval. `0`: close at once.
   * Default: 5000.
   */
  drainMs?: number
  /**
   * Readiness route: 200 `{ status: 'ready' }` while serving, 503 `{ status: 'draining' }` from the moment the drain
   * begins. Liveness (`/health` of the metrics plugin) keeps its meaning. `false` for none. Default: '/ready'.
   */
  readinessEndpoint?: string | false
  /**
   * Signals that start the drain; once `fastify.close()` has finished the process exits (code 0, or 1 when the close
   * failed or overran `closeTimeoutMs`). A second signal during the drain exits at once (code 1). Default: [] (none:
   * call `fastify.handoffDrain()` from your own handler).
   */
  signals?: NodeJS.Signals[]
  /** After a signal, how long (ms) the close may take once the drain period is over before the process exits with 1. Default: 10000. */
  closeTimeoutMs?: number
}

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Starts the drain (once; later calls return the same promise): readiness answers 503 and responses carry
     * `Connection: close` for `drainMs`, then `fastify.close()`. Resolves when the close has finished.
     */
    handoffDrain: () => Promise<void>
    /** True from the start of the drain (or of `fastify.close()`) on. */
    readonly handoffDraining: boolean
  }
}

// Signals a process can catch and that mean "stop" in practice (SIGKILL and SIGSTOP cannot be caught).
const DRAIN_SIGNALS: ReadonlySet<string> = new Set(['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'])

const SIGNALS_ALLOWED = `an array of ${[...DRAIN_SIGNALS].join(', ')}`

/** The options' schema: types and ranges (lib/options.ts applies it the same way in every plugin). */
export const DRAIN_OPTIONS_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    drainMs: { type: 'integer', minimum: 0, maximum: 3_600_000 },
    closeTimeoutMs: { type: 'integer', minimum: 0, maximum: 3_600_000 },
    readinessEndpoint: {
      anyOf: [{ type: 'string', pattern: '^/' }, { const: false }],
      description: 'a path starting with "/" or false'
    },
    // Entries are checked below, so that a bad one is reported against `signals` with the list of allowed ones.
    signals: { type: 'array', description: SIGNALS_ALLOWED }
  }
} as const

const checkDrainSchema: OptionsCheck = compileOptions(DRAIN_OPTIONS_SCHEMA)

/** Refuses invalid drain options (unknown keys with a did-you-mean, types, ranges, unknown signals), naming the option under `path`. */
export function checkDrainOptions (opts: unknown, path = ''): void {
  checkDrainSchema(opts, path)
  const signals = (opts as HandoffDrainOptions | undefined)?.signals
  if (signals !== undefined && signals.some(s => typeof s !== 'string' || !DRAIN_SIGNALS.has(s))) {
    throw new InvalidOptionError(optionPath(path, 'signals'), `must be ${SIGNALS_ALLOWED}, got ${JSON.stringify(signals)}`)
  }
}

const drainPlugin: FastifyPluginAsync<HandoffDrainOptions> = async (fastify: FastifyInstance, opts) => {
  checkDrainOptions(opts)
  const drainMs = opts.drainMs ?? 5000
  const closeTimeoutMs = opts.closeTimeoutMs ?? 10_000
  const readiness = opts.readinessEndpoint ?? '/ready'
  const signals = [...new Set(opts.signals ?? [])]

  let draining = false
  let drained: Promise<void> | undefined
  let endPeriod: (() => void) | undefined

  // Not async: every call returns the one promise of the one drain.
  const drain = (): Promise<void> => {
    if (drained !== undefined) return drained
    draining = true
    fastify.log.info({ drainMs }, 'fastify-handoff: draining (readiness 503, Connection: close), then closing')
    drained = (async () => {
      if (drainMs > 0) {
        await new Promise<void>(resolve => {
          const timer = setTimeout(resolve, drainMs)
          // A close() started elsewhere ends the period early: nothing is served after close anyway.
          endPeriod = () => { clearTimeout(timer); resolve() }
        })
      }
      await fastify.close()
    })()
    return drained
  }

  fastify.decorate('handoffDrain', drain)
  fastify.decorate('handoffDraining', { getter: () => draining })

  // Clients on keep-alive connections move to another instance: each response while draining ends its connection.
  // HTTP/2 has no Connection header (a GOAWAY is the server's business there).
  fastify.addHook('onSend', async (request, reply, payload) => {
    if (draining && request.raw.httpVersionMajor < 2) reply.header('connection', 'close')
    return payload
  })
  // A plain fastify.close() also reports "draining" to whatever still asks on an open connection.
  fastify.addHook('preClose', async () => {
    draining = true
    endPeriod?.()
  })

  if (readiness !== false) {
    // No session work for probes (the auth-session plugin may not even be registered).
    fastify.get(readiness, { config: { handoffSession: false } }, async (_request, reply) => {
      if (draining) return await reply.code(503).send({ status: 'draining' })
      return { status: 'ready' }
    })
  }

  if (signals.length > 0) {
    const onSignal = (signal: NodeJS.Signals): void => {
      if (drained !== undefined) {
        fastify.log.warn({ signal }, 'fastify-handoff: second signal while draining, exiting now')
        process.exit(1)
      }
      fastify.log.info({ signal }, 'fastify-handoff: signal received')
      setTimeout(() => {
        fastify.log.error({ closeTimeoutMs }, 'fastify-handoff: close did not finish in time, exiting')
        process.exit(1)
      }, drainMs + closeTimeoutMs).unref()
      drain().then(() => process.exit(0), (err: unknown) => {
        fastify.log.error({ err }, 'fastify-handoff: close failed')
        process.exit(1)
      })
    }
    for (const s of signals) process.on(s, onSignal)
    fastify.addHook('onClose', async () => { for (const s of signals) process.removeListener(s, onSignal) })
  }
}

/**
 * Graceful drain for rolling deploys: readiness 503 and `Connection: close` for `drainMs`, then `fastify.close()`
 * (in-flight requests finish; the store's onClose closes Redis after the server). Usable alone.
 */
export const handoffDrain = fp(drainPlugin, { fastify: '5.x', name: 'fastify-handoff/drain' })
export default handoffDrain
