/**
 * @module
 * Several services behind one balancer, on the wire: host and path routing to real backends,
 * path rewrites, redirects and fixed answers, header rules (also on the balancer's own 502/503),
 * the 404 of no route, per-service timeouts and health checks, a reload that moves routes under
 * load, and main.ts as a process (`--check` on route files, `--demo`, the original command line).
 * Every backend and balancer listens on 127.0.0.1 with a port from the OS.
 */

import assert from "node:assert/strict";
import type { Config, ServiceSettings } from "../lib/config.ts";
import { HEALTH_CHECK_USER_AGENT } from "../lib/health.ts";
import type { RouteSpec } from "../lib/routes.ts";
import {
  delay,
  getText,
  namedBackend,
  rawRequest,
  rawServer,
  readHead,
  refusingUrl,
  startTestBackend,
  startTestBalancer,
  tempDir,
  TEST_FRONTEND,
  type TestBackend,
  type TestBalancer,
  testConfig,
  waitFor,
  writeAll,
} from "./helpers.ts";
import { runMain, spawnBalancer } from "./process.ts";
import { parseHead } from "./wire.ts";

/** `main.ts` flags that select the front end under test (`LB_TEST_FRONTEND`). */
const FRONTEND_FLAGS = TEST_FRONTEND === "native" ? ["--frontend=native"] : [];

/** Generous bound for anything that waits on health checks or a loaded 2-core machine. */
const WAIT_MS = 10_000;

/** In-process service settings over these backend URLs (weight 1 each). */
function service(urls: string[], extra: ServiceSettings = {}): ServiceSettings {
  return { backends: urls.map((url) => ({ url, weight: 1 })), ...extra };
}

/** A balancer with these services and routes, and no top-level backends. */
function routed(
  services: Record<string, ServiceSettings>,
  routes: RouteSpec[],
  overrides: Partial<Config> = {},
): Promise<TestBalancer> {
  return startTestBalancer([], { services, routes, ...overrides });
}

/** What a client saw of one answer; the body is always read. */
interface Answer {
  status: number;
  text: string;
  headers: Headers;
}

/**
 * GETs `path` from the balancer with `host` as the Host header (the client must allow a Host of
 * its own) and extra request headers; redirects are not followed.
 */
async function get(
  lb: TestBalancer,
  client: Deno.HttpClient,
  path: string,
  host = "127.0.0.1",
  headers: Record<string, string> = {},
): Promise<Answer> {
  const response = await fetch(`${lb.url}${path}`, {
    client,
    headers: { host, ...headers },
    redirect: "manual",
  });
  return { status: response.status, text: await response.text(), headers: response.headers };
}

/** Paths the backend received, in order. */
function pathsOf(backend: TestBackend): string[] {
  return backend.received.map((r) => r.path);
}

/** A client that may send its own Host header. */
function hostClient(): Deno.HttpClient {
  return Deno.createHttpClient({ allowHost: true });
}

/** Asserts an answer the balancer made itself carries a request id. */
function assertRequestId(answer: Answer, what: string): void {
  assert.match(answer.headers.get("x-request-id") ?? "", /^\S+$/, `${what}: X-Request-Id`);
}

// ---------------------------------------------------------------------------------------------
// 1. Host routing

Deno.test("host routes: exact, *.suffix (not the bare domain), any case, port ignored, first match wins", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  await using lb = await routed({ a: service([a.url]), b: service([b.url]) }, [
    { host: "*.example.com", pathPrefix: "/first", service: "b" },
    { host: "api.example.com", service: "a" },
    { host: "*.example.com", service: "b" },
  ]);
  using client = hostClient();
  const cases: [host: string, path: string, answer: string | 404][] = [
    ["api.example.com", "/", "a"],
    ["API.Example.COM", "/x", "a"],
    ["api.example.com:8443", "/y", "a"],
    ["www.example.com", "/", "b"],
    ["deep.www.example.com", "/", "b"],
    ["api.example.com", "/first/z", "b"], // route 0 comes before the exact host
    ["example.com", "/", 404], // *.example.com needs a label before .example.com
    ["notexample.com", "/", 404],
    ["api.example.org", "/", 404],
  ];
  for (const [host, path, expected] of cases) {
    const answer = await get(lb, client, path, host);
    if (expected === 404) {
      assert.equal(answer.status, 404, `${host}${path}: ${answer.text}`);
    } else {
      assert.equal(answer.status, 200, `${host}${path}: ${answer.text}`);
      assert.equal(answer.text, expected, `${host}${path}`);
    }
  }
  assert.deepEqual(pathsOf(a), ["/", "/x", "/y"]);
  assert.deepEqual(pathsOf(b), ["/", "/", "/first/z"]);
});

