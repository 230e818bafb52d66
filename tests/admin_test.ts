/**
 * @module
 * The admin listener over real sockets: the backends API (list, add, remove, drain, enable,
 * disable, weight), bearer-token auth, health probes, /metrics (strict parser and promtool),
 * and the operations features it reports on: the alert webhook and the access log.
 * Each test runs the balancer in-process with `admin: 127.0.0.1:0` over its own backends.
 */
import assert from "node:assert/strict";
import {
  type BackendView,
  createAdminHandler,
  MAX_ADMIN_BODY_BYTES,
  type RouteView,
} from "../lib/admin.ts";
import type { Config } from "../lib/config.ts";
import type { Log } from "../lib/log.ts";
import { NO_BACKEND, NO_ROUTE, PROMETHEUS_CONTENT_TYPE } from "../lib/metrics.ts";
import { type AdminHarness, startAdmin, startBackend } from "./admin_harness.ts";
import {
  captureLog,
  getText,
  refusingUrl,
  startTestBackend,
  startTestBalancer,
  type TestBackend,
  type TestBalancer,
  waitFor,
  writeAll,
} from "./helpers.ts";
import {
  findPromtool,
  parseExposition,
  PROMTOOL_MISSING,
  promtoolCheck,
  sampleValue,
} from "./prometheus.ts";

const TOKEN = "0123456789abcdef0123";
const ADMIN: Partial<Config> = { admin: { host: "127.0.0.1", port: 0 } };
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
/** The service a configuration without services runs as (lib/balancer.ts). */
const SERVICE = "default";

/** A balancer with the admin listener on 127.0.0.1:0. */
function startAdminBalancer(
  backends: string[],
  overrides: Partial<Config> = {},
  log?: Log,
): Promise<TestBalancer> {
  return startTestBalancer(backends, { ...ADMIN, ...overrides }, log);
}

interface AdminAnswer {
  status: number;
  headers: Headers;
  text: string;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: Record<string, unknown> | undefined;
}

/** One request to the admin listener; the body is always read. */
function admin(
  lb: TestBalancer,
  path: string,
  init: RequestInit & { token?: string } = {},
): Promise<AdminAnswer> {
  return call(`http://127.0.0.1:${lb.balancer.adminPort}`, path, init);
}

/** One request to the admin listener at `base`; the body is always read. */
async function call(
  base: string,
  path: string,
  init: RequestInit & { token?: string } = {},
): Promise<AdminAnswer> {
  const headers = new Headers(init.headers);
  if (init.token !== undefined) headers.set("authorization", `Bearer ${init.token}`);
  const response = await fetch(`${base}${path}`, { ...init, headers });
  const text = await response.text();
  let json: Record<string, unknown> | undefined;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, headers: response.headers, text, json };
}

/** POSTs `body` as JSON to an admin path. */
function post(lb: TestBalancer, path: string, body: unknown, token?: string) {
  return admin(lb, path, { method: "POST", body: JSON.stringify(body), token });
}

/** GET /api/backends, as the list of views. */
async function listBackends(lb: TestBalancer, token?: string): Promise<BackendView[]> {
  const answer = await admin(lb, "/api/backends", { token });
  assert.equal(answer.status, 200, answer.text);
  return answer.json!.backends as BackendView[];
}

async function viewOf(lb: TestBalancer, url: string): Promise<BackendView | undefined> {
  return (await listBackends(lb)).find((b) => b.url === url);
}

/** Sends `n` sequential GETs through the balancer; each must be a 200. Returns the bodies. */
async function traffic(lb: TestBalancer, n: number, path = "/"): Promise<string[]> {
  const texts: string[] = [];
  for (let i = 0; i < n; i++) {
    const { status, text } = await getText(`${lb.url}${path}`);
    assert.equal(status, 200, `request ${i + 1}: ${text}`);
    texts.push(text);
  }
  return texts;
}

function count(texts: string[], name: string): number {
  return texts.filter((t) => t === name).length;
}

/** A backend that answers its name. */
function named(name: string): Promise<TestBackend> {
  return startTestBackend(() => new Response(name));
}

/** A backend that holds each request until `release()`; `arrived` resolves on the first. */
async function holding(name: string) {
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  let arrive!: () => void;
  const arrived = new Promise<void>((resolve) => arrive = resolve);
  const backend = await startTestBackend(async (req) => {
    if (new URL(req.url).pathname === "/hold") {
      arrive();
      await released;
    }
    return new Response(name);
  });
  return { backend, release, arrived };
}

// ---------------------------------------------------------------------------------------------
// Reading

Deno.test("GET /api/backends shows each backend's weight, status, counters, latency and last check", async () => {
  await using a = await named("a");
  await using b = await named("b");
  await using c = await startTestBackend(() => new Response("oops", { status: 500 }));
  await using lb = await startAdminBalancer([a.url, b.url, c.url]);
  // The first health check round runs at start-up.
  assert.ok(await waitFor(() => lb.balancer.pool.backends.every((x) => x.lastCheck)));
  for (let i = 0; i < 6; i++) await getText(`${lb.url}/`);

  const answer = await admin(lb, "/api/backends");
  assert.equal(answer.status, 200);
  assert.equal(answer.headers.get("content-type"), "application/json");
  assert.equal(answer.headers.get("cache-control"), "no-store");
  assert.match(answer.json!.time as string, ISO_TIME);
  assert.equal(answer.json!.policy, "round-robin");
  const views = answer.json!.backends as BackendView[];
  assert.deepEqual(views.map((v) => v.url), [a.url, b.url, c.url]);
  for (const view of views) {
    assert.deepEqual(Object.keys(view).sort(), [
      "errors",
      "inflight",
      "lastCheck",
      "latencyMs",
      "requests",
      "service",
      "status",
      "url",
      "weight",
    ]);
    assert.equal(view.service, SERVICE);
    assert.equal(view.weight, 1);
    assert.equal(view.status, "up");
    assert.equal(view.inflight, 0);
    assert.equal(view.requests, 2, `${view.url}: 6 requests over 3 backends`);
    const { p50, p90, p99 } = view.latencyMs;
    for (const p of [p50, p90, p99]) assert.ok(typeof p === "number" && p >= 0, `${p}`);
    assert.ok(p50! <= p90! && p90! <= p99!, JSON.stringify(view.latencyMs));
    assert.match(view.lastCheck!.at, ISO_TIME);
  }
  assert.deepEqual(views.map((v) => v.errors), [0, 0, 2], "5xx answers count as errors");
  assert.deepEqual(views[0].lastCheck && { ...views[0].lastCheck, at: "" }, {
    ok: true,
    at: "",
    detail: "HTTP 200",
  });
  assert.deepEqual({ ...views[2].lastCheck!, at: "" }, { ok: false, at: "", detail: "HTTP 500" });
});

Deno.test("a backend with no traffic and no check yet shows null latencies and lastCheck", async () => {
  await using a = await named("a");
  await using lb = await startAdminBalancer([a.url]);
  const added = await post(lb, "/api/backends", { url: refusingUrl() });
  assert.equal(added.status, 201);
  const view = added.json!.backend as BackendView;
  assert.deepEqual(view.latencyMs, { p50: null, p90: null, p99: null });
  assert.equal(view.lastCheck, null);
  assert.equal(view.requests, 0);
});

