import type { Redis } from 'ioredis'
import { UnavailableError } from '../errors.js'
import { isPartitionKey, partitionOfKey } from '../partitions.js'
import { subscriberConnection, type RedisSubscriberOptions } from './redis-subscriber.js'
import type { InvalidationListener, SubscriptionScope } from './types.js'
import { RetryStreak } from './retry-streak.js'
import { WitnessCheck } from './witness.js'

/** The channel Redis delivers tracking invalidations on to a RESP2 redirect connection. */
const INVALIDATE = '__redis__:invalidate'

/** One store following this connection's invalidations. */
interface Registration {
  scope: SubscriptionScope
  listener: InvalidationListener
  witness: WitnessCheck
}

/** A beat or a heartbeat answer this late (ms) makes `main` be proven every beat for EAGER_MS (see the class comment). */
const LATE_MS = 25
const EAGER_MS = 10_000
/** How often `main` is asked whether it still tracks, with its redirect to the current `sub` (CLIENT TRACKINGINFO). */
const TRACKING_CHECK_MS = 1000

/**
 * Invalidations by Redis server-assisted client-side caching: the command connection `main` (the one every read
 * and write script of the repository runs on) has CLIENT TRACKING ON in default mode, so Redis remembers each key it
 * reads (also the keys a script reads) and, when anyone else modifies one, sends that key once to the REDIRECT
 * connection this class keeps (RESP2, subscribed to `__redis__:invalidate`). A write costs Redis one message per
 * instance that holds the key (its writer included), not one per instance.
 *
 * No NOLOOP, although it would spare the writer its own echo: measured on Redis 7.0.15, when the tracking table is
 * over `tracking-table-max-keys`, the keys Redis evicts from it are not announced to a NOLOOP client whose command
 * triggered the eviction (it counts as "modified by itself"), so that client would keep copies nobody tracks any
 * more. Without NOLOOP every eviction reaches every holder. The price: one message per write to its writer, which
 * keeps what it wrote all the same (the write script reads the key again after writing it, so the writer tracks it,
 * and LocalTier counts per key the echoes of its acknowledged writes still on their way and lets them pass; see
 * LocalTier.echoes and FillTicket.echo).
 *
 * The same guarantees as the pub/sub subscriber, with one heartbeat per connection whatever the partitions:
 * - a PING answered on the redirect connection proves every invalidation sent before it arrived; any command
 *   answered on `main` proves the tracking client still exists (a killed command connection loses its tracking state
 *   silently): the witness reads, and a PING on `main` when none was sent lately. The lease is renewed with the older
 *   of the two proofs' send times, so it never claims more than both prove, and only by proofs sent after CLIENT
 *   TRACKING was confirmed on the current pair of connections, so a copy filled by a read that Redis did not track
 *   never answers as fresh (the renewal after any loss starts a new lease generation);
 * - cadence: the redirect is PINGed every heartbeat. `main` is proven every heartbeat (a PING when no witness read
 *   goes out) for EAGER_MS after a beat or an answer later than LATE_MS, and otherwise at least every witness interval
 *   (half a lease), which the witness reads alone supply: an idle store on a punctual machine costs one PING per
 *   heartbeat plus its witness reads, as on pub/sub, where it cost two PINGs. The price is a lease up to a witness
 *   interval older between proofs, so a stall of the event loop (or of Redis) longer than a lease minus that interval
 *   lapses the lease where it took one minus a heartbeat; once anything was late, as on a loaded machine, the
 *   cadence is every heartbeat again, and under a series of stalls only the first lapsed more often than before
 *   (figures in docs/scaling.md);
 * - any loss of either connection (close, reconnect, failover: tracking state is per connection and not restored,
 *   and `tracking-redir-broken` is then what Redis would tell a RESP3 client) and the null message FLUSHALL or
 *   FLUSHDB send are a resync: copies stop answering as fresh;
 * - an invalidation names a key, not a version: it voids any fill of that key in flight (the read that fills runs on
 *   `main`, so it is what Redis tracks);
 * - resets (FLUSHALL, an empty restart) are confirmed by the node's witness, checked with the heartbeat as before;
 * - once a second `main` is asked CLIENT TRACKINGINFO: tracking lost without either connection noticing (behind a
 *   proxy that replaces server-side connections and keeps the client's) is a resync too (see checkTracking).
 * Several stores on one repository share the connection (tracking redirects to one client): one hub per connection.
 */
