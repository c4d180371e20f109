import { randomBytes } from 'node:crypto'
import t from 'tap'
import { ticketKeyCallback } from '../../plugins/tls-sessions.js'

// The answers Node's native SecureContext::TicketKeyCallback reads: [result, hmacKey, aesKey, keyName, iv].
t.test('ticketKeyCallback answers in the layout Node expects', async t => {
  const current = randomBytes(48)
  const previous = randomBytes(48)
  let renewed = 0
  let unknown = 0
  const cb = ticketKeyCallback({ issuing: () => current, accepted: () => [current, previous], renewed: () => { renewed++ }, unknown: () => { unknown++ } })
  const enc = cb(Buffer.alloc(16), Buffer.alloc(16), true) as Buffer[]
  t.equal(enc[0], 1, 'encrypt: use these')
  t.same(enc.slice(1, 4), [current.subarray(16, 32), current.subarray(32, 48), current.subarray(0, 16)], 'hmac, aes, name: setTicketKeys\'s layout')
  t.equal(enc[4]?.length, 16, 'a 16-byte IV')
  t.not((cb(Buffer.alloc(16), Buffer.alloc(16), true) as Buffer[])[4]?.toString('hex'), enc[4]?.toString('hex'), 'a fresh IV each time')
  t.same(cb(previous.subarray(0, 16), Buffer.alloc(16), false), [2, previous.subarray(16, 32), previous.subarray(32, 48)], 'a known older key: decrypt and renew')
  t.same(cb(current.subarray(0, 16), Buffer.alloc(16), false), [2, current.subarray(16, 32), current.subarray(32, 48)], 'the current key: renew too')
  const miss = cb(randomBytes(16), Buffer.alloc(16), false) as Buffer[]
  t.equal(miss[0], 0, 'an unknown key name: full handshake')
  t.equal(miss[2]?.length, 16, 'still with a 16-byte AES part, which Node checks before looking at the result')
  t.same([renewed, unknown], [2, 1])
  const broken = ticketKeyCallback({ issuing: () => { throw new Error('x') }, accepted: () => [], renewed: () => {}, unknown: () => {} })
  t.same((broken(Buffer.alloc(16), Buffer.alloc(16), true) as Buffer[]).map(b => typeof b === 'number' ? b : b.length), [0, 16, 16, 16, 16], 'never throws into OpenSSL')
})
