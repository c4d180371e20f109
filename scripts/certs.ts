/**
 * Test certificates made with the openssl CLI: one self-signed CA and, signed by it, a server certificate for
 * localhost and 127.0.0.1 per key type (RSA-2048, ECDSA P-256). Made once per process into a temp dir that is
 * removed at exit; child processes get the file paths, so they never make their own.
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export type KeyType = 'rsa' | 'ecdsa'

export interface ServerCert {
  type: KeyType
  keyPath: string
  certPath: string
  key: Buffer
  cert: Buffer
}

export interface TestCerts {
  dir: string
  caPath: string
  ca: Buffer
  rsa: ServerCert
  ecdsa: ServerCert
}

let made: TestCerts | undefined

function openssl (dir: string, args: string[]): void {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8', timeout: 30_000 })
  if (r.error !== undefined) {
    throw new Error(`openssl could not be run (${r.error.message}); install the openssl CLI to make test certificates`)
  }
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`)
}

function serverCert (dir: string, type: KeyType): ServerCert {
  const keyPath = join(dir, `${type}.key`)
  const certPath = join(dir, `${type}.crt`)
  const csr = join(dir, `${type}.csr`)
  if (type === 'rsa') {
    openssl(dir, ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', keyPath])
  } else {
    openssl(dir, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', keyPath])
  }
  openssl(dir, ['req', '-new', '-key', keyPath, '-out', csr, '-subj', '/CN=localhost'])
  openssl(dir, ['x509', '-req', '-in', csr, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', certPath,
    '-days', '2', '-sha256', '-extfile', 'server.ext'])
  return { type, keyPath, certPath, key: readFileSync(keyPath), cert: readFileSync(certPath) }
}

/** The certificates of this test run, made on first use (about 0.2 s, mostly the RSA key). */
export function testCerts (): TestCerts {
  if (made !== undefined) return made
  const dir = mkdtempSync(join(tmpdir(), 'handoff-certs-'))
  process.on('exit', () => { rmSync(dir, { recursive: true, force: true }) })
  writeFileSync(join(dir, 'server.ext'), [
    'basicConstraints=CA:FALSE',
    'keyUsage=digitalSignature,keyEncipherment',
    'extendedKeyUsage=serverAuth',
    'subjectAltName=DNS:localhost,IP:127.0.0.1'
  ].join('\n') + '\n')
  // The CA is EC: cheap to make, and a chain of mixed key types is what real deployments have anyway.
  openssl(dir, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'ca.key'])
  openssl(dir, ['req', '-x509', '-new', '-key', 'ca.key', '-out', 'ca.crt', '-days', '2', '-sha256', '-subj', '/CN=fastify-handoff test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
  const caPath = join(dir, 'ca.crt')
  made = { dir, caPath, ca: readFileSync(caPath), rsa: serverCert(dir, 'rsa'), ecdsa: serverCert(dir, 'ecdsa') }
  return made
}