export class TrackingSubscriber {
  private sub: Redis | undefined
  private subId: string | undefined
  private timer: NodeJS.Timeout | undefined
  private readonly regs = new Set<Registration>()
  /** +1 whenever either connection is lost: tracking and in-flight heartbeats of an older session prove nothing. */
  private session = 0
  /** The session in which CLIENT TRACKING was last confirmed on `main` with the redirect to the current `sub`. */
  private trackedSession = -1
  private trackingInFlight = false
  /** The PING on the redirect connection (one at a time): its answer proves delivery of what was sent before it. */
  private pingInFlight = false
  private pingSentAt = 0
  /** The PING on `main` (one at a time), sent only when no other command proved `main` alive recently. */
  private mainPingInFlight = false
  private mainPingSentAt = 0
  /**
   * Send times of the newest answered proofs of the current tracked session: on the redirect (its PING), and on `main`
   * (its PING or a witness read). The lease is renewed with the older of the two, never more than both prove.
   */
  private subProvenAt = Number.NEGATIVE_INFINITY
  private mainProvenAt = Number.NEGATIVE_INFINITY
  /** Send time of the newest proof asked of `main` in the current tracked session, answered or not. */
  private mainAskedAt = Number.NEGATIVE_INFINITY
  private renewedAt = Number.NEGATIVE_INFINITY
  /** The CLIENT TRACKINGINFO in flight (one at a time) was sent then; see checkTracking(). */
  private infoInFlight = false
  private infoAskedAt = Number.NEGATIVE_INFINITY
  /** CLIENT TRACKINGINFO refused since its last answer (reported once per streak). */
  private infoRefused = false
  /** Until then `main` is proven at every beat: a beat or an answer was late lately (see beat()). */
  private eagerUntil = Number.NEGATIVE_INFINITY
  private lastBeatAt = Number.POSITIVE_INFINITY
  private starting: Promise<void> | undefined
  private readonly retries: RetryStreak
  private readonly node: string
  private started = false
  private closed = false
  private readonly heartbeatIntervalMs: number
  private readonly onMainClose = (): void => this.lost()
  private readonly onMainReady = (): void => { this.enableTracking().catch(() => {}) }

  constructor (private readonly main: Redis, private readonly opts: RedisSubscriberOptions = {}) {
    this.heartbeatIntervalMs = opts.heartbeatIntervalMs ?? 50
    this.node = `${main.options.host ?? ''}:${main.options.port ?? ''}`
    this.retries = new RetryStreak(this.node, opts.onEvent)
  }

  /** How many stores follow this connection. */
  get size (): number { return this.regs.size }

  /** Closed (by its last store leaving, or by a failed start): never used again, a new hub takes its place. */
  get isClosed (): boolean { return this.closed }

  /** Follow invalidations for `scope`; resolves once the tracking is set up. Returns the way to stop. */
  async add (scope: SubscriptionScope, listener: InvalidationListener, partitions?: readonly number[]): Promise<() => Promise<void>> {
    // Starting a closed hub would open a redirect connection that never enables tracking nor renews a lease.
    if (this.closed) throw new UnavailableError(`the tracking hub of ${this.node} is closed`)
    const reg: Registration = {
      scope,
      listener,
      // A node that lost its data may still hold this connection open (behind a proxy): start over on it.
      witness: new WitnessCheck(scope, listener, partitions, this.heartbeatIntervalMs, this.opts.deadAfterMs ?? 3000,
        () => this.sub?.disconnect(true))
    }
    this.regs.add(reg)
    try {
      this.starting ??= this.start()
      await this.starting
    } catch (err) {
      this.regs.delete(reg)
      this.starting = undefined
      throw err
    }
    listener.onResync()
    return async () => {
      this.regs.delete(reg)
      if (this.regs.size === 0) await this.close()
    }
  }

  private async start (): Promise<void> {
    const sub = this.main.duplicate(subscriberConnection('fastify-handoff:tracking', this.opts.redisOptions))
    this.sub = sub
    sub.on('error', (error: Error) => this.opts.onEvent?.({ type: 'error', error }))
    sub.on('messageBuffer', (channel: Buffer, message: unknown) => this.onMessage(channel, message))
    sub.on('close', () => { this.subId = undefined; this.lost() })
    sub.on('ready', () => { if (this.started) this.retrySetUp(sub) })
    this.main.on('close', this.onMainClose)
    this.main.on('ready', this.onMainReady)
    try {
      await sub.connect()
      await this.setUpRedirect(sub)
      if (this.main.status === 'wait') this.main.connect().catch(() => {})
      if (this.main.status !== 'ready') await onceReady(this.main, 5000)
      await this.enableTracking(true)
    } catch (err) {
      await this.close()
      throw err
    }
    this.started = true
    this.beat()
    this.timer = setInterval(() => this.beat(), this.heartbeatIntervalMs)
    this.timer.unref()
  }

