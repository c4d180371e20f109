/** test/lib/coherence-cluster.test.ts again, every store on the tracking transport (see on-tracking.ts). */
import { onTracking } from './on-tracking.js'

await onTracking()
await import('../lib/coherence-cluster.test.js')
