/**
 * bench/fanout: what one write costs Redis as the fleet grows. One writer (a RedisRepository, the real write script)
 * and N subscribing instances on one private redis-server (one per cell), N = 1, 4, 16, 64, each instance holding 1%
 * or 100% of the keys. Per cell: Redis CPU per write (redis-server's time on a CPU from /proc schedstat, across the
 * writes and until every instance has received and re-read what they invalidated, divided by the writes),
 * invalidation messages delivered per write, and the writer's latency p50/p99.
 *
 * Every cell of a held share is set up at once (each on its own redis-server) and the cells take turns writing
 * FANOUT_BATCH writes at a time, so that the shared machine's drift lands on all of them alike: the ratios between
 * cells (N=64 over N=1, tracking over pub/sub) come from the same minutes.
 *
 * The subscribing instances are lightweight stand-ins that speak the store's protocol, the same shape for every
 * design: a subscriber connection subscribed exactly as the store's subscriber is, and a command connection whose
 * reads fill a set of held keys; an invalidation of a held key drops it and reads it again (so the held share stays
 * what the cell says). The writer follows invalidations too (holding nothing), as a store instance does. No
 * heartbeats: they cost the same per connection whatever the writes (see docs/scaling.md).
 */
import { Redis } from 'ioredis'
import { randomBytes } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { RedisRepository } from '../lib/repository/redis.js'
import { TieredStore } from '../lib/tiered-store.js'
import { channelName, entryKey, partitionOf, partitionOfChannel } from '../lib/partitions.js'
import { startRedis, type RedisHandle } from '../scripts/redis-server.js'
import { fmt, median, percentile, progress, round, writeResult } from './lib.js'

const PREFIX = 'handoff:'
const PARTITIONS = 1024
const KEYS = 2000
const WRITES = Number(process.env.FANOUT_WRITES ?? 4000)
const FLEET = (process.env.FANOUT_N ?? '1,4,16,64').split(',').map(Number)
const ROUNDS = Number(process.env.FANOUT_ROUNDS ?? 5)
const HELD = (process.env.FANOUT_HELD ?? '0.01,1').split(',').map(Number)
const VALUE = randomBytes(300)
/** FANOUT_REFILL=0 (diagnosis): holders drop what is invalidated and do not read it again, leaving the transport's own cost. */
const REFILL = process.env.FANOUT_REFILL !== '0'
/** FANOUT_IDLE_ONLY=1: only the idle fleets (FANOUT_IDLE_TRANSPORTS, default both), printed as JSON, no results written. */
const IDLE_ONLY = process.env.FANOUT_IDLE_ONLY === '1'

/** How an instance hears about writes: each design's stand-in. */
interface Design {
  name: string
  /** What the design's subscriber does, in a few words for the table. */
  describe: string
  /** `reader`: the command connection whose reads fill (the writer's own, for the writing instance). */
  instance: (port: number, held: Set<string>, reader?: Redis) => Promise<StandIn>
}

interface StandIn {
  received: () => number
  /** Resolves once everything sent before it has been delivered and every re-read it caused has been answered. */
  drain: () => Promise<void>
  close: () => void
}

/** Reads that fill: the held keys read once, and read again after each invalidation of one. */
function holder (reader: Redis, held: Set<string>): { refill: (key: string) => void, settled: () => Promise<void>, fill: () => Promise<void> } {
  let pending = Promise.resolve()
  return {
    refill: key => {
      if (!REFILL || !held.has(key)) return
      pending = Promise.all([pending, reader.hmgetBuffer(key, 'v', 'd', 'e', 'g')]).then(() => {})
    },
    settled: async () => { await pending },
    fill: async () => { await Promise.all([...held].map(async k => await reader.hmgetBuffer(k, 'v', 'd', 'e', 'g'))) }
  }
}

/**
 * One stand-in: a RESP2 subscriber connection and a command connection (`own`, or a new one) whose reads fill
 * `held`. `follow` subscribes the way the design does and calls `heard(key)` for each invalidated key.
 */
