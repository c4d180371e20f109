/**
 * Generators (fast-check) of the ways people write a card number, and of the legitimate text a shop's forms receive.
 * Used by test/lib/pan.test.ts (the detector) and test/examples/card-numbers.test.ts (through the example's API).
 */
import fc from 'fast-check'

export function luhnCheckDigit (body: string): number {
  let sum = 0
  for (let i = body.length - 1, double = true; i >= 0; i--, double = !double) {
    let d = body.charCodeAt(i) - 48
    if (double) { d *= 2; if (d > 9) d -= 9 }
    sum += d
  }
  return (10 - (sum % 10)) % 10
}

/** A Luhn-valid card number of 13 to 19 ASCII digits, not starting with 0. */
export const panArb = fc.integer({ min: 13, max: 19 }).chain(len => fc.tuple(
  fc.integer({ min: 1, max: 9 }),
  fc.array(fc.integer({ min: 0, max: 9 }), { minLength: len - 2, maxLength: len - 2 })
).map(([first, rest]) => {
  const body = String(first) + rest.join('')
  return body + String(luhnCheckDigit(body))
}))

/** Zero of decimal digit sets that NFKC keeps as they are (the \p{Nd} rule must map them) or folds to ASCII. */
export const DIGIT_ZEROS = [
  0x30, // ASCII
  0xff10, // fullwidth (NFKC)
  0x1d7ce, 0x1d7d8, 0x1d7f6, // mathematical bold, double-struck, monospace (NFKC)
  0x1fbf0, // segmented (NFKC)
  0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66, 0xde6, 0xe50, 0xed0,
  0xf20, 0x1040, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1b50, 0xa620, 0xa8d0, 0xa900, 0xaa50,
  0x104a0, 0x11066, 0x16a60, 0x1e950 // Osmanya, Brahmi, Mro, Adlam (astral)
]
export const digitArb = (d: number): fc.Arbitrary<string> => fc.constantFrom(...DIGIT_ZEROS).map(z => String.fromCodePoint(z + d))
/** Digits written as themselves and as circled / superscript forms NFKC folds to one digit. */
export const FOLDED: Record<string, string[]> = {
  1: ['①', '¹'], 2: ['②', '²'], 3: ['③', '³'], 4: ['④', '⁴'], 5: ['⑤', '⁵'], 6: ['⑥', '⁶'], 7: ['⑦', '⁷'], 8: ['⑧', '⁸'], 9: ['⑨', '⁹'], 0: ['⓪', '⁰']
}

export const SEPARATORS = [' ', '  ', '.', '_', '/', ',', '-', ' - ', '\t', '\u00a0', '\u202f', '\u2007', '\u200b', '\u200c', '\u200d', '\u2060',
  '\ufeff', '\u00ad', '\u2013', '\u2014', '\u2212', '\u3000', '*', '#', '(', ')', "'", '|', '\n', '\r\n', '~', '\\', '·', '•', '\u0301']
export const sepArb = fc.array(fc.constantFrom(...SEPARATORS), { minLength: 1, maxLength: 3 }).map(a => a.join('')).filter(s => s.length <= 3)

/** One spelling of `pan`: each digit in a random script, random separators (at most 3 characters) anywhere. */
export const spelledArb = panArb.chain(pan => fc.tuple(
  fc.tuple(...[...pan].map(ch => fc.oneof(
    { weight: 6, arbitrary: digitArb(Number(ch)) },
    { weight: 1, arbitrary: fc.constantFrom(...(FOLDED[ch] as string[])) }
  ))),
  fc.array(fc.option(sepArb, { freq: 2 }), { minLength: pan.length, maxLength: pan.length })
).map(([digits, seps]) => digits.map((d, i) => i < digits.length - 1 && seps[i] !== null ? d + (seps[i] as string) : d).join('')))

/**
 * Text before the number: nothing, words, other digits (the window must still find it). Never a '+' right before
 * (a phone number, also with digits and separators between), nor hex letters glued to it (a hex identifier): the two
 * documented exceptions.
 */
