/**
 * @module
 * Balancing, health, retries and gateway errors over real sockets: backends are started, killed,
 * black-holed and reset by the tests themselves on 127.0.0.1.
 */
import assert from "node:assert/strict";
import {
  balancerWithBClosed,
  captureLog,
  delay,
  getText,
  hangingConnectUrl,
  namedBackend,
  rawExchange,
  rawServer,
  readHead,
  refusingUrl,
  startTestBackend,
  startTestBalancer,
  TEST_TRANSPORT,
  waitFor,
  writeAll,
} from "./helpers.ts";
import { afterDelay } from "../lib/upstream.ts";
import { rawResponse } from "./wire.ts";

/**
 * A backend handler that answers after `ms` unless the request is cancelled first, counting
 * the cancellations (a client hang-up must reach the backend as one).
 */
function answerAfter(ms: number) {
  const slow = {
    cancelled: 0,
    handler: (req: Request) =>
      new Promise<Response>((resolve) => {
        const timer = setTimeout(() => resolve(new Response("slow")), ms);
        req.signal.addEventListener("abort", () => {
          clearTimeout(timer);
          slow.cancelled++;
          resolve(new Response("cancelled"));
        });
      }),
  };
  return slow;
}

/** `count` raw-socket clients at once, each hanging up `afterMs` after sending its request. */
async function hangUps(port: number, count: number, afterMs: number): Promise<void> {
  const request = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  await Promise.all(Array.from({ length: count }, () => rawExchange(port, request, afterMs)));
}

Deno.test("round-robin: K*N sequential requests give each of N backends exactly K", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  await using c = await namedBackend("c");
  await using lb = await startTestBalancer([a.url, b.url, c.url]);
  const K = 20;
  for (let i = 0; i < K * 3; i++) assert.equal((await getText(lb.url)).status, 200);
  assert.deepEqual([a.received.length, b.received.length, c.received.length], [K, K, K]);
});

Deno.test("a backend killed mid-run costs zero failed GETs", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  const c = await namedBackend("c");
  await using lb = await startTestBalancer([a.url, b.url, c.url]);
  const statuses: number[] = [];
  for (let i = 0; i < 60; i++) {
    if (i === 20) await c.close();
    statuses.push((await getText(`${lb.url}/n/${i}`)).status);
  }
  assert.deepEqual(statuses.filter((s) => s !== 200), []);
  const killed = lb.balancer.pool.backends.find((x) => x.url === c.url)!;
  assert.equal(killed.state, "down");
  assert.equal(a.received.length + b.received.length + c.received.length, 60);
});

Deno.test("a down backend is readmitted after `rise` passing health checks", async () => {
  await using setup = await balancerWithBClosed();
  const { lb, backendB } = setup;
  assert.ok(await waitFor(() => backendB.state === "down"), "killed backend marked down");
  for (let i = 0; i < 4; i++) assert.equal((await getText(lb.url)).text, "a");

  // Same port again: the pool knows the backend by address.
  setup.restartB("b again");
  assert.ok(await waitFor(() => backendB.state === "up"), "restarted backend readmitted");
  const texts = new Set<string>();
  for (let i = 0; i < 4; i++) texts.add((await getText(lb.url)).text);
  assert.ok(texts.has("b again"), "traffic returns to the readmitted backend");
});

Deno.test("fall: an up backend failing health checks goes down only after `fall` in a row", async () => {
  let healthy = true;
  await using a = await startTestBackend((req) =>
    new URL(req.url).pathname === "/health"
      ? new Response(null, { status: healthy ? 200 : 500 })
      : new Response("a")
  );
  await using lb = await startTestBalancer([a.url], {
    healthInterval: 30,
    healthPath: "/health",
    fall: 3,
  });
  const backend = lb.balancer.pool.backends[0];
  healthy = false;
  assert.ok(await waitFor(() => backend.lastCheck?.ok === false));
  // After the first failed check it must still be up (fall=3).
  assert.equal(backend.state, "up");
  assert.ok(await waitFor(() => backend.state === "down"));
  assert.equal(backend.lastCheck?.detail, "HTTP 500");
  const { status, headers } = await getText(lb.url);
  assert.equal(status, 503);
  assert.ok(Number(headers.get("retry-after")) >= 1);
});

Deno.test("no backend available answers 503 at once with Retry-After and no address", async () => {
  const dead = refusingUrl();
  await using lb = await startTestBalancer([dead], { retries: 0 });
  const first = await getText(lb.url);
  assert.equal(first.status, 502, "the first request finds out by failing to connect");
  assert.ok(!first.text.includes("127.0.0.1"));
  const second = await getText(lb.url);
  assert.equal(second.status, 503);
  assert.equal(second.headers.get("retry-after"), "60");
  assert.ok(!second.text.includes("127.0.0.1"), "error bodies never reveal backend addresses");
});

