/**
 * The one way tests wait for something to happen: poll `condition` until it returns a truthy value or `timeoutMs`
 * has passed. Resolves with the last value it returned (falsy on timeout, so `t.ok(await waitFor(...), what)` still
 * fails when the thing never happens); a condition that throws rejects. Bounded in time and in count.
 */
export interface WaitForOptions {
  /** Give up after this long, ms. Generous: a loaded 2-core machine stalls for hundreds of ms. Default: 5000. */
  timeoutMs?: number
  /** Pause between two checks, ms. Default: 10. */
  intervalMs?: number
}

const pause = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

export async function waitFor<T> (condition: () => T | Promise<T>, opts: WaitForOptions = {}): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 5000
  const intervalMs = opts.intervalMs ?? 10
  const deadline = Date.now() + timeoutMs
  // The count bound holds even if the clock jumps: one check per interval over the timeout, and a last one.
  const maxChecks = Math.ceil(timeoutMs / Math.max(1, intervalMs)) + 1
  let value = await condition()
  for (let i = 1; !value && i < maxChecks && Date.now() < deadline; i++) {
    await pause(intervalMs)
    value = await condition()
  }
  return value
}

/** Waits until `ms` of wall-clock time have passed: for a test about time itself (TTLs, timeouts), never for an event. */
export async function elapse (ms: number): Promise<void> {
  const until = Date.now() + ms
  await waitFor(() => Date.now() >= until, { timeoutMs: ms + 1000, intervalMs: Math.min(50, Math.max(1, ms)) })
}
