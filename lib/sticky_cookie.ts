/**
 * @module
 * Sticky sessions by cookie: the balancer sets a cookie naming the backend that served a client,
 * and later requests carrying it go back there while that backend is available.
 *
 * The cookie holds an opaque token, not the backend address: addresses are internal topology, and
 * a signed token also stops clients from steering themselves to a backend of their choosing.
 * Tokens are HMAC-SHA256 of the backend URL under a secret, so every process configured with the
 * same secret agrees on them, and a restart with the same secret keeps sessions where they were.
 */

import { constantTimeEqual } from "./constant_time.ts";
import { isToken } from "./http_token.ts";
import type { Backend } from "./pool.ts";

/** Bytes of HMAC output kept: 128 bits is plenty against guessing and keeps the cookie short. */
const TOKEN_BYTES = 16;
/** Length of a token in base64url without padding. */
const TOKEN_LENGTH = Math.ceil((TOKEN_BYTES * 4) / 3);
/** Shorter secrets could be brute-forced offline from one token and a guessable URL. */
const MIN_SECRET_BYTES = 16;
/** Versioned so a future token format cannot collide with this one under the same secret. */
const TOKEN_CONTEXT = "lb-sticky-v1\0";

/** A fresh random 32-byte secret, for start-up when none is configured. */
export function generateSecret(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}

/**
 * Encodes backends as opaque cookie values and decodes them back.
 *
 * Web Crypto's HMAC is asynchronous, but the request path must not wait on it: call
 * {@linkcode StickyCookie.prepare} with the backends at start-up and whenever the set changes,
 * after which {@linkcode StickyCookie.encode} and {@linkcode StickyCookie.decode} are synchronous
 * lookups. Tokens are cached by backend URL.
 */
export class StickyCookie {
  readonly #secret: Uint8Array<ArrayBuffer>;
  #key: Promise<CryptoKey> | undefined;
  /** Backend URL to token. */
  readonly #tokens = new Map<string, string>();

  /**
   * Holds the secret; no work happens until {@linkcode StickyCookie.prepare}.
   *
   * @param secret At least 16 bytes (a string counts its UTF-8 bytes). Keep it out of logs.
   * @throws Error when the secret is too short.
   */
  constructor(secret: string | Uint8Array) {
    const bytes = typeof secret === "string"
      ? new TextEncoder().encode(secret)
      : new Uint8Array(secret);
    if (bytes.length < MIN_SECRET_BYTES) {
      throw new Error(
        `sticky cookie secret is ${bytes.length} bytes; it needs at least ${MIN_SECRET_BYTES}`,
      );
    }
    this.#secret = bytes;
  }

