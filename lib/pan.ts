import { BadInputError } from './errors.js'

/**
 * Payment card numbers (PANs) in free text: found however they are spelled, so that they are refused before they are
 * stored and redacted before they are logged.
 *
 * The rule, in the order it is applied:
 * 1. Each character is normalised on its own (NFKC: fullwidth, circled, superscript digits, NBSP...), then every
 *    Unicode decimal digit (\p{Nd}: Arabic-Indic, Devanagari, Thai...) counts as its value 0-9.
 * 2. Digits form one run while at most MAX_GAP (3) separators stand between two of them. A separator is any
 *    character that is not a letter, not a digit and not ':' (spaces, tabs, NBSP, zero-width and other format
 *    characters, dots, commas, dashes, underscores, slashes, brackets...). A letter or a ':' ends the run: a time of
 *    day (10:30:00) does not join a date into a 14-digit run, and a number written with letters between its digits
 *    is not caught (no text rule catches every deliberate disguise, "four one one one...").
 * 3. A run is card-like when any window of 13 to 19 consecutive digits in it, not starting with 0 (no card number
 *    does), passes the Luhn check: the number may be preceded by other digits or followed by a CVV or an expiry.
 * 4. Exceptions, each for a kind of text that would otherwise be refused often:
 *    - a run of at most 15 digits directly after a '+' is a phone number in international form (E.164 caps those
 *      at 15 digits): "+86 138 0013 8000" is 13 digits and would otherwise be refused 1 time in 10;
 *    - a UUID (8-4-4-4-12 hex digits) and a hex string of 20+ characters with at least 2 letters a-f (a digest, a
 *      random token) are identifiers, not text: their digit groups, joined across the dashes, made 0.71% of random
 *      UUIDs look card-like (measured, 1,000,000 crypto.randomUUID()).
 *
 * What this refuses besides card numbers, by design: any 13+ digit run with a Luhn-valid window, i.e. about 1 in 10
 * runs of exactly 13 digits, 1 in 3 of 15 digits, 2 in 3 of 16, and nearly every run of 20 or more (many windows).
 * Ordinary fields never get there: postcodes, house numbers, dates (2026-11-22 is 8 digits), prices and a phone
 * number each stay under 13 digits or are kept apart by letters. Two phone numbers or two dates run together with
 * only punctuation between them can be refused: put them in separate fields or put a word between them.
 */

const MIN_PAN = 13
const MAX_PAN = 19
/** Separators tolerated between two digits of one run: " - " is three. */
const MAX_GAP = 3
/** E.164: a phone number in international form has at most 15 digits. */
const MAX_PHONE = 15

/** A part of the input (UTF-16 offsets, end exclusive) holding a card-number-like run, separators included. */
export interface PanSpan { start: number, end: number }

export interface ScanOptions {
  /**
   * The input is a URL (path and query): %XX escapes are decoded first (UTF-8), so "4111%201111..." and
   * percent-encoded digits are seen as what they stand for. The phone exception does not apply ('+' is a space).
   */
  url?: boolean
}

// ------------------------------------------------------------------------------------------- character classes

const DIGIT = 0
const SEPARATOR = 1
const BREAK = 2
/** What one normalised character is: a digit (its value), a separator, or the end of a run; '+' is a separator. */
type CharClass = { kind: typeof DIGIT, value: number } | { kind: typeof SEPARATOR, plus: boolean } | { kind: typeof BREAK }

const ND = /^\p{Nd}$/u
const LETTER = /^\p{L}$/u
const DIGIT_CLASSES: ReadonlyArray<CharClass> = Array.from({ length: 10 }, (_, value) => ({ kind: DIGIT, value }))
const SEP: CharClass = { kind: SEPARATOR, plus: false }
const PLUS: CharClass = { kind: SEPARATOR, plus: true }
const BRK: CharClass = { kind: BREAK }

/**
 * Unicode assigns every decimal digit set as 10 consecutive code points, 0 to 9 (a stated stability policy), and
 * JavaScript has no API for a digit's value: count the \p{Nd} code points before this one in its block.
 */
function decimalValue (cp: number): number {
  let k = 0
  while (k < 100 && ND.test(String.fromCodePoint(cp - k - 1))) k++
  return k % 10
}

