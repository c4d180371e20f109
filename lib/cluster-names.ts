import type { TieredStore } from './tiered-store.js'

/**
 * The names TLS state is shared under, which every instance must agree on: the TLS session id context and the
 * namespace of the ticket-key entries. They used to be derived from the key ring's oldest secret on every start, so
 * dropping that secret (the last step of a rotation) changed them and split the fleet. Now they are derived once, when
 * the cluster first starts, stored (sealed like every entry, re-sealed under the newest key when read while a rotation
 * overlaps), and read back by every later instance: a rotation changes neither. A cluster that ran an older version
 * stores the very names it already used, so upgrading changes nothing either.
 */
export interface ClusterTlsNames {
  sessionIdContext: string
  ticketNamespace: string
}

/**
 * 'stored': read from the store; 'created': this instance stored `derived`; 'derived': the store could not be asked, or
 * holds an entry this instance cannot open (another cluster's secret on the same Redis and prefix): `derived` is used,
 * as before stored names, and nothing is written.
 */
export type ClusterTlsNamesSource = 'stored' | 'created' | 'derived'

const ID = 'cluster-tls-names'
const KIND = 'identity'

function parse (v: unknown): ClusterTlsNames | undefined {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return undefined
  const o = v as Record<string, unknown>
  if (typeof o.sessionIdContext !== 'string' || !/^[\x21-\x7e]{1,32}$/.test(o.sessionIdContext)) return undefined
  if (typeof o.ticketNamespace !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(o.ticketNamespace)) return undefined
  return { sessionIdContext: o.sessionIdContext, ticketNamespace: o.ticketNamespace }
}

/** The cluster's stored TLS names, storing `derived` (create-if-absent) when there are none yet. */
export async function clusterTlsNames (store: TieredStore, derived: ClusterTlsNames): Promise<{ names: ClusterTlsNames, source: ClusterTlsNamesSource }> {
  // Long-lived (the names; the ticket keys created ahead): what is read during a rotation's overlap stays readable.
  store.resealOnRead(KIND, 'ticketkey')
  const key = store.key(ID, KIND)
  try {
    const seen = parse((await store.get(key))?.value)
    if (seen !== undefined) return { names: seen, source: 'stored' }
    // No TTL worth the name: it lives as long as the cluster (ten years, renewed by nothing; a wipe re-derives it).
    const res = await store.update(key, (cur, info) => cur === undefined && info.version === 0 ? { ...derived } : undefined,
      { ttlMs: 10 * 365 * 86_400_000 })
    const names = parse(res.value)
    if (names === undefined) return { names: derived, source: 'derived' }
    return { names, source: res.written ? 'created' : 'stored' }
  } catch {
    return { names: derived, source: 'derived' }
  }
}
