'use strict'
// Harness: @fastify/session's default store (MemoryStore) replaced by fastify-handoff's TieredSessionStore over a
// TieredStore on a real redis-server (set up by setup.mjs, preloaded). Every `new MemoryStore()` gets its own kind,
// i.e. its own key space; a Map given to the constructor seeds the store (as MemoryStore's argument does).
const EventEmitter = require('node:events').EventEmitter
let n = 0
class Store extends EventEmitter {
  constructor (storeMap) {
    super()
    const factory = globalThis.__handoffSessionStore
    if (typeof factory !== 'function') throw new Error('handoff-setup.mjs not loaded')
    this.inner = factory(`t${process.pid}x${n++}`)
    // Seeded on first use, not here: the suite fills the Map after constructing the store (MemoryStore reads it live).
    this.storeMap = storeMap
    this.seeded = undefined
  }

  get ready () {
    if (this.seeded === undefined) {
      const seed = this.storeMap ? [...this.storeMap] : []
      this.seeded = Promise.all(seed.map(([id, s]) => new Promise((resolve, reject) => {
        this.inner.set(id, s, (err) => { if (err) reject(err); else resolve() })
      })))
    }
    return this.seeded
  }

  set (sessionId, session, callback) { globalThis.__handoffCalls.set++; this.ready.then(() => this.inner.set(sessionId, session, callback), callback) }
  get (sessionId, callback) { globalThis.__handoffCalls.get++; this.ready.then(() => this.inner.get(sessionId, callback), callback) }
  destroy (sessionId, callback) { globalThis.__handoffCalls.destroy++; this.ready.then(() => this.inner.destroy(sessionId, callback), callback) }
}
module.exports = Store
module.exports.default = Store
module.exports.Store = Store
module.exports.MemoryStore = Store
