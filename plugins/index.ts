// The plugins. Each is usable alone on top of the store plugin.
export { handoffStore, createRepository } from './store.js'
export type { HandoffStoreOptions, HandoffDecorator, RedisConnection } from './store.js'
export * from '../lib/errors.js'
export { tlsSessions, handoffHttpsOptions, sessionIdContextFor } from './tls-sessions.js'
export type { TlsSessionsOptions, TlsSessionMetrics, HandoffTlsDecorator } from './tls-sessions.js'
export { handoffMetrics } from './metrics.js'
export type { HandoffMetricsOptions, HandoffMetricsDecorator } from './metrics.js'