async function standIn (port: number, held: Set<string>, own: Redis | undefined,
  follow: (sub: Redis, reader: Redis, heard: (key: string) => void) => Promise<void>): Promise<StandIn> {
  const sub = new Redis({ port, protocol: 2, autoResubscribe: false, lazyConnect: true })
  const reader = own ?? new Redis({ port, enableAutoPipelining: false })
  await sub.connect()
  let received = 0
  const h = holder(reader, held)
  await follow(sub, reader, key => { received++; h.refill(key) })
  await h.fill()
  return {
    received: () => received,
    drain: async () => { await sub.ping(); await h.settled() },
    close: () => { sub.disconnect(); if (own === undefined) reader.disconnect() }
  }
}

/** Today's design: every instance SSUBSCRIBEs every partition's channel (lib/repository/redis-subscriber.ts). */
const pubsub: Design = {
  name: 'pubsub',
  describe: 'SSUBSCRIBE to every partition channel',
  instance: async (port, held, own) => await standIn(port, held, own, async (sub, _reader, heard) => {
    sub.on('smessageBuffer', (channel: Buffer, message: Buffer) => {
      if (partitionOfChannel(channel.toString()) < 0) return
      // "<version> <sequence> <epoch> <key>"
      const m = message.toString()
      let at = -1
      for (let i = 0; i < 3; i++) at = m.indexOf(' ', at + 1)
      heard(m.slice(at + 1))
    })
    await Promise.all(Array.from({ length: PARTITIONS }, async (_, p) => await sub.ssubscribe(channelName(PREFIX, p))))
  })
}

/** A client-tracking stand-in: CLIENT TRACKING ON REDIRECT to a RESP2 connection subscribed to __redis__:invalidate, plus `mode`. */
function trackingDesign (name: string, describe: string, ...mode: string[]): Design {
  return {
    name,
    describe,
    instance: async (port, held, own) => await standIn(port, held, own, async (sub, reader, heard) => {
      sub.on('messageBuffer', (_channel: Buffer, message: unknown) => {
        if (Array.isArray(message)) for (const k of message as Buffer[]) heard(k.toString())
      })
      const id = String(await sub.client('ID'))
      await sub.subscribe('__redis__:invalidate')
      await reader.call('CLIENT', 'TRACKING', 'ON', 'REDIRECT', id, ...mode)
    })
  }
}

/**
 * Client tracking (lib/repository/tracking-subscriber.ts), in default mode: Redis remembers which instance read which
 * key and tells only the readers of a key.
 */
const tracking = trackingDesign('tracking', 'CLIENT TRACKING ON REDIRECT to one subscribed connection')

/**
 * Client tracking in broadcasting mode (BCAST PREFIX, the store's key prefix): Redis keeps no per-key table and tells
 * every such instance of every write under the prefix, as pub/sub does, batched per event-loop turn (each write's
 * sequence key too, which shares the prefix). Not a store transport: measured beside the others (FANOUT_DESIGNS=
 * pubsub,tracking,bcast) for fleets whose instances hold every key.
 */
const bcast = trackingDesign('bcast', 'CLIENT TRACKING ON REDIRECT BCAST PREFIX <prefix>', 'BCAST', 'PREFIX', PREFIX)

const DESIGNS: Design[] = [pubsub, tracking, bcast].filter(d => (process.env.FANOUT_DESIGNS ?? 'pubsub,tracking').split(',').includes(d.name))

interface Cell {
  design: string
  instances: number
  heldShare: number
  writes: number
  redisCpuUsPerWrite: number
  messagesPerWrite: number
  p50Ms: number
  p99Ms: number
  /** used_memory once the fleet is connected and holds its share, over before. */
  fleetMemoryBytes: number
  /** tracking_total_items then: (key, client) pairs in Redis's tracking table. */
  trackingItems: number
  /** Per write, INFO commandstats across the writes: command -> [calls, us inside the command]. */
  commands: Record<string, [number, number]>
}

/** INFO commandstats as command -> [calls, usec]. */
function commandUsec (server: RedisHandle): Map<string, [number, number]> {
  const out = new Map<string, [number, number]>()
  for (const line of server.cli('INFO', 'commandstats').split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line.trim())
    if (m !== null) out.set(m[1] as string, [Number(m[2]), Number(m[3])])
  }
  return out
}

