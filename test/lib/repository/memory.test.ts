import t from 'tap'
import { MemoryRepository } from '../../../lib/repository/memory.js'
import { repositoryContract } from './contract.js'

const repo = new MemoryRepository()
t.teardown(async () => await repo.close())
repositoryContract(t, 'memory', async () => repo)

t.test('memory: closed repository refuses work with a clear error', async t => {
  const r = new MemoryRepository()
  await r.close()
  await t.rejects(r.get('x{p1}:a:k'), { code: 'FST_HANDOFF_CLOSED' })
})