Deno.test("refused connections are retried on another backend for any method", async () => {
  await using good = await startTestBackend(async (req) => new Response(await req.text()));
  await using lb = await startTestBalancer([refusingUrl(), good.url], { retries: 1 });
  const response = await fetch(lb.url, { method: "POST", body: "payload" });
  assert.equal(response.status, 200);
  assert.equal(await response.text(), "payload");
  assert.equal(lb.balancer.pool.backends[0].state, "down");
});

Deno.test("a black-hole backend (accepts, never answers) gives 504 after --timeout", async () => {
  await using hole = rawServer(async (conn) => {
    await readHead(conn);
    // never answer
  });
  await using lb = await startTestBalancer([hole.url], { timeout: 300 });
  const started = performance.now();
  const { status, text } = await getText(lb.url);
  assert.equal(status, 504);
  assert.ok(!text.includes("127.0.0.1"));
  assert.ok(performance.now() - started >= 290);
  assert.equal(lb.balancer.pool.backends[0].state, "up", "slow is not down");
});

Deno.test("a timed-out POST is not retried: 504, and the second backend receives nothing", async () => {
  await using hole = rawServer(async (conn) => {
    await readHead(conn);
    // never answer
  });
  await using good = await startTestBackend(async (req) => new Response(await req.text()));
  await using lb = await startTestBalancer([hole.url, good.url], { timeout: 300, retries: 2 });
  // Round-robin starts at the black hole. A retry would run the POST a second time while the
  // first may still be running on the slow backend.
  const post = await getText(lb.url, { method: "POST", body: "charge card" });
  assert.equal(post.status, 504);
  assert.deepEqual(good.received, [], "the timed-out POST was sent again");
});

Deno.test("a timed-out GET is not retried either: 504, and the second backend receives nothing", async () => {
  await using hole = rawServer(async (conn) => {
    await readHead(conn);
    // never answer
  });
  await using good = await namedBackend("good");
  await using lb = await startTestBalancer([hole.url, good.url], { timeout: 300, retries: 2 });
  // Idempotent, but a timed-out request may still be running: repeating it multiplies the load
  // on a backend that is already struggling.
  const get = await getText(`${lb.url}/slow`);
  assert.equal(get.status, 504);
  assert.deepEqual(good.received, [], "the timed-out GET was sent again");
});

Deno.test("a reset before headers: GET is retried elsewhere, POST is not (502)", async () => {
  await using resetter = rawServer(async (conn) => {
    await readHead(conn);
    conn.close();
  });
  await using good = await namedBackend("good");
  await using lb = await startTestBalancer([resetter.url, good.url], { retries: 2 });

  // Round-robin starts at the resetter: the GET is retried on the good backend.
  const get = await getText(lb.url);
  assert.equal(get.status, 200);
  assert.equal(get.text, "good");
  assert.equal(good.received.length, 1);

  // Next turn is the good backend; take it so the POST lands on the resetter first.
  assert.equal((await getText(lb.url)).text, "good");
  const post = await fetch(lb.url, { method: "POST", body: "charge card" });
  assert.equal(post.status, 502);
  await post.body?.cancel();
  assert.equal(good.received.filter((r) => r.method === "POST").length, 0);
  assert.equal(lb.balancer.pool.backends[0].state, "up", "a reset is not a connect failure");
});

