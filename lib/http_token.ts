/**
 * @module
 * The HTTP `token` (RFC 9110 §5.6.2): the syntax of methods, header names, cookie names, codings
 * and media types. One definition, so every check of it agrees.
 */

/** `tchar` as a regular-expression class, for JSON Schema patterns and larger expressions. */
export const TCHAR = "[!#$%&'*+.^_`|~0-9A-Za-z-]";

/** 1 for `tchar`, by character code (a table: this runs on every header name of a request). */
const TOKEN = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~") TOKEN[c.charCodeAt(0)] = 1;
for (let c = 48; c <= 57; c++) TOKEN[c] = 1;
for (let c = 65; c <= 90; c++) TOKEN[c] = TOKEN[c + 32] = 1;

/** Whether the character code `c` is a `tchar`. */
export function isTokenChar(c: number): boolean {
  return c < 128 && TOKEN[c] === 1;
}

/** Whether `s` is a non-empty token (a method, a header name). */
export function isToken(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    if (!isTokenChar(s.charCodeAt(i))) return false;
  }
  return true;
}
