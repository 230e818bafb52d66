/**
 * @module
 * The retry rules (lib/retry.ts), as a table: a retry must never make a request happen twice
 * unless its method says that is harmless, and never follow a timeout or a client hang-up.
 */
import assert from "node:assert/strict";
import { classifyFetchError, type FailureKind, isIdempotent, mayRetry } from "../lib/retry.ts";

/** RFC 9110 §9.2.2: repeating these has the effect of sending them once. */
const IDEMPOTENT = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];
/**
 * Not idempotent, or not known to be: methods are case-sensitive (RFC 9110 §9.1), so `get` is
 * not GET, and an extension method may do anything.
 */
const NOT_IDEMPOTENT = ["POST", "PATCH", "get", "Put", "PURGE", "CONNECT", ""];

/**
 * The rule, stated once per failure kind: which requests may go to another backend.
 * - connect: nothing was sent, so any request may (if its body can be sent again);
 * - maybe-sent: the backend may have acted on it, so only an idempotent one may;
 * - timeout: it may still be running there, so none may;
 * - client-gone: nobody is waiting for an answer, so none may.
 */
const RULE: Record<FailureKind, (idempotent: boolean) => boolean> = {
  "connect": () => true,
  "maybe-sent": (idempotent) => idempotent,
  "timeout": () => false,
  "client-gone": () => false,
};

Deno.test("isIdempotent() is true for exactly the RFC 9110 idempotent methods, case-sensitively", () => {
  for (const method of IDEMPOTENT) assert.equal(isIdempotent(method), true, method);
  for (const method of NOT_IDEMPOTENT) assert.equal(isIdempotent(method), false, method);
});

Deno.test("mayRetry() follows the rule for every failure kind, method and body", () => {
  const kinds = Object.keys(RULE) as FailureKind[];
  assert.deepEqual(kinds.toSorted(), ["client-gone", "connect", "maybe-sent", "timeout"]);
  const methods = [
    ...IDEMPOTENT.map((method) => ({ method, idempotent: true })),
    ...NOT_IDEMPOTENT.map((method) => ({ method, idempotent: false })),
  ];
  let cases = 0;
  for (const kind of kinds) {
    for (const { method, idempotent } of methods) {
      for (const replayable of [true, false]) {
        // A body a failed attempt has consumed cannot be sent whole again: never a retry.
        const expected = replayable && RULE[kind](idempotent);
        assert.equal(
          mayRetry(kind, method, replayable),
          expected,
          `mayRetry(${kind}, ${JSON.stringify(method)}, bodyReplayable=${replayable})`,
        );
        cases++;
      }
    }
  }
  assert.equal(cases, 4 * 13 * 2);
});

Deno.test("mayRetry() never retries a timed-out request, whatever its method", () => {
  for (const method of [...IDEMPOTENT, ...NOT_IDEMPOTENT]) {
    assert.equal(mayRetry("timeout", method, true), false, method);
  }
});

/** What fetch throws on Deno 2.9.6: `TypeError("fetch failed")` with the hyper error as cause. */
function fetchError(cause: string): TypeError {
  return new TypeError("fetch failed", { cause: new Error(cause) });
}

Deno.test("classifyFetchError() calls a failed connect `connect`, and says why", () => {
  const refused = classifyFetchError(
    fetchError(
      "client error (Connect): tcp connect error: Connection refused (os error 111)",
    ),
  );
  assert.deepEqual(refused, { kind: "connect", detail: "connection refused" });
  const unreachable = classifyFetchError(
    fetchError("client error (Connect): tcp connect error: Network is unreachable (os error 101)"),
  );
  assert.equal(unreachable.kind, "connect");
  assert.equal(unreachable.detail, "tcp connect error: Network is unreachable (os error 101)");
});

Deno.test("classifyFetchError() calls anything else `maybe-sent`: only a connect error proves nothing was sent", () => {
  for (
    const error of [
      fetchError("client error (SendRequest): connection closed before message completed"),
      fetchError("Connection reset by peer (os error 104)"),
      new TypeError("error reading a body from connection"),
      new DOMException("Signal timed out.", "TimeoutError"),
      "a thrown string",
      undefined,
      null,
    ]
  ) {
    assert.equal(classifyFetchError(error).kind, "maybe-sent", String(error));
  }
  const reset = classifyFetchError(fetchError("Connection reset by peer (os error 104)"));
  assert.match(reset.detail, /Connection reset by peer/);
});

Deno.test("classifyFetchError() keeps details to one line of at most 160 characters", () => {
  const long = classifyFetchError(new Error(`line one\nline two ${"x".repeat(300)}`));
  assert.equal(long.detail.length, 160);
  assert.ok(long.detail.endsWith("..."));
  assert.ok(!long.detail.includes("\n"));
});