Deno.test("a POST whose kept-alive connection closes before the answer is sent once: 502", async () => {
  // The backend reads the whole request, then closes without answering: the race of a keep-alive
  // close. fetch (hyper) resends such a request on its own when the connection was reused,
  // whatever the method; the balancer must not let a POST go twice on either transport.
  const arrivals: string[] = [];
  await using backend = rawServer(async (conn) => {
    const buffer = new Uint8Array(64 * 1024);
    let pending = "";
    for (let requests = 0; requests < 100; requests++) {
      let end = pending.indexOf("\r\n\r\n");
      for (let reads = 0; end === -1 && reads < 100; reads++) {
        const n = await conn.read(buffer);
        if (n === null) return;
        pending += new TextDecoder().decode(buffer.subarray(0, n));
        end = pending.indexOf("\r\n\r\n");
      }
      if (end === -1) return;
      const head = pending.slice(0, end);
      const length = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      for (let reads = 0; pending.length < end + 4 + length && reads < 100; reads++) {
        const n = await conn.read(buffer);
        if (n === null) return;
        pending += new TextDecoder().decode(buffer.subarray(0, n));
      }
      pending = pending.slice(end + 4 + length);
      const line = head.slice(0, head.indexOf("\r\n"));
      arrivals.push(line);
      if (line.includes(" /drop")) {
        conn.close();
        return;
      }
      await conn.write(new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    }
  });
  await using lb = await startTestBalancer([backend.url], { retries: 2 });
  for (let i = 0; i < 3; i++) {
    // Keeps a connection to the backend idle in the pool, for the POST to reuse.
    assert.equal((await getText(`${lb.url}/ok`)).status, 200);
    const post = await fetch(`${lb.url}/drop`, { method: "POST", body: "x".repeat(1000) });
    assert.equal(post.status, 502);
    await post.body?.cancel();
    await delay(50);
    assert.equal(
      arrivals.filter((line) => line.startsWith("POST")).length,
      i + 1,
      arrivals.join("\n"),
    );
  }
});

Deno.test("a backend resetting mid-body aborts the client's response", async () => {
  await using breaker = rawServer(async (conn) => {
    await readHead(conn);
    await conn.write(
      new TextEncoder().encode(
        "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\ncontent-type: text/plain\r\n\r\n" +
          "x".repeat(1000),
      ),
    );
    await delay(50);
    conn.close();
  });
  const log = captureLog();
  await using lb = await startTestBalancer([breaker.url], {}, log);
  const response = await fetch(lb.url);
  assert.equal(response.status, 200);
  await assert.rejects(() => response.arrayBuffer(), "a truncated body must not look complete");

  // Over a raw socket: the connection ends without the promised 100000 bytes.
  const raw = await rawResponse(lb.port, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 3000);
  assert.equal(raw.status, 200);
  assert.ok(raw.wireBody.length < 100000);
  assert.ok(!/\r\n0\r\n\r\n$/.test(new TextDecoder().decode(raw.wireBody)), "no terminating chunk");
  // One line per failure naming the backend, on either front end and transport; never an
  // "Unhandled error" (Deno.serve reports the failed body to its onError as well).
  const problems = () => log.lines.filter((line) => /^(WARN|ERROR)/.test(line));
  assert.ok(await waitFor(() => problems().length >= 2, 2000), log.lines.join("\n"));
  await delay(50);
  for (const line of problems()) {
    assert.match(line, /^WARN http:\/\/127\.0\.0\.1:\d+ failed: .+ \(GET, response body\)$/);
  }
  assert.equal(problems().length, 2, problems().join("\n"));
  if (TEST_TRANSPORT === "native") {
    assert.match(problems()[0], /backend closed the connection mid-body/);
  }
});

Deno.test("20 clients hanging up mid-request cancel the upstream request and leave every backend in service", async () => {
  const slow = answerAfter(2000);
  await using a = await startTestBackend(slow.handler);
  await using b = await startTestBackend(slow.handler);
  await using lb = await startTestBalancer([a.url, b.url]);
  await hangUps(lb.port, 20, 100);
  assert.ok(
    await waitFor(() => slow.cancelled === 20, 3000),
    `upstream requests cancelled: ${slow.cancelled}`,
  );
  for (const backend of lb.balancer.pool.backends) {
    assert.equal(backend.state, "up");
    assert.equal(backend.status, "up", "a client hang-up does not eject a backend");
    assert.equal(backend.failures, 0, "a client hang-up is not a backend failure");
    assert.equal(backend.inflight, 0);
  }
  assert.equal(a.received.length + b.received.length, 20);
});

Deno.test("24 client hang-ups neither count as failures nor eject a backend (--eject-after 2)", async () => {
  const slow = answerAfter(5000);
  await using a = await startTestBackend(slow.handler);
  await using b = await startTestBackend(slow.handler);
  // Two failures in a row eject; with two backends, one of them may be ejected (50 %).
  await using lb = await startTestBalancer([a.url, b.url], {
    ejectAfter: 2,
    admin: { host: "127.0.0.1", port: 0 },
  });
  const HANG_UPS = 24;
  await hangUps(lb.port, HANG_UPS, 150);
  assert.ok(
    await waitFor(() => slow.cancelled === HANG_UPS, 5000),
    `upstream requests cancelled: ${slow.cancelled}`,
  );
  assert.equal(a.received.length + b.received.length, HANG_UPS);
  for (const backend of lb.balancer.pool.backends) {
    assert.equal(backend.status, "up", `${backend.url} ejected for client hang-ups`);
    assert.equal(backend.ejectedUntil, 0);
    assert.equal(backend.failures, 0, "a client hang-up is not a backend failure");
  }
  // What an operator sees says the same.
  const api = await getText(`http://127.0.0.1:${lb.balancer.adminPort}/api/backends`);
  assert.equal(api.status, 200, api.text);
  const views: { url: string; status: string; errors: number }[] = JSON.parse(api.text).backends;
  assert.deepEqual(
    views.map(({ url, status, errors }) => ({ url, status, errors })),
    [a.url, b.url].map((url) => ({ url, status: "up", errors: 0 })),
  );
});

Deno.test("a connect that hangs past --connect-timeout is retried elsewhere (POST too, on the native transport)", async () => {
  await using hanging = await hangingConnectUrl();
  await using good = await startTestBackend(async (req) => new Response(await req.text()));
  await using lb = await startTestBalancer([hanging.url, good.url], {
    connectTimeout: 200,
    timeout: 3_000,
  });
  // fetch cannot tell a connect that hangs from one that got through before the backend stopped
  // accepting: a POST there is never abandoned on its probe, and waits for --timeout instead.
  const method = TEST_TRANSPORT === "fetch" ? "GET" : "POST";
  const started = performance.now();
  const response = await fetch(lb.url, { method, body: method === "POST" ? "once" : undefined });
  assert.equal(response.status, 200);
  assert.equal(await response.text(), method === "POST" ? "once" : "");
  const elapsed = performance.now() - started;
  assert.ok(elapsed < 2500, `gave up on the hanging connect in ${elapsed}ms, not --timeout`);
  // A timeout is no proof the backend is gone (a saturated balancer times out connects too): it
  // counts as a failure, and ejection or health checks decide, not this one attempt.
  assert.equal(lb.balancer.pool.backends[0].state, "up");
  assert.equal(lb.balancer.pool.backends[0].failures, 1);
  assert.equal(good.received.length, 1);
  if (TEST_TRANSPORT !== "fetch") return;
  await using again = await startTestBalancer([hanging.url, good.url], {
    connectTimeout: 200,
    timeout: 3_000,
  });
  const post = await fetch(again.url, { method: "POST", body: "once" });
  await post.body?.cancel();
  assert.equal(post.status, 504, "the POST waited for --timeout on the hanging backend");
  assert.equal(good.received.length, 1, "and was not sent to another");
});

Deno.test({
  name:
    "--timeout does not count a steady upload: a 2.5 s chunked body with --timeout 1s gets its answer",
  // fetch says nothing of how far its upload got: there --timeout counts from the start.
  ignore: TEST_TRANSPORT === "fetch",
}, async () => {
  await using backend = await startTestBackend(async (req) =>
    new Response(`got ${(await req.bytes()).length}`)
  );
  await using lb = await startTestBalancer([backend.url], { timeout: 1_000 });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: lb.port });
  try {
    const encoder = new TextEncoder();
    await writeAll(
      conn,
      encoder.encode("PUT /upload HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n"),
    );
    const piece = "x".repeat(16 * 1024);
    for (let i = 0; i < 10; i++) {
      await writeAll(conn, encoder.encode(`${piece.length.toString(16)}\r\n${piece}\r\n`));
      await delay(250);
    }
    await writeAll(conn, encoder.encode("0\r\n\r\n"));
    const answer = await readHead(conn);
    assert.match(answer, /^HTTP\/1\.1 200 /, answer);
    assert.equal(backend.received.length, 1);
  } finally {
    conn.close();
  }
});

