/**
 * @module
 * The strict HTTP/1.1 response parser (lib/http1_parse.ts) called directly: framing by
 * RFC 9112 §6.3, fields as received, the field limit, and the chunked decoder fed whole or in
 * pieces. Pure: no sockets (the native transport's wire tests are tests/upstream_native_test.ts).
 */

import assert from "node:assert/strict";
import {
  ChunkedDecoder,
  Framing,
  MalformedResponse,
  MAX_HEADERS,
  parseHead,
} from "../lib/http1_parse.ts";

const decoder = new TextDecoder();

/** Bytes of a string one per character (Latin-1), for responses that are not UTF-8. */
function latin1Bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

Deno.test("parseHead() frames bodies by RFC 9112 §6.3", () => {
  const head = (text: string, method = "GET") => parseHead(`${text}\r\n\r\n`, method);
  assert.equal(head("HTTP/1.1 200 OK\r\ncontent-length: 5").framing, Framing.Length);
  assert.equal(head("HTTP/1.1 200 OK\r\ncontent-length: 5").length, 5);
  assert.equal(head("HTTP/1.1 200 OK\r\ncontent-length: 5", "HEAD").framing, Framing.None);
  assert.equal(head("HTTP/1.1 204 No\r\ncontent-length: 5").framing, Framing.None);
  assert.equal(head("HTTP/1.1 304 Not\r\ntransfer-encoding: chunked").framing, Framing.None);
  assert.equal(head("HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked").framing, Framing.Chunked);
  const close = head("HTTP/1.1 200 OK");
  assert.equal(close.framing, Framing.Close);
  assert.equal(close.keepAlive, false);
  assert.equal(head("HTTP/1.1 200 OK\r\ncontent-length: 0").keepAlive, true);
  assert.equal(head("HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 0").keepAlive, false);
  assert.equal(head("HTTP/1.0 200 OK\r\ncontent-length: 0").keepAlive, false);
  assert.equal(
    head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0").keepAlive,
    true,
  );
  assert.equal(head("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\nContent-Length: 7").length, 7);
});

Deno.test("parseHead() keeps fields as received, trimmed, and the reason phrase", () => {
  const head = parseHead("HTTP/1.1 404 Not Found\nX-A:  b c \t\nx-b:\n\n", "GET");
  assert.equal(head.status, 404);
  assert.equal(head.statusText, "Not Found");
  assert.deepEqual(head.headers, [["X-A", "b c"], ["x-b", ""]]);
  assert.equal(parseHead("HTTP/1.1 200\r\n\r\n", "GET").statusText, "");
  assert.equal(parseHead("HTTP/1.1 200 \r\n\r\n", "GET").statusText, "");
});

Deno.test("parseHead() refuses more than MAX_HEADERS fields", () => {
  const fields = Array.from({ length: MAX_HEADERS + 1 }, (_, i) => `x-${i}: v`).join("\r\n");
  assert.throws(() => parseHead(`HTTP/1.1 200 OK\r\n${fields}\r\n\r\n`, "GET"), /more than 100/);
  const most = Array.from({ length: MAX_HEADERS }, (_, i) => `x-${i}: v`).join("\r\n");
  assert.equal(parseHead(`HTTP/1.1 200 OK\r\n${most}\r\n\r\n`, "GET").headers.length, 100);
});

Deno.test("ChunkedDecoder decodes byte by byte what it decodes at once", () => {
  const body = latin1Bytes("3;a=b\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\n");
  for (const step of [1, 2, 7, body.length]) {
    const dec = new ChunkedDecoder();
    let out = "";
    let pos = 0;
    // Bounded: a decoder that stops advancing fails the test instead of hanging it.
    let rounds = 0;
    for (
      let end = Math.min(step, body.length);
      !dec.done && rounds < 10_000;
      end = Math.min(end + step, body.length)
    ) {
      while (pos < end && !dec.done && rounds++ < 10_000) {
        pos = dec.advance(body, pos, end);
        const take = Math.min(dec.dataLeft, end - pos);
        if (take > 0) {
          out += decoder.decode(body.subarray(pos, pos + take));
          pos += take;
          dec.took(take);
        }
      }
    }
    assert.ok(dec.done, `step ${step}: decoded to the end`);
    assert.equal(out, "abc0123456789abcdef", `step ${step}`);
    assert.equal(pos, body.length);
  }
});

Deno.test("ChunkedDecoder refuses framing errors", () => {
  const cases: [string, RegExp][] = [
    ["zz\r\n", /bad chunk size/],
    ["\r\n", /bad chunk size/],
    ["3\nabc\r\n", /bare LF/],
    ["3 x\r\n", /bad chunk size/],
    ["fffffffffffff\r\n", /too large/],
    ["3\r\nabcd", /not followed by CRLF/],
    [`3;${"e".repeat(5000)}\r\n`, /line too long/],
    ["3;a\x00\r\n", /chunk extension/],
    [`0\r\n${"x: y\r\n".repeat(4000)}`, /trailers too large/],
    ["0\r\nx: \x01\r\n", /control character in a trailer/],
    ["0\r\n\rx", /final CRLF/],
  ];
  for (const [text, why] of cases) {
    const dec = new ChunkedDecoder();
    const bytes = latin1Bytes(text);
    assert.throws(
      () => {
        let pos = 0;
        for (let i = 0; pos < bytes.length && i < 100_000; i++) {
          pos = dec.advance(bytes, pos, bytes.length);
          const take = Math.min(dec.dataLeft, bytes.length - pos);
          pos += take;
          dec.took(take);
          if (dec.done) break;
        }
      },
      (e: unknown) => e instanceof MalformedResponse && why.test(e.message),
      JSON.stringify(text),
    );
  }
});

Deno.test("leading zeros are valid in a Content-Length and a chunk size, and do not count toward their limits", () => {
  const head = parseHead("HTTP/1.1 200 OK\r\ncontent-length: 0000000000000002\r\n\r\n", "GET");
  assert.equal(head.length, 2);
  assert.throws(
    () => parseHead("HTTP/1.1 200 OK\r\ncontent-length: 1000000000000000\r\n\r\n", "GET"),
    /Content-Length too large/,
  );
  const dec = new ChunkedDecoder();
  const bytes = latin1Bytes("0000000000000000005\r\nhello\r\n0\r\n\r\n");
  let pos = dec.advance(bytes, 0, bytes.length);
  assert.equal(dec.dataLeft, 5);
  dec.took(5);
  pos = dec.advance(bytes, pos + 5, bytes.length);
  assert.ok(dec.done);
  assert.equal(pos, bytes.length);
});
