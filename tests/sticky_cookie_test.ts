/**
 * @module
 * The sticky cookie (lib/sticky_cookie.ts) called directly: its MAC tokens, the Set-Cookie
 * header it builds, and reading cookies.
 */

import assert from "node:assert/strict";
import { Backend } from "../lib/pool.ts";
import { cookieHeader, generateSecret, getCookie, StickyCookie } from "../lib/sticky_cookie.ts";

const SECRET = "correct horse battery staple";

function backends(): Backend[] {
  return ["http://10.1.2.3:8081", "http://10.1.2.4:8082", "https://app-3.internal:443"]
    .map((url) => new Backend({ url, weight: 1 }));
}

async function prepared(secret: string | Uint8Array = SECRET) {
  const sticky = new StickyCookie(secret);
  const candidates = backends();
  await sticky.prepare(candidates);
  return { sticky, candidates };
}

Deno.test("StickyCookie.decode() returns the backend that encode() was given", async () => {
  const { sticky, candidates } = await prepared();
  for (const backend of candidates) {
    const value = sticky.encode(backend)!;
    assert.equal(sticky.decode(value, candidates), backend);
  }
});

Deno.test("StickyCookie.encode() reveals neither the URL nor the host", async () => {
  const { sticky, candidates } = await prepared();
  for (const backend of candidates) {
    const value = sticky.encode(backend)!;
    assert.match(value, /^[A-Za-z0-9_-]{22}$/);
    const { host, hostname } = new URL(backend.url);
    for (const part of [backend.url, host, hostname]) {
      assert.ok(!value.includes(part), `${value} contains ${part}`);
    }
    assert.ok(!atob(value.replaceAll("-", "+").replaceAll("_", "/")).includes(hostname));
  }
});

Deno.test("StickyCookie.decode() returns undefined for tampered, foreign or missing values", async () => {
  const { sticky, candidates } = await prepared();
  const value = sticky.encode(candidates[0])!;
  const flipped = (value[0] === "A" ? "B" : "A") + value.slice(1);
  assert.equal(sticky.decode(flipped, candidates), undefined);
  assert.equal(sticky.decode(value.slice(0, -1), candidates), undefined);
  assert.equal(sticky.decode(value + "A", candidates), undefined);
  assert.equal(sticky.decode("", candidates), undefined);
  assert.equal(sticky.decode(undefined, candidates), undefined);
  assert.equal(sticky.decode(candidates[0].url, candidates), undefined);
  const other = await prepared("a different secret, same length!");
  assert.equal(other.sticky.decode(value, other.candidates), undefined);
});

/** The base64url alphabet tokens are written in. */
const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

Deno.test("StickyCookie.decode() rejects a token changed at any one position, or cut short", async () => {
  const { sticky, candidates } = await prepared();
  let tampered = 0;
  for (const backend of candidates) {
    const value = sticky.encode(backend)!;
    assert.equal(value.length, 22);
    assert.equal(sticky.decode(value, candidates), backend, "the untouched token is accepted");
    // The token is the whole MAC (there is no separate backend part): every character counts.
    for (let i = 0; i < value.length; i++) {
      const at = ALPHABET.indexOf(value[i]);
      // Two other characters: the next one (a one-bit change for most) and a distant one.
      for (const shift of [1, 32]) {
        const changed = value.slice(0, i) + ALPHABET[(at + shift) % 64] + value.slice(i + 1);
        assert.notEqual(changed, value);
        assert.equal(sticky.decode(changed, candidates), undefined, `position ${i}: ${changed}`);
        tampered++;
      }
    }
    // Cut short, and cut short then padded back to length (only a prefix of the MAC is right).
    for (let kept = 0; kept < value.length; kept++) {
      const prefix = value.slice(0, kept);
      assert.equal(sticky.decode(prefix, candidates), undefined, `first ${kept} characters`);
      const filler = value[kept] === "A" ? "B" : "A";
      const padded: string = prefix + filler.repeat(value.length - kept);
      assert.equal(sticky.decode(padded, candidates), undefined, `padded: ${padded}`);
    }
  }
  assert.equal(tampered, 3 * 22 * 2);
});

Deno.test("StickyCookie.decode() returns undefined when the backend is not a candidate", async () => {
  const { sticky, candidates } = await prepared();
  const value = sticky.encode(candidates[1])!;
  assert.equal(sticky.decode(value, [candidates[0], candidates[2]]), undefined);
});

Deno.test("StickyCookie.encode() agrees across instances with the same secret", async () => {
  const a = await prepared();
  const b = await prepared();
  const c = await prepared(SECRET + "!");
  const tokens = (p: typeof a) => p.candidates.map((backend) => p.sticky.encode(backend));
  assert.deepEqual(tokens(a), tokens(b));
  assert.notDeepEqual(tokens(a), tokens(c));
  assert.equal(new Set(tokens(a)).size, 3);
});

Deno.test("StickyCookie.encode() returns undefined until prepare() has seen the backend", async () => {
  const sticky = new StickyCookie(generateSecret());
  const [first, second] = backends();
  assert.equal(sticky.encode(first), undefined);
  await sticky.prepare([first]);
  assert.equal(typeof sticky.encode(first), "string");
  assert.equal(sticky.encode(second), undefined);
});

Deno.test("new StickyCookie() rejects a secret shorter than 16 bytes", () => {
  assert.throws(() => new StickyCookie("short"), /5 bytes; it needs at least 16/);
  assert.throws(() => new StickyCookie(new Uint8Array(15)), /15 bytes/);
  assert.doesNotThrow(() => new StickyCookie(new Uint8Array(16)));
});

Deno.test("generateSecret() returns 32 random bytes", () => {
  const a = generateSecret();
  assert.equal(a.length, 32);
  assert.notDeepEqual(a, generateSecret());
});

Deno.test("cookieHeader() builds Path=/, HttpOnly and SameSite=Lax by default", () => {
  assert.equal(cookieHeader("lb", "abc"), "lb=abc; Path=/; HttpOnly; SameSite=Lax");
});

Deno.test("cookieHeader() adds Secure for HTTPS and for SameSite=None, and Max-Age", () => {
  assert.equal(
    cookieHeader("lb", "abc", { secure: true, maxAgeSeconds: 3600 }),
    "lb=abc; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure",
  );
  assert.equal(
    cookieHeader("lb", "abc", { sameSite: "None", httpOnly: false, path: "/app" }),
    "lb=abc; Path=/app; SameSite=None; Secure",
  );
});

Deno.test("cookieHeader() throws on a name, value or path that would break the header", () => {
  assert.throws(() => cookieHeader("l b", "x"), /cookie name "l b"/);
  assert.throws(() => cookieHeader("lb", "a;b"), /cookie value/);
  assert.throws(() => cookieHeader("lb", "x", { path: "/a;Domain=evil" }), /cookie path/);
  assert.throws(() => cookieHeader("lb", "x", { maxAgeSeconds: 1.5 }), /whole seconds/);
});

Deno.test("getCookie() finds a cookie among several, in joined headers and quoted", () => {
  const headers = new Headers();
  headers.append("cookie", "a=1; lb=first");
  headers.append("cookie", 'lb=second; c="quoted"');
  assert.equal(getCookie(headers, "lb"), "first");
  assert.equal(getCookie(headers, "c"), "quoted");
  assert.equal(getCookie(headers, "a"), "1");
  assert.equal(getCookie(headers, "missing"), undefined);
  assert.equal(getCookie(new Headers(), "lb"), undefined);
  assert.equal(getCookie(new Headers({ cookie: "xlb=1; lb =2" }), "lb"), "2");
});
