import { Ajv, type ErrorObject } from 'ajv'
import { InvalidOptionError } from './errors.js'

/**
 * The one option policy every plugin applies at registration: a JSON schema per plugin, compiled once with Ajv.
 * Unknown keys are refused with a did-you-mean, types and ranges are checked, and the first problem is thrown as
 * FST_HANDOFF_INVALID_OPTION naming the option's path and what it allows. Defaults and contradictions between
 * options stay in each plugin (they need the resolved values).
 */

/** A JSON schema as written in this code base (plus the `typeof` keyword below). */
export type OptionsSchema = Record<string, unknown>

/** Throws FST_HANDOFF_INVALID_OPTION for the first problem; `path` prefixes names ('session' -> 'session.cookie.name'). */
export type OptionsCheck = (opts: unknown, path?: string) => void

/** Keys Fastify itself reads from a plugin's registration options; they are not the plugin's to refuse. */
export const FASTIFY_REGISTER_KEYS: readonly string[] = ['prefix', 'logLevel', 'logSerializers']

const ajv = new Ajv({ allErrors: true, verbose: true, strict: true, strictTypes: false, strictRequired: false })
// Functions (provider.charge, now, observe) and class instances cannot be described by JSON types alone.
ajv.addKeyword({
  keyword: 'typeof',
  schemaType: 'string',
  errors: false,
  validate: (expected: string, data: unknown) => { const actual: string = typeof data; return actual === expected }
})

/** Levenshtein distance, for "did you mean" on option names (a few dozen short strings, once at registration). */
export function editDistance (a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    prev = cur
  }
  return prev[b.length] ?? 0
}

/**
 * The known name closest to an unknown one, when close enough to be a typo: a small edit distance (case ignored),
 * or one name containing the other (`redisUrl` -> `redis`).
 */
export function didYouMean (unknown: string, known: readonly string[]): string | undefined {
  const u = unknown.toLowerCase()
  let best: string | undefined
  let bestDistance = Number.POSITIVE_INFINITY
  for (const k of known) {
    const l = k.toLowerCase()
    const d = editDistance(u, l)
    const near = d <= Math.max(2, Math.floor(l.length / 3)) || (l.length >= 4 && (u.includes(l) || l.includes(u)) && u.length >= 3)
    if (near && d < bestDistance) { best = k; bestDistance = d }
  }
  return best
}

function render (v: unknown): string {
  if (typeof v === 'function') return 'a function'
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'object') return 'an object'
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)
  return String(v)
}

/** What a schema allows, in words, when it carries no `description`. */
function allowed (s: Record<string, unknown>): string {
  if (typeof s.description === 'string') return s.description
  if (Array.isArray(s.enum)) return `one of ${s.enum.map(e => JSON.stringify(e)).join(', ')}`
  if ('const' in s) return JSON.stringify(s.const)
  if (s.type === 'boolean') return 'true or false'
  if (s.type === 'integer' || s.type === 'number') {
    const what = s.type === 'integer' ? 'an integer' : 'a number'
    const min = typeof s.minimum === 'number' ? s.minimum : undefined
    const max = typeof s.maximum === 'number' ? s.maximum : undefined
    if (min !== undefined && max !== undefined) return `${what} between ${min} and ${max}`
    if (min !== undefined) return `${what} >= ${min}`
    if (typeof s.exclusiveMinimum === 'number') return `${what} > ${s.exclusiveMinimum}`
    return what
  }
  if (s.typeof === 'function') return 'a function'
  if (typeof s.type === 'string') return `of type ${s.type}`
  return 'valid'
}

/** `name` under `path` ('' for a plugin's own options): 'session' + 'cookie.name' -> 'session.cookie.name'. */
export function optionPath (path: string, name: string): string {
  return path === '' ? name : `${path}.${name}`
}

function pathOf (prefix: string, instancePath: string, extra?: string): string {
  const parts = instancePath.split('/').slice(1).map(p => p.replace(/~1/g, '/').replace(/~0/g, '~'))
  if (extra !== undefined) parts.push(extra)
  return [prefix, ...parts].filter(p => p !== '').join('.')
}

/** Turns Ajv's errors into the one message a person needs: unknown keys first, then the deepest wrong value. */
function toInvalidOption (errors: ErrorObject[], prefix: string): Error {
  const unknown = errors.find(e => e.keyword === 'additionalProperties')
  if (unknown !== undefined) {
    const key = String((unknown.params as { additionalProperty: string }).additionalProperty)
    const known = Object.keys(((unknown.parentSchema ?? {}) as { properties?: object }).properties ?? {})
    const near = didYouMean(key, known)
    const hint = near !== undefined ? `did you mean "${near}"? ` : ''
    return new InvalidOptionError(pathOf(prefix, unknown.instancePath, key), `unknown option; ${hint}known options are ${known.join(', ')}`)
  }
  const missing = errors.find(e => e.keyword === 'required' && e.instancePath === '')
  if (missing !== undefined) {
    const key = String((missing.params as { missingProperty: string }).missingProperty)
    const s = ((missing.parentSchema ?? {}) as { properties?: Record<string, Record<string, unknown>> }).properties?.[key]
    return new InvalidOptionError(pathOf(prefix, '', key), `required: ${s !== undefined ? allowed(s) : 'a value'}`)
  }
  // The deepest path is the most precise (coherence.leaseMs rather than coherence); at one path, the error of the
  // schema that describes the whole value (an anyOf's) rather than one of its branches.
  const depth = (e: ErrorObject): number => e.instancePath.split('/').length + (e.keyword === 'required' ? 1 : 0)
  const deepest = Math.max(...errors.map(depth))
  const atPath = errors.filter(e => depth(e) === deepest)
  const e = atPath.find(x => x.keyword === 'anyOf' || x.keyword === 'oneOf') ??
    atPath.find(x => typeof (x.parentSchema as { description?: unknown } | undefined)?.description === 'string') ??
    atPath[0] as ErrorObject
  const schema = (e.parentSchema ?? {}) as Record<string, unknown>
  if (e.keyword === 'required' && typeof schema.description !== 'string') {
    const key = String((e.params as { missingProperty: string }).missingProperty)
    return new InvalidOptionError(pathOf(prefix, e.instancePath, key), 'required')
  }
  return new InvalidOptionError(pathOf(prefix, e.instancePath), `must be ${allowed(schema)}, got ${render(e.data)}`)
}