// ---------------------------------------------------------------------------------------------
// Changing the pool

Deno.test("POST /api/backends adds a backend (201) that then receives traffic", async () => {
  await using a = await named("a");
  await using b = await named("b");
  await using lb = await startAdminBalancer([a.url]);
  assert.deepEqual(await traffic(lb, 2), ["a", "a"]);

  const added = await post(lb, "/api/backends", { url: b.url, weight: 2 });
  assert.equal(added.status, 201, added.text);
  const view = added.json!.backend as BackendView;
  assert.equal(view.url, b.url);
  assert.equal(view.weight, 2);
  assert.equal(view.status, "up");
  assert.deepEqual((await listBackends(lb)).map((v) => [v.url, v.weight]), [
    [a.url, 1],
    [b.url, 2],
  ]);
  const texts = await traffic(lb, 30);
  assert.equal(count(texts, "b"), 20, "weight 2 of 3");
  assert.equal(count(texts, "a"), 10);
  assert.equal(b.received.length, 20);
});

Deno.test("POST /api/backends refuses a duplicate (409) and bad input (400), changing nothing", async () => {
  await using a = await named("a");
  await using lb = await startAdminBalancer([a.url]);
  for (const url of [a.url, `${a.url}/`, a.url.replace("http:", "HTTP:")]) {
    const answer = await post(lb, "/api/backends", { url });
    assert.equal(answer.status, 409, `${url}: ${answer.text}`);
    assert.match(answer.json!.error as string, /already in the pool/);
  }
  const bad: [unknown, RegExp][] = [
    [{ url: "ftp://x.example" }, /not an absolute http\(s\) URL/],
    [{ url: "not-a-url" }, /not an absolute http\(s\) URL/],
    [{ url: "http://127.0.0.1:2100\n3" }, /a space or a control character/],
    [{ url: "http://x.example:8080/app" }, /origin only/],
    [{ url: "http://user:pw@x.example" }, /credentials/],
    [{}, /send \{"url"/],
    [{ url: 42 }, /send \{"url"/],
    [{ url: "http://x.example", weight: -1 }, /weight must be a whole number/],
    [{ url: "http://x.example", weight: 1.5 }, /weight must be a whole number/],
    [{ url: "http://x.example", weight: "3" }, /weight must be a whole number/],
    ["http://x.example", /send \{"url"/],
  ];
  for (const [body, message] of bad) {
    const answer = await post(lb, "/api/backends", body);
    assert.equal(answer.status, 400, `${JSON.stringify(body)}: ${answer.text}`);
    assert.match(answer.json!.error as string, message);
  }
  const notJson = await admin(lb, "/api/backends", { method: "POST", body: "{url:" });
  assert.equal(notJson.status, 400);
  assert.deepEqual((await listBackends(lb)).map((v) => v.url), [a.url]);
});

Deno.test("DELETE /api/backends drains a busy backend: its request completes, then it leaves", async () => {
  await using a = await named("a");
  const held = await holding("b");
  await using b = held.backend;
  await using lb = await startAdminBalancer([a.url, b.url]);

  // Send /hold until one lands on b (round-robin: within two requests); a answers at once.
  let pending: Promise<{ status: number; text: string }> | undefined;
  for (let i = 0; i < 4 && pending === undefined; i++) {
    const request = getText(`${lb.url}/hold`);
    const first = await Promise.race([request.then(() => "done"), held.arrived.then(() => "b")]);
    if (first === "b") pending = request;
    else assert.equal((await request).text, "a");
  }
  assert.ok(pending, "a request is held on b");

  const removed = await admin(lb, `/api/backends?url=${encodeURIComponent(b.url)}`, {
    method: "DELETE",
  });
  assert.equal(removed.status, 202, removed.text);
  assert.equal((removed.json!.backend as BackendView).status, "draining");
  assert.equal((removed.json!.backend as BackendView).inflight, 1);
  const draining = (await viewOf(lb, b.url))!;
  assert.deepEqual([draining.status, draining.inflight], ["draining", 1], "shows in GET at once");
  // A backend being removed cannot be switched back on.
  const enable = await post(lb, "/api/backends/enable", { url: b.url });
  assert.equal(enable.status, 409, enable.text);

  const before = b.received.length;
  assert.deepEqual(await traffic(lb, 6), ["a", "a", "a", "a", "a", "a"]);
  assert.equal(b.received.length, before, "no new request reached the draining backend");
  assert.ok(await viewOf(lb, b.url), "still listed while its request is in flight");

  held.release();
  const { status, text } = await pending!;
  assert.equal(status, 200);
  assert.equal(text, "b", "the in-flight request completed normally");
  assert.ok(await waitFor(() => lb.balancer.pool.find(b.url) === undefined));
  assert.deepEqual((await listBackends(lb)).map((v) => v.url), [a.url]);
  const again = await admin(lb, `/api/backends?url=${encodeURIComponent(b.url)}`, {
    method: "DELETE",
  });
  assert.equal(again.status, 404);
});

Deno.test("DELETE /api/backends removes an idle backend at once; it may be added back", async () => {
  await using a = await named("a");
  await using b = await named("b");
  await using lb = await startAdminBalancer([a.url, b.url]);
  const removed = await admin(lb, `/api/backends?url=${b.url}/`, { method: "DELETE" });
  assert.equal(removed.status, 202, "found by its origin");
  assert.deepEqual((await listBackends(lb)).map((v) => v.url), [a.url]);
  assert.deepEqual(await traffic(lb, 3), ["a", "a", "a"]);
  assert.equal((await post(lb, "/api/backends", { url: b.url })).status, 201);
  assert.equal(count(await traffic(lb, 4), "b"), 2);
});

Deno.test("POST /api/backends of a backend still draining revives it (200) with its requests and max-conns", async () => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  let arrived = 0;
  await using b = await startTestBackend(async (req) => {
    if (new URL(req.url).pathname === "/hold") {
      arrived++;
      await released;
    }
    return new Response("b");
  });
  await using lb = await startAdminBalancer([b.url], { maxConns: 2 });
  // Released whatever happens: a held request would keep the servers from closing.
  using _release = { [Symbol.dispose]: () => release() };
  const held = [getText(`${lb.url}/hold`), getText(`${lb.url}/hold`)];
  assert.ok(await waitFor(() => arrived === 2), "two requests are held on b");

  const removed = await admin(lb, `/api/backends?url=${b.url}`, { method: "DELETE" });
  assert.equal(removed.status, 202, removed.text);
  const added = await post(lb, "/api/backends", { url: b.url, weight: 2 });
  assert.equal(added.status, 200, `revived, not created: ${added.text}`);
  const view = added.json!.backend as BackendView;
  assert.deepEqual([view.status, view.inflight, view.requests, view.weight], ["up", 2, 2, 2]);
  assert.deepEqual((await listBackends(lb)).map((v) => [v.url, v.inflight]), [[b.url, 2]]);
  const again = await post(lb, "/api/backends", { url: b.url });
  assert.equal(again.status, 409, "now it is in the pool");

  const full = await getText(`${lb.url}/`);
  assert.equal(full.status, 503, "max-conns 2 still counts the two held requests");
  assert.equal(b.received.length, 2);
  release();
  for (const request of held) assert.equal((await request).text, "b");
  assert.ok(await waitFor(() => lb.balancer.pool.find(b.url)?.inflight === 0));
  assert.deepEqual(await traffic(lb, 2), ["b", "b"], "it stayed in the pool");
});

Deno.test("drain, disable and enable show at once and steer new requests", async () => {
  await using a = await named("a");
  await using b = await named("b");
  await using lb = await startAdminBalancer([a.url, b.url]);
  assert.equal(count(await traffic(lb, 4), "b"), 2);

  for (const [action, status] of [["drain", "draining"], ["disable", "disabled"]]) {
    const answer = await post(lb, `/api/backends/${action}`, { url: b.url });
    assert.equal(answer.status, 200, answer.text);
    assert.equal((answer.json!.backend as BackendView).status, status);
    assert.equal((await viewOf(lb, b.url))!.status, status, `${action} shows in GET at once`);
    assert.equal((await viewOf(lb, a.url))!.status, "up");
    const before = b.received.length;
    assert.equal(count(await traffic(lb, 6), "a"), 6, `${action}: everything goes to a`);
    assert.equal(b.received.length, before, `${action}: b receives nothing new`);

    const enabled = await post(lb, "/api/backends/enable", { url: b.url });
    assert.equal(enabled.status, 200);
    assert.equal((enabled.json!.backend as BackendView).status, "up");
    assert.equal((await viewOf(lb, b.url))!.status, "up");
    const texts = await traffic(lb, 6);
    assert.equal(count(texts, "b"), 3, `enable after ${action} restores b's share`);
  }
  assert.equal(lb.balancer.pool.backends.length, 2, "drain alone never removes a backend");
});

Deno.test("POST /api/backends/weight changes traffic shares: 3:1 gives 30 and 10 of 40", async () => {
  await using a = await named("a");
  await using b = await named("b");
  await using lb = await startAdminBalancer([a.url, b.url]);
  assert.equal(count(await traffic(lb, 4), "a"), 2);

  const answer = await post(lb, "/api/backends/weight", { url: a.url, weight: 3 });
  assert.equal(answer.status, 200, answer.text);
  assert.equal((answer.json!.backend as BackendView).weight, 3);
  assert.equal((await viewOf(lb, a.url))!.weight, 3);
  const texts = await traffic(lb, 40);
  assert.deepEqual([count(texts, "a"), count(texts, "b")], [30, 10]);

  assert.equal((await post(lb, "/api/backends/weight", { url: b.url, weight: 0 })).status, 200);
  assert.equal(count(await traffic(lb, 8), "a"), 8, "weight 0 sends nothing");

  for (const weight of [-1, 1.5, "2", null, 1_000_001]) {
    const bad = await post(lb, "/api/backends/weight", { url: a.url, weight });
    assert.equal(bad.status, 400, `weight ${weight}: ${bad.text}`);
  }
  assert.deepEqual((await listBackends(lb)).map((v) => v.weight), [3, 0]);
});

Deno.test("an unknown backend is 404 and an unknown path 404", async () => {
  await using a = await named("a");
  await using lb = await startAdminBalancer([a.url]);
  const unknown = "http://127.0.0.1:1";
  for (const action of ["drain", "enable", "disable", "weight"]) {
    const answer = await post(lb, `/api/backends/${action}`, { url: unknown, weight: 1 });
    assert.equal(answer.status, 404, `${action}: ${answer.text}`);
    assert.match(answer.json!.error as string, /no such backend/);
  }
  const deleted = await admin(lb, `/api/backends?url=${unknown}`, { method: "DELETE" });
  assert.equal(deleted.status, 404);
  assert.equal((await admin(lb, "/api/backends", { method: "DELETE" })).status, 404);
  for (const path of ["/api/nothing", "/api/backends/", "/api/backends/drain/x", "/metricsx"]) {
    assert.equal((await admin(lb, path)).status, 404, path);
  }
  assert.equal((await viewOf(lb, a.url))!.status, "up");
});

Deno.test("a change request without a backend URL is 400, not 404", async () => {
  await using a = await named("a");
  await using lb = await startAdminBalancer([a.url]);
  for (const action of ["drain", "enable", "disable", "weight"]) {
    for (const body of ["not json", JSON.stringify({}), JSON.stringify({ url: 7 }), "[]"]) {
      const answer = await admin(lb, `/api/backends/${action}`, { method: "POST", body });
      assert.equal(answer.status, 400, `${action} ${body}: ${answer.text}`);
    }
  }
  assert.equal((await viewOf(lb, a.url))!.status, "up");
});

/**
 * Sends `head` to the admin listener on a raw socket, then (for a chunked request) 64 KiB chunks
 * of spaces until the status line comes back or `maxBodyBytes` are sent. Returns the status
 * (NaN when none came within 10 s) and how many body bytes were written by then.
 */
async function postUntilAnswered(port: number, head: string, maxBodyBytes = 0) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const close = () => {
    try {
      conn.close(); // also ends a write the balancer no longer reads
    } catch { /* closed already */ }
  };
  const timer = setTimeout(close, 10_000);
  let answered = false;
  const statusLine = (async () => {
    const buffer = new Uint8Array(4096);
    let text = "";
    for (let i = 0; i < 100 && !text.includes("\r\n"); i++) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    answered = true;
    close();
    return text;
  })().catch(() => "");
  const encoder = new TextEncoder();
  const chunk = encoder.encode(`10000\r\n${" ".repeat(0x10000)}\r\n`);
  let sent = 0;
  try {
    await writeAll(conn, encoder.encode(head));
    while (!answered && sent < maxBodyBytes) {
      await writeAll(conn, chunk);
      sent += 0x10000;
    }
    if (!answered && maxBodyBytes > 0) await writeAll(conn, encoder.encode("0\r\n\r\n"));
  } catch {
    // closed once the answer came, or reset by the balancer after it
  }
  const line = await statusLine;
  clearTimeout(timer);
  close();
  return { status: Number(/^HTTP\/1\.1 (\d{3}) /.exec(line)?.[1]), sent };
}

Deno.test("a change request's body over 64 KiB gets 413 with or without Content-Length; up to it works", async () => {
  await using a = await named("a");
  await using lb = await startAdminBalancer([a.url]);
  const port = lb.balancer.adminPort!;

  // The length alone says too much: answered before a byte of the body is sent.
  const drain = "POST /api/backends/drain HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  const declared = await postUntilAnswered(port, `${drain}Content-Length: 400000000\r\n\r\n`);
  assert.equal(declared.status, 413);

  // No length: the balancer counts, stops reading past the limit and answers 413.
  const total = 64 * 1024 * 1024;
  const chunked = await postUntilAnswered(
    port,
    `${drain}Transfer-Encoding: chunked\r\n\r\n`,
    total,
  );
  assert.equal(chunked.status, 413);
  assert.ok(chunked.sent < total, "the answer came before the whole body was sent");

  // Exactly the limit is read; one byte more is refused, changing nothing.
  const body = JSON.stringify({ url: a.url });
  const atLimit = body + " ".repeat(MAX_ADMIN_BODY_BYTES - body.length);
  const drained = await admin(lb, "/api/backends/drain", { method: "POST", body: atLimit });
  assert.equal(drained.status, 200, drained.text);
  const over = await admin(lb, "/api/backends/enable", { method: "POST", body: `${atLimit} ` });
  assert.equal(over.status, 413);
  assert.equal(over.json!.error, "request body larger than 65536 bytes");
  assert.equal((await viewOf(lb, a.url))!.status, "draining");
  assert.equal((await post(lb, "/api/backends/enable", { url: a.url })).status, 200);
});

Deno.test("wrong methods get 405 with Allow", async () => {
  await using a = await named("a");
  await using lb = await startAdminBalancer([a.url]);
  const cases: [string, string, string][] = [
    ["PUT", "/api/backends", "GET, HEAD, POST, DELETE"],
    ["PATCH", "/api/backends", "GET, HEAD, POST, DELETE"],
    ["GET", "/api/backends/drain", "POST"],
    ["GET", "/api/backends/enable", "POST"],
    ["DELETE", "/api/backends/disable", "POST"],
    ["PUT", "/api/backends/weight", "POST"],
    ["POST", "/metrics", "GET, HEAD"],
    ["POST", "/healthz", "GET, HEAD"],
    ["DELETE", "/readyz", "GET, HEAD"],
    ["POST", "/", "GET, HEAD"],
  ];
  for (const [method, path, allow] of cases) {
    const answer = await admin(lb, path, { method });
    assert.equal(answer.status, 405, `${method} ${path}`);
    assert.equal(answer.headers.get("allow"), allow, `${method} ${path}`);
  }
  const head = await admin(lb, "/api/backends", { method: "HEAD" });
  assert.equal(head.status, 200, "HEAD is allowed wherever GET is");
  assert.equal(head.text, "");
});

Deno.test("a GET never changes anything, whatever its path and query", async () => {
  await using a = await named("a");
  await using b = await named("b");
  await using lb = await startAdminBalancer([a.url, b.url]);
  const state = () =>
    lb.balancer.pool.backends.map((x) => `${x.url} ${x.admin} ${x.state} ${x.weight}`);
  const before = state();
  const q = `url=${encodeURIComponent(a.url)}`;
  for (
    const path of [
      `/api/backends/drain?${q}`,
      `/api/backends/disable?${q}`,
      `/api/backends/weight?${q}&weight=0`,
      `/api/backends?${q}`,
      `/api/backends?${q}&method=DELETE`,
      "/metrics",
      "/healthz",
      "/readyz",
      "/",
    ]
  ) {
    for (const method of ["GET", "HEAD"]) {
      const answer = await admin(lb, path, { method });
      assert.ok(answer.status === 200 || answer.status === 405, `${method} ${path}`);
      assert.deepEqual(state(), before, `${method} ${path} changed nothing`);
    }
  }
  assert.equal(lb.balancer.pool.backends.length, 2);
});

// ---------------------------------------------------------------------------------------------
// Authentication and probes

Deno.test("with a token, requests without it or with a wrong one get 401 and are logged", async () => {
  await using a = await named("a");
  const log = captureLog();
  await using lb = await startAdminBalancer([a.url], { adminToken: TOKEN }, log);
  const wrong = "0123456789abcdef0124";
  const attempts: [string, RequestInit & { token?: string }, string][] = [
    ["/api/backends", {}, "no"],
    ["/api/backends", { token: wrong }, "wrong"],
    ["/api/backends", { token: TOKEN.slice(0, -1) }, "wrong"],
    // The token with more after it: a comparison that stops at the shorter length lets it in.
    ["/api/backends", { token: `${TOKEN}0` }, "wrong"],
    ["/api/backends", { headers: { authorization: TOKEN } }, "wrong"],
    ["/api/backends", { headers: { authorization: `Basic ${btoa(`x:${TOKEN}`)}` } }, "wrong"],
    ["/metrics", {}, "no"],
    ["/api/backends/drain", { method: "POST", body: JSON.stringify({ url: a.url }) }, "no"],
    ["/api/backends/drain", {
      method: "POST",
      body: JSON.stringify({ url: a.url }),
      token: wrong,
    }, "wrong"],
    ["/api/nothing", {}, "no"],
  ];
  for (const [path, init, which] of attempts) {
    const lines = log.lines.length;
    const answer = await admin(lb, path, init);
    assert.equal(answer.status, 401, `${path} ${JSON.stringify(init)}`);
    assert.equal(answer.headers.get("www-authenticate"), 'Bearer realm="admin"');
    assert.deepEqual(answer.json, { error: "unauthorized" });
    const method = init.method ?? "GET";
    assert.deepEqual(log.lines.slice(lines), [
      `WARN Admin: rejected ${method} ${path} from 127.0.0.1 (${which} token)`,
    ]);
  }
  assert.equal(lb.balancer.pool.backends[0].status, "up", "the refused drain did nothing");
  assert.ok(
    !log.lines.some((l) => l.includes(TOKEN) || l.includes(wrong)),
    "tokens never reach the log",
  );

  const listed = await listBackends(lb, TOKEN);
  assert.deepEqual(listed.map((v) => v.url), [a.url]);
  const metrics = await admin(lb, "/metrics", { token: TOKEN });
  assert.equal(metrics.status, 200);
  const drained = await post(lb, "/api/backends/drain", { url: a.url }, TOKEN);
  assert.equal(drained.status, 200);
  assert.equal(lb.balancer.pool.backends[0].status, "draining");
  // The auth scheme is case-insensitive (RFC 9110 section 11.1).
  const lower = await admin(lb, "/api/backends", { headers: { authorization: `bearer ${TOKEN}` } });
  assert.equal(lower.status, 200);
});

Deno.test("/healthz, /readyz and the dashboard page answer without a token", async () => {
  await using a = await named("a");
  await using lb = await startAdminBalancer([a.url], { adminToken: TOKEN });
  const healthz = await admin(lb, "/healthz");
  assert.deepEqual([healthz.status, healthz.text], [200, "ok\n"]);
  const readyz = await admin(lb, "/readyz");
  assert.deepEqual([readyz.status, readyz.text], [200, "ready\n"]);
  const page = await admin(lb, "/");
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type")!, /^text\/html/);
  assert.equal((await admin(lb, "/api/backends")).status, 401, "but the API needs it");
});

Deno.test("/readyz is 503 while no backend is available, and 200 again after", async () => {
  await using a = await named("a");
  await using b = await named("b");
  await using lb = await startAdminBalancer([a.url, b.url]);
  assert.equal((await admin(lb, "/readyz")).status, 200);
  assert.equal((await post(lb, "/api/backends/disable", { url: a.url })).status, 200);
  assert.equal((await admin(lb, "/readyz")).status, 200, "one backend left is enough");
  assert.equal((await post(lb, "/api/backends/drain", { url: b.url })).status, 200);
  const readyz = await admin(lb, "/readyz");
  assert.deepEqual([readyz.status, readyz.text], [503, "no backend available\n"]);
  assert.equal((await getText(`${lb.url}/`)).status, 503, "the proxy agrees");
  assert.equal((await admin(lb, "/healthz")).status, 200, "the process itself is alive");
  assert.equal((await post(lb, "/api/backends/enable", { url: b.url })).status, 200);
  assert.equal((await admin(lb, "/readyz")).status, 200);
});

// ---------------------------------------------------------------------------------------------
// Metrics

/**
 * A balancer over a refusing address and a working backend, after a health check round and
 * four requests: one of them was refused, marked its backend down and was retried.
 */
async function busyBalancer(good: TestBackend, refused: string): Promise<TestBalancer> {
  const lb = await startAdminBalancer([refused, good.url]);
  try {
    assert.ok(await waitFor(() => lb.balancer.pool.backends.every((b) => b.lastCheck)));
    assert.deepEqual(await traffic(lb, 4), ["good", "good", "good", "good"]);
    return lb;
  } catch (error) {
    await lb[Symbol.asyncDispose]();
    throw error;
  }
}

Deno.test("GET /metrics is valid Prometheus text with requests, retries, checks and states", async () => {
  await using good = await named("good");
  const refused = refusingUrl();
  await using lb = await busyBalancer(good, refused);
  const answer = await admin(lb, "/metrics");
  assert.equal(answer.status, 200);
  assert.equal(answer.headers.get("content-type"), PROMETHEUS_CONTENT_TYPE);
  const families = parseExposition(answer.text);
  const value = (name: string, labels: Record<string, string> = {}) =>
    sampleValue(families, name, labels);
  const g = { service: SERVICE, backend: good.url };
  const r = { service: SERVICE, backend: refused };

  assert.equal(families.get("lb_requests_total")!.type, "counter");
  assert.equal(value("lb_requests_total", { ...g, code: "2xx" }), 4);
  assert.equal(value("lb_requests_total", { ...g, code: "5xx" }), 0);
  assert.equal(families.get("lb_request_duration_seconds")!.type, "histogram");
  assert.equal(value("lb_request_duration_seconds_count", g), 4);
  assert.equal(value("lb_request_duration_seconds_bucket", { ...g, le: "+Inf" }), 4);
  assert.ok(value("lb_request_duration_seconds_sum", g) > 0);
  assert.equal(value("lb_retries_total"), 1, "the refused attempt was retried once");
  assert.equal(value("lb_retry_budget_exhausted_total"), 0);
  assert.ok(value("lb_health_checks_total", { ...g, result: "pass" }) >= 1);
  assert.ok(value("lb_health_checks_total", { ...r, result: "fail" }) >= 1);
  assert.equal(
    value("lb_backend_state_transitions_total", { ...r, from: "up", to: "down" }),
    1,
  );
  assert.equal(value("lb_backend_up", g), 1);
  assert.equal(value("lb_backend_up", r), 0);
  assert.equal(value("lb_backend_ejected", g), 0);
  assert.equal(value("lb_backend_ejected", r), 0);
  assert.equal(value("lb_backend_inflight", g), 0);
  assert.equal(value("lb_backend_weight", g), 1);
  assert.equal(families.get("lb_backend_up")!.type, "gauge");

  // Admin changes show in the gauges at the next scrape.
  assert.equal((await post(lb, "/api/backends/disable", { url: good.url })).status, 200);
  const after = parseExposition((await admin(lb, "/metrics")).text);
  assert.equal(sampleValue(after, "lb_backend_up", g), 0);
  assert.equal(
    sampleValue(after, "lb_backend_state_transitions_total", { ...g, from: "up", to: "disabled" }),
    1,
  );
});

Deno.test("GET /metrics shows lb_backend_ejected 1 while a backend is ejected", async () => {
  await using bad = await startTestBackend(() => new Response("broken", { status: 500 }));
  await using good = await named("good");
  await using lb = await startAdminBalancer([bad.url, good.url], {
    ejectOn5xx: true,
    ejectAfter: 1,
    ejectTime: 60_000,
  });
  const statuses: number[] = [];
  for (let i = 0; i < 4; i++) statuses.push((await getText(`${lb.url}/`)).status);
  assert.deepEqual(statuses.sort(), [200, 200, 200, 500], "one 500, then bad is ejected");
  const families = parseExposition((await admin(lb, "/metrics")).text);
  const b = { service: SERVICE, backend: bad.url };
  assert.equal(sampleValue(families, "lb_backend_ejected", b), 1);
  assert.equal(sampleValue(families, "lb_backend_up", b), 0);
  assert.equal(
    sampleValue(families, "lb_backend_ejected", { service: SERVICE, backend: good.url }),
    0,
  );
  assert.equal(sampleValue(families, "lb_requests_total", { ...b, code: "5xx" }), 1);
  const transition = { ...b, from: "up", to: "ejected" };
  assert.equal(sampleValue(families, "lb_backend_state_transitions_total", transition), 1);
  assert.equal((await viewOf(lb, bad.url))!.status, "ejected");
});

const promtool = findPromtool();
if (!promtool) console.log(PROMTOOL_MISSING);

Deno.test({
  name: "GET /metrics of a busy balancer passes promtool check metrics",
  ignore: !promtool,
  async fn() {
    await using good = await named("good");
    await using lb = await busyBalancer(good, refusingUrl());
    const answer = await admin(lb, "/metrics");
    assert.equal(answer.status, 200);
    const { code, report } = await promtoolCheck(promtool!, answer.text);
    assert.equal(code, 0, report);
    assert.equal(report.trim(), "", "no lint warnings either");
  },
});

// ---------------------------------------------------------------------------------------------
// Alerts and access log

Deno.test("the alert webhook receives a JSON POST when a backend goes down", async () => {
  const received: { method: string; type: string | null; path: string; body: string }[] = [];
  const hook = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    received.push({
      method: req.method,
      type: req.headers.get("content-type"),
      path: new URL(req.url).pathname,
      body: await req.text(),
    });
    return new Response("thanks");
  });
  await using _hook = { [Symbol.asyncDispose]: () => hook.shutdown() };
  await using a = await named("a");
  await using b = await named("b");
  await using lb = await startAdminBalancer([a.url, b.url], {
    alertWebhook: `http://127.0.0.1:${hook.addr.port}/hooks/lb?key=x`,
    healthInterval: 50,
    fall: 1,
  });
  const killedAt = Date.now();
  await a.close();
  assert.ok(
    await waitFor(() => received.some((r) => JSON.parse(r.body).backend === a.url), 10_000),
    "an alert arrived",
  );
  const alert = received.find((r) => JSON.parse(r.body).backend === a.url)!;
  assert.equal(alert.method, "POST");
  assert.equal(alert.type, "application/json");
  assert.equal(alert.path, "/hooks/lb");
  const event = JSON.parse(alert.body);
  assert.deepEqual(Object.keys(event), ["event", "backend", "from", "to", "reason", "time"]);
  assert.equal(event.event, "backend_state_change");
  assert.equal(event.from, "up");
  assert.equal(event.to, "down");
  assert.match(event.reason, /failed check|connection failed/);
  assert.match(event.time, ISO_TIME);
  assert.ok(Date.parse(event.time) >= killedAt - 1000 && Date.parse(event.time) <= Date.now());
  assert.ok(!received.some((r) => JSON.parse(r.body).backend === b.url), "b did not change");
  assert.equal((await viewOf(lb, a.url))!.status, "down");
});

