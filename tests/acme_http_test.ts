/**
 * @module
 * Unit tests of lib/acme_http.ts: the one-line reasons it gives for network failures.
 */

import assert from "node:assert/strict";
import { networkReason } from "../lib/acme_http.ts";

Deno.test("networkReason() keeps the cause of a failed fetch, without Deno's wrapping", () => {
  const error = new TypeError("fetch failed", {
    cause: new Error(
      "error sending request for url (https://127.0.0.1:9/dir): client error (Connect): " +
        "tcp connect error: Connection refused (os error 111)",
    ),
  });
  assert.equal(networkReason(error), "connection refused");
});

Deno.test("networkReason() of a real refused connection is one short lower-case line", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const error = await fetch(`http://127.0.0.1:${port}/dir`).then(
    async (response) => {
      await response.body?.cancel();
      return undefined;
    },
    (error: unknown) => error,
  );
  assert.ok(error !== undefined, "the closed port refused");
  assert.equal(networkReason(error), "connection refused");
});

Deno.test("networkReason() of an error without a cause is its message, on one line", () => {
  assert.equal(networkReason(new Error("Bad\n  thing  happened")), "bad thing happened");
  assert.equal(networkReason("plain text"), "plain text");
});
