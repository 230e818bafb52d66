/**
 * @module
 * Slow clients against the native front end (lib/frontend_native.ts), measured. A child process
 * runs `serveNative()` with a handler that answers at once (the front end alone is under
 * test; the balancer behind it is the same for both front ends); then:
 *
 * 1. **Baseline**: a keep-alive probe sends one small GET every `--probe-interval` for 2 s and
 *    records each latency.
 * 2. **Slow heads**: `--connections` sockets each send one byte of a request head every
 *    second, never finishing it. The probe goes on. Each slow socket records when the server
 *    closed it (and whether a 408 came first). RSS and open descriptors of the server are
 *    sampled every 500 ms.
 * 3. **Idle keep-alive**: `--idle` sockets each make one request and then stay silent; each
 *    records when the server closed it.
 *
 * Run: `deno run -A bench/slow_clients.ts [--connections 5000] [--idle 500]
 * [--header-timeout 10s] [--idle-timeout 5s]`. Needs `ulimit -n` above twice the connections
 * (client and server run on this machine). Prints a Markdown summary; `--json FILE` writes all.
 */

import { parseArgs } from "node:util";
import { durationArg, sampler, sleep } from "./slowloris.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The server half: serve until stdin closes, printing the port first. */
async function serve(headerTimeoutMs: number, idleTimeoutMs: number): Promise<void> {
  const { serveNative } = await import("../lib/frontend_native.ts");
  const server = serveNative(
    { hostname: "127.0.0.1", port: 0, headerTimeoutMs, idleTimeoutMs },
    () => new Response("ok"),
  );
  console.log(server.addr.port);
  for await (const _ of Deno.stdin.readable) { /* until the parent closes stdin */ }
  await server.drain(performance.now() + 1000);
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summary(latencies: number[]) {
  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    count: sorted.length,
    p50: +percentile(sorted, 50).toFixed(3),
    p99: +percentile(sorted, 99).toFixed(3),
    max: +(sorted.at(-1) ?? NaN).toFixed(3),
  };
}

/** Sends GETs on one keep-alive connection every `everyMs` until `stop()`; latencies in ms. */
async function probe(port: number, everyMs: number) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  const latencies: number[] = [];
  let failures = 0;
  let running = true;
  const buf = new Uint8Array(4096);
  const request = encoder.encode("GET /probe HTTP/1.1\r\nHost: bench\r\n\r\n");
  const loop = (async () => {
    for (let i = 0; running && i < 1_000_000; i++) {
      const started = performance.now();
      try {
        await conn.write(request);
        let text = "";
        for (let j = 0; j < 10 && !text.endsWith("\r\n\r\nok"); j++) {
          const n = await conn.read(buf);
          if (n === null) throw new Error("probe connection closed");
          text += decoder.decode(buf.subarray(0, n));
        }
        latencies.push(performance.now() - started);
      } catch {
        failures++;
        break;
      }
      await sleep(everyMs);
    }
  })();
  return {
    latencies,
    get failures() {
      return failures;
    },
    async stop() {
      running = false;
      await loop;
      conn.close();
    },
  };
}

/** A socket that sends one byte of a never-ending head every second; records its close. */
interface SlowSocket {
  conn: Deno.Conn;
  openedAt: number;
  closedAt?: number;
  got408: boolean;
}

