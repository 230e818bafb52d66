/**
 * @module
 * `--workers N` (lib/workers.ts, lib/worker_thread.ts): the balancer as a real process with a
 * worker thread beside the main thread, both serving one port. Every request goes on a new
 * connection (the kernel spreads connections over the threads' listeners), and the debug log
 * tells which thread chose the backend (`[worker 1] Selected backend: ...`), so each test can
 * check that both threads took part before it draws conclusions about their coherence.
 */

import assert from "node:assert/strict";
import { type BalancerProcess, runMain, spawnBalancer } from "./process.ts";
import {
  captureLog,
  delay,
  heldBackend,
  rawExchange,
  refusingUrl,
  startTestBackend,
  type TestBackend,
  waitFor,
} from "./helpers.ts";
import { HEALTH_CHECK_USER_AGENT } from "../lib/health.ts";
import { shareRandomSettings, WorkerGroup } from "../lib/workers.ts";
import { type RunningBalancer, startBalancer } from "../lib/balancer.ts";
import { quietLog } from "../lib/log.ts";
import type { BackendView } from "../lib/admin.ts";
import { testConfig } from "./helpers.ts";

const REQUESTS = 40;

/** Starts main.ts with two serving threads, debug logging and an admin listener. */
async function startWorkers(backends: string[], extra: string[] = []) {
  const lb = spawnBalancer([
    `--backends=${backends.join(",")}`,
    "--port=0",
    "--host=127.0.0.1",
    "--workers=2",
    "--log-level=debug",
    "--admin=127.0.0.1:0",
    ...extra,
  ], { permissions: ["--allow-read"] });
  const port = await lb.port();
  await lb.waitForLine(/Started 2 workers/);
  const adminLine = await lb.waitForLine(/Admin listener started at 127\.0\.0\.1:\d+/);
  const adminPort = Number(/:(\d+)$/.exec(adminLine)![1]);
  return { lb, url: `http://127.0.0.1:${port}`, admin: `http://127.0.0.1:${adminPort}` };
}

/**
 * `count` GETs, each on a new connection; returns the statuses and bodies. The client keeps no
 * idle connection, so no two requests share one and both threads get a share.
 */
async function freshConnectionGets(
  url: string,
  count = REQUESTS,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }[]> {
  const results = [];
  for (let i = 0; i < count; i++) {
    using client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
    const response = await fetch(url, { client, headers });
    results.push({ status: response.status, body: await response.text() });
  }
  return results;
}

/** How many `Selected backend` lines each thread wrote since line `from`. */
function selections(lb: BalancerProcess, from = 0): { main: number; worker: number } {
  const lines = lb.lines.slice(from).filter((line) => line.includes("Selected backend:"));
  const worker = lines.filter((line) => line.includes("[worker 1]")).length;
  return { main: lines.length - worker, worker };
}

/** A backend that says which one it is; health checks get `health()`'s status. */
function namedBackend(name: string, health: () => number = () => 200): Promise<TestBackend> {
  return startTestBackend((req) =>
    req.headers.get("user-agent") === HEALTH_CHECK_USER_AGENT
      ? new Response("health\n", { status: health() })
      : new Response(name)
  );
}

async function adminGet(admin: string, path: string): Promise<string> {
  const response = await fetch(admin + path);
  return await response.text();
}

function metricSum(text: string, pattern: RegExp): number {
  return text.split("\n").filter((line) => pattern.test(line))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0);
}