Deno.test("a backend that stops taking the request body is cut off at --timeout, not waited for", async () => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  // Reads the head, then nothing: the balancer's writes block once the socket buffers are full.
  await using stalled = rawServer(async (conn) => {
    await readHead(conn);
    await released;
  });
  await using lb = await startTestBalancer([stalled.url], {
    timeout: 1_000,
    maxBody: 64 * 1024 * 1024,
  });
  try {
    const body = new Uint8Array(48 * 1024 * 1024);
    const response = await fetch(`${lb.url}/big`, { method: "PUT", body });
    await response.body?.cancel();
    assert.equal(response.status, 504);
  } finally {
    release();
  }
});

Deno.test("afterDelay() fires deadlines of mixed durations in due order, never cancelled ones", async () => {
  const fired: number[] = [];
  afterDelay(90, () => fired.push(90));
  afterDelay(30, () => fired.push(30));
  const cancelled = afterDelay(10, () => fired.push(10));
  afterDelay(60, () => fired.push(60));
  cancelled.cancel();
  cancelled.cancel();
  const started = performance.now();
  assert.ok(await waitFor(() => fired.length === 3, 2000));
  assert.deepEqual(fired, [30, 60, 90]);
  assert.ok(performance.now() - started >= 80, "not before its time");
  // A cancelled last deadline leaves no timer behind (the sanitizer checks).
  afterDelay(5000, () => fired.push(5000)).cancel();
});