function usedMemory (server: RedisHandle): number {
  return Number(/used_memory:(\d+)/.exec(server.cli('INFO', 'memory'))?.[1] ?? NaN)
}

function cpuSeconds (server: RedisHandle): number {
  const info = server.cli('INFO', 'CPU')
  const sys = Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1] ?? NaN)
  const user = Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1] ?? NaN)
  return sys + user
}

const keys = Array.from({ length: KEYS }, () => {
  const id = randomBytes(24).toString('base64url')
  return entryKey(PREFIX, partitionOf(id, PARTITIONS), id, 'session')
})

function pick (share: number): Set<string> {
  if (share >= 1) return new Set(keys)
  const out = new Set<string>()
  const want = Math.max(1, Math.round(KEYS * share))
  while (out.size < want) out.add(keys[Math.floor(Math.random() * KEYS)] as string)
  return out
}

/**
 * Redis's CPU time so far in nanoseconds: the sum over redis-server's threads of /proc/<pid>/task/<tid>/schedstat's
 * first field (time on a CPU, kept by the scheduler to the nanosecond). Unlike INFO CPU (which the kernel may account
 * in 4 ms ticks here) it is exact, and reading it sends Redis nothing. Falls back to INFO CPU where /proc lacks it.
 */
function cpuNs (server: RedisHandle): number {
  const pid = server.pid()
  if (pid !== undefined) {
    try {
      let ns = 0
      for (const tid of readdirSync(`/proc/${pid}/task`)) ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0])
      if (Number.isFinite(ns)) return ns
    } catch {}
  }
  return cpuSeconds(server) * 1e9
}

/** One cell's fleet, alive for a whole round: its writes are made in batches interleaved with every other cell's. */
interface Rig {
  design: Design
  n: number
  share: number
  server: RedisHandle
  writer: RedisRepository
  fleet: StandIn[]
  versions: Map<string, number>
  lat: number[]
  cpuNs: number
  writes: number
  received0: number
  stats0: Map<string, [number, number]>
  fleetMemory: number
  trackingItems: number
}

async function setUp (design: Design, n: number, share: number): Promise<Rig> {
  const server = await startRedis({ private: true })
  const writer = new RedisRepository({ url: server.url })
  try {
    await writer.connect()
    const versions = new Map<string, number>()
    // Every key exists before the instances read it: a held copy is a copy of something.
    for (const k of keys) {
      const r = await writer.compareAndSet(k, null, VALUE, 3_600_000)
      if (r.ok) versions.set(k, r.version)
    }
    const mem0 = usedMemory(server)
    // The writer is an instance too: it follows invalidations on its own command connection, holding nothing.
    const fleet: StandIn[] = [await design.instance(server.port, new Set(), writer.client as Redis)]
    for (let i = 0; i < n; i++) fleet.push(await design.instance(server.port, pick(share)))
    await Promise.all(fleet.map(async s => await s.drain()))
    return {
      design,
      n,
      share,
      server,
      writer,
      fleet,
      versions,
      lat: [],
      cpuNs: 0,
      writes: 0,
      received0: fleet.reduce((a, s) => a + s.received(), 0),
      stats0: commandUsec(server),
      // What the fleet costs Redis in memory once it holds its share: connections, subscriptions, the tracking table.
      fleetMemory: usedMemory(server) - mem0,
      trackingItems: Number(/tracking_total_items:(\d+)/.exec(server.cli('INFO', 'stats'))?.[1] ?? 0)
    }
  } catch (err) {
    await writer.close()
    await server.stop()
    throw err
  }
}

/** `count` writes of random keys, then until every instance has heard them and re-read what they invalidated. */
async function batch (rig: Rig, count: number): Promise<void> {
  const t0 = cpuNs(rig.server)
  for (let i = 0; i < count; i++) {
    const k = keys[Math.floor(Math.random() * KEYS)] as string
    const w0 = performance.now()
    const r = await rig.writer.compareAndSet(k, rig.versions.get(k) ?? null, VALUE, 3_600_000)
    rig.lat.push(performance.now() - w0)
    if (!r.ok) throw new Error(`bench writer lost a compare-and-set on ${k}: it is the only writer`)
    rig.versions.set(k, r.version)
  }
  await Promise.all(rig.fleet.map(async s => await s.drain()))
  rig.cpuNs += cpuNs(rig.server) - t0
  rig.writes += count
}

