/**
 * @module
 * Unit tests of lib/response_body.ts: a Response over the caller's bytes holds those bytes (no
 * copy), reads as `new Response(bytes)` would through every reader, and is written whole by
 * Deno.serve and by the native front end.
 */

import type { IncomingRequest } from "../lib/incoming.ts";
import assert from "node:assert/strict";
import { ADOPTS_BODIES, responseOver } from "../lib/response_body.ts";
import { serveNative } from "../lib/frontend_native.ts";

function bytesOf(text: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(text);
}

Deno.test("responseOver() holds the caller's bytes on this Deno: no copy", async () => {
  // When this fails, Deno's internals moved: responseOver() still works, but copies.
  assert.equal(ADOPTS_BODIES, true);
  const bytes = bytesOf("adopted");
  const response = responseOver(bytes, 200, "OK");
  assert.equal(await response.bytes(), bytes);
});

Deno.test("responseOver() reads as new Response(bytes) does: status, text, stream, clone, bodyUsed", async () => {
  const response = responseOver(bytesOf("hello"), 201, "Made");
  assert.equal(response.status, 201);
  assert.equal(response.statusText, "Made");
  assert.equal(response.bodyUsed, false);
  assert.equal(response.headers.get("content-type"), null);
  const copy = response.clone();
  assert.equal(await copy.text(), "hello");
  const chunks: string[] = [];
  for await (const chunk of response.body!) chunks.push(new TextDecoder().decode(chunk));
  assert.equal(chunks.join(""), "hello");
  assert.equal(response.bodyUsed, true);
  await assert.rejects(() => response.text(), TypeError);
});

Deno.test("responseOver() refuses a body for a null-body status, as the constructor does", () => {
  for (const status of [204, 205, 304]) {
    assert.throws(() => responseOver(bytesOf("x"), status, ""), TypeError);
  }
  assert.throws(() => responseOver(bytesOf("x"), 99, ""), RangeError);
});

/** Bodies of several sizes; a field appended after construction (as the proxy does) but to the empty one. */
const SIZES = [0, 3, 16 * 1024 + 7, 64 * 1024];

function bodyOfSize(n: number): Uint8Array<ArrayBuffer> {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31) & 0xff);
}

function handler(req: IncomingRequest): Response {
  const n = Number(new URL(req.url).searchParams.get("n"));
  const response = responseOver(bodyOfSize(n), 200, "OK");
  if (n > 0) response.headers.append("x-size", String(n));
  return response;
}

async function checkServer(port: number): Promise<void> {
  for (const n of SIZES) {
    const response = await fetch(`http://127.0.0.1:${port}/?n=${n}`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("x-size"), n > 0 ? String(n) : null);
    assert.equal(response.headers.get("content-length"), String(n));
    assert.deepEqual(await response.bytes(), bodyOfSize(n));
  }
}

Deno.test("responseOver(): Deno.serve writes the whole body with its length", async () => {
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, handler);
  await checkServer(server.addr.port);
});

Deno.test("responseOver(): the native front end writes the whole body with its length", async () => {
  const server = serveNative({ hostname: "127.0.0.1", port: 0 }, handler);
  try {
    await checkServer(server.addr.port);
  } finally {
    await server.shutdown();
  }
});
