/**
 * @module
 * Unit tests of lib/proxy.ts's steps: readRequest, the ReverseProxy's upstreamHeaders, pick,
 * transportFor, attempt and forward, relay, and createProxyHandler's outcome. Backends are real
 * servers on 127.0.0.1 (port 0); handlers are called in-process with a ServeHandlerInfo of the
 * test's own, so a test decides when the client "has" the body.
 */
import assert from "node:assert/strict";
import { quietLog } from "../lib/log.ts";
import { HttpError } from "../lib/errors.ts";
import { type HeaderPairs, readClientHeaders } from "../lib/headers.ts";
import { createPolicy } from "../lib/policies/mod.ts";
import { Pool, type SelectContext } from "../lib/pool.ts";
import { NO_BODY } from "../lib/body.ts";
import { parseCidr } from "../lib/cidr.ts";
import {
  balancerAnswer,
  createProxyHandler,
  Forwarding,
  type ProxyOptions,
  rawTarget,
  readRequest,
  relay,
  type RequestOutcome,
  ReverseProxy,
  type RoutedRequest,
  type Trace,
} from "../lib/proxy.ts";
import type { AttemptResult, Transport } from "../lib/upstream.ts";
import { NativeResponse } from "../lib/upstream_native.ts";
import { refusingUrl, startTestBackend } from "./helpers.ts";

/** A pool of `urls` (weight 1, round-robin). */
function poolOf(...urls: string[]): Pool {
  return new Pool(urls.map((url) => ({ url, weight: 1 })), {
    rise: 2,
    fall: 3,
    policy: createPolicy("round-robin"),
  });
}

/** Proxy options with short timeouts, over a fetch client the test closes. */
function optionsWith(client: Deno.HttpClient, more: Partial<ProxyOptions> = {}): ProxyOptions {
  return {
    retries: 2,
    timeout: 2_000,
    connectTimeout: 2_000,
    retryAfterSeconds: 1,
    proto: "http",
    client,
    backoff: () => 0,
    ...more,
  };
}

/** A ServeHandlerInfo whose `completed` the test resolves (the client has the whole body). */
function fakeInfo(hostname = "127.0.0.1") {
  let complete!: () => void;
  const completed = new Promise<void>((resolve) => (complete = resolve));
  const info: Deno.ServeHandlerInfo = {
    remoteAddr: { transport: "tcp", hostname, port: 40_000 },
    completed,
  };
  return { info, complete };
}

/** What the front would hand a service for `req`. */
function routed(req: Request, more: Partial<RoutedRequest> = {}): RoutedRequest {
  const client = readClientHeaders(req.headers);
  const target = readRequest(req, client);
  return { client, target, upstreamPath: target.pathAndQuery, requestId: "rid-1", ...more };
}

function newTrace(): Trace {
  return { backend: undefined, attempts: 0, contentLength: undefined };
}

function statusOf(error: unknown): number | undefined {
  return error instanceof HttpError ? error.status : undefined;
}

/**
 * A request with `method` spelt as given: `new Request` upper-cases `get` and refuses TRACE,
 * while Deno.serve hands them over as the client sent them.
 */
function requestAs(method: string, url: string, headers: HeadersInit = {}): Request {
  return { method, url, headers: new Headers(headers), body: null } as unknown as Request;
}

Deno.test("readRequest() returns the target and refuses a body on GET, and methods fetch would change", () => {
  const ok = new Request("http://example.test/a?b=1", { headers: { host: "example.test" } });
  assert.deepEqual(readRequest(ok, readClientHeaders(ok.headers)), {
    pathAndQuery: "/a?b=1",
    host: "example.test",
  });
  const cases: [Request, number][] = [
    [requestAs("GET", "http://example.test/", { "content-length": "3" }), 400],
    [requestAs("HEAD", "http://example.test/", { "transfer-encoding": "chunked" }), 400],
    [requestAs("get", "http://example.test/"), 501],
    [requestAs("TRACE", "http://example.test/"), 501],
    [requestAs("track", "http://example.test/"), 501],
  ];
  for (const [req, status] of cases) {
    assert.throws(
      () => readRequest(req, readClientHeaders(req.headers)),
      (error) => statusOf(error) === status,
      `${req.method} ${JSON.stringify([...req.headers])}`,
    );
  }
  // A method fetch leaves alone whatever its case is forwarded as spelt.
  const patch = requestAs("patch", "http://example.test/p");
  assert.equal(readRequest(patch, readClientHeaders(patch.headers)).pathAndQuery, "/p");
});