async function finish (rig: Rig): Promise<Cell> {
  try {
    const commands: Record<string, [number, number]> = {}
    for (const [name, [calls, usec]] of commandUsec(rig.server)) {
      const [c0, u0] = rig.stats0.get(name) ?? [0, 0]
      if (name !== 'info' && calls > c0) commands[name] = [round((calls - c0) / rig.writes, 3), round((usec - u0) / rig.writes, 2)]
    }
    const received = rig.fleet.reduce((a, s) => a + s.received(), 0) - rig.received0
    return {
      design: rig.design.name,
      instances: rig.n,
      heldShare: rig.share,
      writes: rig.writes,
      redisCpuUsPerWrite: round(rig.cpuNs / 1e3 / rig.writes, 1),
      messagesPerWrite: round(received / rig.writes, 3),
      p50Ms: round(percentile(rig.lat, 0.5), 3),
      p99Ms: round(percentile(rig.lat, 0.99), 3),
      fleetMemoryBytes: rig.fleetMemory,
      trackingItems: rig.trackingItems,
      commands
    }
  } finally {
    for (const s of rig.fleet) s.close()
    await rig.writer.close()
    await rig.server.stop()
  }
}

// Rounds. In each, for each held share, every cell's fleet (each N, each design, on its own redis-server) is set up
// at once and the cells take turns writing BATCH at a time, the order rotating per turn: drift in a shared machine's
// speed then lands on every cell alike, and the ratios between cells are taken from the same minutes. A cell's
// figures are the round with the median Redis CPU per write.
const BATCH = Number(process.env.FANOUT_BATCH ?? 250)
const rounds: Cell[][] = []
/** A cell's place in every round's list: held share, then N, then design as listed. */
const order = (c: Cell): number => (HELD.indexOf(c.heldShare) * FLEET.length + FLEET.indexOf(c.instances)) * DESIGNS.length +
  DESIGNS.findIndex(d => d.name === c.design)
for (let round = 0; round < (IDLE_ONLY ? 0 : ROUNDS); round++) {
  const cellsOfRound: Cell[] = []
  for (const share of HELD) {
    const rigs: Rig[] = []
    try {
      for (const n of FLEET) {
        for (const design of DESIGNS) {
          progress(`fanout: round ${round + 1}/${ROUNDS}, ${share * 100}% held, setting up ${design.name} N=${n}`)
          rigs.push(await setUp(design, n, share))
        }
      }
      const turns = Math.ceil(WRITES / BATCH)
      for (let turn = 0; turn < turns; turn++) {
        progress(`fanout: round ${round + 1}/${ROUNDS}, ${share * 100}% held, turn ${turn + 1}/${turns}`)
        const count = Math.min(BATCH, WRITES - turn * BATCH)
        for (let i = 0; i < rigs.length; i++) await batch(rigs[(i + turn) % rigs.length] as Rig, count)
      }
    } finally {
      for (const rig of rigs) cellsOfRound.push(await finish(rig))
    }
  }
  cellsOfRound.sort((a, b) => order(a) - order(b))
  rounds.push(cellsOfRound)
}
// A cell's figures: each one's median over the rounds (CPU, latencies and messages need not peak in the same round);
// the rest (commandstats, memory) from the round with the median Redis CPU.
const cells: Cell[] = (rounds[0] ?? []).map((_, i) => {
  const runs = rounds.map(r => r[i] as Cell).sort((a, b) => a.redisCpuUsPerWrite - b.redisCpuUsPerWrite)
  const of = (f: (c: Cell) => number): number => median(runs.map(f))
  return {
    ...runs[runs.length >> 1] as Cell,
    redisCpuUsPerWrite: round(of(c => c.redisCpuUsPerWrite), 1),
    messagesPerWrite: round(of(c => c.messagesPerWrite), 3),
    p50Ms: round(of(c => c.p50Ms), 3),
    p99Ms: round(of(c => c.p99Ms), 3)
  }
})