// ---------------------------------------------------------------------------------------------
// 2. Path prefixes and rewrites

Deno.test("pathPrefix is segment-aware; stripPrefix and addPrefix rewrite the path and keep the query", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  await using lb = await routed({ a: service([a.url]), b: service([b.url]) }, [
    { pathPrefix: "/api", stripPrefix: true, service: "a" },
    { pathPrefix: "/old", stripPrefix: true, addPrefix: "/new", service: "a" },
    { pathPrefix: "/plus", addPrefix: "/v1", service: "a" },
    { service: "b" },
  ]);
  const cases: [sent: string, backend: "a" | "b", received: string][] = [
    ["/api/x?q=1&r=a%20b", "a", "/x?q=1&r=a%20b"],
    ["/api", "a", "/"],
    ["/api?only=query", "a", "/?only=query"],
    ["/api/", "a", "/"],
    ["/apix/y?q", "b", "/apix/y?q"], // not a segment of /api
    ["/old/p/q?z=1", "a", "/new/p/q?z=1"],
    ["/old", "a", "/new"],
    ["/plus/k?x", "a", "/v1/plus/k?x"],
  ];
  for (const [sent, which, received] of cases) {
    const answer = await getText(`${lb.url}${sent}`);
    assert.equal(answer.status, 200, sent);
    assert.equal(answer.text, which, sent);
    const backend = which === "a" ? a : b;
    assert.equal(backend.received.at(-1)?.path, received, sent);
  }
  assert.equal(a.received.length + b.received.length, cases.length);
});

