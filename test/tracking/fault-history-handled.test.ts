/** test/fault-history/handled.test.ts again, every store on the tracking transport (see on-tracking.ts). */
import { onTracking } from './on-tracking.js'

await onTracking()
await import('../fault-history/handled.test.js')