/** Time Redis spent in the script's HSET and SPUBLISH (commandstats): tracking's invalidations are sent from the HSET, pub/sub's from the SPUBLISH. */
const fanOutUs = (c: Cell): number => (c.commands.hset?.[1] ?? 0) + (c.commands.spublish?.[1] ?? 0)
/**
 * What an idle fleet costs Redis: IDLE_STORES real stores (TieredStore, default heartbeat and lease) on each
 * transport, no traffic, Redis CPU and commands over IDLE_MS, per store and second. The write cells above leave
 * heartbeats out (they cost per second, not per write); this is their share.
 */
const IDLE_STORES = Number(process.env.FANOUT_IDLE_STORES ?? 16)
const IDLE_MS = 5000
interface Idle { transport: 'pubsub' | 'tracking', stores: number, redisCpuUsPerStoreSecond: number, commandsPerStoreSecond: Record<string, number> }
async function idleCost (transport: 'pubsub' | 'tracking'): Promise<Idle> {
  const server = await startRedis({ private: true })
  const stores: Array<{ store: TieredStore, repository: RedisRepository }> = []
  try {
    for (let i = 0; i < IDLE_STORES; i++) {
      const repository = new RedisRepository({ url: server.url })
      const store = new TieredStore({ repository, secret: 'a-bench-secret-that-is-at-least-32-bytes-long', coherence: { transport } })
      await store.start()
      stores.push({ store, repository })
    }
    await new Promise(resolve => setTimeout(resolve, 1000))
    const stats0 = commandUsec(server)
    const cpu0 = cpuNs(server)
    const t0 = performance.now()
    await new Promise(resolve => setTimeout(resolve, IDLE_MS))
    const cpu1 = cpuNs(server)
    const seconds = (performance.now() - t0) / 1000
    const commandsPerStoreSecond: Record<string, number> = {}
    for (const [name, [calls]] of commandUsec(server)) {
      const c0 = stats0.get(name)?.[0] ?? 0
      if (name !== 'info' && calls > c0) commandsPerStoreSecond[name] = round((calls - c0) / IDLE_STORES / seconds, 1)
    }
    return { transport, stores: IDLE_STORES, redisCpuUsPerStoreSecond: round((cpu1 - cpu0) / 1e3 / IDLE_STORES / seconds, 1), commandsPerStoreSecond }
  } finally {
    for (const { store, repository } of stores) { await store.close(); await repository.close() }
    await server.stop()
  }
}
progress('fanout: idle fleets (heartbeats)')
const idle: Idle[] = []
for (const transport of ['pubsub', 'tracking'] as const) {
  if (IDLE_ONLY && !(process.env.FANOUT_IDLE_TRANSPORTS ?? 'pubsub,tracking').split(',').includes(transport)) continue
  idle.push(await idleCost(transport))
}
if (IDLE_ONLY) {
  process.stderr.write('\r\x1b[K')
  console.log(JSON.stringify(idle))
  process.exit(0)
}

const cell = (d: string, n: number, s: number): Cell | undefined => cells.find(c => c.design === d && c.instances === n && c.heldShare === s)
const growth = DESIGNS.map(d => HELD.map(s => {
  const one = cell(d.name, 1, s)?.redisCpuUsPerWrite
  const top = cell(d.name, Math.max(...FLEET), s)?.redisCpuUsPerWrite
  // The same ratio within each round (its N=1 and top cells ran minutes apart at most), and those ratios' spread.
  const perRound = rounds.map(r => {
    const at = (n: number): number | undefined => r.find(c => c.design === d.name && c.instances === n && c.heldShare === s)?.redisCpuUsPerWrite
    const a = at(1)
    const b = at(Math.max(...FLEET))
    return a === undefined || b === undefined ? NaN : round(b / a, 2)
  }).filter(x => !Number.isNaN(x)).sort((a, b) => a - b)
  return {
    design: d.name,
    heldShare: s,
    ratioTopToOne: one === undefined || top === undefined ? undefined : round(top / one, 2),
    ratioPerRound: perRound,
    ratioPerRoundMedian: perRound.length === 0 ? undefined : perRound[perRound.length >> 1],
    // Against pub/sub at the largest fleet, within each round (the two ran side by side, batch by batch), sorted.
    versusPubsubPerRound: rounds.map(r => {
      const at = (design: string): number | undefined => r.find(c => c.design === design && c.instances === Math.max(...FLEET) && c.heldShare === s)?.redisCpuUsPerWrite
      const a = at('pubsub')
      const b = at(d.name)
      return a === undefined || b === undefined ? NaN : round(b / a, 2)
    }).filter(x => !Number.isNaN(x)).sort((a, b) => a - b)
  }
})).flat()

