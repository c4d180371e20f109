/**
 * bench/coherence: invalidation latency, from the writer's acknowledgement to the other instance dropping its
 * local copy, over 1,000 writes. Writer and reader are separate processes on one private redis-server; both stamp
 * events with performance.timeOrigin + performance.now(), one machine clock, so the difference is meaningful.
 */
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { RedisRepository } from '../lib/repository/redis.js'
import { TieredStore } from '../lib/tiered-store.js'
import { startRedis } from '../scripts/redis-server.js'
import { median, percentile, progress, writeResult, fmt } from './lib.js'

const SECRET = 'bench-secret-bench-secret-bench-secret-0123'
const WRITES = 1000
const stamp = (): number => performance.timeOrigin + performance.now()

async function role (kind: string, url: string): Promise<void> {
  const repository = new RedisRepository({ url })
  const store = new TieredStore({ repository, secret: SECRET })
  await store.start()
  const key = store.key('bench-invalidation-latency', 'cart')
  if (kind === 'reader') {
    const coherence = store.coherence
    if (coherence === undefined) throw new Error('coherence off')
    const original = coherence.onInvalidation.bind(coherence)
    coherence.onInvalidation = msg => {
      original(msg)
      if (msg.key === key) process.stdout.write(`drop ${msg.version} ${stamp()}\n`)
    }
    process.stdout.write('ready\n')
    // Keep a local copy to drop: re-read after every drop.
    setInterval(() => { store.get(key).catch(() => {}) }, 1)
    return
  }
  for (let i = 0; i < WRITES; i++) {
    const r = await store.update(key, c => ({ n: ((c as { n: number } | undefined)?.n ?? 0) + 1 }))
    process.stdout.write(`ack ${r.version} ${stamp()}\n`)
    await new Promise(resolve => setTimeout(resolve, 2))
  }
  await store.close()
  await repository.close()
  process.exit(0)
}

if (process.argv[2] === 'reader' || process.argv[2] === 'writer') {
  await role(process.argv[2], process.argv[3] as string)
} else {
  const server = await startRedis({ private: true })
  const drops = new Map<number, number>()
  const acks = new Map<number, number>()
  const start = (kind: string): ReturnType<typeof spawn> =>
    spawn(process.execPath, ['--import', 'tsx', 'bench/coherence.ts', kind, server.url], { stdio: ['ignore', 'pipe', 'inherit'] })
  const reader = start('reader')
  await new Promise<void>(resolve => {
    createInterface({ input: reader.stdout as NodeJS.ReadableStream }).on('line', l => {
      const [what, v, at] = l.split(' ')
      if (what === 'ready') resolve()
      if (what === 'drop') drops.set(Number(v), Number(at))
    })
  })
  const writer = start('writer')
  createInterface({ input: writer.stdout as NodeJS.ReadableStream }).on('line', l => {
    const [what, v, at] = l.split(' ')
    if (what === 'ack') { acks.set(Number(v), Number(at)); if (acks.size % 100 === 0) progress(`coherence: ${acks.size}/${WRITES} writes`) }
  })
  await new Promise(resolve => writer.on('exit', resolve))
  await new Promise(resolve => setTimeout(resolve, 300))
  reader.kill('SIGKILL')
  await server.stop()
  const lat: number[] = []
  let missing = 0
  for (const [v, at] of acks) {
    const d = drops.get(v)
    if (d === undefined) missing++
    else lat.push(d - at)
  }
  const result = { writes: acks.size, received: lat.length, missing, medianMs: median(lat), p99Ms: percentile(lat, 0.99), maxMs: Math.max(...lat), minMs: Math.min(...lat) }
  writeResult('coherence', result, `
### Invalidation latency (bench/coherence.ts)

| writes | received | median | p99 | max |
|---|---|---|---|---|
| ${result.writes} | ${result.received} | ${fmt(result.medianMs, 3)} ms | ${fmt(result.p99Ms, 3)} ms | ${fmt(result.maxMs, 3)} ms |

From the writer's acknowledgement (update resolved) to the reader process handling the invalidation, separate
processes, one loopback redis-server. Negative values mean the reader had the invalidation before the writer had
its reply (minimum ${fmt(result.minMs, 3)} ms). Reads started later than the lease (250 ms) are never stale regardless.
`)
  process.exit(0)
}
