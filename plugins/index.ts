// The plugins. Each is usable alone on top of the store plugin.
export { handoffStore, createRepository } from './store.js'
export type { HandoffStoreOptions, HandoffDecorator, RedisConnection } from './store.js'
export * from '../lib/errors.js'