Deno.test("rawTarget() keeps what follows the authority, and / when nothing does", () => {
  assert.equal(rawTarget("http://h:1/a/b?c#d"), "/a/b?c#d");
  assert.equal(rawTarget("http://h"), "/");
});

Deno.test("balancerAnswer() answers the error's status and headers with the request id", async () => {
  const trace = newTrace();
  const response = balancerAnswer(
    new HttpError(429, "slow down", { "retry-after": "3" }),
    "rid-9",
    trace,
  );
  assert.equal(response.status, 429);
  assert.equal(response.headers.get("x-request-id"), "rid-9");
  assert.equal(response.headers.get("retry-after"), "3");
  assert.match(await response.text(), /^429 /);
  // Anything else is the backend's side going wrong: 502, never internals.
  const unknown = balancerAnswer(new Error("secret detail"), "rid-10", newTrace());
  assert.equal(unknown.status, 502);
  assert.doesNotMatch(await unknown.text(), /secret/);
});

Deno.test("ReverseProxy.upstreamHeaders() replaces X-Forwarded-For from a stranger, extends a trusted peer's, applies route rules", () => {
  const pool = poolOf("http://127.0.0.1:1");
  using client = Deno.createHttpClient({ allowHost: true });
  const proxy = new ReverseProxy(
    pool,
    optionsWith(client, { trustedProxies: [parseCidr("10.0.0.0/8")!] }),
    quietLog,
  );
  const req = new Request("http://example.test/p", {
    headers: { host: "example.test", "x-forwarded-for": "6.6.6.6", connection: "close" },
  });
  const get = (pairs: HeaderPairs, name: string) =>
    pairs.filter(([n]) => n === name).map(([, v]) => v).join(",");
  const stranger = proxy.upstreamHeaders(routed(req), "192.0.2.1");
  assert.equal(get(stranger, "x-forwarded-for"), "192.0.2.1");
  assert.equal(get(stranger, "connection"), "", "hop-by-hop fields are not sent on");
  assert.equal(get(stranger, "x-request-id"), "rid-1");
  const trusted = proxy.upstreamHeaders(routed(req), "10.1.2.3");
  assert.equal(get(trusted, "x-forwarded-for").replaceAll(" ", ""), "6.6.6.6,10.1.2.3");
  const ruled = proxy.upstreamHeaders(
    routed(req, { requestHeaders: { set: { "x-route": "api" }, remove: ["x-forwarded-for"] } }),
    "192.0.2.1",
  );
  assert.equal(get(ruled, "x-route"), "api");
  assert.equal(get(ruled, "x-forwarded-for"), "");
});

Deno.test("ReverseProxy.pick() skips tried backends and gives undefined when none is left", () => {
  const pool = poolOf("http://127.0.0.1:1", "http://127.0.0.1:2");
  using client = Deno.createHttpClient({ allowHost: true });
  const proxy = new ReverseProxy(pool, optionsWith(client), quietLog);
  const context: SelectContext = { clientIp: "127.0.0.1", headers: new Headers(), path: "/" };
  const [a, b] = pool.backends;
  assert.equal(proxy.pick(context, new Set([a]), 1), b);
  assert.equal(proxy.pick(context, new Set([b]), 1), a);
  assert.equal(proxy.pick(context, new Set([a, b]), 2), undefined);
});

Deno.test("ReverseProxy.transportFor() takes exactTransport only for a path fetch would rewrite", () => {
  using client = Deno.createHttpClient({ allowHost: true });
  const plain: Transport = () => Promise.reject(new Error("not called"));
  const exact: Transport = () => Promise.reject(new Error("not called"));
  const both = new ReverseProxy(
    poolOf("http://127.0.0.1:1"),
    optionsWith(client, { transport: plain, exactTransport: exact }),
    quietLog,
  );
  assert.equal(both.transportFor("/a/b?c=d"), plain);
  assert.equal(both.transportFor("/a/../b"), exact);
  assert.equal(both.transportFor("/a/%2e%2e/b"), exact);
  const one = new ReverseProxy(
    poolOf("http://127.0.0.1:1"),
    optionsWith(client, { transport: plain }),
    quietLog,
  );
  assert.equal(one.transportFor("/a/../b"), plain);
});