  /** Computes tokens for any of `backends` not seen before. Safe to call repeatedly. */
  async prepare(backends: Iterable<Backend>): Promise<void> {
    this.#key ??= crypto.subtle.importKey(
      "raw",
      this.#secret,
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
    const key = await this.#key;
    const encoder = new TextEncoder();
    for (const { url } of backends) {
      if (this.#tokens.has(url)) continue;
      const mac = await crypto.subtle.sign("HMAC", key, encoder.encode(TOKEN_CONTEXT + url));
      this.#tokens.set(url, base64url(new Uint8Array(mac, 0, TOKEN_BYTES)));
    }
  }

  /**
   * The cookie value for `backend`, or undefined when {@linkcode StickyCookie.prepare} has not
   * covered its URL yet (the caller then simply does not set the cookie this time).
   */
  encode(backend: Backend): string | undefined {
    return this.#tokens.get(backend.url);
  }

  /**
   * The candidate whose token equals `value`, or undefined when the value is missing, malformed,
   * tampered with, or names a backend that is not among `candidates` (down, draining, already
   * tried); the caller then falls back to the balancing policy and sets a fresh cookie.
   *
   * O(n) over the candidates, comparing every token in full: a comparison that stopped at the
   * first differing character would let a client find a valid token byte by byte from timings.
   */
  decode(value: string | undefined, candidates: readonly Backend[]): Backend | undefined {
    if (value === undefined || value.length !== TOKEN_LENGTH) return undefined;
    let found: Backend | undefined;
    for (const backend of candidates) {
      const token = this.#tokens.get(backend.url);
      if (token !== undefined && constantTimeEqual(value, token)) found = backend;
    }
    return found;
  }
}

function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** Attributes of the sticky cookie. */
export interface CookieOptions {
  /** Send only over HTTPS; set it when the balancer's front end is HTTPS. @default false */
  secure?: boolean;
  /** Paths the cookie applies to. @default "/" */
  path?: string;
  /** Hide the cookie from page scripts; nothing in the browser needs to read it. @default true */
  httpOnly?: boolean;
  /** Cross-site sending policy. @default "Lax" */
  sameSite?: "Strict" | "Lax" | "None";
  /** Lifetime in seconds; unset makes a session cookie that ends with the browser. @default undefined */
  maxAgeSeconds?: number;
}

/** RFC 6265 cookie-octet: no controls, whitespace, DQUOTE, comma, semicolon or backslash. */
const COOKIE_VALUE = /^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*$/;
/** A Path attribute value must not contain controls or `;` (RFC 6265 section 4.1.1). */
const COOKIE_PATH = /^[\x20-\x3A\x3C-\x7E]+$/;

/**
 * Builds a `Set-Cookie` header value, e.g. `lb=abc; Path=/; HttpOnly; SameSite=Lax; Secure`.
 *
 * @throws Error when the name, value, path or max-age would produce a malformed header. These
 * come from configuration and encode(), so a throw here is a start-up or programming error.
 */
export function cookieHeader(name: string, value: string, options: CookieOptions = {}): string {
  const { secure = false, path = "/", httpOnly = true, sameSite = "Lax", maxAgeSeconds } = options;
  if (!isToken(name)) throw new Error(`cookie name "${name}" is not a valid token`);
  if (!COOKIE_VALUE.test(value)) throw new Error(`cookie value "${value}" has invalid characters`);
  if (!COOKIE_PATH.test(path)) throw new Error(`cookie path "${path}" has invalid characters`);
  let header = `${name}=${value}; Path=${path}`;
  if (maxAgeSeconds !== undefined) {
    if (!Number.isInteger(maxAgeSeconds)) {
      throw new Error(`cookie max-age must be whole seconds, got ${maxAgeSeconds}`);
    }
    header += `; Max-Age=${maxAgeSeconds}`;
  }
  if (httpOnly) header += "; HttpOnly";
  header += `; SameSite=${sameSite}`;
  // Browsers reject SameSite=None without Secure, so a None cookie is always marked Secure.
  if (secure || sameSite === "None") header += "; Secure";
  return header;
}

/**
 * The value of cookie `name` in the request's Cookie header(s), or undefined. The first
 * occurrence wins, as browsers send the most specific path first (RFC 6265 section 5.4).
 */
export function getCookie(headers: Headers, name: string): string | undefined {
  const header = headers.get("cookie");
  if (header === null) return undefined;
  // Several Cookie fields (as HTTP/2 sends them) are joined with ", " by Headers; a comma cannot
  // occur in a valid cookie, so both separators can be treated alike.
  let start = 0;
  while (start < header.length) {
    let end = start;
    while (end < header.length && header[end] !== ";" && header[end] !== ",") end++;
    const equals = header.indexOf("=", start);
    if (equals !== -1 && equals < end && header.slice(start, equals).trim() === name) {
      return stripQuotes(header.slice(equals + 1, end).trim());
    }
    start = end + 1;
  }
  return undefined;
}

/** RFC 6265 allows a cookie value in double quotes; the quotes are not part of the value. */
function stripQuotes(value: string): string {
  return value.length >= 2 && value.startsWith('"') && value.endsWith('"')
    ? value.slice(1, -1)
    : value;
}
