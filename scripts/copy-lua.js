// tsc does not copy non-TypeScript files: the Lua scripts are read next to the compiled repository code.
import { cpSync, readdirSync } from 'node:fs'

for (const f of readdirSync('lib/repository')) {
  if (f.endsWith('.lua')) cpSync(`lib/repository/${f}`, `dist/lib/repository/${f}`)
}