function classifyChar (ch: string): CharClass {
  const c = ch.charCodeAt(0)
  if (ch.length === 1 && c < 128) {
    if (c >= 48 && c <= 57) return DIGIT_CLASSES[c - 48] as CharClass
    if ((c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 58) return BRK
    return c === 43 ? PLUS : SEP
  }
  if (ND.test(ch)) return DIGIT_CLASSES[decimalValue(ch.codePointAt(0) as number)] as CharClass
  if (LETTER.test(ch)) return BRK
  return SEP
}

/** Non-ASCII code points seen so far and what they normalise to; bounded so that no input can grow it for ever. */
const NORMALISED = new Map<number, readonly CharClass[]>()
const NORMALISED_MAX = 4096

/** The classes of one code point's NFKC form ('①' is one digit, '⑽' is "(10)", '½' is "1⁄2"). */
function classesOf (cp: number): readonly CharClass[] {
  if (cp < 128) return [classifyChar(String.fromCharCode(cp))]
  const known = NORMALISED.get(cp)
  if (known !== undefined) return known
  const out: CharClass[] = []
  for (const ch of String.fromCodePoint(cp).normalize('NFKC')) out.push(classifyChar(ch))
  if (NORMALISED.size < NORMALISED_MAX) NORMALISED.set(cp, out)
  return out
}

// ------------------------------------------------------------------------------------------------------- scan

/** Luhn over d[s..e] (inclusive) in O(1), from prefix sums of plain and doubled digits by index parity. */
class LuhnWindows {
  private readonly plain: [number[], number[]]
  private readonly doubled: [number[], number[]]

  constructor (private readonly d: readonly number[]) {
    const n = d.length
    this.plain = [new Array<number>(n + 1).fill(0), new Array<number>(n + 1).fill(0)]
    this.doubled = [new Array<number>(n + 1).fill(0), new Array<number>(n + 1).fill(0)]
    for (let i = 0; i < n; i++) {
      const v = d[i] as number
      const dv = v * 2 > 9 ? v * 2 - 9 : v * 2
      for (const p of [0, 1] as const) {
        this.plain[p][i + 1] = (this.plain[p][i] as number) + (i % 2 === p ? v : 0)
        this.doubled[p][i + 1] = (this.doubled[p][i] as number) + (i % 2 === p ? dv : 0)
      }
    }
  }

  /** The rightmost digit (e) is not doubled, the one before it is, and so on. */
  valid (s: number, e: number): boolean {
    const plain = this.plain[e % 2 === 0 ? 0 : 1]
    const doubled = this.doubled[e % 2 === 0 ? 1 : 0]
    const sum = (plain[e + 1] as number) - (plain[s] as number) + (doubled[e + 1] as number) - (doubled[s] as number)
    return sum % 10 === 0
  }

  any (): boolean {
    const n = this.d.length
    for (let s = 0; s + MIN_PAN <= n; s++) {
      if (this.d[s] === 0) continue
      for (let len = MIN_PAN; len <= MAX_PAN && s + len <= n; len++) {
        if (this.valid(s, s + len - 1)) return true
      }
    }
    return false
  }
}

/** The string as (classes, source span) units; in URL mode a %XX escape sequence is decoded as UTF-8 first. */
function * units (text: string, url: boolean): Generator<{ classes: readonly CharClass[], start: number, end: number }> {
  let i = 0
  while (i < text.length) {
    if (url && text.charCodeAt(i) === 37 /* % */ && /^%[0-9A-Fa-f]{2}/.test(text.slice(i, i + 3))) {
      const lead = parseInt(text.slice(i + 1, i + 3), 16)
      const need = lead < 0x80 ? 1 : lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1
      const bytes = [lead]
      let j = i + 3
      while (bytes.length < need && /^%[0-9A-Fa-f]{2}/.test(text.slice(j, j + 3))) {
        bytes.push(parseInt(text.slice(j + 1, j + 3), 16))
        j += 3
      }
      const decoded = Buffer.from(bytes).toString('utf8')
      const classes: CharClass[] = []
      for (const ch of decoded) classes.push(...classesOf(ch.codePointAt(0) as number))
      yield { classes, start: i, end: j }
      i = j
      continue
    }
    const cp = text.codePointAt(i) as number
    const width = cp > 0xffff ? 2 : 1
    yield { classes: classesOf(cp), start: i, end: i + width }
    i += width
  }
}

const UUID = /(?<![0-9A-Za-z])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?![0-9A-Za-z])/g
const HEX_TOKEN = /(?<![0-9A-Za-z])(?=(?:[0-9]*[A-Fa-f]){2})[0-9A-Fa-f]{20,}(?![0-9A-Za-z])/g

/** Where the identifiers of exception 4 are: their characters end runs instead of joining them. */
function identifierSpans (text: string): Array<[number, number]> {
  if (text.length < 20) return []
  const spans: Array<[number, number]> = []
  for (const re of [UUID, HEX_TOKEN]) {
    for (const m of text.matchAll(re)) spans.push([m.index, m.index + m[0].length])
  }
  return spans.sort((a, b) => a[0] - b[0])
}

