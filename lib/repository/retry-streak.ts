import type { SubscriberEvent } from './redis-subscriber.js'

/** Retries back off from this, doubling up to RETRY_MAX_MS, each delay jittered over its upper half. */
const RETRY_MS = 50
const RETRY_MAX_MS = 2000

/**
 * One set-up that must be done again after a reconnect (a re-subscription, a tracking redirect) and may be refused (an
 * ACL, OOM, a proxy in the way): retried on the same connection with jittered backoff, and reported once per streak of
 * refusals ('subscribe-failed', then 'subscribed' when it works again).
 */
export class RetryStreak {
  private timer: NodeJS.Timeout | undefined
  private retries = 0
  private failing = false

  constructor (private readonly node: string, private readonly onEvent: ((e: SubscriberEvent) => void) | undefined) {}

  /** The set-up worked: the streak ends (said if it was reported). */
  succeeded (): void {
    this.retries = 0
    if (this.failing) {
      this.failing = false
      this.onEvent?.({ type: 'subscribed', node: this.node })
    }
  }

  /** The set-up was refused: reported if it starts a streak, and `retry` is called after the next backoff delay. */
  failed (err: unknown, retry: () => void): void {
    if (!this.failing) {
      this.failing = true
      this.onEvent?.({ type: 'subscribe-failed', node: this.node, reason: err instanceof Error ? err.message : String(err) })
    }
    const cap = Math.min(RETRY_MAX_MS, RETRY_MS * 2 ** Math.min(this.retries++, 10))
    this.cancel()
    this.timer = setTimeout(() => { this.timer = undefined; retry() }, cap / 2 + Math.random() * cap / 2)
    this.timer.unref()
  }

  /** Drop a pending retry (the connection closed, or the subscriber did). */
  cancel (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
  }
}