Deno.test("a route without stripPrefix sends the path upstream byte for byte", async () => {
  const lines: string[] = [];
  await using backend = rawServer(async (conn) => {
    const { line, fields } = parseHead(await readHead(conn));
    // Health checks (the first round runs at start) are not the requests under test.
    if (
      !fields.some(([name, value]) => name === "user-agent" && value === HEALTH_CHECK_USER_AGENT)
    ) {
      lines.push(line);
    }
    const body = "raw";
    await writeAll(
      conn,
      new TextEncoder().encode(
        `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
      ),
    );
    conn.close();
  });
  await using other = await namedBackend("other");
  await using lb = await routed({ raw: service([backend.url]), other: service([other.url]) }, [
    { pathPrefix: "/keep", service: "raw" },
    { service: "other" },
  ]);
  // Odd but routable paths (the normalised form is under /keep): none may be rewritten.
  const paths = [
    "/keep/%7Efoo//bar/../baz?x=%2F&y=a+b",
    "/keep/./a/%2e%2e/b?q=../..",
    "/keep?",
  ];
  for (const path of paths) {
    const answer = await rawRequest(
      lb.port,
      `GET ${path} HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n`,
    );
    assert.match(answer, /^HTTP\/1\.1 200 /, `${path}: ${answer}`);
    assert.equal(lines.at(-1), `GET ${path} HTTP/1.1`);
  }
  assert.equal(lines.length, paths.length);
  assert.equal(other.received.length, 0);
});

// ---------------------------------------------------------------------------------------------
// 3. Redirects and fixed answers

Deno.test("redirect and respond routes answer with placeholders, status and body, a request id, and no backend", async () => {
  await using a = await namedBackend("a");
  await using lb = await routed({ a: service([a.url]) }, [
    { host: "old.example.com", redirect: { to: "https://{host}.example.net{path}", status: 301 } },
    { pathPrefix: "/moved", redirect: { to: "/elsewhere" } },
    { pathPrefix: "/status", respond: { status: 200, body: "up\n" } },
    { pathPrefix: "/teapot", respond: { status: 418, body: "short", contentType: "text/x-pot" } },
    { service: "a" },
  ]);
  using client = hostClient();

  const permanent = await get(lb, client, "/a/b?c=d&e", "old.example.com:8080");
  assert.equal(permanent.status, 301);
  assert.equal(permanent.headers.get("location"), "https://old.example.com.example.net/a/b?c=d&e");
  assertRequestId(permanent, "301");

  const temporary = await get(lb, client, "/moved/x");
  assert.equal(temporary.status, 302, "302 is the default status");
  assert.equal(temporary.headers.get("location"), "/elsewhere");
  assertRequestId(temporary, "302");

  const up = await get(lb, client, "/status");
  assert.equal(up.status, 200);
  assert.equal(up.text, "up\n");
  assert.equal(up.headers.get("content-type"), "text/plain; charset=utf-8");
  assertRequestId(up, "respond 200");

  const pot = await get(lb, client, "/teapot/x");
  assert.equal(pot.status, 418);
  assert.equal(pot.text, "short");
  assert.equal(pot.headers.get("content-type"), "text/x-pot");
  assertRequestId(pot, "respond 418");

  assert.equal(a.received.length, 0, "no backend received anything");
  assert.notEqual(permanent.headers.get("x-request-id"), up.headers.get("x-request-id"));
  // The catch-all still reaches the backend: the routes above did not just break forwarding.
  assert.equal((await get(lb, client, "/other")).text, "a");
  assert.deepEqual(pathsOf(a), ["/other"]);
});

// ---------------------------------------------------------------------------------------------
// 4. Header rules

const RESPONSE_RULES = {
  set: { "strict-transport-security": "max-age=31536000" },
  add: { "x-resp-add": "two" },
  remove: ["x-internal"],
};

/** Asserts the response rules above applied to `answer`. */
function assertResponseRules(answer: Answer, what: string, backendAdded: boolean): void {
  const h = answer.headers;
  assert.equal(h.get("strict-transport-security"), "max-age=31536000", what);
  assert.equal(h.get("x-resp-add"), backendAdded ? "one, two" : "two", what);
  assert.equal(h.get("x-internal"), null, what);
}

Deno.test("requestHeaders reach the backend; responseHeaders reach the client, also on the balancer's 502 and 503", async () => {
  await using a = await startTestBackend(() =>
    new Response("a", {
      headers: {
        "x-internal": "secret",
        "x-resp-add": "one",
        "strict-transport-security": "max-age=0",
      },
    })
  );
  // Reads the request head and closes the connection: no answer at all, a 502.
  await using broken = rawServer(async (conn) => {
    await readHead(conn);
    conn.close();
  });
  const down = refusingUrl();
  await using lb = await routed({
    a: service([a.url]),
    broken: service([broken.url], { retries: 0 }),
    down: service([down], { healthCheck: { interval: 50, fall: 1, timeout: 500 } }),
  }, [
    {
      pathPrefix: "/h",
      service: "a",
      requestHeaders: {
        set: { "x-set": "new" },
        add: { "x-add": "two" },
        remove: ["x-remove"],
      },
      responseHeaders: RESPONSE_RULES,
    },
    { pathPrefix: "/broken", service: "broken", responseHeaders: RESPONSE_RULES },
    { pathPrefix: "/down", service: "down", responseHeaders: RESPONSE_RULES },
  ]);
  using client = hostClient();

  const ok = await get(lb, client, "/h/x", "127.0.0.1", {
    "x-set": "old",
    "x-add": "one",
    "x-remove": "gone",
    "x-other": "kept",
  });
  assert.equal(ok.status, 200, ok.text);
  assertResponseRules(ok, "backend answer", true);
  const seen = a.received.at(-1)!.headers;
  assert.equal(seen.get("x-set"), "new");
  assert.equal(seen.get("x-add"), "one, two");
  assert.equal(seen.get("x-remove"), null);
  assert.equal(seen.get("x-other"), "kept");

  const badGateway = await get(lb, client, "/broken");
  assert.equal(badGateway.status, 502, badGateway.text);
  assertResponseRules(badGateway, "502", false);
  assertRequestId(badGateway, "502");

  const backend = lb.balancer.services.get("down")!.pool.backends[0];
  assert.ok(await waitFor(() => backend.status === "down", WAIT_MS), `status ${backend.status}`);
  const unavailable = await get(lb, client, "/down");
  assert.equal(unavailable.status, 503, unavailable.text);
  assertResponseRules(unavailable, "503", false);
  assertRequestId(unavailable, "503");
});

// ---------------------------------------------------------------------------------------------
// 5. No route

Deno.test("a request no route matches gets the balancer's 404 with a request id; no backend sees it", async () => {
  await using a = await namedBackend("a");
  await using lb = await routed({ a: service([a.url]) }, [
    { host: "only.example.com", service: "a" },
    { pathPrefix: "/api", methods: ["POST"], service: "a" },
  ]);
  using client = hostClient();
  for (const [host, path] of [["127.0.0.1", "/"], ["other.example.com", "/x"], ["x", "/api"]]) {
    const answer = await get(lb, client, path, host);
    assert.equal(answer.status, 404, `${host}${path}: ${answer.text}`);
    assertRequestId(answer, `${host}${path}`);
  }
  assert.equal(a.received.length, 0);
  assert.equal((await get(lb, client, "/", "only.example.com")).text, "a");
  assert.equal(a.received.length, 1);
});

// ---------------------------------------------------------------------------------------------
// 6. Per-service settings

Deno.test("two services on the same slow backend: a 200ms timeout gives 504, a 5s timeout waits for the 200", async () => {
  await using slow = await startTestBackend(async () => {
    await delay(600);
    return new Response("slow");
  });
  await using lb = await routed({
    hasty: service([slow.url], { timeout: 200, retries: 0 }),
    patient: service([slow.url], { timeout: 5000, retries: 0 }),
  }, [
    { pathPrefix: "/hasty", service: "hasty" },
    { pathPrefix: "/patient", service: "patient" },
  ]);
  const hasty = await getText(`${lb.url}/hasty`);
  assert.equal(hasty.status, 504, hasty.text);
  const patient = await getText(`${lb.url}/patient`);
  assert.equal(patient.status, 200, patient.text);
  assert.equal(patient.text, "slow");
  assert.deepEqual(pathsOf(slow), ["/hasty", "/patient"]);
});

Deno.test("per-service health checks: path, expectStatus, bodyContains and host decide per service", async () => {
  // Health checks per Host header, so each service's checks can be counted.
  const checksByHost = new Map<string, number>();
  await using h = await startTestBackend((req) => {
    if (req.headers.get("user-agent") === HEALTH_CHECK_USER_AGENT) {
      const host = req.headers.get("host") ?? "";
      checksByHost.set(host, (checksByHost.get(host) ?? 0) + 1);
    }
    const path = new URL(req.url).pathname;
    if (path === "/sick") return new Response("alive but sick", { status: 503 });
    return new Response("alive");
  });
  const check = (host: string, extra: Record<string, unknown>) => ({
    interval: 50,
    timeout: 1000,
    fall: 2,
    rise: 1,
    host,
    ...extra,
  });
  await using lb = await routed({
    wantsReady: service([h.url], {
      healthCheck: check("ready.internal", { path: "/healthz", bodyContains: "ready" }),
    }),
    wantsAlive: service([h.url], {
      healthCheck: check("alive.internal", { path: "/healthz", bodyContains: "alive" }),
    }),
    wants2xx: service([h.url], { healthCheck: check("2xx.internal", { path: "/sick" }) }),
    wants503: service([h.url], {
      healthCheck: check("503.internal", { path: "/sick", expectStatus: [503] }),
    }),
  }, [
    { pathPrefix: "/ready", service: "wantsReady" },
    { pathPrefix: "/alive", service: "wantsAlive" },
    { pathPrefix: "/2xx", service: "wants2xx" },
    { pathPrefix: "/503", service: "wants503" },
  ]);
  const backendOf = (name: string) => lb.balancer.services.get(name)!.pool.backends[0];
  const statuses = () =>
    ["wantsReady", "wantsAlive", "wants2xx", "wants503"].map((n) => `${n}=${backendOf(n).status}`)
      .join(" ");
  assert.ok(
    await waitFor(
      () => backendOf("wantsReady").status === "down" && backendOf("wants2xx").status === "down",
      WAIT_MS,
    ),
    statuses(),
  );
  // The other two services checked the same URL more than `fall` times and kept it up.
  assert.ok(
    await waitFor(
      () =>
        (checksByHost.get("alive.internal") ?? 0) > 3 &&
        (checksByHost.get("503.internal") ?? 0) > 3,
      WAIT_MS,
    ),
    JSON.stringify([...checksByHost]),
  );
  assert.equal(backendOf("wantsAlive").status, "up", statuses());
  assert.equal(backendOf("wants503").status, "up", statuses());
  assert.equal(backendOf("wantsAlive").lastCheck?.ok, true);
  assert.equal(backendOf("wants503").lastCheck?.ok, true);
  assert.ok((checksByHost.get("ready.internal") ?? 0) >= 2, "the host of each service's check");
  assert.deepEqual(
    [...checksByHost.keys()].sort(),
    ["2xx.internal", "503.internal", "alive.internal", "ready.internal"],
  );

  // Traffic follows each service's own verdict on the same backend.
  assert.equal((await getText(`${lb.url}/ready`)).status, 503);
  assert.equal((await getText(`${lb.url}/2xx`)).status, 503);
  assert.equal((await getText(`${lb.url}/alive`)).text, "alive");
  assert.equal((await getText(`${lb.url}/503`)).text, "alive");
});

// ---------------------------------------------------------------------------------------------
// 8. Reload under load

/** Concurrent clients GETting `paths` in turn until stopped; every non-200 is a failure. */
class ConcurrentTraffic {
  ok = 0;
  readonly failures: string[] = [];
  #stopped = false;
  readonly #done: Promise<void[]>;

  constructor(base: string, paths: string[], clients = 4, maxPerClient = 5_000) {
    this.#done = Promise.all(
      Array.from({ length: clients }, async (_, c) => {
        for (let i = 0; i < maxPerClient && !this.#stopped; i++) {
          const path = paths[(i + c) % paths.length];
          try {
            const response = await fetch(`${base}${path}`);
            const text = await response.text();
            if (response.status === 200) this.ok++;
            else this.failures.push(`${path}: ${response.status} ${text.trim()}`);
          } catch (error) {
            this.failures.push(`${path}: ${error}`);
          }
        }
      }),
    );
  }

  /** Waits until `n` more requests have succeeded (bounded by WAIT_MS). */
  async more(n: number): Promise<void> {
    const target = this.ok + n;
    const reached = await waitFor(() => this.ok >= target || this.failures.length > 0, WAIT_MS);
    assert.ok(reached, `${n} more requests did not succeed within ${WAIT_MS}ms`);
  }

  /** Stops after the requests in flight. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#done;
  }
}

Deno.test("reload under load moves /api to another service, adds and removes services: zero failed requests", async () => {
  await using a = await namedBackend("A");
  await using b = await namedBackend("B");
  await using c = await namedBackend("C");
  await using d = await namedBackend("D");
  const before: Partial<Config> = {
    services: { a: service([a.url]), b: service([b.url]), old: service([d.url]) },
    routes: [
      { pathPrefix: "/api", service: "a" },
      { pathPrefix: "/old", service: "old" },
      { service: "b" },
    ],
  };
  const after: Partial<Config> = {
    services: { a: service([a.url]), b: service([b.url]), c: service([c.url]) },
    routes: [
      { pathPrefix: "/api", service: "b" },
      { pathPrefix: "/new", service: "c" },
      { service: "a" },
    ],
  };
  await using lb = await startTestBalancer([], before);
  assert.equal((await getText(`${lb.url}/api/x`)).text, "A");
  assert.equal((await getText(`${lb.url}/`)).text, "B");
  assert.equal((await getText(`${lb.url}/old/x`)).text, "D");
  assert.equal((await getText(`${lb.url}/new/x`)).text, "B", "no /new route yet");

  // Every path answers 200 under both configurations, but only if routes and services switch
  // together: /new and /old name a service only one of them has.
  const traffic = new ConcurrentTraffic(lb.url, ["/api/x", "/", "/new/x", "/old/x", "/api?q"]);
  try {
    await traffic.more(300);
    const counted = {
      a: lb.balancer.services.get("a")!.pool.find(a.url)!.requests,
      b: lb.balancer.services.get("b")!.pool.find(b.url)!.requests,
    };
    assert.ok(counted.a > 0 && counted.b > 0, JSON.stringify(counted));

    const change = await lb.balancer.reload(testConfig([], after));
    assert.deepEqual(change.servicesAdded, ["c"]);
    assert.deepEqual(change.servicesRemoved, ["old"]);
    assert.deepEqual(change.restartNeeded, []);
    // Read at once: a counter that restarted from 0 would be far below the earlier count.
    const now = {
      a: lb.balancer.services.get("a")!.pool.find(a.url)!.requests,
      b: lb.balancer.services.get("b")!.pool.find(b.url)!.requests,
    };
    assert.ok(now.a >= counted.a && now.b >= counted.b, JSON.stringify({ counted, now }));
    // Back and forth once more under the same traffic: each switch is a chance for a mix.
    await traffic.more(100);
    const back = await lb.balancer.reload(testConfig([], before));
    assert.deepEqual([back.servicesAdded, back.servicesRemoved], [["old"], ["c"]]);
    await traffic.more(100);
    await lb.balancer.reload(testConfig([], after));
    await traffic.more(300);
  } finally {
    await traffic.stop();
  }
  assert.deepEqual(traffic.failures, []);
  assert.ok(traffic.ok >= 800);
  // A and B were in services a and b all along: their counters cover every request they got.
  assert.equal(lb.balancer.services.get("a")!.pool.find(a.url)!.requests, a.received.length);
  assert.equal(lb.balancer.services.get("b")!.pool.find(b.url)!.requests, b.received.length);

  // New requests follow the new routes.
  assert.equal((await getText(`${lb.url}/api/x`)).text, "B");
  assert.equal((await getText(`${lb.url}/`)).text, "A");
  assert.equal((await getText(`${lb.url}/new/x`)).text, "C");
  const dSeen = d.received.length;
  assert.equal((await getText(`${lb.url}/old/x`)).text, "A", "the removed service's route is gone");
  assert.equal(d.received.length, dSeen);
  assert.deepEqual([...lb.balancer.services.keys()].sort(), ["a", "b", "c"]);
});

// ---------------------------------------------------------------------------------------------
// 9. --check on route files

/** A temp directory for config files; removed on dispose. */
/** 1-based `line:column` of the first `needle` in `text` (after `after`, when given). */
function position(text: string, needle: string, after = ""): string {
  const from = after === "" ? 0 : text.indexOf(after);
  assert.ok(from >= 0, `fixture lacks ${after}`);
  const index = text.indexOf(needle, from);
  assert.ok(index >= 0, `fixture lacks ${needle}`);
  const lines = text.slice(0, index).split("\n");
  return `${lines.length}:${lines.at(-1)!.length + 1}`;
}

/** Runs `main.ts --config FILE --check` on `text` written to FILE in `dir`. */
async function checkFile(dir: string, name: string, text: string) {
  const path = `${dir}/${name}`;
  await Deno.writeTextFile(path, text);
  const result = await runMain(["--config", path, "--check"], {
    permissions: [`--allow-read=${dir}`],
  });
  return { path, ...result };
}

const UNREACHABLE_ROUTES = `// routes --check must refuse
{
  "port": 0,
  "services": {
    "web": { "backends": ["http://127.0.0.1:1"] },
    "api": { "backends": ["http://127.0.0.1:2*2"] }
  },
  "routes": [
    { "pathPrefix": "/api", "service": "apii" },
    { "host": "a.example.com", "service": "web" },
    { "host": "a.example.com", "service": "api" },
    { "service": "web" },
    { "pathPrefix": "/late", "service": "api" }
  ]
}
`;

Deno.test("--check refuses a route to an unknown service and unreachable routes, with file:line:column; exit 2", async () => {
  await using tmp = await tempDir("lb-routing-");
  const text = UNREACHABLE_ROUTES;
  const { path, code, stdout, stderr } = await checkFile(tmp.path, "routes.jsonc", text);
  assert.equal(code, 2, stderr);
  assert.equal(stdout, "");
  const at = (where: string) => `load-balancer: ${path}:${where}`;
  assert.deepEqual(
    stderr.trimEnd().split("\n").sort(),
    [
      `${at(position(text, '"service"', '"/api"'))}: routes[0].service: ` +
      `no service named "apii" (did you mean "api"?)`,
      `${at(position(text, '{ "host": "a.example.com", "service": "api" }'))}: routes[2]: ` +
      `unreachable: routes[1] (route-1, host=a.example.com) matches every request this route matches`,
      `${at(position(text, '{ "pathPrefix": "/late"'))}: routes[4]: ` +
      `unreachable: routes[3] (route-3, any) matches every request this route matches`,
    ].sort(),
  );
});

Deno.test("--check refuses a redirect with an unknown placeholder, with file:line:column; exit 2", async () => {
  await using tmp = await tempDir("lb-routing-");
  const text = `{
  "services": { "web": { "backends": ["http://127.0.0.1:1"] } },
  "routes": [
    { "pathPrefix": "/go", "redirect": { "to": "https://example.com{path}&q={query}" } },
    { "service": "web" }
  ]
}
`;
  const { path, code, stdout, stderr } = await checkFile(tmp.path, "placeholder.jsonc", text);
  assert.equal(code, 2, stderr);
  assert.equal(stdout, "");
  assert.equal(
    stderr,
    `load-balancer: ${path}:${position(text, '"to"')}: routes[0].redirect.to: ` +
      `"https://example.com{path}&q={query}": unknown placeholder {query} (use {host} or {path})\n`,
  );
});

Deno.test("--check warns about a service no route uses, with file:line:column, and exits 0", async () => {
  await using tmp = await tempDir("lb-routing-");
  const text = `{
  "services": {
    "web": { "backends": ["http://127.0.0.1:1"] },
    "spare": { "backends": ["http://127.0.0.1:2"] }
  },
  "routes": [{ "service": "web" }]
}
`;
  const { path, code, stdout, stderr } = await checkFile(tmp.path, "unused.jsonc", text);
  assert.equal(code, 0, stderr);
  const output = `${stdout}${stderr}`;
  const warning = output.split("\n").find((line) => line.includes("services.spare"));
  assert.ok(warning !== undefined, output);
  assert.ok(warning.includes(`${path}:${position(text, '"spare"')}: `), warning);
  assert.ok(warning.includes(`no route sends requests to service "spare"`), warning);
  assert.ok(!/unreachable|no service named/.test(output), output);
});

Deno.test("a config file with services and routes (string backends, weights, durations) runs as written", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  await using api = await namedBackend("api");
  await using tmp = await tempDir("lb-routing-");
  const path = `${tmp.path}/lb.jsonc`;
  await Deno.writeTextFile(
    path,
    `// several services behind one balancer
{
  "port": 0,
  "host": "127.0.0.1",
  "services": {
    "web": { "backends": ["${a.url}", "${b.url}*2"] },
    "api": {
      "backends": ["${api.url}"],
      "policy": "least-conn",
      "timeout": "5s",
      "healthCheck": { "path": "/healthz", "expectStatus": [200, 204], "interval": "2s" }
    }
  },
  "routes": [
    { "host": "api.example.com", "service": "api" },
    { "host": "*.example.com", "pathPrefix": "/api", "stripPrefix": true, "service": "api" },
    { "host": "old.example.com", "redirect": { "to": "https://example.com{path}", "status": 301 } },
    { "pathPrefix": "/status", "respond": { "status": 200, "body": "up\\n" } },
    { "service": "web", "responseHeaders": { "set": { "strict-transport-security": "max-age=31536000" } } },
  ],
}
`,
  );
  await using lb = spawnBalancer(["--config", path, ...FRONTEND_FLAGS], {
    permissions: [`--allow-read=${tmp.path}`],
  });
  const port = await lb.port();
  using client = hostClient();
  const send = async (path: string, host: string) => {
    const response = await fetch(`http://127.0.0.1:${port}${path}`, {
      client,
      headers: { host },
      redirect: "manual",
    });
    return { status: response.status, text: await response.text(), headers: response.headers };
  };
  assert.equal((await send("/v?x", "api.example.com")).text, "api");
  assert.equal((await send("/api/v?x", "www.example.com")).text, "api");
  assert.deepEqual(pathsOf(api), ["/v?x", "/v?x"]);
  const moved = await send("/p?q", "old.example.com");
  assert.deepEqual([moved.status, moved.headers.get("location")], [301, "https://example.com/p?q"]);
  const status = await send("/status", "127.0.0.1");
  assert.deepEqual([status.status, status.text], [200, "up\n"]);
  const texts: string[] = [];
  for (let i = 0; i < 6; i++) {
    const answer = await send(`/page/${i}`, "www.example.org");
    assert.equal(answer.headers.get("strict-transport-security"), "max-age=31536000");
    texts.push(answer.text);
  }
  assert.deepEqual(
    [texts.filter((t) => t === "a").length, texts.filter((t) => t === "b").length],
    [2, 4],
    `weight 2 for b: ${texts}`,
  );
  assert.equal(a.received.length + b.received.length, 6);
});

// ---------------------------------------------------------------------------------------------
// 10. --demo as a process

Deno.test("--demo routes /api to the last demo backend and everything else to the other two", async () => {
  await using lb = spawnBalancer(["--demo", "-port=0", "-host=127.0.0.1", ...FRONTEND_FLAGS]);
  const port = await lb.port();
  const demoPorts = lb.lines.map((line) => /Demo backend started at :(\d+)/.exec(line)?.[1])
    .filter((p) => p !== undefined).map(Number);
  assert.equal(demoPorts.length, 3, lb.lines.join("\n"));
  const answeredBy = async (path: string) => {
    const answer = await getText(`http://127.0.0.1:${port}${path}`);
    assert.equal(answer.status, 200, `${path}: ${answer.text}`);
    const named = /Backend server on port (\d+) is running/.exec(answer.text);
    assert.ok(named, `${path}: ${answer.text}`);
    return Number(named[1]);
  };
  const api = new Set<number>();
  const rest = new Set<number>();
  for (let i = 0; i < 4; i++) {
    api.add(await answeredBy("/api/x"));
    rest.add(await answeredBy("/"));
  }
  assert.deepEqual([...api], [demoPorts[2]]);
  assert.deepEqual([...rest].sort(), [demoPorts[0], demoPorts[1]].sort());
});

// ---------------------------------------------------------------------------------------------
// 11. The original command line

Deno.test("without routes, `-backends=URL1,URL2 -port=0` still round-robins every path", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  await using lb = spawnBalancer([
    `-backends=${a.url},${b.url}`,
    "-port=0",
    "-host=127.0.0.1",
    ...FRONTEND_FLAGS,
  ]);
  const port = await lb.port();
  const texts: string[] = [];
  for (const path of ["/", "/api/x", "/status", "/x?y=1"]) {
    const answer = await getText(`http://127.0.0.1:${port}${path}`);
    assert.equal(answer.status, 200, path);
    texts.push(answer.text);
  }
  assert.deepEqual(texts, ["a", "b", "a", "b"]);
  assert.deepEqual(pathsOf(a), ["/", "/status"]);
  assert.deepEqual(pathsOf(b), ["/api/x", "/x?y=1"]);
});