/** Every card-number-like run in `text` (see the rule above), as spans of the original string. */
export function findCardNumbers (text: string, opts: ScanOptions = {}): PanSpan[] {
  const url = opts.url === true
  const skip = identifierSpans(text)
  let skipAt = 0
  const found: PanSpan[] = []
  let digits: number[] = []
  let runStart = -1
  let runEnd = -1
  let gap = 0
  let afterPlus = false
  /** A '+' right before the run's first digit (no separator between). */
  let runAfterPlus = false

  const flush = (): void => {
    const n = digits.length
    if (n >= MIN_PAN && !(runAfterPlus && !url && n <= MAX_PHONE) && new LuhnWindows(digits).any()) {
      found.push({ start: runStart, end: runEnd })
    }
    digits = []
    gap = 0
  }

  for (const u of units(text, url)) {
    while (skipAt < skip.length && (skip[skipAt] as [number, number])[1] <= u.start) skipAt++
    const inIdentifier = skipAt < skip.length && (skip[skipAt] as [number, number])[0] <= u.start
    for (const c of inIdentifier ? [BRK] : u.classes) {
      if (c.kind === DIGIT) {
        if (digits.length > 0 && gap > MAX_GAP) flush()
        if (digits.length === 0) { runStart = u.start; runAfterPlus = afterPlus }
        digits.push(c.value)
        runEnd = u.end
        gap = 0
        afterPlus = false
      } else if (c.kind === SEPARATOR) {
        if (digits.length > 0) gap++
        afterPlus = c.plus
      } else {
        if (digits.length > 0) flush()
        afterPlus = false
      }
    }
  }
  if (digits.length > 0) flush()
  return found
}

/** True when `text` holds a card-number-like run anywhere (see the rule at the top of this file). */
export function looksLikeCardNumber (text: string): boolean {
  return findCardNumbers(text).length > 0
}

/** `text` with every card-number-like run replaced by "[REDACTED]" (for logs). */
export function redactCardNumbers (text: string, opts: ScanOptions = {}): string {
  const spans = findCardNumbers(text, opts)
  if (spans.length === 0) return text
  let out = ''
  let at = 0
  for (const s of spans) {
    out += text.slice(at, s.start) + '[REDACTED]'
    at = s.end
  }
  return out + text.slice(at)
}

// ------------------------------------------------------------------------------------------------- refusing

/**
 * A GTIN-13 or GTIN-14 (EAN barcode number) with a valid GS1 check digit. Shops use them as SKUs, and 1 in 10 of
 * them also passes the Luhn check: a `sku` that is exactly a GTIN is not refused.
 */
export function isGtin (s: string): boolean {
  if (!/^[0-9]{13,14}$/.test(s)) return false
  let sum = 0
  for (let i = s.length - 2, w = 3; i >= 0; i--, w = 4 - w) sum += (s.charCodeAt(i) - 48) * w
  return (10 - (sum % 10)) % 10 === s.charCodeAt(s.length - 1) - 48
}

/** Keys shown in an error's path as they are; anything else is shown as […]: the error never echoes odd input. */
const PLAIN_KEY = /^[A-Za-z_$][A-Za-z0-9_$-]{0,63}$/

function refused (where: string): Error {
  return new BadInputError(`${where} looks like a payment card number: send a payment-provider token instead, never the card number`)
}

/**
 * Refuses any input holding a card-number-like run (see the rule at the top of this file) in any string, integer or
 * object key, at any depth, with FST_HANDOFF_BAD_INPUT (400). The number is never echoed: the message names the
 * field's path, and a key is named only when it is a plain identifier.
 */
export function refuseCardNumbers (input: unknown, path = 'body'): void {
  if (typeof input === 'string') {
    if (looksLikeCardNumber(input)) throw refused(path)
  } else if (typeof input === 'number') {
    // Integers only: a PAN sent as a JSON number prints in full; a float's digits are noise (0.1 + 0.2).
    if (Number.isInteger(input) && looksLikeCardNumber(String(input))) throw refused(path)
  } else if (Array.isArray(input)) {
    input.forEach((v, i) => { refuseCardNumbers(v, `${path}[${i}]`) })
  } else if (input !== null && typeof input === 'object') {
    for (const [k, v] of Object.entries(input)) {
      if (looksLikeCardNumber(k)) throw refused(`a field name in ${path}`)
      const at = PLAIN_KEY.test(k) ? `${path}.${k}` : `${path}[…]`
      if (k === 'sku' && typeof v === 'string' && isGtin(v)) continue
      refuseCardNumbers(v, at)
    }
  }
}
