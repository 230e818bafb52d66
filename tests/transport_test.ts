/**
 * @module
 * The native transport as the balancer uses it (issue 12): `--read-timeout` cutting off a
 * stalled response body, the backend blamed and the next request unaffected; the per-backend
 * connection figures in /metrics; a removed backend's kept-alive connections closed. Real
 * balancers in-process, hand-written backends on 127.0.0.1 with ports from the OS.
 */

import assert from "node:assert/strict";
import { HEALTH_CHECK_USER_AGENT } from "../lib/health.ts";
import {
  captureLog,
  rawExchange,
  rawServer,
  startTestBalancer,
  testConfig,
  waitFor,
} from "./helpers.ts";
import { Wire } from "./wire.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * A backend that answers `/stall` with headers announcing `length` bytes, sends `sent` of them
 * and then nothing, and answers anything else with `ok` (keep-alive).
 */
function stallingBackend(length: number, sent: number) {
  return rawServer(async (conn) => {
    const wire = new Wire(conn);
    for (let i = 0; i < 100; i++) {
      const head = await wire.head();
      if (head === null) return;
      if (head.startsWith("GET /stall ")) {
        await conn.write(encoder.encode(
          `HTTP/1.1 200 OK\r\ncontent-length: ${length}\r\n\r\n${"x".repeat(sent)}`,
        ));
        continue; // and never the rest: the balancer must give up on this connection
      }
      await conn.write(encoder.encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    }
  });
}

function get(path: string): string {
  return `GET ${path} HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n`;
}

Deno.test("--read-timeout: a streamed body that stalls aborts the client's connection and blames the backend", async () => {
  await using backend = stallingBackend(100_000, 1000);
  const log = captureLog();
  await using lb = await startTestBalancer([backend.url], { readTimeout: 300, retries: 0 }, log);
  const stalled = await rawExchange(lb.port, get("/stall"), 10_000);
  const text = decoder.decode(stalled.bytes);
  assert.ok(stalled.closed, "the balancer closed the connection (not our 10 s timer)");
  assert.match(text, /^HTTP\/1\.1 200 /, "the headers were relayed");
  const body = text.slice(text.indexOf("\r\n\r\n") + 4);
  assert.ok(body.length < 100_000, `the body is cut short, not passed off whole (${body.length})`);
  const backendRecord = lb.balancer.pool.backends[0];
  assert.equal(backendRecord.failures, 1, "the backend's failure is counted");
  assert.ok(log.lines.some((l) => /WARN .* failed: .*read timeout/i.test(l)), log.lines.join("\n"));
  // The next request finds the balancer and the backend as before.
  const next = await rawExchange(lb.port, get("/fine"), 10_000);
  assert.match(decoder.decode(next.bytes), /^HTTP\/1\.1 200 [^]*\r\n\r\nok$/);
});

Deno.test("--read-timeout: a small body that stalls before it is complete gets 502, never a short 200", async () => {
  await using backend = stallingBackend(5000, 1000);
  const log = captureLog();
  await using lb = await startTestBalancer([backend.url], { readTimeout: 300, retries: 0 }, log);
  const stalled = await rawExchange(lb.port, get("/stall"), 10_000);
  assert.match(decoder.decode(stalled.bytes), /^HTTP\/1\.1 502 /);
  assert.equal(lb.balancer.pool.backends[0].failures, 1);
  const next = await rawExchange(lb.port, get("/fine"), 10_000);
  assert.match(decoder.decode(next.bytes), /^HTTP\/1\.1 200 [^]*\r\n\r\nok$/);
});

Deno.test("/metrics counts the native transport's connections per backend: connects, reuses, open, idle", async () => {
  await using backend = stallingBackend(0, 0);
  await using lb = await startTestBalancer([backend.url]);
  for (let i = 0; i < 3; i++) {
    const response = await fetch(`${lb.url}/n${i}`);
    assert.equal(await response.text(), "ok");
  }
  const text = lb.balancer.metrics.render();
  const value = (name: string) => {
    const line = text.split("\n").find((l) =>
      l.startsWith(`${name}{service="default",backend="${backend.url}"}`)
    );
    assert.ok(line !== undefined, `${name} is exported:\n${text}`);
    return Number(line.split(" ").at(-1));
  };
  assert.equal(value("lb_backend_connects_total"), 1, "one connection carried all three");
  assert.equal(value("lb_backend_connection_reuses_total"), 2);
  assert.equal(value("lb_backend_connections_open"), 1);
  assert.equal(value("lb_backend_connections_idle"), 1);
  assert.match(text, /# TYPE lb_backend_connects_total counter/);
});

Deno.test("/metrics connection counters of a removed backend stay, and go on when it comes back", async () => {
  await using a = stallingBackend(0, 0);
  await using b = stallingBackend(0, 0);
  await using lb = await startTestBalancer([a.url, b.url]);
  const counters = (url: string) => {
    const text = lb.balancer.metrics.render();
    return ["lb_backend_connects_total", "lb_backend_connection_reuses_total"].map((name) => {
      const line = text.split("\n").find((l) =>
        l.startsWith(`${name}{service="default",backend="${url}"}`)
      );
      assert.ok(line !== undefined, `${name} of ${url} is exported:\n${text}`);
      return Number(line.split(" ").at(-1));
    });
  };
  const traffic = async (n: number) => {
    for (let i = 0; i < n; i++) assert.equal(await (await fetch(`${lb.url}/n${i}`)).text(), "ok");
  };
  await traffic(6);
  const [connects, reuses] = counters(b.url);
  assert.ok(connects >= 1 && reuses >= 1, `b was used: ${connects} connects, ${reuses} reuses`);
  await lb.balancer.reload(testConfig([a.url]));
  assert.ok(await waitFor(() => lb.balancer.pool.find(b.url) === undefined));
  assert.deepEqual(counters(b.url), [connects, reuses], "the removed backend's series stay");
  await lb.balancer.reload(testConfig([a.url, b.url]));
  await traffic(6);
  const [connectsAfter, reusesAfter] = counters(b.url);
  assert.ok(connectsAfter > connects, `connects go on: ${connects} then ${connectsAfter}`);
  assert.ok(reusesAfter > reuses, `reuses go on: ${reuses} then ${reusesAfter}`);
  // A reload that replaces the transport (here for a new idle cap) keeps the counts too.
  await lb.balancer.reload(testConfig([a.url, b.url], { maxIdleBackendConnections: 5 }));
  assert.deepEqual(counters(b.url), [connectsAfter, reusesAfter], "a new transport");
});

Deno.test("a backend removed by a reload has its kept-alive connection closed once it is idle", async () => {
  // Connections by number: the ones that carried a proxied request (not a health check), and
  // the ones the balancer closed.
  const proxied = new Set<number>();
  const closed = new Set<number>();
  await using removed = rawServer(async (conn, id) => {
    const wire = new Wire(conn);
    for (let i = 0; i < 100; i++) {
      const head = await wire.head();
      if (head === null) {
        closed.add(id);
        return;
      }
      if (!head.includes(HEALTH_CHECK_USER_AGENT)) proxied.add(id);
      await conn.write(encoder.encode("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nr"));
    }
  });
  await using kept = stallingBackend(0, 0);
  await using lb = await startTestBalancer([removed.url]);
  assert.equal(await (await fetch(lb.url)).text(), "r");
  assert.equal(proxied.size, 1);
  const [connection] = proxied;
  await lb.balancer.reload(testConfig([kept.url]));
  assert.ok(await waitFor(() => closed.has(connection), 5000), "the idle connection was closed");
  assert.equal(await (await fetch(lb.url)).text(), "ok");
});

Deno.test("malformed backend answers give the client 502 and one log line naming the backend and why", async () => {
  const answers: Record<string, [string, RegExp]> = {
    "/cl-te": [
      "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
      /Content-Length with Transfer-Encoding/i,
    ],
    "/status": ["HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n", /status line/i],
    "/two-cl": [
      "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
      /Content-Length/i,
    ],
  };
  await using backend = rawServer(async (conn) => {
    const wire = new Wire(conn);
    const head = await wire.head();
    const path = head?.split(" ")[1] ?? "";
    const answer = answers[path]?.[0] ?? "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    await conn.write(encoder.encode(answer));
    conn.close();
  });
  const log = captureLog();
  await using lb = await startTestBalancer([backend.url], { retries: 0 }, log);
  for (const [path, [, why]] of Object.entries(answers)) {
    const lines = log.lines.length;
    const response = await rawExchange(lb.port, get(path), 10_000);
    assert.match(decoder.decode(response.bytes), /^HTTP\/1\.1 502 /, path);
    const logged = log.lines.slice(lines).filter((l) => l.startsWith("WARN"));
    assert.equal(logged.length, 1, `${path}: ${logged.join("\n")}`);
    assert.ok(logged[0].includes(`${backend.url} failed: `), logged[0]);
    assert.match(logged[0], why);
  }
  const fine = await rawExchange(lb.port, get("/fine"), 10_000);
  assert.match(decoder.decode(fine.bytes), /^HTTP\/1\.1 200 [^]*\r\n\r\nok$/);
});

Deno.test("a backend's bytes after a complete answer are logged and never reach the next client", async () => {
  let answered = 0;
  await using backend = rawServer(async (conn) => {
    const wire = new Wire(conn);
    for (let i = 0; i < 100 && (await wire.head()) !== null; i++) {
      // The first answer undercounts its body: "EXTRA" follows it in the same write.
      const text = answered++ === 0 ? "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA" : "";
      await conn.write(encoder.encode(text || "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo"));
    }
  });
  const log = captureLog();
  await using lb = await startTestBalancer([backend.url], {}, log);
  for (const expected of ["ok", "two", "two"]) {
    const response = await rawExchange(lb.port, get("/"), 10_000);
    assert.match(decoder.decode(response.bytes), new RegExp(`\\r\\n\\r\\n${expected}$`));
  }
  const warned = log.lines.filter((l) => l.includes("after a complete response"));
  assert.deepEqual(warned, [
    `WARN ${backend.url} sent 5 bytes after a complete response; connection closed`,
  ]);
});

Deno.test("--transport fetch: Content-Length with Transfer-Encoding from a backend gives 502 and a log line, never a cut body", async () => {
  await using backend = rawServer(async (conn) => {
    const wire = new Wire(conn);
    for (let i = 0; i < 100 && (await wire.head()) !== null; i++) {
      await conn.write(encoder.encode(
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      ));
    }
  });
  const log = captureLog();
  await using lb = await startTestBalancer([backend.url], { retries: 0, transport: "fetch" }, log);
  const response = await rawExchange(lb.port, get("/"), 10_000);
  assert.match(decoder.decode(response.bytes), /^HTTP\/1\.1 502 /);
  const logged = log.lines.filter((l) => l.startsWith("WARN"));
  assert.equal(logged.length, 1, logged.join("\n"));
  assert.match(logged[0], /failed: malformed response: Content-Length with Transfer-Encoding/);
});
