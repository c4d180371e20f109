/**
 * npm run bench: runs every benchmark in bench/ one after another (each in its own process, so one cannot warm or
 * slow another), then gathers their Markdown tables into bench/results/summary.md.
 * Pass names to run a subset: `npm run bench -- store coherence`.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs'

const ALL = ['store', 'coherence', 'session', 'tls', 'cart', 'checkout']
const wanted = process.argv.slice(2)
const names = (wanted.length > 0 ? wanted : ALL).filter(n => existsSync(`bench/${n}.ts`))
mkdirSync('bench/results', { recursive: true })
const failed: string[] = []
for (const name of names) {
  console.error(`\n== bench/${name}.ts`)
  const r = spawnSync(process.execPath, ['--import', 'tsx', `bench/${name}.ts`], { stdio: 'inherit', timeout: 15 * 60_000 })
  if (r.status !== 0) failed.push(name)
}
const parts = names.filter(n => existsSync(`bench/results/${n}.md`)).map(n => readFileSync(`bench/results/${n}.md`, 'utf8'))
writeFileSync('bench/results/summary.md', `# Benchmark results\n\nMachine: see MEASURED.md conditions; ratios are from the same run.\n${parts.join('\n')}`)
console.error(`\nwrote bench/results/summary.md${failed.length > 0 ? `; failed: ${failed.join(', ')}` : ''}`)
process.exit(failed.length > 0 ? 1 : 0)