/** Runs three requests through a balancer logging to a temp file; returns the file's lines. */
async function accessLogLines(format: "json" | "combined"): Promise<string[]> {
  const path = await Deno.makeTempFile({ prefix: "lb-access-", suffix: ".log" });
  try {
    await using a = await startTestBackend((req) =>
      new URL(req.url).pathname === "/missing"
        ? new Response("nope!", { status: 404 })
        : new Response("hello")
    );
    const lb = await startAdminBalancer([a.url], { accessLog: path, accessLogFormat: format });
    try {
      const headers = { "user-agent": "admin-test/1.0", referer: "http://ref.example/" };
      assert.equal((await getText(`${lb.url}/a?x=1`, { headers })).status, 200);
      const posted = await getText(`${lb.url}/b`, { method: "POST", body: "data" });
      assert.equal(posted.status, 200);
      assert.equal((await getText(`${lb.url}/missing`)).status, 404);
    } finally {
      await lb.balancer.shutdown(1000);
    }
    const text = await Deno.readTextFile(path);
    assert.ok(text.endsWith("\n"), "complete lines only");
    return text.slice(0, -1).split("\n").map((line) => line.replaceAll(a.url, "BACKEND"));
  } finally {
    await Deno.remove(path);
  }
}

Deno.test("accessLogFormat json writes one JSON line per request, all written by shutdown", async () => {
  const lines = await accessLogLines("json");
  assert.equal(lines.length, 3, lines.join("\n"));
  const records = lines.map((line) => JSON.parse(line));
  for (const record of records) {
    for (const key of ["time", "clientIp", "method", "path", "status", "bytes", "durationMs"]) {
      assert.ok(key in record, `${key} in ${JSON.stringify(record)}`);
    }
    assert.match(record.time, ISO_TIME);
    assert.equal(record.clientIp, "127.0.0.1");
    assert.equal(record.backend, "BACKEND");
    assert.equal(record.attempts, 1);
    assert.ok(typeof record.durationMs === "number" && record.durationMs >= 0);
  }
  assert.deepEqual(
    records.map((r) => [r.method, r.path, r.status, r.bytes]),
    [["GET", "/a?x=1", 200, 5], ["POST", "/b", 200, 5], ["GET", "/missing", 404, 5]],
  );
  assert.equal(records[0].userAgent, "admin-test/1.0");
  assert.equal(records[0].referer, "http://ref.example/");
});

