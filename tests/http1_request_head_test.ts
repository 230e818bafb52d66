/**
 * @module
 * The native front end's request-head parser (lib/http1_request_head.ts) called directly: what
 * it reads from a valid head, and the status it gives what it refuses (its refusals on the wire
 * are tested through the front end in tests/frontend_native_test.ts).
 */

import assert from "node:assert/strict";
import { BodyFraming, MalformedRequest, parseRequestHead } from "../lib/http1_request_head.ts";

/** The MalformedRequest `text` is refused with. */
function refusal(text: string): MalformedRequest {
  try {
    parseRequestHead(text);
  } catch (error) {
    assert.ok(error instanceof MalformedRequest, `not a MalformedRequest: ${error}`);
    return error;
  }
  assert.fail(`parsed without error: ${JSON.stringify(text)}`);
}

Deno.test("parseRequestHead() reads framing, keep-alive and 100-continue from the fields", () => {
  const post = parseRequestHead(
    "POST /up?x=1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n",
  );
  assert.equal(post.method, "POST");
  assert.equal(post.target, "/up?x=1");
  assert.equal(post.host, "a.test");
  assert.equal(post.framing, BodyFraming.Length);
  assert.equal(post.length, 5);
  assert.equal(post.keepAlive, true);
  assert.equal(post.expectContinue, true);
  const chunked = parseRequestHead(
    "PUT / HTTP/1.1\nHost: a.test\nTransfer-Encoding: chunked\nConnection: close\n\n",
  );
  assert.equal(chunked.framing, BodyFraming.Chunked);
  assert.equal(chunked.length, -1);
  assert.equal(chunked.keepAlive, false);
  // No body: the 100-continue is ignored, and HTTP/1.0 closes unless asked to keep alive.
  const old = parseRequestHead("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n");
  assert.deepEqual([old.http10, old.framing, old.length, old.keepAlive], [true, 0, 0, false]);
  assert.equal(old.expectContinue, false);
  assert.equal(
    parseRequestHead("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keepAlive,
    true,
  );
});

Deno.test("parseRequestHead() answers 505 to another HTTP version and 400 to the rest", () => {
  assert.equal(refusal("GET / HTTP/2.0\r\nHost: a\r\n\r\n").status, 505);
  assert.equal(refusal("GET / HTTP/1.2\r\nHost: a\r\n\r\n").status, 505);
  for (
    const text of [
      "GET / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
      "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET / HTTP/x\r\nHost: a\r\n\r\n",
      "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\n",
    ]
  ) {
    assert.equal(refusal(text).status, 400, JSON.stringify(text));
  }
});
