/**
 * @module
 * Trusted proxies and the RFC 7239 `Forwarded` header (lib/headers.ts): the pure header rules,
 * then over real sockets on 127.0.0.1, trusted (`127.0.0.1/32`) versus untrusted (`10.0.0.0/8`:
 * the same traffic, from a peer outside the ranges).
 */

import assert from "node:assert/strict";
import { forwardedElement } from "../lib/headers.ts";
import {
  rawRequest,
  startTestBackend,
  startTestBalancer,
  testConfig,
  upstreamHeadersOf,
} from "./helpers.ts";

const FACTS = { clientIp: "192.0.2.10", proto: "https", host: "lb.example" };
const SPOOFED = {
  host: "lb.example",
  "x-forwarded-for": "203.0.113.5",
  "x-forwarded-proto": "http",
  "x-forwarded-host": "public.example",
  forwarded: 'for=203.0.113.5;proto=http;host="public.example"',
};

Deno.test("upstreamRequestHeaders() from a trusted peer appends to X-Forwarded-For, keeps Proto/Host", () => {
  const headers = upstreamHeadersOf(new Headers(SPOOFED), { ...FACTS, trustedPeer: true });
  assert.equal(headers.get("x-forwarded-for"), "203.0.113.5, 192.0.2.10");
  assert.equal(headers.get("x-forwarded-proto"), "http");
  assert.equal(headers.get("x-forwarded-host"), "public.example");
  assert.equal(headers.has("forwarded"), false, "without `forwarded`, none is sent");
});

Deno.test("upstreamRequestHeaders() from a trusted peer without X-Forwarded-* sets them", () => {
  const headers = upstreamHeadersOf(new Headers({ host: "lb.example" }), {
    ...FACTS,
    trustedPeer: true,
  });
  assert.equal(headers.get("x-forwarded-for"), "192.0.2.10");
  assert.equal(headers.get("x-forwarded-proto"), "https");
  assert.equal(headers.get("x-forwarded-host"), "lb.example");
});

Deno.test("upstreamRequestHeaders() from anyone else replaces X-Forwarded-* and Forwarded", () => {
  const headers = upstreamHeadersOf(new Headers(SPOOFED), {
    ...FACTS,
    trustedPeer: false,
    forwarded: true,
  });
  assert.equal(headers.get("x-forwarded-for"), "192.0.2.10");
  assert.equal(headers.get("x-forwarded-proto"), "https");
  assert.equal(headers.get("x-forwarded-host"), "lb.example");
  assert.equal(headers.get("forwarded"), "for=192.0.2.10;proto=https;host=lb.example");
});

Deno.test("upstreamRequestHeaders() with `forwarded` appends to a trusted peer's Forwarded", () => {
  const headers = upstreamHeadersOf(new Headers(SPOOFED), {
    ...FACTS,
    trustedPeer: true,
    forwarded: true,
  });
  assert.equal(
    headers.get("forwarded"),
    'for=203.0.113.5;proto=http;host="public.example", for=192.0.2.10;proto=https;host=lb.example',
  );
});

Deno.test("upstreamRequestHeaders() lets a trusted peer's Connection remove only its own headers", () => {
  // A header named in Connection is hop-by-hop (RFC 9110 §7.6.1): the proxy's value replaces it.
  const headers = upstreamHeadersOf(
    new Headers({ ...SPOOFED, connection: "X-Forwarded-For" }),
    { ...FACTS, trustedPeer: true },
  );
  assert.equal(headers.get("x-forwarded-for"), "192.0.2.10");
});

Deno.test("forwardedElement() brackets and quotes IPv6 and quotes non-token values (RFC 7239 §6)", () => {
  assert.equal(
    forwardedElement({ clientIp: "2001:db8:cafe::17", proto: "http", host: "example.com" }),
    'for="[2001:db8:cafe::17]";proto=http;host=example.com',
  );
  assert.equal(
    forwardedElement({ clientIp: "::1", proto: "https", host: "example.com:8443" }),
    'for="[::1]";proto=https;host="example.com:8443"',
  );
  assert.equal(
    forwardedElement({ clientIp: "192.0.2.60", proto: "http", host: "[2001:db8::1]:80" }),
    'for=192.0.2.60;proto=http;host="[2001:db8::1]:80"',
  );
  assert.equal(
    forwardedElement({ clientIp: "192.0.2.60", proto: "http", host: null }),
    "for=192.0.2.60;proto=http",
  );
});

const CLIENT_SENT = {
  "x-forwarded-for": "203.0.113.5, 198.51.100.2",
  "x-forwarded-proto": "https",
  "x-forwarded-host": "www.example",
  forwarded: "for=203.0.113.5;proto=https, for=198.51.100.2",
};