Deno.test("accessLogFormat combined writes Apache combined lines plus backend and attempts", async () => {
  const lines = await accessLogLines("combined");
  assert.equal(lines.length, 3, lines.join("\n"));
  const time = String.raw`\[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\]`;
  const tail = String
    .raw` backend=BACKEND attempts=1 duration_ms=\d+\.\d{3} request_id=[0-9a-f-]{36}$`;
  const expected = [
    String.raw`"GET /a\?x=1 HTTP/1\.1" 200 5 "http://ref\.example/" "admin-test/1\.0"`,
    String.raw`"POST /b HTTP/1\.1" 200 5 "-" "Deno/[\d.]+"`,
    String.raw`"GET /missing HTTP/1\.1" 404 5 "-" "Deno/[\d.]+"`,
  ];
  lines.forEach((line, i) => {
    assert.match(line, new RegExp(`^127\\.0\\.0\\.1 - - ${time} ${expected[i]}${tail}`));
  });
});

// ---------------------------------------------------------------------------------------------
// Services and routes: the handler on its own (tests/admin_harness.ts), over real pools

const ROUTES: RouteView[] = [
  { name: "api", match: "host api.example, path /v1/*", action: "service api" },
  { name: "old", match: "path /old/*", action: "redirect 308 /new/" },
  { name: "site", match: "any", action: "service web" },
];