export const prefixArb = fc.oneof(
  fc.constant(''),
  fc.constantFrom('card ', 'my card is ', 'Card: ', 'no.', 'ref 12 ', '99', '12 34 ', '2026-11-22 ', '#', '(', 'tok_', 'x '),
  // A '+' followed only by digits and separators joins the number's run ("+0 1000..."): the phone exception too.
  fc.string({ maxLength: 12 }).filter(s => !/[+0-9A-Fa-f]$/.test(s) && !/\+[^\p{L}:]*$/u.test(s))
)
/** Text after it: a CVV, an expiry, words, digits. */
export const suffixArb = fc.oneof(
  fc.constant(''),
  fc.constantFrom(' 123', ' 1234', ' 12/28', '/12/28', ' exp 12/28 cvv 123', ', thanks', '0', '123', ' 10:30'),
  fc.string({ maxLength: 12 }).filter(s => !/^[0-9A-Fa-f]/.test(s))
)
export const inTextArb = fc.tuple(prefixArb, spelledArb, suffixArb).map(([p, s, q]) => p + s + q)

const words = fc.constantFrom('Alice', 'Bob', 'Zoë', 'Ngũgĩ', 'María José', "O'Brien", 'Müller-Lüdenscheidt', '王小明', 'Мария', 'أحمد',
  'Main St', 'rue de la Paix', 'Apt', 'Flat', 'Building', 'Suite', 'c/o', 'Floor', 'PO Box', 'Unit', 'Hauptstraße', 'gift wrap please',
  'leave at the door', 'x', 'pcs', 'EUR', 'Visa', 'ring twice', 'Tel', 'call', 'between', 'and', 'or')
const shortNumber = fc.oneof(
  fc.integer({ min: 0, max: 9999 }).map(String), // house numbers, quantities
  fc.integer({ min: 10000, max: 99999 }).map(String), // US / DE / FR postcodes
  fc.tuple(fc.integer({ min: 10000, max: 99999 }), fc.integer({ min: 1000, max: 9999 })).map(([a, b]) => `${a}-${b}`), // ZIP+4
  fc.constantFrom('SW1A 1AA', 'K1A 0B1', '1012 AB', '01310-100', '100-0001', '110 001', '75008', 'D02 X285'),
  fc.tuple(fc.integer({ min: 2000, max: 2099 }), fc.integer({ min: 1, max: 12 }), fc.integer({ min: 1, max: 28 })).map(([y, m, d]) => `${y}-${String(m).padStart(2, '0')}-${String(d).padStart(2, '0')}`),
  fc.tuple(fc.integer({ min: 0, max: 23 }), fc.integer({ min: 0, max: 59 })).map(([h, m]) => `${h}:${String(m).padStart(2, '0')}:00`),
  fc.integer({ min: 0, max: 999_999 }).map(n => `${(n / 100).toFixed(2)} EUR`),
  // a national phone number (up to 12 digits, any grouping) or an international one after '+' (up to 15)
  fc.array(fc.integer({ min: 0, max: 9 }), { minLength: 6, maxLength: 12 }).map(d => `${d.slice(0, 3).join('')} ${d.slice(3, 7).join('')} ${d.slice(7).join('')}`.trim()),
  fc.array(fc.integer({ min: 0, max: 9 }), { minLength: 8, maxLength: 13 }).map(d => `+${d.slice(0, 2).join('')} ${d.slice(2, 5).join('')} ${d.slice(5).join('')}`),
  fc.uuid(), fc.uint8Array({ minLength: 32, maxLength: 32 }).map(b => Buffer.from(b).toString('hex'))
)
/** Text as people type it in a form: words and short numbers, a word between any two numbers. */
export const legitArb = fc.array(fc.tuple(words, fc.option(shortNumber, { freq: 2 })), { minLength: 1, maxLength: 6 })
  .map(parts => parts.map(([w, n]) => n === null ? w : `${w} ${n}`).join(', '))
