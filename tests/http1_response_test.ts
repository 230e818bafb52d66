/**
 * @module
 * Writing responses for the native front end (lib/http1_response.ts) called directly (its wire
 * behaviour is tested through the front end in tests/frontend_native_test.ts).
 */

import assert from "node:assert/strict";
import { staticBody } from "../lib/http1_response.ts";

Deno.test("staticBody() finds the in-memory body of string and byte responses on this Deno (the fast path)", () => {
  // Deno internals (2.9.6): when this fails after an upgrade, responses still go out, by the
  // slower stream path; re-check lib/http1_response.ts's RESPONSE_SYMBOLS.
  assert.equal(staticBody(new Response("text")), "text");
  assert.equal(staticBody(new Response("text", { headers: { "x-a": "1" } })), "text");
  assert.deepEqual(staticBody(new Response(new Uint8Array([1, 2]))), new Uint8Array([1, 2]));
  assert.equal(staticBody(new Response(new ReadableStream())), undefined);
  const consumed = new Response("gone");
  consumed.body!.cancel();
  assert.equal(staticBody(consumed), undefined);
});