  /** On a new redirect connection: learn its client id (not allowed once subscribed), then subscribe. */
  private async setUpRedirect (sub: Redis): Promise<void> {
    const id = String(await sub.client('ID'))
    await sub.subscribe(INVALIDATE)
    if (sub !== this.sub || sub.status !== 'ready') return
    this.subId = id
    await this.enableTracking()
  }

  /**
   * Sets the redirect up again after a reconnect. A refusal (ACL, OOM, a proxy in the way) leaves the lease void
   * (no tracking confirmed, so no heartbeat renews it) and is retried with jittered backoff, reported once per streak.
   */
  private retrySetUp (sub: Redis): void {
    this.retries.cancel()
    this.setUpRedirect(sub).then(() => this.retries.succeeded(), (err: unknown) => {
      if (this.closed || sub !== this.sub || sub.status !== 'ready') return // a new connection sets up on 'ready'
      this.retries.failed(err, () => this.retrySetUp(sub))
    })
  }

  /** CLIENT TRACKING ON REDIRECT <sub> on `main` (no NOLOOP: see the class comment); confirms the session it was answered in. */
  private async enableTracking (rethrow = false): Promise<void> {
    const id = this.subId
    if (id === undefined || this.trackingInFlight || this.closed || this.main.status !== 'ready') return
    this.trackingInFlight = true
    const session = this.session
    try {
      await this.main.call('CLIENT', 'TRACKING', 'ON', 'REDIRECT', id)
      if (session === this.session && id === this.subId) this.trackedSession = session
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err)
      const error = new UnavailableError(`CLIENT TRACKING refused (${why}): this Redis or proxy cannot give ` +
        "client-side caching invalidations; use coherence: { transport: 'pubsub' }")
      if (rethrow) throw error
      this.opts.onEvent?.({ type: 'error', error })
    } finally {
      this.trackingInFlight = false
    }
  }

  /** Either connection was lost: what it tracked or was sent is gone. */
  private lost (): void {
    this.session++
    this.trackedSession = -1
    this.pingInFlight = false
    this.pingSentAt = 0
    this.mainPingInFlight = false
    this.mainPingSentAt = 0
    this.subProvenAt = Number.NEGATIVE_INFINITY
    this.mainProvenAt = Number.NEGATIVE_INFINITY
    this.mainAskedAt = Number.NEGATIVE_INFINITY
    this.renewedAt = Number.NEGATIVE_INFINITY
    this.infoInFlight = false
    this.infoAskedAt = Number.NEGATIVE_INFINITY
    if (!this.started || this.closed) return
    for (const r of this.regs) r.listener.onResync()
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.timer !== undefined) clearInterval(this.timer)
    this.retries.cancel()
    this.main.off('close', this.onMainClose)
    this.main.off('ready', this.onMainReady)
    // disconnect, not quit: a blackholed connection would never answer QUIT. Tracking on `main` is left on: its
    // redirect is gone, so Redis only drops what it would send (main may be shared, and its keys stay tracked anyway).
    this.sub?.disconnect()
  }

  private beat (): void {
    const now = performance.now()
    // The timer itself late: the event loop stalls (a loaded machine), and the next stall may outlast what is left of the lease.
    if (now - this.lastBeatAt > this.heartbeatIntervalMs + LATE_MS) this.late(now)
    this.lastBeatAt = now
    const sub = this.sub
    if (sub === undefined || this.closed || sub.status !== 'ready') return
    const deadAfterMs = this.opts.deadAfterMs ?? 3000
    // Either proof unanswered that long: the redirect is dropped, its 'close' resyncs (a dead `main` closes itself or
    // stays silent: then no proof renews the lease, and each new redirect waits for tracking to be confirmed again).
    if ((this.pingInFlight && now - this.pingSentAt > deadAfterMs) || (this.mainPingInFlight && now - this.mainPingSentAt > deadAfterMs)) {
      this.pingInFlight = false
      this.pingSentAt = 0
      this.mainPingInFlight = false
      this.mainPingSentAt = 0
      sub.disconnect(true)
      return
    }
    if (this.trackedSession !== this.session) {
      // No renewal until tracking is confirmed again on this pair of connections.
      this.enableTracking().catch(() => {})
      this.checkWitnesses()
      return
    }
    const session = this.session
    if (!this.pingInFlight) {
      this.pingInFlight = true
      this.pingSentAt = now
      const sentAt = now
      // The redirect delivered everything sent before its PONG.
      sub.ping().then(
        () => {
          if (this.pingSentAt !== sentAt) return
          this.pingInFlight = false
          if (session !== this.session) return
          this.answeredAfter(sentAt)
          this.subProvenAt = Math.max(this.subProvenAt, sentAt)
          this.renew()
        },
        () => { if (this.pingSentAt === sentAt) this.pingInFlight = false }
      )
    }
    // The tracking client still exists: proven by any command answered on `main`, the witness reads first.
    this.checkWitnesses()
    this.checkTracking(now, session)
    if (this.mainPingInFlight || now - this.mainAskedAt < this.mainProofEveryMs(now) || this.main.status !== 'ready') return
    this.mainPingInFlight = true
    this.mainPingSentAt = now
    this.mainAskedAt = now
    const sentAt = now
    this.main.ping().then(
      () => {
        if (this.mainPingSentAt !== sentAt) return
        this.mainPingInFlight = false
        this.mainProven(sentAt, session)
      },
      () => { if (this.mainPingSentAt === sentAt) this.mainPingInFlight = false }
    )
  }

  /**
   * Every TRACKING_CHECK_MS, asks `main` itself whether it still tracks with its redirect to `sub`. A proxy that keeps
   * client connections open can replace the server side of either connection while Redis keeps its data: PINGs and
   * witness reads go on answering (the witness is unchanged), but the new server-side client tracks nothing, or
   * redirects to a client that is gone, and no invalidation would ever come. Then the redirect connection is dropped:
   * its 'close' resyncs, and its reconnect sets tracking up again. An answer that confirms tracking proves `main` too.
   */
  private checkTracking (now: number, session: number): void {
    if (this.infoInFlight || now - this.infoAskedAt < TRACKING_CHECK_MS || this.main.status !== 'ready') return
    this.infoInFlight = true
    this.infoAskedAt = now
    const sentAt = now
    this.main.call('CLIENT', 'TRACKINGINFO').then(reply => {
      if (this.infoAskedAt !== sentAt) return
      this.infoInFlight = false
      if (session !== this.session || this.closed) return
      this.infoRefused = false
      const seen = trackingInfo(reply)
      if (seen.on && !seen.brokenRedirect && seen.redirect === this.subId) { this.mainProven(sentAt, session); return }
      this.opts.onEvent?.({
        type: 'error',
        error: new UnavailableError(`client tracking lost on the command connection to ${this.node} (flags ${seen.flags.join(',')}, ` +
          `redirect ${seen.redirect ?? 'none'}, expected ${this.subId ?? 'none'}): resyncing`)
      })
      this.sub?.disconnect(true)
    }, (err: unknown) => {
      if (this.infoAskedAt !== sentAt) return
      this.infoInFlight = false
      // Refused (an ACL without it, a proxy): the lease goes on as before, but a tracking state lost behind a proxy
      // would go unnoticed. Said once per streak.
      if (this.infoRefused || this.closed || !isReplyError(err)) return
      this.infoRefused = true
      this.opts.onEvent?.({
        type: 'error',
        error: new UnavailableError(`CLIENT TRACKINGINFO refused on ${this.node} (${err.message}): tracking lost behind a ` +
          'proxy that replaces server connections would not be noticed; allow the command (ACL +client|trackinginfo)')
      })
    })
  }

  /** A command sent on `main` at `sentAt`, in `session` with tracking confirmed, was answered. */
  private mainProven (sentAt: number, session: number): void {
    if (session !== this.session) return
    this.answeredAfter(sentAt)
    this.mainProvenAt = Math.max(this.mainProvenAt, sentAt)
    this.renew()
  }

  /**
   * How old the newest proof asked of `main` may get before a PING asks again: every beat (half an interval, so a
   * beat a little early still asks) while things were late lately, else the shortest witness interval of the stores.
   */
  private mainProofEveryMs (now: number): number {
    const everyBeat = this.heartbeatIntervalMs / 2
    if (now < this.eagerUntil) return everyBeat
    let every = Number.POSITIVE_INFINITY
    for (const r of this.regs) every = Math.min(every, r.scope.witnessIntervalMs ?? everyBeat)
    return Number.isFinite(every) ? every : everyBeat
  }

  /** A heartbeat answer that took long: Redis or this process is slow, the next stall may outlast the lease. */
  private answeredAfter (sentAt: number): void {
    const now = performance.now()
    if (now - sentAt > LATE_MS) this.late(now)
  }

  private late (now: number): void {
    this.eagerUntil = now + EAGER_MS
  }

  /** Renews the stores' leases as far as both connections' proofs go. */
  private renew (): void {
    const at = Math.min(this.subProvenAt, this.mainProvenAt)
    if (at <= this.renewedAt || this.trackedSession !== this.session || this.closed) return
    this.renewedAt = at
    for (const r of this.regs) if (r.witness.proves(at)) r.listener.onHeartbeat?.(at)
  }

  /** One witness read per store and node every `witnessIntervalMs`, on `main` (see WitnessCheck); each is a proof of `main`. */
  private checkWitnesses (): void {
    const session = this.session
    const tracked = this.trackedSession === session
    for (const r of this.regs) {
      const asked = r.witness.check(this.main, () => this.closed,
        tracked ? sentAt => this.mainProven(sentAt, session) : undefined,
        tracked ? () => this.mainRefused(session) : undefined)
      if (asked && tracked) this.mainAskedAt = performance.now()
    }
  }

  /**
   * A witness read on `main` failed: it proved nothing, so it must not count as asked (else `main` would go unproven
   * until the next read, two witness intervals, a lapse): the next beat PINGs unless a newer proof came in.
   */
  private mainRefused (session: number): void {
    if (session === this.session) this.mainAskedAt = Math.min(this.mainAskedAt, this.mainProvenAt)
  }

  private onMessage (channel: Buffer, message: unknown): void {
    if (channel.toString() !== INVALIDATE) return
    if (message === null) {
      // FLUSHALL / FLUSHDB: every key this connection tracked is gone. Read the witness now: it counts the reset.
      for (const r of this.regs) { r.listener.onResync(); r.witness.due() }
      this.checkWitnesses()
      return
    }
    if (!Array.isArray(message)) return
    for (const k of message) {
      const key = Buffer.isBuffer(k) ? k.toString() : String(k)
      const partition = partitionOfKey(key)
      // The partition's own keys (sequence, epoch, witness) are tracked because scripts and heartbeats read them; no
      // copy of them is kept, so their invalidations are not passed on (they would only be counted).
      if (partition < 0 || isPartitionKey(key)) continue
      for (const r of this.regs) {
        if (!key.startsWith(r.scope.prefix) || partition >= r.scope.partitions) continue
        // No version: newer than any copy or fill in flight. No sequence: delivery is proven by the heartbeat alone.
        r.listener.onInvalidation({ key, version: Number.POSITIVE_INFINITY, partition, sequence: 0, epoch: '' })
      }
    }
  }
}

