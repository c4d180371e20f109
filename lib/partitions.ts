import { buzhash32, fmix32 } from './buzhash.js'
import { InvalidOptionError } from './errors.js'

/**
 * Partitions, key names and node placement.
 *
 * Every key is `<prefix>{p<partition>}:<id>:<kind>`. The `{p<n>}` hash tag makes one partition one Redis Cluster
 * slot, so a Lua script can write an entry, bump that partition's sequence counter (`<prefix>{p<n>}:seq`) and publish
 * on its invalidation channel (`<prefix>{p<n>}:inv`) atomically, on a cluster too. All kinds of one id share a
 * partition because the partition depends on the id alone.
 */

/** Upper bound on the partition count: Redis Cluster has 16384 slots, more partitions could not be told apart. */
export const MAX_PARTITIONS = 16384

/** Longest accepted key prefix: it is repeated in every key, channel and Lua call. */
const MAX_PREFIX_LENGTH = 64

/** Throws unless `p` is a power of two in 1..16384, so `partitionOf` can mask instead of dividing. */
export function assertPartitionCount (p: number): void {
  if (!Number.isInteger(p) || p < 1 || p > MAX_PARTITIONS || (p & (p - 1)) !== 0) {
    throw new InvalidOptionError('partitions', `must be a power of two between 1 and ${MAX_PARTITIONS}, got ${String(p)}`)
  }
}

/**
 * The partition of a server-generated random id. `partitions` must have passed `assertPartitionCount`; it is not
 * checked here because this runs on every request. Not for user-chosen strings: BUZhash is not keyed (see buzhash.ts).
 */
export function partitionOf (id: string, partitions: number): number {
  return buzhash32(id) & (partitions - 1)
}

/**
 * Throws unless `prefix` is a string of at most 64 characters without `{` or `}`. A brace in the prefix would move
 * the Redis hash tag off `{p<n>}`, silently splitting a partition across cluster slots. `''` is allowed.
 */
export function assertPrefix (prefix: string): void {
  if (typeof prefix !== 'string') {
    throw new InvalidOptionError('prefix', 'must be a string')
  }
  if (prefix.length > MAX_PREFIX_LENGTH) {
    throw new InvalidOptionError('prefix', `must be at most ${MAX_PREFIX_LENGTH} characters, got ${prefix.length}`)
  }
  if (prefix.includes('{') || prefix.includes('}')) {
    throw new InvalidOptionError('prefix', 'must not contain "{" or "}" (they would change the Redis hash tag)')
  }
}

/** The Redis hash tag of a partition: `{p<partition>}`. */
export function partitionTag (partition: number): string {
  return `{p${partition}}`
}

/** The full key of one kind of entry (`session`, `tls`, `cart`...) of an id: `<prefix>{p<partition>}:<id>:<kind>`. */
export function entryKey (prefix: string, partition: number, id: string, kind: string): string {
  return `${prefix}{p${partition}}:${id}:${kind}`
}

/** What follows the hash tag in a partition's own keys (never an entry's: those are `:<id>:<kind>`). */
const SEQUENCE_SUFFIX = ':seq'
const EPOCH_SUFFIX = ':epoch'
const WITNESS_SUFFIX = ':witness'

/** The partition's sequence counter, bumped with every invalidation it publishes: `<prefix>{p<partition>}:seq`. */
export function sequenceKey (prefix: string, partition: number): string {
  return `${prefix}{p${partition}}${SEQUENCE_SUFFIX}`
}

/**
 * The partition's epoch: `<prefix>{p<partition>}:epoch`, a hash whose field `id` is a random id minted once (by the
 * first write script that finds none) and stamped on every entry and invalidation, so that versions restarting
 * after Redis lost its data are told apart.
 */
export function epochKey (prefix: string, partition: number): string {
  return `${prefix}{p${partition}}${EPOCH_SUFFIX}`
}

/**
 * A node's witness: `<prefix>{p<partition>}:witness` for the lowest partition the node serves (so the key lives on
 * that node in a Cluster). Minted with SET NX by heartbeats; its value changes only when the node lost its data.
 */
export function witnessKey (prefix: string, partition: number): string {
  return `${prefix}{p${partition}}${WITNESS_SUFFIX}`
}

/** The partition's invalidation channel: `<prefix>{p<partition>}:inv`. */
export function channelName (prefix: string, partition: number): string {
  return `${prefix}{p${partition}}:inv`
}

const CHAR_0 = 48
const CHAR_9 = 57
const CHAR_P = 112

/**
 * Index of the `}` closing the key's hash tag when that tag is a canonical `{p<n>}` with n < 16384, else -1.
 * Follows Redis Cluster's rule (the first `{` and the first `}` after it), so the partition we read is the one Redis
 * hashes; a non-canonical tag such as `{p01}` is refused because it would be a different slot than `{p1}`.
 */
function tagEnd (key: string): number {
  const open = key.indexOf('{')
  if (open === -1 || key.charCodeAt(open + 1) !== CHAR_P) return -1
  const close = key.indexOf('}', open + 2)
  const digits = close - open - 2
  if (close === -1 || digits < 1 || (digits > 1 && key.charCodeAt(open + 2) === CHAR_0)) return -1
  let partition = 0
  for (let i = open + 2; i < close; i++) {
    const c = key.charCodeAt(i)
    if (c < CHAR_0 || c > CHAR_9) return -1
    partition = partition * 10 + (c - CHAR_0)
    if (partition >= MAX_PARTITIONS) return -1
  }
  return close
}