Deno.test("--workers 2: both threads serve the port; admin figures add up over threads", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  const { lb, url, admin } = await startWorkers([a.url, b.url]);
  await using _lb = lb;
  const results = await freshConnectionGets(url);
  assert.deepEqual(results.filter((r) => r.status !== 200), []);
  const seen = selections(lb);
  assert.ok(
    seen.main > 0 && seen.worker > 0,
    `both threads chose backends: ${JSON.stringify(seen)}`,
  );
  assert.equal(a.received.length + b.received.length, REQUESTS);

  // Each thread counted only its own requests: the totals prove the merge.
  const metrics = await adminGet(admin, "/metrics");
  assert.equal(metricSum(metrics, /^lb_requests_total\{.*code="2xx"\}/), REQUESTS);
  assert.equal(metricSum(metrics, /^lb_request_duration_seconds_count\{/), REQUESTS);
  assert.equal(metricSum(metrics, /^lb_backend_up\{/), 2, "gauges are not added up");
  assert.equal(metricSum(metrics, /^lb_build_info\{/), 1);
  const status = JSON.parse(await adminGet(admin, "/api/backends"));
  const requests = status.backends.reduce(
    (n: number, v: { requests: number }) => n + v.requests,
    0,
  );
  assert.equal(requests, REQUESTS);
  assert.ok(status.backends.every((v: { latencyMs: { p50: number } }) => v.latencyMs.p50 > 0));
});

Deno.test("--workers 2: a backend the health checks mark down is skipped by every thread", async () => {
  let healthStatus = 500;
  await using a = await namedBackend("a", () => healthStatus);
  await using b = await namedBackend("b");
  const { lb, url, admin } = await startWorkers([a.url, b.url], [
    "--health-interval=100ms",
    "--fall=1",
    "--rise=1",
  ]);
  await using _lb = lb;
  await lb.waitForLine(new RegExp(`${a.url} \\[down\\]`));
  // The main thread posts the flip to the worker thread in the task that logs it; a stats
  // request, posted later on the same ordered port, is answered only once the flip is applied.
  await adminGet(admin, "/metrics");
  const from = lb.lines.length;
  const results = await freshConnectionGets(url);
  assert.ok(results.every((r) => r.status === 200 && r.body === "b"));
  assert.equal(a.received.length, 0, "no thread sent traffic to the backend marked down");
  const seen = selections(lb, from);
  assert.ok(
    seen.main > 0 && seen.worker > 0,
    `both threads chose backends: ${JSON.stringify(seen)}`,
  );

  // Back up: the worker thread, which runs no health checks, uses it again.
  healthStatus = 200;
  await lb.waitForLine(new RegExp(`${a.url} \\[up\\]`));
  await delay(300);
  const again = lb.lines.length;
  await freshConnectionGets(url);
  assert.ok(
    lb.lines.slice(again).some((line) => line.includes(`[worker 1] Selected backend: ${a.url}`)),
    "the worker thread sends to the backend again",
  );
});

Deno.test("--workers 2: a refused connection seen by one thread takes the backend out for all", async () => {
  await using b = await namedBackend("b");
  // Connections to it are refused (a port the balancer's own listeners cannot be given).
  const goneUrl = refusingUrl();
  // Health checks far apart: only the threads' own traffic can find out.
  const { lb, url, admin } = await startWorkers([goneUrl, b.url], [
    "--health-interval=1h",
    "--fall=3",
  ]);
  await using _lb = lb;
  // Requests until one thread has hit the refusing backend (round-robin: within a few). Not
  // until its log line is seen: that comes through a pipe and may lag, and a request sent
  // meanwhile might reach the other thread before it has heard. A stats request is answered
  // only after the news (one ordered message port each way), and the retry is counted first.
  const retries = async () => metricSum(await adminGet(admin, "/metrics"), /^lb_retries_total /);
  for (let i = 0; i < 10 && (await retries()) === 0; i++) {
    await freshConnectionGets(url, 1);
  }
  await lb.waitForLine(new RegExp(`${goneUrl} \\[down\\] \\(connection failed`));
  const retriesBefore = await retries();
  // One thread found out the hard way; the other learned it from the main thread.
  assert.equal(retriesBefore, 1);
  const from = lb.lines.length;
  const results = await freshConnectionGets(url);
  assert.ok(results.every((r) => r.status === 200 && r.body === "b"));
  const retriesAfter = metricSum(await adminGet(admin, "/metrics"), /^lb_retries_total /);
  assert.equal(retriesAfter, retriesBefore, "no thread tried the refusing backend again");
  const seen = selections(lb, from);
  assert.ok(
    seen.main > 0 && seen.worker > 0,
    `both threads chose backends: ${JSON.stringify(seen)}`,
  );
});

Deno.test("--workers 2: admin drain and sticky cookies hold in every thread", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  const { lb, url, admin } = await startWorkers([a.url, b.url], ["--sticky-cookie=lb"]);
  await using _lb = lb;

  // A cookie set by one thread is honoured by both: they share the signing key.
  using client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  const first = await fetch(url, { client });
  const pinnedTo = await first.text();
  const cookie = first.headers.get("set-cookie")!.split(";")[0];
  const from = lb.lines.length;
  const pinned = await freshConnectionGets(url, REQUESTS, { cookie });
  assert.deepEqual(new Set(pinned.map((r) => r.body)), new Set([pinnedTo]));
  const seen = selections(lb, from);
  assert.ok(
    seen.main > 0 && seen.worker > 0,
    `both threads chose backends: ${JSON.stringify(seen)}`,
  );

  const drained = await fetch(`${admin}/api/backends/drain`, {
    method: "POST",
    body: JSON.stringify({ url: a.url }),
  });
  await drained.body?.cancel();
  assert.equal(drained.status, 200);
  // The main thread posts the drain to the worker thread before it answers; a stats request,
  // posted later on the same ordered port, is answered only once the drain is applied.
  await adminGet(admin, "/metrics");
  const before = a.received.length;
  const results = await freshConnectionGets(url);
  assert.ok(results.every((r) => r.status === 200 && r.body === "b"));
  assert.equal(a.received.length, before, "no thread sends to a drained backend");
});

/** Waits until `count` requests are held by `backend`, and checks that both threads sent some. */
async function assertHeldOnBothThreads(
  lb: BalancerProcess,
  backend: { arrivals(): number },
  count: number,
): Promise<void> {
  assert.ok(
    await waitFor(() => backend.arrivals() === count, 10_000),
    `${count} in flight (${backend.arrivals()})`,
  );
  // Each request's selection is logged before it is forwarded, but read here from a pipe.
  await waitFor(() => selections(lb).main + selections(lb).worker === count, 10_000);
  const seen = selections(lb);
  assert.ok(
    seen.main > 0 && seen.worker > 0,
    `both threads hold requests: ${JSON.stringify(seen)}`,
  );
}

Deno.test("--workers 2: SIGTERM lets requests in flight on both threads finish", async () => {
  // Held until the balancer is shutting down, so every one is in flight at SIGTERM however
  // slowly they arrive.
  await using slow = await heldBackend("slow done");
  const { lb, url } = await startWorkers([slow.url], ["--drain-timeout=10s"]);
  await using _lb = lb;
  // The kernel spreads connections at random: all 24 on one thread has probability 2^-23.
  const count = 24;
  const clients = Array.from(
    { length: count },
    () => Deno.createHttpClient({ poolMaxIdlePerHost: 0 }),
  );
  const pending = clients.map(async (client) => {
    const response = await fetch(url, { client });
    return { status: response.status, body: await response.text() };
  });
  try {
    await assertHeldOnBothThreads(lb, slow, count);
    lb.child.kill("SIGTERM");
    await lb.waitForLine(/Shutting down/);
  } finally {
    slow.release();
  }
  const results = await Promise.all(pending);
  for (const client of clients) client.close();
  assert.deepEqual(results.filter((r) => r.status !== 200 || r.body !== "slow done"), []);
  assert.equal(await lb.exited, 0);
  assert.ok(lb.lines.some((line) => line.includes("Load balancer stopped")));
  assert.ok(!lb.lines.some((line) => line.includes("cut off")));
});

for (const frontend of ["deno", "native"]) {
  Deno.test(`--workers 2, --frontend ${frontend}: requests cut off at the drain deadline get their connection closed, no 499, on both threads`, async () => {
    await using stuck = await heldBackend("late");
    const { lb, url } = await startWorkers([stuck.url], [
      "--drain-timeout=300ms",
      `--frontend=${frontend}`,
    ]);
    await using _lb = lb;
    const port = Number(new URL(url).port);
    // The kernel spreads connections at random: all 16 on one thread has probability 2^-15.
    const count = 16;
    const exchanges = Array.from(
      { length: count },
      () => rawExchange(port, "GET / HTTP/1.1\r\nHost: lb\r\n\r\n", 15_000),
    );
    try {
      await assertHeldOnBothThreads(lb, stuck, count);
      lb.child.kill("SIGTERM");
      assert.equal(await lb.exited, 0);
      const answers = await Promise.all(exchanges);
      const decoder = new TextDecoder();
      assert.deepEqual(
        answers.map((a) => ({ closed: a.closed, reply: decoder.decode(a.bytes) })),
        answers.map(() => ({ closed: true, reply: "" })),
        "closed without a reply (a 499 would blame the client)",
      );
    } finally {
      stuck.release();
    }
    assert.ok(
      lb.lines.some((line) => line.includes(`Drain timeout: ${count} request(s) were cut off`)),
    );
  });
}

Deno.test("--workers 2: a config reload reaches every thread", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  const dir = await Deno.makeTempDir();
  const file = `${dir}/lb.json`;
  try {
    await Deno.writeTextFile(file, JSON.stringify({ backends: [a.url] }));
    const lb = spawnBalancer([
      `--config=${file}`,
      "--port=0",
      "--host=127.0.0.1",
      "--workers=2",
      "--log-level=debug",
      // Its key is drawn at start-up for all threads: a reload must keep it, not report it.
      "--sticky-cookie=lb",
    ], { permissions: ["--allow-read"] });
    await using _lb = lb;
    const url = `http://127.0.0.1:${await lb.port()}`;
    await lb.waitForLine(/Started 2 workers/);
    assert.ok((await freshConnectionGets(url, 4)).every((r) => r.body === "a"));
    await Deno.writeTextFile(file, JSON.stringify({ backends: [b.url] }));
    await lb.waitForLine(/Reloaded: 1 added, 1 removed/);
    await delay(300);
    const from = lb.lines.length;
    const results = await freshConnectionGets(url);
    assert.ok(results.every((r) => r.status === 200 && r.body === "b"), JSON.stringify(results));
    const seen = selections(lb, from);
    assert.ok(seen.main > 0 && seen.worker > 0, `both threads served: ${JSON.stringify(seen)}`);
    assert.ok(!lb.lines.some((line) => line.includes("need a restart")), lb.lines.join("\n"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--workers without read access to the worker module: one line, exit 2", async () => {
  const { code, stderr } = await runMain(["--backends=http://127.0.0.1:9", "--workers=2"]);
  assert.equal(code, 2);
  assert.match(
    stderr,
    /^load-balancer: --workers: starting worker threads needs read access to (\S+\/lib) \(run with --allow-read or --allow-read=\1\)\n$/,
  );
});

Deno.test("--workers auto starts one serving thread per core", async () => {
  await using a = await namedBackend("a");
  const cores = navigator.hardwareConcurrency;
  const lb = spawnBalancer([
    `--backends=${a.url}`,
    "--port=0",
    "--host=127.0.0.1",
    "--workers=auto",
  ], {
    permissions: ["--allow-read"],
  });
  await using _lb = lb;
  await lb.port();
  if (cores > 1) await lb.waitForLine(new RegExp(`Started ${cores} workers`));
  else assert.ok(!lb.lines.some((line) => line.includes("workers")));
});

function pick({ inflight, requests, errors }: BackendView) {
  return { inflight, requests, errors };
}

Deno.test("a crashed worker thread is replaced, and its counters stay in the merged metrics and backend views", async () => {
  const log = captureLog();
  const group = new WorkerGroup(1, log, new URL("./fixtures/crashing_worker.ts", import.meta.url));
  const balancer = {
    port: 0,
    services: new Map(),
    rateLimitTables: () => ({}),
  } as unknown as RunningBalancer;
  const merged = async () => await group.extras.group!.mergeMetrics("");
  const own = { service: "default", url: "http://a:1", inflight: 0, requests: 0, errors: 0 };
  const view = async () =>
    (await group.extras.group!.mergeBackends([own as unknown as BackendView]))[0];
  try {
    await group.start(testConfig([]), balancer, "test");
    const before = await merged();
    assert.equal(metricSum(before, /^lb_requests_total\{/), 5);
    assert.equal(metricSum(before, /^lb_backend_inflight\{/), 1);
    assert.deepEqual(pick(await view()), { inflight: 1, requests: 5, errors: 1 });

    group.reloadCertificate(); // the fixture's cue to crash
    assert.ok(
      await waitFor(() => log.lines.some((l) => l.includes("Worker thread 1 restarted")), 10_000),
      log.lines.join("\n"),
    );
    assert.ok(log.lines.some((l) => /ERROR Worker thread 1 failed: .*deliberate crash/.test(l)));
    // The replacement counts from zero: the old thread's 5 requests are carried, so the total
    // does not go backwards (Prometheus would read a reset); its in-flight gauge is not.
    const after = await merged();
    assert.equal(metricSum(after, /^lb_requests_total\{/), 10);
    assert.equal(metricSum(after, /^lb_backend_inflight\{/), 1);
    // The admin API's backend views carry them the same way: counts never go backwards.
    assert.deepEqual(pick(await view()), { inflight: 1, requests: 10, errors: 2 });
  } finally {
    await group.shutdown(0);
  }
});

Deno.test("a change made while a worker thread starts reaches it", async () => {
  // With a sticky cookie, starting a thread awaits (its keys): a sync sent meanwhile used to be
  // dropped, and the thread kept sending traffic to a backend disabled in that instant.
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  const config = testConfig([a.url, b.url], { stickyCookie: "lb", healthInterval: 3_600_000 });
  shareRandomSettings(config);
  const group = new WorkerGroup(1, quietLog);
  const balancer = await startBalancer(config, quietLog, "test", group.extras);
  try {
    const starting = group.start(config, balancer, "test");
    balancer.pool.setAdmin(balancer.pool.find(b.url)!, "disabled", "test");
    await starting;
    await delay(300);
    const results = await freshConnectionGets(`http://127.0.0.1:${balancer.port}/`, 60);
    assert.ok(results.every((r) => r.status === 200 && r.body === "a"), JSON.stringify(results));
    assert.equal(b.received.length, 0, "no thread sent traffic to the disabled backend");
  } finally {
    await Promise.all([group.shutdown(1000), balancer.shutdown(1000)]);
  }
});

Deno.test("--workers: a port another process holds is refused, one line, exit 1", async () => {
  await using a = await namedBackend("a");
  // A plain listener: without the check, SO_REUSEPORT would let the balancer share it silently.
  using holder = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (holder.addr as Deno.NetAddr).port;
  const { code, stderr } = await runMain(
    [`--backends=${a.url}`, `--port=${port}`, "--host=127.0.0.1", "--workers=2"],
    { permissions: ["--allow-read"] },
  );
  assert.equal(code, 1);
  assert.match(
    stderr,
    new RegExp(`(^|\\n)load-balancer: cannot listen on 127\\.0\\.0\\.1:${port}: .+\\n$`),
  );
});
