/** test/fault-history/data-loss.test.ts again, every store on the tracking transport (see on-tracking.ts). */
import { onTracking } from './on-tracking.js'

await onTracking()
await import('../fault-history/data-loss.test.js')
