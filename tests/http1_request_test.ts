/**
 * @module
 * Writing request heads for the native transport (lib/http1_request.ts) called directly: Host
 * first, the transport's own framing, refusals, and the bytes of a head. Pure: no sockets (the
 * transport's wire tests are tests/upstream_native_test.ts).
 */

import assert from "node:assert/strict";
import { buildHead, encodeHead } from "../lib/http1_request.ts";
import type { HeaderPairs } from "../lib/headers.ts";

const encoder = new TextEncoder();

/** Header fields as pairs, lower-case names, as the proxy gives them to a transport. */
function pairsOf(headers: HeadersInit): HeaderPairs {
  return [...new Headers(headers)];
}

/** `size` bytes (only the length matters to a head). */
function data(size: number): Uint8Array {
  return new Uint8Array(size).fill(7);
}

/** `bytes` as a stream of one piece: a body whose length the head cannot see. */
function streamOf(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(bytes);
      controller.close();
    },
  });
}

Deno.test("buildHead() puts Host first and replaces the caller's framing with its own", () => {
  const headers = new Headers({
    "x-a": "1",
    host: "example.test",
    connection: "close",
    "keep-alive": "timeout=5",
    "transfer-encoding": "chunked",
    "content-length": "7",
  });
  const framing = (method: string, body: Uint8Array | ReadableStream<Uint8Array> | null) => {
    const head = buildHead(method, "/p", pairsOf(headers), body, "origin:80");
    assert.ok(typeof head !== "string");
    const lines = head.text.split("\r\n");
    assert.deepEqual(lines.slice(0, 3), [`${method} /p HTTP/1.1`, "host: example.test", "x-a: 1"]);
    return lines.slice(3, -2).join("|");
  };
  assert.equal(framing("GET", null), "content-length: 0", "the caller declared a length");
  assert.equal(framing("POST", encoder.encode("abc")), "content-length: 3");
  assert.equal(framing("POST", streamOf(data(7))), "content-length: 7", "the declared length");
  headers.delete("content-length");
  assert.equal(framing("GET", null), "");
  assert.equal(framing("PUT", null), "content-length: 0");
  assert.equal(framing("POST", streamOf(data(7))), "transfer-encoding: chunked");
  const noHost = buildHead("GET", "/", [], null, "origin:8080");
  assert.ok(
    typeof noHost !== "string" && noHost.text.startsWith("GET / HTTP/1.1\r\nhost: origin:8080\r\n"),
  );
});

Deno.test("buildHead() refuses what cannot be written, and expects 100-continue only with a body", () => {
  assert.equal(buildHead("GE T", "/", [], null, "h"), "method is not a token");
  assert.match(String(buildHead("GET", "/a b", [], null, "h")), /space or control/);
  assert.match(String(buildHead("GET", "/a\rb", [], null, "h")), /space or control/);
  const expect = pairsOf({ expect: "100-Continue" });
  const withBody = buildHead("PUT", "/", expect, encoder.encode("x"), "h");
  const without = buildHead("PUT", "/", expect, null, "h");
  assert.ok(typeof withBody !== "string" && withBody.expectContinue);
  assert.ok(typeof without !== "string" && !without.expectContinue);
});

Deno.test("encodeHead() writes the target as UTF-8 and header values as bytes (Latin-1)", () => {
  const head = buildHead("GET", "/caf\u00e9", pairsOf({ "x-v": "caf\u00e9" }), null, "h");
  assert.ok(typeof head !== "string");
  assert.equal(head.ascii, false);
  const bytes = encodeHead(head, encoder.encode("!"), new Uint8Array(16));
  const text = [...bytes].map((b) => String.fromCharCode(b)).join("");
  assert.ok(text.startsWith("GET /caf\u00c3\u00a9 HTTP/1.1\r\n"), "UTF-8 target");
  assert.ok(text.includes("x-v: caf\u00e9\r\n"), "one byte per character");
  assert.ok(text.endsWith("\r\n\r\n!"));
  const ascii = buildHead("GET", "/", [], null, "h");
  assert.ok(typeof ascii !== "string");
  const scratch = new Uint8Array(4096);
  assert.equal(encodeHead(ascii, null, scratch).buffer, scratch.buffer, "in the reused buffer");
});

Deno.test("buildHead() treats names in any case alike: one Host, the transport's own framing", () => {
  const head = buildHead(
    "POST",
    "/",
    [["Host", "a.test"], ["Content-Length", "9"], ["Connection", "close"], ["X-A", "1"]],
    encoder.encode("abc"),
    "origin:80",
  );
  assert.ok(typeof head !== "string");
  assert.deepEqual(head.text.split("\r\n"), [
    "POST / HTTP/1.1",
    "host: a.test",
    "x-a: 1",
    "content-length: 3",
    "",
    "",
  ]);
});
