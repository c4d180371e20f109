import t from 'tap'
import { startRedis } from '../../scripts/redis-server.js'

t.test('private redis-server starts, pauses, restarts and stops by PID', async t => {
  const r = await startRedis({ private: true })
  t.equal(r.cli('PING'), 'PONG')
  r.cli('SET', 'k', 'v')
  t.equal(r.cli('GET', 'k'), 'v')
  const pid = r.pid()
  t.type(pid, 'number')
  r.pause()
  r.resume()
  t.equal(r.cli('PING'), 'PONG')
  await r.restart()
  t.not(r.pid(), pid, 'restart is a new process')
  t.equal(r.cli('GET', 'k'), '', 'nothing is kept on disk across a restart')
  await r.stop()
  t.throws(() => process.kill(pid as number, 0), 'the first process is gone')
})
