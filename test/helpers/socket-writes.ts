import type { Socket } from 'node:net'

/**
 * Count the writes (each one system call, a write or a writev) a connection's socket hands to its handle from now
 * on; the returned function stops counting and returns the count. For tests of write coalescing.
 */
export function countSocketWrites (stream: Socket): () => number {
  const handle = (stream as unknown as { _handle: Record<string, (...a: unknown[]) => unknown> })._handle
  let n = 0
  const restore: Array<() => void> = []
  for (const name of ['writev', 'writeBuffer', 'writeUtf8String', 'writeLatin1String', 'writeAsciiString', 'writeUcs2String']) {
    const original = handle[name]
    if (typeof original !== 'function') continue
    handle[name] = function (this: unknown, ...a: unknown[]) { n++; return original.apply(this, a) }
    restore.push(() => { handle[name] = original })
  }
  return () => { for (const r of restore) r(); return n }
}

/** The socket of an ioredis connection. */
export function streamOf (conn: unknown): Socket {
  return (conn as { stream: Socket }).stream
}
