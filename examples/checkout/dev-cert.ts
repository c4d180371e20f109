/**
 * A development certificate for localhost, created once with the openssl CLI under examples/checkout/dev-cert/
 * (git-ignored) and shared by every instance: TLS resumption across instances needs them to serve the same one.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { join } from 'node:path'

export const DEV_CERT_DIR = fileURLToPath(new URL('./dev-cert/', import.meta.url))

export function devCertificate (): { cert: Buffer, key: Buffer, certPath: string, keyPath: string } {
  const certPath = join(DEV_CERT_DIR, 'cert.pem')
  const keyPath = join(DEV_CERT_DIR, 'key.pem')
  if (!existsSync(certPath) || !existsSync(keyPath)) {
    mkdirSync(DEV_CERT_DIR, { recursive: true })
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '825',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', keyPath, '-out', certPath
    ], { stdio: 'ignore' })
  }
  return { cert: readFileSync(certPath), key: readFileSync(keyPath), certPath, keyPath }
}