/** Sends CLIENT_SENT through a balancer with `overrides`; returns what the backend saw. */
async function forwardThrough(overrides: { trustedProxies: string[]; forwarded?: boolean }) {
  await using backend = await startTestBackend();
  await using lb = await startTestBalancer([backend.url], overrides);
  const response = await fetch(lb.url, { headers: CLIENT_SENT });
  await response.body?.cancel();
  return { seen: backend.received[0].headers, host: `127.0.0.1:${lb.port}` };
}

Deno.test("from a trusted peer (127.0.0.1/32) X-Forwarded-For is appended to, Proto/Host kept", async () => {
  const { seen } = await forwardThrough({ trustedProxies: ["127.0.0.1/32"] });
  assert.equal(seen.get("x-forwarded-for"), "203.0.113.5, 198.51.100.2, 127.0.0.1");
  assert.equal(seen.get("x-forwarded-proto"), "https");
  assert.equal(seen.get("x-forwarded-host"), "www.example");
  assert.equal(seen.has("forwarded"), false, "Forwarded is sent only with `forwarded`");
});

Deno.test("from an untrusted peer (trust 10.0.0.0/8) X-Forwarded-* are replaced", async () => {
  const { seen, host } = await forwardThrough({ trustedProxies: ["10.0.0.0/8", "::1"] });
  assert.equal(seen.get("x-forwarded-for"), "127.0.0.1");
  assert.equal(seen.get("x-forwarded-proto"), "http");
  assert.equal(seen.get("x-forwarded-host"), host);
  assert.equal(seen.has("forwarded"), false);
});

Deno.test("with `forwarded`, a trusted peer's Forwarded is appended to", async () => {
  const { seen, host } = await forwardThrough({ trustedProxies: ["127.0.0.0/8"], forwarded: true });
  assert.equal(
    seen.get("forwarded"),
    `for=203.0.113.5;proto=https, for=198.51.100.2, for=127.0.0.1;proto=http;host="${host}"`,
  );
  assert.equal(seen.get("x-forwarded-for"), "203.0.113.5, 198.51.100.2, 127.0.0.1");
});

Deno.test("with `forwarded`, an untrusted peer's Forwarded is replaced", async () => {
  const { seen, host } = await forwardThrough({ trustedProxies: ["10.0.0.0/8"], forwarded: true });
  assert.equal(seen.get("forwarded"), `for=127.0.0.1;proto=http;host="${host}"`);
});

Deno.test("with `forwarded` and no trusted proxies, a client's Forwarded is replaced", async () => {
  const { seen, host } = await forwardThrough({ trustedProxies: [], forwarded: true });
  assert.equal(seen.get("forwarded"), `for=127.0.0.1;proto=http;host="${host}"`);
  assert.equal(seen.get("x-forwarded-for"), "127.0.0.1");
});

Deno.test("a trusted peer's multiple X-Forwarded-For lines are kept in order", async () => {
  await using backend = await startTestBackend();
  await using lb = await startTestBalancer([backend.url], { trustedProxies: ["127.0.0.1"] });
  const answer = await rawRequest(
    lb.port,
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.5\r\n" +
      "X-Forwarded-For: 198.51.100.2\r\nConnection: close\r\n\r\n",
  );
  assert.match(answer, /^HTTP\/1\.1 200 /);
  assert.equal(
    backend.received[0].headers.get("x-forwarded-for"),
    "203.0.113.5, 198.51.100.2, 127.0.0.1",
  );
});

Deno.test("PROXY protocol (native front end): a reload of trustedProxies decides who may send the header", async () => {
  await using backend = await startTestBackend(() => new Response("ok"));
  const settings = (trusted: string[]) => ({
    frontend: "native" as const,
    proxyProtocol: true,
    trustedProxies: trusted,
  });
  await using lb = await startTestBalancer([backend.url], settings(["127.0.0.1/32"]));
  const request = "PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n" +
    "GET /via-proxy HTTP/1.1\r\nHost: lb.example\r\nConnection: close\r\n\r\n";
  assert.match(await rawRequest(lb.port, request), /^HTTP\/1\.1 200 /);
  assert.equal(backend.received.at(-1)?.headers.get("x-forwarded-for"), "203.0.113.7");
  // 127.0.0.1 is no longer a trusted proxy: its connections are refused, header or not.
  await lb.balancer.reload(testConfig([backend.url], settings(["10.0.0.0/8"])));
  assert.equal(await rawRequest(lb.port, request), "", "closed without an answer");
  assert.equal(backend.received.length, 1);
});