/** Two services: `api` (two backends, round-robin) and `web` (one, least-conn). */
function twoServices(options: { token?: string } = {}) {
  const a1 = startBackend(() => new Response("a1"));
  const a2 = startBackend(() => new Response("a2"));
  const w1 = startBackend(() => new Response("w1"));
  const h = startAdmin({
    services: [
      { name: "api", backends: [a1.url, a2.url] },
      { name: "web", backends: [w1.url], policy: "least-conn" },
    ],
    routes: ROUTES,
    token: options.token,
  });
  return {
    h,
    a1,
    a2,
    w1,
    async [Symbol.asyncDispose]() {
      await h[Symbol.asyncDispose]();
      await Promise.all([a1.close(), a2.close(), w1.close()]);
    },
  };
}

function postTo(h: AdminHarness, path: string, body: unknown) {
  return call(h.url, path, { method: "POST", body: JSON.stringify(body) });
}

interface ServiceStatus {
  name: string;
  policy: string;
  available: number;
  backends: BackendView[];
}

async function servicesOf(h: AdminHarness): Promise<ServiceStatus[]> {
  const answer = await call(h.url, "/api/services");
  assert.equal(answer.status, 200, answer.text);
  return answer.json!.services as ServiceStatus[];
}

Deno.test("GET /api/services lists each service's policy, available count and backends, and the routes", async () => {
  await using s = twoServices();
  const { h, a1, a2, w1 } = s;
  for (let i = 0; i < 4; i++) assert.equal(await h.send("api", "api"), 200);
  assert.equal(await h.send("site", "web"), 200);

  const answer = await call(h.url, "/api/services");
  assert.equal(answer.status, 200);
  assert.equal(answer.headers.get("content-type"), "application/json");
  assert.deepEqual(Object.keys(answer.json!).sort(), ["routes", "services", "time"]);
  assert.match(answer.json!.time as string, ISO_TIME);
  assert.deepEqual(answer.json!.routes, ROUTES);
  const services = answer.json!.services as ServiceStatus[];
  assert.deepEqual(
    services.map((x) => [x.name, x.policy, x.available, x.backends.map((b) => b.url)]),
    [["api", "round-robin", 2, [a1.url, a2.url]], ["web", "least-conn", 1, [w1.url]]],
  );
  for (const service of services) {
    for (const view of service.backends) {
      assert.equal(view.service, service.name);
      assert.equal(view.status, "up");
    }
  }
  assert.deepEqual(services[0].backends.map((b) => b.requests), [2, 2]);
  assert.deepEqual(services[1].backends.map((b) => b.requests), [1]);

  // `available` follows the pool: a disabled backend is not available.
  assert.equal(
    (await postTo(h, "/api/backends/disable", { service: "api", url: a2.url })).status,
    200,
  );
  assert.deepEqual((await servicesOf(h)).map((x) => x.available), [1, 1]);
  const head = await call(h.url, "/api/services", { method: "HEAD" });
  assert.deepEqual([head.status, head.text], [200, ""]);
  const post = await call(h.url, "/api/services", { method: "POST", body: "{}" });
  assert.deepEqual([post.status, post.headers.get("allow")], [405, "GET, HEAD"]);
});

