/**
 * @module
 * lib/health.ts against real backends on 127.0.0.1 port 0: expected statuses, the Host header
 * on the wire, body checks (an endless body is cut at 64 KiB), timeouts, two checkers on two
 * pools side by side, and stop(). Rounds are run with runRound() and their verdicts read from a
 * real Pool's backend state. Checks go the way of `LB_TEST_TRANSPORT` (native by default;
 * `deno task test:fetch` runs them on fetch), except those about a port fetch blocks.
 */
import { createPolicy } from "../lib/policies/mod.ts";
import assert from "node:assert/strict";
import { HEALTH_BODY_LIMIT, HealthChecker, type HealthOptions } from "../lib/health.ts";
import { Pool } from "../lib/pool.ts";
import { quietLog } from "../lib/log.ts";
import { createBackendClient } from "../lib/tls.ts";
import { captureLog, startTestBalancer, TEST_TRANSPORT, waitFor } from "./helpers.ts";

/** Longest wait for something a test expects (a loaded machine may be slow). */
const WAIT_MS = 10_000;

/** What a backend saw of one request. */
interface Seen {
  path: string;
  host: string | null;
}

/**
 * A backend whose answers come from `handler`, recording path and Host of every request.
 * `released` resolves when the test ends, so a handler that waits for it cannot outlive it.
 */
function backend(
  handler: (req: Request, released: Promise<void>) => Response | Promise<Response>,
  port = 0,
) {
  const seen: Seen[] = [];
  let release = () => {};
  const released = new Promise<void>((resolve) => release = resolve);
  const server = Deno.serve({ port, hostname: "127.0.0.1", onListen() {} }, (req) => {
    const url = new URL(req.url);
    seen.push({ path: url.pathname, host: req.headers.get("host") });
    return handler(req, released);
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    seen,
    async [Symbol.asyncDispose]() {
      release();
      await server.shutdown();
    },
  };
}

/** Resolves when the client went away (needs `--unstable-no-legacy-abort`, set in deno.json). */
function clientGone(req: Request, released: Promise<void>): Promise<void> {
  return Promise.race([
    released,
    new Promise<void>((resolve) => req.signal.addEventListener("abort", () => resolve())),
  ]);
}

/** A pool over `urls` (rise 2, fall 2) and a checker on it; the checker's client is closed after. */
function checked(urls: string[], options: Partial<HealthOptions> = {}, log = quietLog) {
  const pool = new Pool(urls.map((url) => ({ url, weight: 1 })), {
    rise: 2,
    fall: 2,
    policy: createPolicy("round-robin"),
  });
  // The balancer's own kind of client: without allowHost, fetch would replace the Host header.
  const client = createBackendClient({}, { allowHost: true });
  const checker = new HealthChecker(pool, {
    interval: 60_000,
    timeout: 5_000,
    path: "/",
    transport: TEST_TRANSPORT,
    client,
    ...options,
  }, log);
  return {
    pool,
    checker,
    /** Runs `n` rounds, one after the other. */
    async rounds(n: number) {
      for (let i = 0; i < n; i++) await checker.runRound();
    },
    /** Each backend's state and last check detail, in pool order. */
    states() {
      return pool.backends.map((b) => `${b.state}: ${b.lastCheck?.detail}`);
    },
    async [Symbol.asyncDispose]() {
      await checker.stop();
      client.close();
    },
  };
}

/** Answers the status named by the path, `/status/503` -> 503. */
function byStatusPath(req: Request): Response {
  const status = Number(new URL(req.url).pathname.split("/")[2]);
  const location = status >= 300 && status < 400 ? { location: "/elsewhere" } : undefined;
  return new Response(status === 204 || status === 304 ? null : "x", {
    status,
    headers: location,
  });
}

Deno.test("HealthChecker by default passes 2xx and 3xx and fails the rest", async () => {
  await using server = backend(byStatusPath);
  const cases: [number, string][] = [
    [200, "up: HTTP 200"],
    [204, "up: HTTP 204"],
    [302, "up: HTTP 302"],
    [404, "down: HTTP 404"],
    [503, "down: HTTP 503"],
  ];
  for (const [status, expected] of cases) {
    await using health = checked([server.url], { path: `/status/${status}` });
    await health.rounds(2);
    assert.deepEqual(health.states(), [expected], `HTTP ${status}`);
  }
});

Deno.test("HealthChecker with expectStatus passes only those, naming them when it fails", async () => {
  await using server = backend(byStatusPath);
  const cases: [number, readonly number[], string][] = [
    [204, [200, 204], "up: HTTP 204"],
    [503, [200, 204], "down: HTTP 503 (expected 200, 204)"],
    [302, [200], "down: HTTP 302 (expected 200)"], // would pass by default
    [503, [503], "up: HTTP 503"], // would fail by default
  ];
  for (const [status, expectStatus, expected] of cases) {
    await using health = checked([server.url], { path: `/status/${status}`, expectStatus });
    await health.rounds(2);
    assert.deepEqual(health.states(), [expected], `HTTP ${status}, expecting ${expectStatus}`);
  }
});

Deno.test("HealthChecker sends the host option as the Host header, else the backend's own", async () => {
  // A virtual-hosted backend: only app.example:8443 has a healthy site.
  await using server = backend((req) =>
    new Response(null, { status: req.headers.get("host") === "app.example:8443" ? 200 : 404 })
  );
  {
    await using health = checked([server.url], { path: "/healthz", host: "app.example:8443" });
    await health.rounds(2);
    assert.deepEqual(health.states(), ["up: HTTP 200"]);
  }
  assert.deepEqual(server.seen.splice(0), [
    { path: "/healthz", host: "app.example:8443" },
    { path: "/healthz", host: "app.example:8443" },
  ]);
  {
    await using health = checked([server.url], { path: "/healthz" });
    await health.rounds(2);
    assert.deepEqual(health.states(), ["down: HTTP 404"]);
  }
  const own = new URL(server.url).host;
  assert.deepEqual(server.seen, [{ path: "/healthz", host: own }, { path: "/healthz", host: own }]);
});

Deno.test("HealthChecker with bodyContains passes only a body containing the text", async () => {
  await using ok = backend(() => new Response("status: ok\n"));
  await using degraded = backend(() => new Response("status: degraded\n"));
  await using empty = backend(() => new Response(null, { status: 204 }));
  // The text split across two chunks of the body is still found.
  await using split = backend(() =>
    new Response(ReadableStream.from(["status: o", "k\n"].map((s) => new TextEncoder().encode(s))))
  );
  await using health = checked([ok.url, degraded.url, empty.url, split.url], {
    bodyContains: "ok",
  });
  await health.rounds(2);
  assert.deepEqual(health.states(), [
    "up: HTTP 200",
    'down: body does not contain "ok"',
    'down: body does not contain "ok"',
    "up: HTTP 200",
  ]);
});

Deno.test("HealthChecker reads an endless body only up to 64 KiB, then fails without waiting", async () => {
  // Endless for the checker; the backend stops at 64 MiB so that a broken check cannot run away.
  const chunk = new TextEncoder().encode("x".repeat(1024));
  const produced = { bytes: 0, cancelled: false };
  await using server = backend(() =>
    new Response(
      new ReadableStream<Uint8Array>({
        pull(controller) {
          if (produced.bytes >= 64 * 1024 * 1024) return controller.close();
          produced.bytes += chunk.byteLength;
          controller.enqueue(chunk);
        },
        cancel() {
          produced.cancelled = true;
        },
      }),
    )
  );
  // A timeout far longer than reading 64 KiB takes: the detail shows which ended the check.
  await using health = checked([server.url], { bodyContains: "ok", timeout: 60_000 });
  await health.rounds(2);
  assert.deepEqual(health.states(), [
    `down: body does not contain "ok" in its first ${HEALTH_BODY_LIMIT} bytes`,
  ]);
  // The body was let go, not drained: the backend's stream was cancelled before its end.
  assert.ok(await waitFor(() => produced.cancelled, WAIT_MS), "the backend's body was cancelled");
  assert.ok(produced.bytes < 64 * 1024 * 1024, `${produced.bytes} bytes produced`);
});

Deno.test("HealthChecker times out on missing headers and on a body that stalls", async () => {
  await using noHeaders = backend(async (req, released) => {
    await clientGone(req, released);
    return new Response("too late");
  });
  await using stalledBody = backend((req, released) => {
    const bytes = new TextEncoder().encode("status: ");
    return new Response(
      new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(bytes); // headers and a first piece, then nothing
          await clientGone(req, released);
          controller.close();
        },
      }),
    );
  });
  await using health = checked([noHeaders.url, stalledBody.url], {
    bodyContains: "ok",
    timeout: 300,
  });
  await health.rounds(2);
  assert.deepEqual(health.states(), ["down: timeout 300ms", "down: timeout 300ms"]);
});