/** The partition named by the key's `{p<n>}` hash tag, or -1 when it has none. */
export function partitionOfKey (key: string): number {
  const close = tagEnd(key)
  return close === -1 ? -1 : Number(key.slice(key.indexOf('{') + 2, close))
}

/** The key up to and including its hash tag. The key is kept out of the message: it holds a session id. */
function throughTag (key: string): string {
  const close = tagEnd(key)
  if (close === -1) {
    throw new InvalidOptionError('key', 'an entry key must contain a {p<n>} partition hash tag')
  }
  return key.slice(0, close + 1)
}

/** The sequence counter of the entry key's partition (same string as `sequenceKey(prefix, partition)`). */
export function sequenceKeyOf (key: string): string {
  return throughTag(key) + SEQUENCE_SUFFIX
}

/** The epoch key of the entry key's partition (same string as `epochKey(prefix, partition)`). */
export function epochKeyOf (key: string): string {
  return throughTag(key) + EPOCH_SUFFIX
}

/**
 * Whether `key` is one of a partition's own keys (sequence counter, epoch, witness) rather than an entry: scripts and
 * heartbeats read them, so client tracking reports their changes too, but no copy of them is ever kept.
 */
export function isPartitionKey (key: string): boolean {
  const close = tagEnd(key)
  if (close === -1) return false
  const rest = key.slice(close + 1)
  return rest === SEQUENCE_SUFFIX || rest === EPOCH_SUFFIX || rest === WITNESS_SUFFIX
}

/** The invalidation channel of the entry key's partition (same string as `channelName(prefix, partition)`). */
export function channelOf (key: string): string {
  return throughTag(key) + ':inv'
}

/** The partition of an invalidation channel made by `channelName`, or -1 when `channel` is not one. */
export function partitionOfChannel (channel: string): number {
  const close = tagEnd(channel)
  if (close === -1 || close + 5 !== channel.length || !channel.endsWith(':inv')) return -1
  return partitionOfKey(channel)
}

/** FNV-1a, 32-bit, over the UTF-8 bytes of `s`: a simple, portable hash of a node id, computed once per node. */
function fnv1a32 (s: string): number {
  let h = 0x811c9dc5
  for (const byte of Buffer.from(s, 'utf8')) {
    h = Math.imul(h ^ byte, 0x01000193)
  }
  return h >>> 0
}

/**
 * The weight of a node for a partition. The partition is mixed first (so neighbouring partitions look unrelated),
 * XORed with the node's hash and mixed again, so every bit of both inputs reaches every bit of the weight.
 *
 * Why not BUZhash here: it is linear under XOR. For `buzhash(node + partition)`, two nodes' weights differ by a
 * value that depends on the node ids alone, not on the partition, so the same node would win almost every
 * partition; and node ids such as 'redis-a:6379' / 'redis-b:6379' differ in one character, exactly the related
 * keys BUZhash does not separate. Node weights are computed rarely (on configuration), so speed does not matter.
 */
function weight (nodeHash: number, partition: number): number {
  return fmix32(fmix32((partition + 0x9e3779b9) | 0) ^ nodeHash)
}

/**
 * Rendezvous (highest random weight) placement of partitions on standalone Redis nodes: each partition lives on the
 * node with the highest weight for it. Adding a node moves only the partitions it now wins (about 1/n of them, all
 * to the new node); removing a node moves only its own partitions. The result does not depend on the order in which
 * the nodes are listed.
 */
export class Rendezvous {
  readonly nodeIds: readonly string[]
  readonly #hashes: Uint32Array

  constructor (nodeIds: readonly string[]) {
    if (!Array.isArray(nodeIds) || nodeIds.length === 0) {
      throw new InvalidOptionError('nodes', 'must be a non-empty array of node ids')
    }
    const seen = new Set<string>()
    for (const id of nodeIds) {
      if (typeof id !== 'string' || id.length === 0) {
        throw new InvalidOptionError('nodes', 'node ids must be non-empty strings')
      }
      if (seen.has(id)) {
        throw new InvalidOptionError('nodes', `node id "${id}" is listed twice`)
      }
      seen.add(id)
    }
    this.nodeIds = Object.freeze([...nodeIds])
    this.#hashes = Uint32Array.from(this.nodeIds, fnv1a32)
  }

  /** The node that holds `partition` (a non-negative integer). */
  nodeFor (partition: number): string {
    if (!Number.isInteger(partition) || partition < 0 || partition >= MAX_PARTITIONS) {
      throw new InvalidOptionError('partition', `must be an integer between 0 and ${MAX_PARTITIONS - 1}, got ${String(partition)}`)
    }
    let best = 0
    let bestWeight = -1
    for (let i = 0; i < this.nodeIds.length; i++) {
      const w = weight(this.#hashes[i]!, partition)
      // Ties (two 32-bit weights equal) go to the smaller id, so the listing order never matters.
      if (w > bestWeight || (w === bestWeight && this.nodeIds[i]! < this.nodeIds[best]!)) {
        best = i
        bestWeight = w
      }
    }
    return this.nodeIds[best]!
  }

  /** The node of every partition: `assignment(P)[p] === nodeFor(p)`. `partitions` must pass `assertPartitionCount`. */
  assignment (partitions: number): string[] {
    assertPartitionCount(partitions)
    const nodes = new Array<string>(partitions)
    for (let p = 0; p < partitions; p++) nodes[p] = this.nodeFor(p)
    return nodes
  }
}