Deno.test("ReverseProxy.attempt() sends the plan's method, headers and path to the backend's origin", async () => {
  await using backend = await startTestBackend(() => new Response("hi"));
  using client = Deno.createHttpClient({ allowHost: true });
  const pool = poolOf(backend.url);
  const proxy = new ReverseProxy(pool, optionsWith(client), quietLog);
  const context: SelectContext = {
    clientIp: "127.0.0.1",
    headers: new Headers(),
    path: "/x?y=1",
  };
  const plan = new Forwarding(
    proxy,
    "DELETE",
    [["host", "example.test"], ["x-test", "1"]],
    NO_BODY,
    context,
    proxy.transport,
    new AbortController().signal,
    newTrace(),
  );
  const result: AttemptResult = await proxy.attempt(pool.backends[0], plan);
  assert.ok(result.ok);
  assert.equal(result.status, 200);
  const body = result.value.body;
  if (body instanceof ReadableStream) await body.cancel();
  assert.equal(backend.received.length, 1);
  const seen = backend.received[0];
  assert.equal(seen.method, "DELETE");
  assert.equal(seen.path, "/x?y=1");
  assert.equal(seen.headers.get("x-test"), "1");
  assert.equal(seen.headers.get("host"), "example.test");
});

Deno.test("ReverseProxy.handle() retries past a refusing backend and keeps the answer's backend in flight until the body is delivered", async () => {
  await using backend = await startTestBackend(() => new Response("from backend"));
  using client = Deno.createHttpClient({ allowHost: true });
  const pool = poolOf(refusingUrl(), backend.url);
  const proxy = new ReverseProxy(pool, optionsWith(client), quietLog);
  const working = pool.backends[1];
  // Twice: round-robin starts on each backend once, so one of the two runs meets the refusal.
  let attempts = 0;
  for (let i = 0; i < 2; i++) {
    const req = new Request("http://example.test/r", { headers: { host: "example.test" } });
    const { info, complete } = fakeInfo();
    const trace = newTrace();
    const response = await proxy.handle(req, info, routed(req), trace);
    assert.equal(response.status, 200);
    assert.equal(await response.text(), "from backend");
    assert.equal(response.headers.get("x-request-id"), "rid-1");
    assert.equal(trace.backend, working);
    attempts += trace.attempts;
    assert.equal(working.inflight, 1, "in flight until the client has the body");
    complete();
    await info.completed;
    await Promise.resolve();
    assert.equal(working.inflight, 0);
  }
  assert.equal(attempts, 3, "one request was retried past the refusing backend");
  assert.equal(backend.received.length, 2);
});

Deno.test("ReverseProxy.forward() throws 502 when every attempt fails, 503 with no backend, 504 on a timeout", async () => {
  using client = Deno.createHttpClient({ allowHost: true });
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  await using slow = await startTestBackend(async () => {
    await released;
    return new Response("late");
  });
  try {
    const cases: [Pool, Partial<ProxyOptions>, number][] = [
      [poolOf(refusingUrl(), refusingUrl()), {}, 502],
      [poolOf(), {}, 503],
      [poolOf(slow.url), { timeout: 100, connectTimeout: 100, retries: 0 }, 504],
    ];
    for (const [pool, more, status] of cases) {
      const proxy = new ReverseProxy(pool, optionsWith(client, more), quietLog);
      const req = new Request("http://example.test/f", { headers: { host: "example.test" } });
      const { info } = fakeInfo();
      const context: SelectContext = { clientIp: "127.0.0.1", headers: req.headers, path: "/f" };
      await assert.rejects(
        proxy.forward(req, info, [], NO_BODY, context, newTrace()),
        (error) => statusOf(error) === status,
        `expected ${status}`,
      );
      for (const backend of pool.backends) assert.equal(backend.inflight, 0, backend.url);
    }
  } finally {
    release();
  }
});