Deno.test("HealthChecker: two checkers on two pools with one backend in common keep apart", async () => {
  // One server, two services' views of it: /one is healthy, /two (for two.example) is not.
  await using server = backend((req) => {
    const { pathname } = new URL(req.url);
    if (pathname === "/one") return new Response("one is fine");
    return new Response("two is broken", { status: 503 });
  });
  await using other = backend(() => new Response("two is fine"));
  await using one = checked([server.url], { path: "/one", expectStatus: [200] });
  await using two = checked([server.url, other.url], {
    path: "/two",
    host: "two.example",
    bodyContains: "fine",
  });
  await Promise.all([one.rounds(2), two.rounds(2)]);
  assert.deepEqual(one.states(), ["up: HTTP 200"]);
  assert.deepEqual(two.states(), ["down: HTTP 503", "up: HTTP 200"]);
  const seenBy = (path: string) => server.seen.filter((s) => s.path === path);
  assert.equal(seenBy("/one").length, 2);
  assert.ok(seenBy("/one").every((s) => s.host === new URL(server.url).host));
  assert.deepEqual(seenBy("/two"), [
    { path: "/two", host: "two.example" },
    { path: "/two", host: "two.example" },
  ]);

  // Stopping one leaves the other checking.
  await one.checker.stop();
  server.seen.length = 0;
  await two.rounds(1);
  assert.deepEqual(server.seen, [{ path: "/two", host: "two.example" }]);
  assert.deepEqual(one.states(), ["up: HTTP 200"]);
});