async function run(options: {
  connections: number;
  idle: number;
  headerTimeoutMs: number;
  idleTimeoutMs: number;
  probeIntervalMs: number;
}) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      import.meta.filename!,
      "--serve",
      `--header-timeout=${options.headerTimeoutMs}ms`,
      `--idle-timeout=${options.idleTimeoutMs}ms`,
    ],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const reader = child.stdout.getReader();
  const first = await reader.read();
  const port = Number(decoder.decode(first.value).trim());
  reader.releaseLock();
  child.stdout.cancel().catch(() => {});
  const startedAt = performance.now();
  const samples = sampler(child.pid, startedAt);
  try {
    const baselineProbe = await probe(port, options.probeIntervalMs);
    await sleep(2000);
    await baselineProbe.stop();

    // Slow heads.
    const slowProbe = await probe(port, options.probeIntervalMs);
    const slow: SlowSocket[] = [];
    const head = encoder.encode("GET /slow HTTP/1.1\r\nHost: bench\r\nX-Slow: " + "s".repeat(4096));
    let connectFailures = 0;
    for (let i = 0; i < options.connections; i++) {
      try {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        slow.push({ conn, openedAt: performance.now(), got408: false });
      } catch {
        connectFailures++;
      }
    }
    const opened = performance.now();
    // Each socket watches for the server closing it.
    const watchers = slow.map(async (s) => {
      const buf = new Uint8Array(256);
      for (let i = 0; i < 100; i++) {
        const n = await s.conn.read(buf).catch(() => null);
        if (n === null) break;
        if (decoder.decode(buf.subarray(0, n)).startsWith("HTTP/1.1 408")) s.got408 = true;
      }
      s.closedAt = performance.now();
    });
    const deadline = opened + options.headerTimeoutMs + 3000;
    for (let second = 0; performance.now() < deadline && second < 3600; second++) {
      for (const s of slow) {
        if (s.closedAt === undefined) {
          s.conn.write(head.subarray(second, second + 1)).catch(() => {});
        }
      }
      await sleep(1000);
    }
    await slowProbe.stop();
    const stillOpen = slow.filter((s) => s.closedAt === undefined).length;
    for (const s of slow) {
      try {
        s.conn.close();
      } catch { /* closed by the server */ }
    }
    await Promise.all(watchers);
    const lifetimes = slow.filter((s) => s.closedAt !== undefined).map((s) =>
      (s.closedAt! - s.openedAt) / 1000
    );

    // Idle keep-alive connections.
    const idle: { closedAt?: number; at: number }[] = [];
    const idleWatchers: Promise<void>[] = [];
    for (let i = 0; i < options.idle; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(encoder.encode("GET /once HTTP/1.1\r\nHost: bench\r\n\r\n"));
      const record: { closedAt?: number; at: number } = { at: 0 };
      idle.push(record);
      idleWatchers.push((async () => {
        const buf = new Uint8Array(512);
        for (let j = 0; j < 100; j++) {
          const n = await conn.read(buf).catch(() => null);
          if (n === null) break;
          // Idle from the response on.
          record.at = performance.now();
        }
        record.closedAt = performance.now();
        conn.close();
      })());
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all(idleWatchers),
      new Promise((r) => (timer = setTimeout(r, options.idleTimeoutMs + 5000))),
    ]);
    clearTimeout(timer);
    const idleLifetimes = idle.filter((r) => r.closedAt !== undefined).map((r) =>
      (r.closedAt! - r.at) / 1000
    );
    const process = await samples.stop();
    return {
      options,
      baseline: summary(baselineProbe.latencies),
      underSlowClients: { ...summary(slowProbe.latencies), failures: slowProbe.failures },
      slow: {
        opened: slow.length,
        connectFailures,
        closedByServer: slow.length - stillOpen,
        with408: slow.filter((s) => s.got408).length,
        closedAfterSeconds: summary(lifetimes),
      },
      idle: { opened: idle.length, closedAfterSeconds: summary(idleLifetimes) },
      process: {
        peakRssMiB: Math.max(...process.map((p) => p.rssKiB)) / 1024,
        peakFds: Math.max(...process.map((p) => p.fds)),
        lastFds: process.at(-1)?.fds,
      },
      samples: process,
    };
  } finally {
    await samples.stop();
    await child.stdin.close().catch(() => {});
    await child.status;
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      serve: { type: "boolean", default: false },
      connections: { type: "string", default: "5000" },
      idle: { type: "string", default: "500" },
      "header-timeout": { type: "string", default: "10s" },
      "idle-timeout": { type: "string", default: "5s" },
      "probe-interval": { type: "string", default: "50ms" },
      json: { type: "string" },
    },
  });
  const headerTimeoutMs = durationArg(values["header-timeout"]);
  const idleTimeoutMs = durationArg(values["idle-timeout"]);
  if (values.serve) {
    await serve(headerTimeoutMs, idleTimeoutMs);
  } else {
    const result = await run({
      connections: Number(values.connections),
      idle: Number(values.idle),
      headerTimeoutMs,
      idleTimeoutMs,
      probeIntervalMs: durationArg(values["probe-interval"]),
    });
    const { samples: _, ...shown } = result;
    console.log(JSON.stringify(shown, null, 2));
    if (values.json !== undefined) {
      await Deno.writeTextFile(values.json, JSON.stringify(result, null, 2));
    }
  }
}