Deno.test("GET /api/services needs the token like the rest of the API", async () => {
  await using s = twoServices({ token: TOKEN });
  const refused = await call(s.h.url, "/api/services");
  assert.equal(refused.status, 401);
  assert.deepEqual(s.h.log.lines, [
    "WARN Admin: rejected GET /api/services from 127.0.0.1 (no token)",
  ]);
  const answer = await call(s.h.url, "/api/services", { token: TOKEN });
  assert.equal(answer.status, 200);
  assert.equal((answer.json!.services as ServiceStatus[]).length, 2);
});

Deno.test("GET /api/services reads the services per request: a reload that replaces them shows at once", async () => {
  await using s = twoServices();
  const { h, w1 } = s;
  h.services = [h.service("web"), h.createService({ name: "static", backends: [w1.url] })];
  h.routes = [ROUTES[2]];
  const answer = await call(h.url, "/api/services");
  const services = answer.json!.services as ServiceStatus[];
  assert.deepEqual(services.map((x) => x.name), ["web", "static"]);
  assert.deepEqual(answer.json!.routes, [ROUTES[2]]);
  // One URL in two services: listed once under each.
  assert.deepEqual(services.map((x) => x.backends.map((b) => [b.service, b.url])), [
    [["web", w1.url]],
    [["static", w1.url]],
  ]);
});

