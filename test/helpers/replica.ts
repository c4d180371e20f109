import type { Test } from 'tap'
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { waitFor } from './wait-for.js'

/**
 * A private primary with one replica, in sync on both sides (the replica's link is up and the primary counts it
 * online: WAIT asks only those); both stopped when the test ends. Returns false for `inSync` if they never agreed.
 */
export async function startPrimaryWithReplica (t: Test): Promise<{ primary: RedisHandle, replica: RedisHandle, inSync: boolean }> {
  const primary = await startRedis({ private: true, args: ['--repl-diskless-sync-delay', '0'] })
  t.teardown(async () => await primary.stop())
  const replica = await startRedis({ private: true, args: ['--replicaof', '127.0.0.1', '0'] })
  t.teardown(async () => await replica.stop())
  replica.cli('REPLICAOF', '127.0.0.1', String(primary.port))
  const inSync = await waitFor(() => replica.cli('INFO', 'replication').includes('master_link_status:up') &&
    /slave0:.*state=online/.test(primary.cli('INFO', 'replication')), { timeoutMs: 10_000, intervalMs: 50 })
  return { primary, replica, inSync }
}
