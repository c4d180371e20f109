// Shared benchmark helpers: medians of interleaved rounds, ratios from the same run, results on disk.
import { mkdirSync, writeFileSync } from 'node:fs'

export function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m] as number : ((s[m - 1] as number) + (s[m] as number)) / 2
}

export function percentile (xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(p * s.length))] as number
}

/** Ops per second of `fn` run `n` times (awaited only when it returns a promise). */
export async function opsPerSec (n: number, fn: (i: number) => unknown): Promise<number> {
  const t0 = performance.now()
  for (let i = 0; i < n; i++) {
    const r = fn(i)
    if (r instanceof Promise) await r
  }
  return n / ((performance.now() - t0) / 1000)
}

export function progress (msg: string): void {
  process.stderr.write(`\r\x1b[K${msg}`)
}

export function writeResult (name: string, json: unknown, markdown: string): void {
  mkdirSync('bench/results', { recursive: true })
  writeFileSync(`bench/results/${name}.json`, JSON.stringify(json, null, 2) + '\n')
  writeFileSync(`bench/results/${name}.md`, markdown.trimEnd() + '\n')
  process.stderr.write('\r\x1b[K')
  console.log(markdown)
}

export const fmt = (x: number, d = 2): string => x.toFixed(d)
