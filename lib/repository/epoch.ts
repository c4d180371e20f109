import { randomBytes } from 'node:crypto'

/**
 * A fresh random epoch candidate (16 hex characters). Every write offers a new one, and the partition keeps the
 * first it was given (SET NX): a partition wiped and re-created by the same process still gets a new epoch.
 * Drawn from a pooled buffer, as a random id per write must not cost a system call.
 */
export function newEpoch (): string {
  if (poolAt + 8 > pool.length) {
    pool = randomBytes(8 * 256)
    poolAt = 0
  }
  const id = pool.toString('hex', poolAt, poolAt + 8)
  poolAt += 8
  return id
}

let pool = Buffer.alloc(0)
let poolAt = 0

/** Accepted as an epoch on the wire: what newEpoch makes. */
export function isEpoch (s: string): boolean {
  return /^[0-9a-f]{16}$/.test(s)
}