Deno.test("GET /api/backends lists every backend with its service; policy only with one service", async () => {
  await using s = twoServices();
  const { h, a1, a2, w1 } = s;
  const all = await call(h.url, "/api/backends");
  assert.equal(all.status, 200);
  assert.deepEqual(Object.keys(all.json!).sort(), ["backends", "time"], "no single policy to show");
  assert.deepEqual((all.json!.backends as BackendView[]).map((b) => [b.service, b.url]), [
    ["api", a1.url],
    ["api", a2.url],
    ["web", w1.url],
  ]);
  const web = await call(h.url, "/api/backends?service=web");
  assert.equal(web.status, 200);
  assert.equal(web.json!.policy, "least-conn", "one service named: its policy");
  assert.deepEqual((web.json!.backends as BackendView[]).map((b) => b.url), [w1.url]);
  const unknown = await call(h.url, "/api/backends?service=nope");
  assert.equal(unknown.status, 404);
  assert.equal(unknown.json!.error, 'no such service "nope" (services: api, web)');

  h.services = [h.service("api")];
  const one = await call(h.url, "/api/backends");
  assert.equal(one.json!.policy, "round-robin", "old clients still find the policy");
});

Deno.test("with several services a change names its service: none is 400, an unknown one 404", async () => {
  await using s = twoServices();
  const { h, a1, w1 } = s;
  const before = JSON.stringify(await servicesOf(h));
  const changes: [string, string, unknown][] = [
    ["POST", "/api/backends", { url: "http://127.0.0.1:1" }],
    ["POST", "/api/backends/drain", { url: a1.url }],
    ["POST", "/api/backends/enable", { url: a1.url }],
    ["POST", "/api/backends/disable", { url: a1.url }],
    ["POST", "/api/backends/weight", { url: a1.url, weight: 2 }],
    ["DELETE", `/api/backends?url=${encodeURIComponent(a1.url)}`, undefined],
  ];
  for (const [method, path, body] of changes) {
    const init = { method, body: body === undefined ? undefined : JSON.stringify(body) };
    const omitted = await call(h.url, path, init);
    assert.equal(omitted.status, 400, `${method} ${path}: ${omitted.text}`);
    const where = method === "DELETE" ? "\\?service=" : '"service"';
    assert.match(
      omitted.json!.error as string,
      new RegExp(`^name the service with ${where}: one of api, web$`),
    );

    const unknownPath = method === "DELETE" ? `${path}&service=nope` : path;
    const unknownBody = body === undefined
      ? undefined
      : JSON.stringify({ ...body, service: "nope" });
    const unknown = await call(h.url, unknownPath, { method, body: unknownBody });
    assert.equal(unknown.status, 404, `${method} ${path}: ${unknown.text}`);
    assert.equal(unknown.json!.error, 'no such service "nope" (services: api, web)');
    if (body !== undefined) {
      const wrongType = await call(h.url, path, {
        method,
        body: JSON.stringify({ ...body, service: 7 }),
      });
      assert.equal(wrongType.status, 400, wrongType.text);
    }
  }
  assert.equal(
    JSON.stringify(await servicesOf(h)).replace(/"time":"[^"]*"/g, ""),
    before.replace(/"time":"[^"]*"/g, ""),
    "nothing changed",
  );
  const hint = await postTo(h, "/api/backends", {});
  assert.equal(
    hint.json!.error,
    'send {"service": "name", "url": "http://host:port", "weight": 1}',
  );

  // A backend of another service is not found in this one.
  const elsewhere = await postTo(h, "/api/backends/drain", { service: "api", url: w1.url });
  assert.equal(elsewhere.status, 404);
  assert.match(elsewhere.json!.error as string, /^no such backend in api$/);
  assert.deepEqual(h.log.lines, []);
});

Deno.test("a change to a backend URL in two services changes it only in the service named", async () => {
  await using s = twoServices();
  const { h, a1 } = s;
  const added = await postTo(h, "/api/backends", { service: "web", url: a1.url, weight: 4 });
  assert.equal(added.status, 201, added.text);
  assert.deepEqual(
    [(added.json!.backend as BackendView).service, (added.json!.backend as BackendView).weight],
    ["web", 4],
  );
  const again = await postTo(h, "/api/backends", { service: "web", url: a1.url });
  assert.equal(again.status, 409);
  assert.equal(again.json!.error, `backend ${a1.url} is already in the pool of web`);

  const drained = await postTo(h, "/api/backends/drain", { service: "web", url: a1.url });
  assert.equal(drained.status, 200);
  assert.equal(h.service("web").pool.find(a1.url)!.status, "draining");
  assert.equal(h.service("api").pool.find(a1.url)!.status, "up", "api's a1 untouched");
  const weight = await postTo(h, "/api/backends/weight", {
    service: "api",
    url: a1.url,
    weight: 7,
  });
  assert.equal(weight.status, 200);
  assert.deepEqual([
    h.service("api").pool.find(a1.url)!.weight,
    h.service("web").pool.find(a1.url)!.weight,
  ], [7, 4]);

  const removed = await call(h.url, `/api/backends?service=web&url=${encodeURIComponent(a1.url)}`, {
    method: "DELETE",
  });
  assert.equal(removed.status, 202, removed.text);
  assert.equal(h.service("web").pool.find(a1.url), undefined);
  assert.ok(h.service("api").pool.find(a1.url), "still in api");
  assert.deepEqual(h.log.lines, [
    `INFO Admin: added backend ${a1.url} to web (weight 4)`,
    `INFO Admin: drain ${a1.url} in web`,
    `INFO Admin: weight of ${a1.url} in api set to 7`,
    `INFO Admin: removing backend ${a1.url} from web (draining 0 in flight)`,
  ]);
});

Deno.test("with one service a change may leave the service out (old clients), or name it", async () => {
  await using a = startBackend();
  await using b = startBackend();
  await using h = startAdmin({ services: [{ name: "only", backends: [a.url] }] });
  const added = await postTo(h, "/api/backends", { url: b.url });
  assert.equal(added.status, 201, added.text);
  assert.equal((added.json!.backend as BackendView).service, "only");
  assert.equal((await postTo(h, "/api/backends/drain", { url: a.url })).status, 200);
  assert.equal(
    (await postTo(h, "/api/backends/enable", { url: a.url, service: "only" })).status,
    200,
  );
  const unknown = await postTo(h, "/api/backends/disable", { url: a.url, service: "other" });
  assert.equal(unknown.status, 404);
  assert.equal(unknown.json!.error, 'no such service "other" (services: only)');
  const hint = await postTo(h, "/api/backends/weight", { weight: 1 });
  assert.equal(
    hint.json!.error,
    'send {"url": "http://host:port", "weight": 1}',
    "no service to name",
  );
  const removed = await call(h.url, `/api/backends?url=${b.url}`, { method: "DELETE" });
  assert.equal(removed.status, 202);
  assert.deepEqual(h.service("only").pool.backends.map((x) => [x.url, x.status]), [[a.url, "up"]]);
});

