import createError from '@fastify/error'

/**
 * Every error fastify-handoff throws carries one of these codes, so applications can branch on `err.code`
 * and Fastify answers with the status code attached.
 */

/** The repository (Redis) did not answer within the command timeout, is disconnected, or is paused. */
export const UnavailableError = createError<'FST_HANDOFF_UNAVAILABLE', 503, [string?]>(
  'FST_HANDOFF_UNAVAILABLE',
  'Store unavailable: %s',
  503
)

/** Compare-and-set lost to concurrent writers more often than the retry budget allows. */
export const ConflictError = createError<'FST_HANDOFF_CONFLICT', 409, [string, number]>(
  'FST_HANDOFF_CONFLICT',
  'Update of "%s" kept conflicting with concurrent writers (%d attempts); retry the request',
  409
)

/** An entry could not be opened: wrong key ring, copied to another key, truncated or not ours. */
export const CorruptEntryError = createError<'FST_HANDOFF_CORRUPT_ENTRY', 500, [string, string]>(
  'FST_HANDOFF_CORRUPT_ENTRY',
  'Entry "%s" could not be opened: %s',
  500
)

/** A value is larger than the configured limit: ('Session', '2066 bytes', '1024 bytes'), ('Quantity', '1200', '999'). */
export const TooLargeError = createError<'FST_HANDOFF_TOO_LARGE', 413, [string, string, string]>(
  'FST_HANDOFF_TOO_LARGE',
  '%s is too large: %s, the limit is %s',
  413
)

/** Request input the plugins refuse (malformed body field, raw card number, unknown state). */
export const BadInputError = createError<'FST_HANDOFF_BAD_INPUT', 400, [string]>(
  'FST_HANDOFF_BAD_INPUT',
  'Bad input: %s',
  400
)

/** An option passed at registration or construction is invalid. Thrown before anything starts. */
export const InvalidOptionError = createError<'FST_HANDOFF_INVALID_OPTION', 500, [string, string]>(
  'FST_HANDOFF_INVALID_OPTION',
  'Invalid option "%s": %s',
  500
)

/** A write was stored on the primary but not confirmed by the requested number of replicas in time. */
export const DurabilityError = createError<'FST_HANDOFF_DURABILITY', 503, [number, number]>(
  'FST_HANDOFF_DURABILITY',
  'Write acknowledged by %d of %d required replicas; it may be lost on failover',
  503
)

/** The store or plugin was used after close(). */
export const ClosedError = createError<'FST_HANDOFF_CLOSED', 503, [string]>(
  'FST_HANDOFF_CLOSED',
  '%s is closed',
  503
)

/** The session ended (destroy, logout everywhere, expiry) while this request ran: its changes were not stored. */
export const SessionEndedError = createError<'FST_HANDOFF_SESSION_ENDED', 409, []>(
  'FST_HANDOFF_SESSION_ENDED',
  'The session ended (logged out or expired) while this request was running; its changes were not stored',
  409
)

/** request.session was used on a route that opted out with config.handoffSession: false. */
export const SessionDisabledError = createError<'FST_HANDOFF_SESSION_DISABLED', 500, []>(
  'FST_HANDOFF_SESSION_DISABLED',
  'request.session is not available on this route (config.handoffSession is false)',
  500
)

/** The payment provider declined (exported for applications that answer a decline as an error; checkout() reports it as status 'failed'). */
export const PaymentDeclinedError = createError<'FST_HANDOFF_PAYMENT_DECLINED', 402, [string]>(
  'FST_HANDOFF_PAYMENT_DECLINED', 'Payment declined: %s', 402)

/** The provider did not answer the charge (or its lookup): retry with the same Idempotency-Key. */
export const PaymentPendingError = createError<'FST_HANDOFF_PAYMENT_PENDING', 503, [string]>(
  'FST_HANDOFF_PAYMENT_PENDING', 'The payment did not complete (%s): retry with the same Idempotency-Key; you will be charged at most once', 503)

/** checkout() without a payment provider. */
export const NoProviderError = createError<'FST_HANDOFF_NO_PROVIDER', 500, []>(
  'FST_HANDOFF_NO_PROVIDER', 'No payment provider configured (option "provider")', 500)

/**
 * The store lost the records of this checkout (e.g. Redis restarted empty after the provider charged) and the order
 * could not be recovered from the provider: the application was told (`onCheckoutLost`). Never "the cart is empty".
 */
export const CheckoutLostError = createError<'FST_HANDOFF_CHECKOUT_LOST', 409, [string]>(
  'FST_HANDOFF_CHECKOUT_LOST', 'The store lost this checkout: %s', 409)

/** A guest cart change arrived after the cart was merged into the user's at sign-in and removed: nothing was changed. */
export const CartMovedError = createError<'FST_HANDOFF_CART_MOVED', 409, []>(
  'FST_HANDOFF_CART_MOVED', 'The cart was merged into your account at sign-in while this request ran; nothing was changed: retry', 409)

export function isHandoffError (err: unknown, code?: string): err is Error & { code: string, statusCode?: number } {
  if (err === null || typeof err !== 'object') return false
  const c = (err as { code?: unknown }).code
  return typeof c === 'string' && c.startsWith('FST_HANDOFF_') && (code === undefined || c === code)
}

/**
 * An integer option: `dflt` when absent, else an integer in [min, max]; anything else is refused naming the option.
 * The one check every plugin and the store use, so that they refuse alike.
 */
export function intOption (name: string, v: unknown, dflt: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (v === undefined) return dflt
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `between ${min} and ${max}`
    throw new InvalidOptionError(name, `must be an integer ${range}, got ${typeof v === 'number' ? String(v) : typeof v}`)
  }
  return v
}

/** checkout() with an Idempotency-Key whose checkout froze a different cart (e.g. reused after a decline): nothing charged. */
export const IdempotencyKeyReusedError = createError<'FST_HANDOFF_IDEMPOTENCY_KEY_REUSED', 409, []>(
  'FST_HANDOFF_IDEMPOTENCY_KEY_REUSED', 'The Idempotency-Key was used for a different cart: check out with a new key; nothing was charged', 409)
