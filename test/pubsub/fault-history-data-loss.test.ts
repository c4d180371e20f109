/** test/fault-history/data-loss.test.ts again, every store on the pub/sub transport (see on-pubsub.ts). */
import { onPubsub } from './on-pubsub.js'

await onPubsub()
await import('../fault-history/data-loss.test.js')