Deno.test("/readyz is 200 while any service has an available backend, naming those with none", async () => {
  await using s = twoServices();
  const { h, a1, a2, w1 } = s;
  const readyz = async () => {
    const answer = await call(h.url, "/readyz");
    return [answer.status, answer.text];
  };
  assert.deepEqual(await readyz(), [200, "ready\n"]);
  for (const url of [a1.url, a2.url]) {
    await postTo(h, "/api/backends/disable", { service: "api", url });
  }
  assert.deepEqual(await readyz(), [200, "ready\nno backend available: api\n"]);
  await postTo(h, "/api/backends/drain", { service: "web", url: w1.url });
  assert.deepEqual(await readyz(), [503, "no backend available: api, web\n"]);
  await postTo(h, "/api/backends/enable", { service: "api", url: a2.url });
  assert.deepEqual(await readyz(), [200, "ready\nno backend available: web\n"]);

  h.services = [h.service("web")];
  assert.deepEqual(
    await readyz(),
    [503, "no backend available\n"],
    "one service: as before services",
  );
  h.services = [];
  assert.deepEqual(await readyz(), [200, "ready\n"], "no services: routes answer everything");
});

Deno.test("GET /metrics labels backend series with their service and counts requests per route", async () => {
  await using s = twoServices();
  const { h, a1, a2, w1 } = s;
  for (let i = 0; i < 4; i++) await h.send("api", "api");
  await h.send("site", "web");
  await h.send("old", undefined, "/old/x", 308);
  h.unmatched();
  await postTo(h, "/api/backends/disable", { service: "web", url: w1.url });
  assert.equal(await h.send("site", "web"), 503);

  const answer = await call(h.url, "/metrics");
  assert.equal(answer.headers.get("content-type"), PROMETHEUS_CONTENT_TYPE);
  const families = parseExposition(answer.text);
  const value = (name: string, labels: Record<string, string>) =>
    sampleValue(families, name, labels);
  const api1 = { service: "api", backend: a1.url };
  const web1 = { service: "web", backend: w1.url };
  assert.equal(value("lb_requests_total", { ...api1, code: "2xx" }), 2);
  assert.equal(value("lb_requests_total", { service: "api", backend: a2.url, code: "2xx" }), 2);
  assert.equal(value("lb_requests_total", { ...web1, code: "2xx" }), 1);
  assert.equal(value("lb_requests_total", { service: "web", backend: NO_BACKEND, code: "5xx" }), 1);
  assert.equal(value("lb_request_duration_seconds_count", api1), 2);
  assert.equal(value("lb_route_requests_total", { route: "api", code: "2xx" }), 4);
  assert.equal(value("lb_route_requests_total", { route: "site", code: "2xx" }), 1);
  assert.equal(value("lb_route_requests_total", { route: "site", code: "5xx" }), 1);
  assert.equal(value("lb_route_requests_total", { route: "old", code: "3xx" }), 1);
  assert.equal(value("lb_route_requests_total", { route: NO_ROUTE, code: "4xx" }), 1);
  assert.equal(value("lb_backend_up", api1), 1);
  assert.equal(value("lb_backend_up", web1), 0);
  assert.equal(value("lb_backend_weight", web1), 1);
  assert.equal(
    value("lb_backend_state_transitions_total", { ...web1, from: "up", to: "disabled" }),
    1,
  );
  // A route's own answers and unmatched requests are not backend traffic.
  const proxied = families.get("lb_requests_total")!.samples.reduce((n, x) => n + x.value, 0);
  assert.equal(proxied, 6);
});

/**
 * An admin handler over `h`'s services whose `mergeBackends` adds 10 requests to each view, as
 * lib/workers.ts does with other threads' counts (one view per view given, in order).
 */
function mergingHandler(h: AdminHarness): (req: Request) => Promise<Response> {
  const handler = createAdminHandler({
    services: () => h.services,
    routes: () => [],
    metrics: () => "",
    mergeBackends: (own) => Promise.resolve(own.map((v) => ({ ...v, requests: v.requests + 10 }))),
    token: "",
    dashboardHtml: "",
    dashboardCsp: "",
    log: h.log,
  });
  const info = {
    remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 1 },
  } as unknown as Deno.ServeHandlerInfo;
  return (req) => handler(req, info);
}

Deno.test("mergeBackends' views are grouped back under their services", async () => {
  await using a = startBackend();
  await using w = startBackend();
  const services = [
    { name: "api", backends: [a.url, w.url] },
    { name: "web", backends: [w.url] },
  ];
  const h = startAdmin({ services });
  try {
    const handler = mergingHandler(h);
    const response = await handler(new Request("http://admin/api/services"));
    const body = await response.json();
    assert.deepEqual(
      body.services.map((x: ServiceStatus) =>
        x.backends.map((b) => [b.service, b.url, b.requests])
      ),
      [[["api", a.url, 10], ["api", w.url, 10]], [["web", w.url, 10]]],
    );
  } finally {
    await h[Symbol.asyncDispose]();
  }
});

Deno.test("admin changes answer with the view /api/backends gives: other threads' counts merged", async () => {
  await using a = startBackend();
  const h = startAdmin({ services: [{ name: "api", backends: [a.url] }] });
  try {
    const handler = mergingHandler(h);
    const post = (path: string, body: unknown) =>
      handler(
        new Request(`http://admin${path}`, { method: "POST", body: JSON.stringify(body) }),
      ).then((r) => r.json());
    for (const action of ["weight", "drain", "enable", "disable"]) {
      const answer = await post(`/api/backends/${action}`, { url: a.url, weight: 2 });
      assert.equal(answer.backend.requests, 10, action);
    }
    const removed = await handler(
      new Request(`http://admin/api/backends?url=${encodeURIComponent(a.url)}`, {
        method: "DELETE",
      }),
    ).then((r) => r.json());
    assert.equal(removed.backend.requests, 10, "delete");
    // Gone once its in-flight count was 0: added anew, its figures merged too.
    const added = await post("/api/backends", { url: a.url });
    assert.equal(added.backend.requests, 10, "add");
  } finally {
    await h[Symbol.asyncDispose]();
  }
});

Deno.test({
  name: "GET /metrics with two services passes promtool check metrics",
  ignore: !promtool,
  async fn() {
    await using s = twoServices();
    await s.h.send("api", "api");
    await s.h.send("site", "web");
    s.h.unmatched();
    const { code, report } = await promtoolCheck(promtool!, (await call(s.h.url, "/metrics")).text);
    assert.equal(code, 0, report);
    assert.equal(report.trim(), "", "no lint warnings either");
  },
});