/** An error Redis answered with (not a timeout or a lost connection). */
function isReplyError (err: unknown): err is Error {
  return err instanceof Error && err.name === 'ReplyError'
}

/** CLIENT TRACKINGINFO's answer (RESP2: flags, redirect, prefixes as a flat list of names and values). */
function trackingInfo (reply: unknown): { flags: string[], on: boolean, brokenRedirect: boolean, redirect: string | undefined } {
  const fields = Array.isArray(reply) ? reply : []
  const at = (name: string): unknown => {
    for (let i = 0; i + 1 < fields.length; i += 2) if (String(fields[i]) === name) return fields[i + 1]
    return undefined
  }
  const flagsField = at('flags')
  const flags = Array.isArray(flagsField) ? flagsField.map(String) : []
  const redirect = at('redirect')
  return {
    flags,
    on: flags.includes('on'),
    brokenRedirect: flags.includes('broken_redirect'),
    redirect: typeof redirect === 'number' || typeof redirect === 'string' ? String(redirect) : undefined
  }
}

async function onceReady (client: Redis, timeoutMs: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off('ready', ready)
      reject(new UnavailableError(`Redis not ready within ${timeoutMs} ms (status ${client.status})`))
    }, timeoutMs)
    const ready = (): void => { clearTimeout(timer); resolve() }
    client.once('ready', ready)
  })
}