/**
 * Compiles a plugin's options schema (an object schema with `additionalProperties: false`). The check ignores
 * Fastify's own registration keys at the top level.
 */
export function compileOptions (schema: OptionsSchema): OptionsCheck {
  const validate = ajv.compile(schema)
  const own = new Set(Object.keys((schema.properties ?? {}) as object))
  return (opts, path = '') => {
    if (opts === undefined) opts = {}
    if (opts === null || typeof opts !== 'object' || Array.isArray(opts)) {
      throw new InvalidOptionError(path === '' ? 'options' : path, `must be an object, got ${render(opts)}`)
    }
    let subject = opts as Record<string, unknown>
    if (FASTIFY_REGISTER_KEYS.some(k => k in subject && !own.has(k))) {
      subject = { ...subject }
      for (const k of FASTIFY_REGISTER_KEYS) if (!own.has(k)) Reflect.deleteProperty(subject, k)
    }
    if (!validate(subject)) throw toInvalidOption(validate.errors ?? [], path)
  }
}

// Shared pieces of schema.

/** A positive integer option (ms, counts). */
export const positiveInteger = (description?: string, maximum?: number): OptionsSchema => ({
  type: 'integer', minimum: 1, ...(maximum !== undefined ? { maximum } : {}), ...(description !== undefined ? { description } : {})
})

export const nonNegativeInteger: OptionsSchema = { type: 'integer', minimum: 0 }

export const functionSchema: OptionsSchema = { typeof: 'function' }

/** Cookie attributes, the same shape for the session cookie and the cart's anchor cookie. */
export interface CookieOptions {
  /** Cookie name (an RFC 6265 token, 1 to 64 characters). Default: the plugin's ('handoff.sid', 'handoff_cart'). */
  name?: string
  /** Path attribute. Default: '/'. */
  path?: string
  /** Domain attribute. Default: none (host-only cookie). */
  domain?: string
  /** Secure attribute; 'auto' sets it on HTTPS requests only. Default: true. */
  secure?: boolean | 'auto'
  /** HttpOnly attribute. Default: true. */
  httpOnly?: boolean
  /** SameSite attribute. Default: 'lax'. 'none' requires secure: true. */
  sameSite?: 'lax' | 'strict' | 'none'
  /** Partitioned attribute (CHIPS). Default: false. */
  partitioned?: boolean
}

/** Cookie options with every default applied. */
export interface ResolvedCookie {
  name: string
  path: string
  domain: string | undefined
  secure: boolean | 'auto'
  httpOnly: boolean
  sameSite: 'lax' | 'strict' | 'none'
  partitioned: boolean
}

/** A cookie name: an RFC 6265 token (no separators, no controls), 1 to 64 characters. */
export const cookieNameSchema: OptionsSchema = {
  type: 'string', pattern: "^[!#$%&'*+\\-.^_`|~0-9A-Za-z]{1,64}$", description: '1 to 64 characters of an RFC 6265 token'
}

export const cookieSchema: OptionsSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    name: cookieNameSchema,
    path: { type: 'string', pattern: '^/[^;\\s]*$', description: 'a string starting with "/" without ";" or whitespace' },
    domain: { type: 'string', pattern: '^[^;\\s]+$', description: 'a non-empty string without ";" or whitespace' },
    secure: { enum: [true, false, 'auto'] },
    httpOnly: { type: 'boolean' },
    sameSite: { enum: ['lax', 'strict', 'none'] },
    partitioned: { type: 'boolean' }
  }
}

/** Defaults applied to checked cookie options, and the one contradiction between their attributes refused. */
export function resolveCookie (c: CookieOptions | undefined, defaultName: string, path: string): ResolvedCookie {
  const r: ResolvedCookie = {
    name: c?.name ?? defaultName,
    path: c?.path ?? '/',
    domain: c?.domain,
    secure: c?.secure ?? true,
    httpOnly: c?.httpOnly ?? true,
    sameSite: c?.sameSite ?? 'lax',
    partitioned: c?.partitioned ?? false
  }
  if (r.sameSite === 'none' && r.secure !== true) {
    throw new InvalidOptionError(`${path}.sameSite`, '"none" requires secure: true (browsers drop SameSite=None cookies without Secure)')
  }
  return r
}
