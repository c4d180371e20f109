/** test/fault-history/handled.test.ts again, every store on the pub/sub transport (see on-pubsub.ts). */
import { onPubsub } from './on-pubsub.js'

await onPubsub()
await import('../fault-history/handled.test.js')