writeResult('fanout', { keys: KEYS, partitions: PARTITIONS, writes: WRITES, rounds: ROUNDS, cells, growth, idle, allRounds: rounds }, `
### Fan-out: Redis CPU per write as the fleet grows (bench/fanout.ts)

One writer (itself subscribed, as a store instance is), N other subscribing instances, one private redis-server per cell, ${KEYS} keys over ${PARTITIONS} partitions,
${WRITES} sequential writes of random keys through the real write script, made ${BATCH} at a time with every cell of the same held share taking turns
(all set up at once), so the cells share the machine's drift; each figure is its median over ${ROUNDS} rounds. Redis CPU per write: redis-server's time
on a CPU (/proc schedstat, to the nanosecond; reading it sends Redis nothing) across the writes, until every instance has received them and re-read what they
invalidated. Instances are stand-ins speaking the store's protocol (${DESIGNS.map(d => `${d.name}: ${d.describe}`).join('; ')}),
each holding a random share of the keys. Loopback, a shared 2-core machine: trust ratios within one run.

| held per instance | N | design | Redis CPU per write | fan-out inside the script | messages per write | write p50 | write p99 | fleet's Redis memory | tracking items |
|---|---|---|---|---|---|---|---|---|---|
${cells.map(c => `| ${c.heldShare * 100}% | ${c.instances} | ${c.design} | ${fmt(c.redisCpuUsPerWrite, 1)} us | ${fmt(fanOutUs(c), 1)} us | ${fmt(c.messagesPerWrite, 3)} | ${fmt(c.p50Ms, 3)} ms | ${fmt(c.p99Ms, 3)} ms | ${fmt(c.fleetMemoryBytes / 1024, 0)} KiB | ${c.trackingItems} |`).join('\n')}

Fan-out inside the script: Redis's own time (INFO commandstats) in the write script's HSET and SPUBLISH, per write:
tracking sends its invalidations from the HSET (the key's tracking table walk), pub/sub from the SPUBLISH; the rest of
a holder's cost (its socket write, its re-read, and on tracking remembering that read) is outside. Messages per write count the writer's own (pub/sub: it is subscribed; tracking: its script read the key). Fleet's
Redis memory: used_memory once every instance is connected and holds its share, minus before (connections, pub/sub
subscriptions, the tracking table); tracking items: (key, client) pairs in the tracking table then.

Idle fleet (${IDLE_STORES} real stores, default heartbeat 50 ms, no traffic, ${IDLE_MS / 1000} s): ${idle.map(i => `${i.transport} ${fmt(i.redisCpuUsPerStoreSecond, 1)} us of Redis per store per second (${Object.entries(i.commandsPerStoreSecond).map(([c, n]) => `${c} ${fmt(n, 1)}/s`).join(', ')})`).join('; ')}.

Redis CPU per write at N=${Math.max(...FLEET)} over N=1 (of the medians; within each round, sorted): ${growth.map(g => `${g.design} ${g.heldShare * 100}% held ${g.ratioTopToOne === undefined ? 'n/a' : `${fmt(g.ratioTopToOne)}x`} (${g.ratioPerRound.map(x => `${fmt(x)}`).join(' / ')})`).join(', ')}.
Against pub/sub at N=${Math.max(...FLEET)}, within each round (sorted): ${growth.filter(g => g.design !== 'pubsub').map(g => `${g.design} ${g.heldShare * 100}% held ${g.versusPubsubPerRound.map(x => `${fmt(x)}`).join(' / ')}`).join(', ')}.${REFILL ? '' : ' FANOUT_REFILL=0: holders did not read invalidated keys again.'}
`)
process.exit(0)
