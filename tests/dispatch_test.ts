/**
 * @module
 * Unit tests of lib/dispatch.ts: `createDispatcher()` served on 127.0.0.1 over a routing state
 * built in the test, with services that are stubs answering in-process. Route order, the 404,
 * redirects and fixed answers, the order of a route's guards, response header rules before
 * compression, and one routing state per request.
 */

import assert from "node:assert/strict";
import { createDispatcher, type RoutingState } from "../lib/dispatch.ts";
import type { ProxyObserver, RequestOutcome, RoutedRequest, ServiceProxy } from "../lib/proxy.ts";
import { type RouteSpec, RouteTable } from "../lib/routes.ts";
import type { RouteGuards } from "../lib/protection.ts";
import { compileAccessRules } from "../lib/access_rules.ts";
import { createRateLimitTable, RateLimiter } from "../lib/rate_limit.ts";
import type { BasicAuthOutcome, BasicAuthVerifier } from "../lib/basic_auth.ts";
import { DEFAULT_COMPRESS } from "../lib/compress.ts";
import { NoBackendError, type RefusedError } from "../lib/errors.ts";

/** A service that answers with what it was asked, or with `answer`'s response. */
function stubService(
  name: string,
  answer?: (routed: RoutedRequest) => Response | Promise<Response>,
): { proxy: ServiceProxy; calls: RoutedRequest[] } {
  const calls: RoutedRequest[] = [];
  return {
    calls,
    proxy: {
      handle(_req, _info, routed) {
        calls.push(routed);
        return Promise.resolve(
          answer?.(routed) ?? new Response(`${name} ${routed.upstreamPath} ${routed.requestId}`),
        );
      },
    },
  };
}

function state(
  routes: RouteSpec[],
  services: Record<string, { proxy: ServiceProxy }>,
  guards: (RouteGuards | undefined)[] = [],
): RoutingState {
  return {
    table: new RouteTable(routes),
    services: new Map(Object.entries(services)),
    guards,
    trustedProxies: [],
  };
}