Deno.test("relay() drops hop-by-hop fields, replaces the backend's X-Request-Id, adds Set-Cookie, records the length", async () => {
  const trace = newTrace();
  const response = relay(
    {
      status: 201,
      statusText: "Created",
      headers: [
        ["Connection", "x-secret"],
        ["X-Secret", "1"],
        ["Keep-Alive", "timeout=5"],
        ["X-Request-Id", "from-backend"],
        ["Content-Length", "2"],
        ["X-Kept", "yes"],
      ],
      body: new TextEncoder().encode("ok"),
      decoded: false,
    },
    [],
    "GET",
    "s=1",
    "rid-2",
    trace,
  );
  assert.equal(response.status, 201);
  assert.equal(response.statusText, "Created");
  assert.equal(response.headers.get("connection"), null);
  assert.equal(response.headers.get("x-secret"), null, "a field named by Connection is hop-by-hop");
  assert.equal(response.headers.get("keep-alive"), null);
  assert.equal(response.headers.get("x-request-id"), "rid-2");
  assert.equal(response.headers.get("set-cookie"), "s=1");
  assert.equal(response.headers.get("x-kept"), "yes");
  assert.equal(trace.contentLength, 2);
  assert.equal(await response.text(), "ok");
});

Deno.test("relay() gives the native transport's fields the same headers as any other's", () => {
  const fields = (): [string, string][] => [
    ["Server", "nginx"],
    ["Connection", "x-secret"],
    ["X-Secret", "1"],
    ["Set-Cookie", "a=1"],
    ["Content-Length", "2"],
    ["set-cookie", "b=2"],
    ["X-Request-Id", "from-backend"],
  ];
  const body = () => new TextEncoder().encode("ok");
  const plain = relay(
    { status: 200, statusText: "OK", headers: fields(), body: body(), decoded: false },
    [],
    "GET",
    "s=1",
    "rid",
    newTrace(),
  );
  const trace = newTrace();
  const native = relay(
    new NativeResponse(200, "OK", fields(), body()),
    [],
    "GET",
    "s=1",
    "rid",
    trace,
  );
  assert.deepEqual([...native.headers], [...plain.headers]);
  assert.equal(native.headers.get("x-request-id"), "rid");
  assert.equal(native.headers.get("x-secret"), null);
  assert.equal(trace.contentLength, 2);
});

Deno.test("relay() refuses a 1xx with 502 and gives a decoded HEAD an empty stream, not a false length", async () => {
  const stream = new ReadableStream<Uint8Array>();
  assert.throws(
    () =>
      relay(
        { status: 101, statusText: "", headers: [], body: stream, decoded: false },
        [],
        "GET",
        undefined,
        "r",
        newTrace(),
      ),
    (error) => statusOf(error) === 502,
  );
  const head = relay(
    {
      status: 200,
      statusText: "OK",
      headers: [["content-encoding", "gzip"], ["content-length", "20"]],
      body: null,
      decoded: true,
    },
    [],
    "HEAD",
    undefined,
    "r",
    newTrace(),
  );
  assert.notEqual(head.body, null);
  assert.equal(head.headers.get("content-length"), null);
  assert.equal(head.headers.get("content-encoding"), null);
  await head.body?.cancel();
});

Deno.test("createProxyHandler() tells the observer each outcome: the backend's answer, and its own refusal", async () => {
  await using backend = await startTestBackend(() => new Response("abc"));
  using client = Deno.createHttpClient({ allowHost: true });
  const outcomes: RequestOutcome[] = [];
  const handler = createProxyHandler(
    poolOf(backend.url),
    optionsWith(client, {
      observer: {
        outcome: (_req, _info, o) => outcomes.push(o),
        retry() {},
        budgetExhausted() {},
      },
    }),
    quietLog,
  );
  const { info, complete } = fakeInfo();
  const ok = await handler(
    new Request("http://example.test/o?k=v", { headers: { host: "example.test" } }),
    info,
  );
  assert.equal(await ok.text(), "abc");
  complete();
  const refused = await handler(requestAs("TRACE", "http://example.test/t"), info);
  assert.equal(refused.status, 501);
  await refused.body?.cancel();
  assert.equal(outcomes.length, 2);
  const [first, second] = outcomes;
  assert.equal(first.status, 200);
  assert.equal(first.fromBackend, true);
  assert.equal(first.backend?.url, backend.url);
  assert.equal(first.attempts, 1);
  assert.equal(first.path, "/o?k=v");
  assert.equal(first.requestId, ok.headers.get("x-request-id"));
  assert.equal(second.status, 501);
  assert.equal(second.fromBackend, false);
  assert.equal(second.backend, undefined);
  assert.equal(second.path, "/t");
});
