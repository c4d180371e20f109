/**
 * A real Redis Cluster for tests: 6 private redis-server processes (3 primaries, 3 replicas) on free loopback
 * ports, a short cluster-node-timeout so a killed primary is replaced in about 2 s, created with
 * `redis-cli --cluster create`, and ready only once every node agrees on the topology.
 */
import { spawnSync } from 'node:child_process'
import { freePort, portIsFree, startRedis, type RedisHandle } from '../../scripts/redis-server.js'

export interface ClusterHandle {
  nodes: RedisHandle[]
  /** host:port of every node, for ioredis' Cluster constructor. */
  startupNodes: Array<{ host: string, port: number }>
  /** The node currently serving `slot` as primary. */
  primaryOf: (slot: number) => RedisHandle
  /** The primaries as one live node sees them now: slot -> node, from one CLUSTER NODES (cheap to call per key). */
  slotOwners: () => (slot: number) => RedisHandle
  /**
   * Freeze a node (SIGSTOP) / let it go on (SIGCONT). A frozen node is left out of every helper query here (a
   * redis-cli call to it would hang until its timeout); `stop` resumes it before stopping it.
   */
  freeze: (node: RedisHandle) => void
  thaw: (node: RedisHandle) => void
  /** Wait until every live node reports cluster_state:ok and the same primaries. */
  waitHealthy: (timeoutMs?: number) => Promise<void>
  stop: () => Promise<void>
}

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

export async function startCluster (opts: { nodeTimeoutMs?: number } = {}): Promise<ClusterHandle> {
  const nodes: RedisHandle[] = []
  try {
    for (let i = 0; i < 6; i++) {
      // A cluster node also listens on port + 10000 (the cluster bus): keep both below the ephemeral range.
      let port = await freePort(20000, 22767)
      while (!await portIsFree(port + 10000)) port = await freePort(20000, 22767)
      nodes.push(await startRedis({
        private: true,
        port,
        args: ['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`,
          '--cluster-node-timeout', String(opts.nodeTimeoutMs ?? 1000), '--repl-diskless-sync-delay', '0',
          '--repl-diskless-sync', 'yes']
      }))
    }
    const r = spawnSync('redis-cli', ['--cluster', 'create', ...nodes.map(n => `127.0.0.1:${n.port}`),
      '--cluster-replicas', '1', '--cluster-yes'], { encoding: 'utf8', timeout: 60_000 })
    if (r.status !== 0) throw new Error(`redis-cli --cluster create failed: ${r.stdout}${r.stderr}`)
  } catch (err) {
    await Promise.all(nodes.map(async n => await n.stop()))
    throw err
  }

  const frozen = new Set<RedisHandle>()
  const alive = (): RedisHandle[] => nodes.filter(n => {
    if (frozen.has(n)) return false
    try { return n.cli('PING') === 'PONG' } catch { return false }
  })

  const handle: ClusterHandle = {
    nodes,
    startupNodes: nodes.map(n => ({ host: n.host, port: n.port })),
    primaryOf: (slot: number) => handle.slotOwners()(slot),
    slotOwners: () => {
      const view = alive()[0]
      const lines = view === undefined ? [] : view.cli('CLUSTER', 'NODES').split('\n')
      const ranges: Array<{ from: number, to: number, node: RedisHandle }> = []
      for (const line of lines) {
        const f = line.split(' ')
        if (!(f[2] ?? '').includes('master') || (f[2] ?? '').includes('fail')) continue
        const port = Number((f[1] ?? '').split('@')[0]?.split(':')[1])
        const node = nodes.find(x => x.port === port)
        if (node === undefined) continue
        for (const range of f.slice(8)) {
          const [a, b] = range.split('-').map(Number)
          if (a !== undefined && Number.isInteger(a)) ranges.push({ from: a, to: b ?? a, node })
        }
      }
      return (slot: number) => {
        const hit = ranges.find(r => slot >= r.from && slot <= r.to)
        if (hit === undefined) throw new Error(`no primary for slot ${slot}`)
        return hit.node
      }
    },
    freeze: (node: RedisHandle) => { frozen.add(node); node.pause() },
    thaw: (node: RedisHandle) => { node.resume(); frozen.delete(node) },
    waitHealthy: async (timeoutMs = 30_000) => {
      const deadline = Date.now() + timeoutMs
      while (Date.now() < deadline) {
        const live = alive()
        const ok = live.every(n => n.cli('CLUSTER', 'INFO').includes('cluster_state:ok'))
        const views = live.map(n => n.cli('CLUSTER', 'NODES').split('\n')
          .filter(l => l.includes('master') && !l.includes('fail')).map(l => l.split(' ')[1]).sort().join(','))
        const replicasUp = live.filter(n => n.cli('ROLE').startsWith('slave')).every(n =>
          n.cli('INFO', 'replication').includes('master_link_status:up'))
        if (ok && new Set(views).size === 1 && replicasUp) return
        await sleep(100)
      }
      throw new Error('cluster did not become healthy in time')
    },
    stop: async () => { frozen.clear(); await Promise.all(nodes.map(async n => await n.stop())) }
  }
  await handle.waitHealthy()
  return handle
}