/** The dispatcher over `current()` on 127.0.0.1, with the outcomes and refusals it reported. */
function serve(current: () => RoutingState) {
  const outcomes: RequestOutcome[] = [];
  const refusals: string[] = [];
  const observer: ProxyObserver = {
    outcome: (_req, _info, outcome) => outcomes.push(outcome),
    retry: () => {},
    budgetExhausted: () => {},
  };
  const handler = createDispatcher({
    state: current,
    observer,
    onRefused: (route, refusal: RefusedError) => refusals.push(`${route} ${refusal.status}`),
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    outcomes,
    refusals,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

/** GETs `path` (Host `host`), reading the whole body; redirects are returned, not followed. */
async function get(
  base: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Headers; text: string }> {
  // fetch replaces a Host header with the URL's authority unless the client allows it.
  using client = Deno.createHttpClient({ allowHost: true });
  const response = await fetch(base + path, { headers, redirect: "manual", client });
  return { status: response.status, headers: response.headers, text: await response.text() };
}

Deno.test("createDispatcher() sends a request to the first route that matches, in order", async () => {
  const a = stubService("a");
  const x = stubService("x");
  const web = stubService("web");
  await using lb = serve(() =>
    state([
      { host: "a.example", service: "a" },
      { pathPrefix: "/x", stripPrefix: true, service: "x" },
      { service: "web" },
    ], { a, x, web })
  );
  assert.match((await get(lb.url, "/x/1?q", { host: "a.example" })).text, /^a \/x\/1\?q /);
  assert.match((await get(lb.url, "/x/1?q", { host: "b.example" })).text, /^x \/1\?q /);
  assert.match((await get(lb.url, "/y", { host: "b.example" })).text, /^web \/y /);
  assert.deepEqual(
    lb.outcomes.map((o) => [o.route, o.service, o.fromBackend, o.status]),
    [["route-0", "a", true, 200], ["route-1", "x", true, 200], ["route-2", "web", true, 200]],
  );
});

Deno.test("createDispatcher() answers 404 with a request id when no route matches; no service is asked", async () => {
  const api = stubService("api");
  await using lb = serve(() => state([{ pathPrefix: "/api", service: "api" }], { api }));
  const fresh = await get(lb.url, "/other");
  assert.equal(fresh.status, 404);
  assert.match(fresh.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
  const kept = await get(lb.url, "/other", { "x-request-id": "abc-123" });
  assert.equal(kept.status, 404);
  assert.equal(kept.headers.get("x-request-id"), "abc-123", "a well-formed id is kept");
  assert.deepEqual(api.calls, []);
  assert.deepEqual(lb.outcomes.map((o) => [o.route, o.fromBackend]), [
    [undefined, false],
    [undefined, false],
  ]);
});

Deno.test("createDispatcher() answers redirect and respond routes itself, with a request id", async () => {
  await using lb = serve(() =>
    state([
      { pathPrefix: "/old", redirect: { to: "https://{host}{path}", status: 308 } },
      { respond: { status: 418, body: "tea é", contentType: "text/x-tea" } },
    ], {})
  );
  const moved = await get(lb.url, "/old/a?b=1", { host: "site.example", "x-request-id": "r1" });
  assert.equal(moved.status, 308);
  assert.equal(moved.headers.get("location"), "https://site.example/old/a?b=1");
  assert.equal(moved.headers.get("x-request-id"), "r1");
  const fixed = await get(lb.url, "/anything", { "x-request-id": "r2" });
  assert.equal(fixed.status, 418);
  assert.equal(fixed.text, "tea é");
  assert.equal(fixed.headers.get("content-type"), "text/x-tea");
  assert.equal(fixed.headers.get("x-request-id"), "r2");
  assert.deepEqual(
    lb.outcomes.map((o) => [o.status, o.fromBackend, o.contentLength]),
    [[308, false, undefined], [418, false, 6]],
  );
});

/** A password checker that answers `outcome` and counts its calls. */
function stubVerifier(outcome: BasicAuthOutcome) {
  const verifier = {
    calls: 0,
    verify(): Promise<BasicAuthOutcome> {
      verifier.calls++;
      return Promise.resolve(outcome);
    },
  };
  return verifier;
}

Deno.test("createDispatcher() checks access (403) before the rate limit (429) before basic auth (401)", async () => {
  const web = stubService("web");
  const verifier = stubVerifier("denied");
  // A stopped clock: the one token of the bucket never comes back.
  const limiter = new RateLimiter(
    { requestsPerSecond: 1, burst: 1, key: "ip" },
    createRateLimitTable(16),
    { now: () => 0 },
  );
  const auth = {
    realm: "inside",
    users: new Map<string, string>(),
    verifier: verifier as unknown as BasicAuthVerifier,
  };
  const denying: RouteGuards = {
    access: compileAccessRules(undefined, ["127.0.0.0/8"]),
    limiter,
    auth,
  };
  const admitting: RouteGuards = { access: compileAccessRules(["127.0.0.0/8"], []), limiter, auth };
  let guards = denying;
  await using lb = serve(() => state([{ name: "guarded", service: "web" }], { web }, [guards]));

  assert.equal((await get(lb.url, "/")).status, 403);
  assert.equal(verifier.calls, 0, "a refused client costs no password check");
  guards = admitting;
  const challenged = await get(lb.url, "/");
  assert.equal(challenged.status, 401, "the 403 spent no token: this request got it");
  assert.match(challenged.headers.get("www-authenticate") ?? "", /^Basic realm="inside"/);
  assert.equal(verifier.calls, 1);
  const limited = await get(lb.url, "/");
  assert.equal(limited.status, 429);
  assert.ok(Number(limited.headers.get("retry-after")) >= 1);
  assert.equal(verifier.calls, 1, "password guessing is limited before bcrypt runs");
  assert.deepEqual(lb.refusals, ["guarded 403", "guarded 401", "guarded 429"]);
  assert.deepEqual(web.calls, []);
  assert.equal(lb.outcomes.length, 3);
  assert.ok(lb.outcomes.every((o) => !o.fromBackend && o.route === "guarded"));
});

Deno.test("createDispatcher() lets a right password through and answers 503 when checks are busy", async () => {
  const web = stubService("web");
  const users = new Map<string, string>();
  let outcome: BasicAuthOutcome = "ok";
  const seen: (string | null)[] = [];
  const verifier = {
    verify: (_users: Map<string, string>, authorization: string | null) => {
      seen.push(authorization);
      return Promise.resolve(outcome);
    },
  } as unknown as BasicAuthVerifier;
  await using lb = serve(() =>
    state([{ service: "web" }], { web }, [{ auth: { realm: "r", users, verifier } }])
  );
  const credentials = { authorization: `Basic ${btoa("ann:right")}` };
  assert.equal((await get(lb.url, "/", credentials)).status, 200);
  assert.deepEqual(seen, [credentials.authorization], "the client's credentials are checked");
  outcome = "busy";
  const busy = await get(lb.url, "/", credentials);
  assert.equal(busy.status, 503);
  assert.equal(busy.headers.get("retry-after"), "1");
  assert.equal(web.calls.length, 1);
});

Deno.test("createDispatcher() applies a route's response header rules to its answers, its own errors included", async () => {
  const web = stubService("web", (routed) => {
    if (routed.upstreamPath === "/down") throw new NoBackendError(2);
    return new Response("hi", { headers: { server: "backend", "x-drop": "1" } });
  });
  const responseHeaders = { set: { server: "lb" }, add: { "x-via": "lb" }, remove: ["x-drop"] };
  await using lb = serve(() => state([{ service: "web", responseHeaders }], { web }));
  const ok = await get(lb.url, "/");
  assert.equal(ok.headers.get("server"), "lb");
  assert.equal(ok.headers.get("x-via"), "lb");
  assert.equal(ok.headers.get("x-drop"), null);
  const down = await get(lb.url, "/down");
  assert.equal(down.status, 503);
  assert.equal(down.headers.get("retry-after"), "2");
  assert.equal(down.headers.get("x-via"), "lb");
  assert.equal(lb.outcomes[1].fromBackend, false, "the balancer's own 503 is not the backend's");
});

Deno.test("createDispatcher() compresses after the header rules, so a no-transform they set holds", async () => {
  const body = "compress me ".repeat(400);
  const web = stubService(
    "web",
    () => new Response(body, { headers: { "content-type": "text/plain" } }),
  );
  const compress = { ...DEFAULT_COMPRESS, encodings: ["gzip" as const] };
  const routes: RouteSpec[] = [
    {
      pathPrefix: "/plain",
      service: "web",
      responseHeaders: { set: { "cache-control": "no-transform" } },
    },
    { service: "web" },
  ];
  await using lb = serve(() => state(routes, { web }, [{ compress }, { compress }]));
  const headers = { "accept-encoding": "gzip" };
  const compressed = await get(lb.url, "/", headers);
  assert.equal(compressed.headers.get("content-encoding"), "gzip");
  assert.equal(compressed.text, body);
  const kept = await get(lb.url, "/plain", headers);
  assert.equal(kept.headers.get("content-encoding"), null);
  assert.equal(kept.headers.get("cache-control"), "no-transform");
  assert.equal(kept.text, body);
});

Deno.test("createDispatcher() reads the routing state once: a reload mid-request does not change its rules", async () => {
  let release!: () => void;
  const answered = new Promise<void>((resolve) => (release = resolve));
  let entered!: () => void;
  const started = new Promise<void>((resolve) => (entered = resolve));
  const web = stubService("web", async () => {
    entered();
    await answered;
    return new Response("slow");
  });
  const before = state([{ service: "web", responseHeaders: { set: { "x-rules": "old" } } }], {
    web,
  });
  const after = state([{ service: "web", responseHeaders: { set: { "x-rules": "new" } } }], {
    web,
  });
  let current = before;
  await using lb = serve(() => current);
  const pending = get(lb.url, "/");
  await started;
  current = after;
  release();
  assert.equal((await pending).headers.get("x-rules"), "old");
  assert.equal((await get(lb.url, "/")).headers.get("x-rules"), "new");
});
