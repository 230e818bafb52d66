/**
 * @module
 * The mutations `deno task mutate` (tools/mutate.ts) applies: each breaks one safety rule with a
 * one-line change, and names the test files that must notice. A mutation those tests do not
 * notice "survives": the rule has no witness. See docs/mutation_testing.md.
 *
 * Each `original` must occur exactly once in its file. When the code it names changes, the
 * runner reports the mutation as stale and fails, so this list is kept true to the code: update
 * the anchor (and the replacement) in the same change that moves the rule.
 */

/** One deliberate break of one rule. */
export interface Mutation {
  /** Short kebab-case name, for `--only` and the summary table. */
  id: string;
  /** The rule the mutation breaks, in one sentence. */
  rule: string;
  /** The mutated file, relative to the project root. */
  file: string;
  /** Text that occurs exactly once in `file`: what gets replaced. */
  original: string;
  /** What `original` becomes: code that still type-checks but breaks the rule. */
  replacement: string;
  /** Test files (relative to the project root) run against the mutated code. */
  tests: readonly string[];
}

/**
 * The mutations, grouped by rule. Covering sets are kept small on purpose: each mutation type-
 * checks and runs its files once, and the whole list must finish in a few minutes on two cores.
 */
export const MUTATIONS: readonly Mutation[] = [
  // Retry and idempotency (lib/retry.ts): a retry must never make a request happen twice.
  {
    id: "retry-timeout",
    rule: "A request whose attempt timed out is never retried (it may still run on the backend).",
    file: "lib/retry.ts",
    // The `timeout` and `client-gone` cases share this return, the only one indented this deep.
    original: `      return false;`,
    replacement: `      return kind === "timeout";`,
    tests: ["tests/retry_test.ts", "tests/failover_test.ts"],
  },
  {
    id: "retry-client-gone",
    rule: "A request whose client hung up is never retried (nobody waits for the answer).",
    file: "lib/retry.ts",
    original: `      return false;`,
    replacement: `      return kind === "client-gone";`,
    tests: ["tests/retry_test.ts", "tests/failover_test.ts"],
  },
  {
    id: "retry-maybe-sent",
    rule:
      "A request that may have reached the backend is retried only when its method is idempotent.",
    file: "lib/retry.ts",
    original: `      return isIdempotent(method);`,
    // `isIdempotent(method) ||` keeps `method` read: noUnusedParameters would fail the check.
    replacement: `      return isIdempotent(method) || true;`,
    tests: ["tests/retry_test.ts", "tests/failover_test.ts"],
  },
  {
    id: "idempotent-methods",
    rule: "POST is not idempotent (RFC 9110 §9.2.2), so a reset POST is never sent again.",
    file: "lib/retry.ts",
    original: `new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"])`,
    replacement: `new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST"])`,
    tests: ["tests/retry_test.ts", "tests/failover_test.ts"],
  },
  {
    id: "retry-body-replayable",
    rule:
      "A request whose body was partly consumed is never retried, not even after a refused connect.",
    file: "lib/retry.ts",
    original: `  if (!bodyReplayable) return false;`,
    replacement: `  if (!bodyReplayable && kind !== "connect") return false;`,
    tests: ["tests/retry_test.ts", "tests/failover_test.ts"],
  },
  // Client hang-up: the client's doing, never the backend's.
  {
    id: "client-gone-blamed",
    rule: "A client hanging up is never held against a backend (no failure, no outlier ejection).",
    // Moved here from lib/proxy.ts by the one-attempt-loop rewrite.
    file: "lib/attempt_loop.ts",
    original: `failure.kind === "client-gone") break;`,
    replacement: `failure.kind === "client-gone") { ` +
      `if (failure.kind === "client-gone") pool.reportFailure(backend, failure.detail); break; }`,
    tests: ["tests/attempt_loop_test.ts", "tests/failover_test.ts", "tests/outlier_test.ts"],
  },
  // Hop-by-hop headers (lib/headers.ts, RFC 9110 §7.6.1), both directions.
  {
    id: "hop-by-hop-fixed",
    rule:
      "Connection, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade and Proxy-* never cross a hop.",
    file: "lib/headers.ts",
    original: `const HOP_BY_HOP_NAMES: ReadonlySet<string> = new Set(HOP_BY_HOP);`,
    replacement: `const HOP_BY_HOP_NAMES: ReadonlySet<string> = new Set<string>();`,
    tests: ["tests/headers_test.ts"],
  },
  {
    id: "hop-by-hop-connection",
    rule: "Every header the Connection header names is removed too.",
    file: "lib/headers.ts",
    // The one place both directions learn what Connection names: it learns nothing.
    original: `(named ??= new Set()).add(name);`,
    replacement: `named ??= new Set();`,
    tests: ["tests/headers_test.ts"],
  },
  // X-Forwarded-For (lib/headers.ts): a client cannot choose the address the backend sees.
  {
    id: "xff-untrusted-appended",
    rule: "X-Forwarded-For is appended to only from a trusted proxy; anyone else's is replaced.",
    file: "lib/headers.ts",
    original:
      `const priorFor = trusted ? kept(named, client.forwardedFor, "x-forwarded-for") : null;`,
    replacement: `const priorFor = kept(named, client.forwardedFor, "x-forwarded-for");`,
    tests: ["tests/headers_test.ts", "tests/trusted_proxies_test.ts"],
  },
  // Max body (lib/body.ts): 413 past maxBody, whether declared or streamed.
  {
    id: "max-body-declared",
    rule: "A declared Content-Length over maxBody gets 413 before anything is read or forwarded.",
    file: "lib/body.ts",
    original: `if (length !== undefined && length > limits.maxBody) {`,
    replacement: `if (length !== undefined && length > Infinity) {`,
    tests: ["tests/limits_test.ts"],
  },
  {
    id: "max-body-streamed",
    rule: "A body that grows past maxBody is cut off with 413.",
    file: "lib/body.ts",
    original: `if (this.#bytes > this.#limits.maxBody) {`,
    replacement: `if (this.#bytes > Infinity) {`,
    tests: ["tests/limits_test.ts"],
  },
  // Admin token (lib/admin.ts).
  {
    id: "admin-token-required",
    rule: "With a token configured, the admin API answers 401 to a request without it.",
    file: "lib/admin.ts",
    original: `if (current === "") return true;`,
    replacement: `if (true) return true;`,
    tests: ["tests/admin_test.ts"],
  },
  {
    id: "admin-token-full",
    rule: "The admin token is compared in full, not up to its first character.",
    file: "lib/constant_time.ts",
    original: `for (let i = 0; i < secret.length; i++) {`,
    // "bearer " is 7 characters: only the token's first one is compared.
    replacement: `for (let i = 0; i < 8; i++) {`,
    tests: ["tests/constant_time_test.ts", "tests/admin_test.ts"],
  },
  {
    id: "admin-token-length",
    rule: "A token that only starts with the admin token (the token plus more) is refused.",
    file: "lib/constant_time.ts",
    original: `let difference = given.length ^ secret.length;`,
    replacement: `let difference = 0;`,
    tests: ["tests/constant_time_test.ts", "tests/admin_test.ts"],
  },
  // Sticky cookie MAC (lib/sticky_cookie.ts): clients cannot steer themselves to a backend.
  {
    id: "sticky-mac-full",
    rule: "A sticky cookie's MAC is compared in full, not only its first character.",
    file: "lib/constant_time.ts",
    original: `for (let i = 0; i < secret.length; i++) {`,
    replacement: `for (let i = 0; i < 1; i++) {`,
    tests: ["tests/constant_time_test.ts", "tests/sticky_cookie_test.ts"],
  },
  {
    id: "sticky-mac-checked",
    rule: "A sticky cookie is accepted only when its MAC matches a candidate's token.",
    file: "lib/sticky_cookie.ts",
    original: `if (token !== undefined && constantTimeEqual(value, token)) found = backend;`,
    // `|| true` keeps sameToken referenced: noUnusedLocals would fail the type check.
    replacement:
      `if (token !== undefined && (constantTimeEqual(value, token) || true)) found = backend;`,
    tests: ["tests/sticky_cookie_test.ts"],
  },
  // Access log (lib/access_log.ts).
  {
    id: "access-log-stdout",
    rule: "`--access-log stdout` writes the access log to standard output.",
    file: "lib/access_log.ts",
    original: `new LineWriter(file ?? Deno.stdout, options);`,
    replacement: `new LineWriter(` +
      `file ?? { write: (bytes: Uint8Array) => Promise.resolve(bytes.length) }, options);`,
    tests: ["tests/access_log_test.ts"],
  },
  // Drain on shutdown (lib/balancer.ts).
  {
    id: "drain-on-shutdown",
    rule: "Shutdown lets in-flight requests finish, up to the drain timeout, before exiting.",
    file: "lib/balancer.ts",
    original: `const left = await server.drain(deadline);`,
    replacement: `const left = await server.drain(performance.now());`,
    tests: ["tests/cli_test.ts"],
  },
  // Client hang-ups on the native front end (lib/http1_response.ts): the source is let go.
  {
    id: "native-hangup-cancels-body",
    rule: "A client that leaves while the native front end streams a body cancels that body.",
    file: "lib/http1_response.ts",
    original: `else hangUp?.addEventListener("abort", cancel, { once: true });`,
    replacement: `else hangUp?.addEventListener("abort", () => {}, { once: true });`,
    tests: ["tests/frontend_native_test.ts"],
  },
  // Mirroring (lib/protection.ts): a copy never goes to the service that got the request.
  {
    id: "mirror-not-to-own-service",
    rule: "The default mirror never copies a request to the service that serves it already.",
    file: "lib/protection.ts",
    original: `mirrorSpec.service !== route.service`,
    replacement: `mirrorSpec.service === mirrorSpec.service`,
    tests: ["tests/protection_wire_test.ts"],
  },
];
