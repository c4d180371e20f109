/**
 * A real Sentinel setup for tests: one primary, one replica and three sentinels, all private processes on free
 * loopback ports, with a short down-after so a killed primary is replaced within a few seconds.
 */
import { startRedis, type RedisHandle } from '../../scripts/redis-server.js'
import { startProxy, type TcpProxy } from './proxy.js'

export interface SentinelHandle {
  name: string
  primary: RedisHandle
  replica: RedisHandle
  sentinels: RedisHandle[]
  /** For ioredis: `{ sentinels, name }`. */
  sentinelAddresses: Array<{ host: string, port: number }>
  /**
   * The replica reaches the first primary through this proxy: blackhole it and the replica lags (what the primary
   * acknowledges stays in the proxy and dies with the primary), as a busy or distant replica would.
   */
  replicationLink: TcpProxy
  /** The port the sentinels currently name as primary. */
  currentPrimaryPort: () => number
  stop: () => Promise<void>
}

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

export async function startSentinels (opts: { downAfterMs?: number } = {}): Promise<SentinelHandle> {
  const name = 'handoff'
  const started: RedisHandle[] = []
  let link: TcpProxy | undefined
  try {
    const primary = await startRedis({ private: true, args: ['--repl-diskless-sync', 'yes', '--repl-diskless-sync-delay', '0'] })
    started.push(primary)
    link = await startProxy(primary.port)
    const replica = await startRedis({
      private: true,
      args: ['--replicaof', '127.0.0.1', String(link.port), '--repl-diskless-sync', 'yes', '--repl-diskless-sync-delay', '0']
    })
    started.push(replica)
    const deadline = Date.now() + 10_000
    while (!replica.cli('INFO', 'replication').includes('master_link_status:up')) {
      if (Date.now() > deadline) throw new Error('replica did not sync')
      await sleep(50)
    }
    const sentinels: RedisHandle[] = []
    for (let i = 0; i < 3; i++) {
      const s = await startRedis({
        private: true,
        sentinel: true,
        config: [
          `sentinel monitor ${name} 127.0.0.1 ${primary.port} 2`,
          `sentinel down-after-milliseconds ${name} ${opts.downAfterMs ?? 1000}`,
          `sentinel failover-timeout ${name} 5000`,
          `sentinel parallel-syncs ${name} 1`,
          ''
        ].join('\n')
      })
      sentinels.push(s)
      started.push(s)
    }
    // Wait until every sentinel knows the replica and the other sentinels.
    const ready = Date.now() + 15_000
    while (!sentinels.every(s => {
      const info = s.cli('SENTINEL', 'MASTER', name)
      return /num-slaves\n1/.test(info) && /num-other-sentinels\n2/.test(info)
    })) {
      if (Date.now() > ready) throw new Error('sentinels did not discover each other')
      await sleep(100)
    }
    return {
      name,
      primary,
      replica,
      sentinels,
      sentinelAddresses: sentinels.map(s => ({ host: s.host, port: s.port })),
      replicationLink: link,
      currentPrimaryPort: () => Number((sentinels[0] as RedisHandle).cli('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name).split('\n')[1]),
      stop: async () => { await link?.close(); await Promise.all(started.map(async h => await h.stop())) }
    }
  } catch (err) {
    await link?.close()
    await Promise.all(started.map(async h => await h.stop()))
    throw err
  }
}