Deno.test("HealthChecker.stop() cancels a check in progress and leaves no timer or body open", async () => {
  const started = { count: 0 };
  await using server = backend((req, released) => {
    started.count++;
    return new Response(
      new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(new TextEncoder().encode("status: "));
          await clientGone(req, released);
          controller.close();
        },
      }),
    );
  });
  await using health = checked([server.url], { bodyContains: "ok", timeout: 60_000 });
  health.checker.start();
  assert.ok(await waitFor(() => started.count === 1, WAIT_MS), "a check reached the backend");
  await health.checker.stop();
  // Stopped mid-check: nothing is reported (the backend keeps its state) and nothing is left
  // behind (the op and resource sanitizers fail this test otherwise).
  assert.equal(health.pool.backends[0].lastCheck, undefined);

  // A stopped checker can start again.
  health.checker.start();
  assert.ok(await waitFor(() => started.count === 2, WAIT_MS), "checking again after start()");
  await health.checker.stop();
});

Deno.test("HealthChecker reports a refused connection", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${listener.addr.port}`;
  listener.close();
  await using health = checked([url]);
  await health.rounds(2);
  assert.deepEqual(health.states(), ["down: connection refused"]);
});

/**
 * Ports on fetch's "bad ports" list (WHATWG Fetch, "port blocking") that need no privileges to
 * bind, in the order tried: fetch refuses to connect to them, the balancer's own transport does
 * not.
 */
const BLOCKED_PORTS = [10080, 6665, 6666, 6667, 6668, 6669, 6000, 5060, 5061, 6566, 6679, 6697];

/** The first of {@linkcode BLOCKED_PORTS} free on 127.0.0.1 now, or undefined (tests skipped). */
function freeBlockedPort(): number | undefined {
  for (const port of BLOCKED_PORTS) {
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      return port;
    } catch { /* in use, or not allowed: try the next */ }
  }
  return undefined;
}

const BLOCKED_PORT = freeBlockedPort();
/** Skips a test when no blocked port could be bound (all in use here). */
const NEEDS_BLOCKED_PORT = {
  ignore: BLOCKED_PORT === undefined,
  sanitizeOps: true,
  sanitizeResources: true,
};

Deno.test({
  name: "HealthChecker reaches a backend on a port fetch blocks (10080, 6665, ...)",
  ...NEEDS_BLOCKED_PORT,
  async fn() {
    await using server = backend(() => new Response("status: ok"), BLOCKED_PORT);
    // Down first: only checks that reach the backend can bring it back.
    await using health = checked([server.url], { transport: "native", bodyContains: "ok" });
    health.pool.setHealth(health.pool.backends[0], "down", "the test starts it down");
    await health.rounds(2);
    assert.deepEqual(health.states(), ["up: HTTP 200"]);
    assert.deepEqual(server.seen, [
      { path: "/", host: `127.0.0.1:${BLOCKED_PORT}` },
      { path: "/", host: `127.0.0.1:${BLOCKED_PORT}` },
    ]);
  },
});

Deno.test({
  name: "HealthChecker with transport fetch names the port fetch blocks, and warns once",
  ...NEEDS_BLOCKED_PORT,
  async fn() {
    await using server = backend(() => new Response("ok"), BLOCKED_PORT);
    const log = captureLog();
    await using health = checked([server.url], { transport: "fetch" }, log);
    await health.rounds(3);
    assert.deepEqual(health.states(), [
      `down: fetch blocks port ${BLOCKED_PORT} (--transport fetch)`,
    ]);
    assert.deepEqual(log.lines, [
      `WARN ${server.url}: fetch refuses port ${BLOCKED_PORT} (a WHATWG "bad port"), so with ` +
      "--transport fetch its health checks and requests always fail; use --transport native or " +
      "another port",
    ]);
    assert.deepEqual(server.seen, [], "fetch sent nothing");
  },
});

Deno.test({
  name: "a balancer keeps a backend on a port fetch blocks up and sends it requests",
  ...NEEDS_BLOCKED_PORT,
  async fn() {
    await using server = backend(() => new Response("from the backend"), BLOCKED_PORT);
    // fall 1: a single failed check would take it down and every request would get 503.
    await using lb = await startTestBalancer([server.url], {
      transport: "native",
      healthInterval: 50,
      fall: 1,
    });
    const checks = () => server.seen.filter((s) => s.path === "/").length;
    assert.ok(await waitFor(() => checks() >= 3, WAIT_MS), `${checks()} checks reached it`);
    const [state] = lb.balancer.pool.backends;
    assert.equal(state.status, "up", state.lastCheck?.detail);
    assert.equal(state.lastCheck?.ok, true, state.lastCheck?.detail);
    const response = await fetch(`${lb.url}/via-balancer`);
    assert.equal(response.status, 200);
    assert.equal(await response.text(), "from the backend");
    assert.equal(server.seen.filter((s) => s.path === "/via-balancer").length, 1);
  },
});
