/**
 * @module
 * Slowloris against the balancer, measured. A balancer process runs in front of an in-process
 * backend on 127.0.0.1; then:
 *
 * 1. **Slow heads** (not defended: Deno 2.9.6 has no header-read timeout): `--connections`
 *    sockets each send a request line and then one header line every `--interval`, never
 *    ending the head, for `--duration`. Meanwhile a normal request on a fresh connection every
 *    `--probe-interval` measures whether the balancer still serves, and how fast; the
 *    balancer's RSS and open file descriptors are sampled every 500 ms. At the end we count how
 *    many slow sockets the balancer had closed by itself (none means nothing defends them).
 * 2. **Slow bodies** (defended by `--body-timeout`): as many sockets send a complete POST head
 *    and one chunk of a chunked body, then stall. Each should get a 408 once the body timeout
 *    passes, with the upstream request cancelled.
 *
 * Run: `deno run -A bench/slowloris.ts [--connections 200] [--interval 5s] [--duration 30s]`.
 * Prints a summary; `--json FILE` also writes every sample.
 */

import { parseArgs } from "node:util";
import { parseDuration } from "../lib/units.ts";
import { spawnBalancer } from "../tests/process.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One reading of a process's memory and descriptors. */
export interface ProcessSample {
  /** Milliseconds since the run started. */
  at: number;
  /** Resident set size (VmRSS), KiB. */
  rssKiB: number;
  /** Open file descriptors (entries of /proc/PID/fd). */
  fds: number;
}

/** Reads VmRSS and the descriptor count of `pid` from /proc. */
export async function sampleProcess(pid: number, startedAt: number): Promise<ProcessSample> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const rssKiB = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
  let fds = 0;
  for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) fds++;
  return { at: Math.round(performance.now() - startedAt), rssKiB, fds };
}

/** Samples `pid` every `everyMs` until `stop()`; returns the samples. */
export function sampler(pid: number, startedAt: number, everyMs = 500) {
  const samples: ProcessSample[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running = true;
  const tick = async () => {
    try {
      samples.push(await sampleProcess(pid, startedAt));
    } catch { /* the process is gone */ }
    if (running) timer = setTimeout(tick, everyMs);
  };
  const first = tick();
  return {
    samples,
    async stop(): Promise<ProcessSample[]> {
      running = false;
      clearTimeout(timer);
      await first;
      return samples;
    },
  };
}

/** A duration flag's value (`5s`, `500ms`, `2m`) in milliseconds; throws a one-line error. */
export function durationArg(text: string): number {
  const ms = parseDuration(text);
  if (ms === undefined) {
    throw new Error(`not a duration: ${JSON.stringify(text)} (use e.g. 500ms, 2s, 1m)`);
  }
  return ms;
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A normal request on a fresh connection; its latency in ms, or the reason it failed. */
async function probe(port: number, timeoutMs: number): Promise<number | string> {
  const started = performance.now();
  let conn: Deno.Conn | undefined;
  const timer = setTimeout(() => conn?.close(), timeoutMs);
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(
      encoder.encode("GET /probe HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"),
    );
    let text = "";
    const buffer = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += decoder.decode(buffer.subarray(0, n));
    }
    if (!text.startsWith("HTTP/1.1 200")) return `answer: ${text.split("\r\n")[0] || "none"}`;
    return performance.now() - started;
  } catch (error) {
    return `${(error as Error).name}`;
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch { /* closed by the timer */ }
  }
}

/** A slowloris socket: sends a head one line at a time, never finishing it. */
interface SlowSocket {
  conn: Deno.Conn;
  /** Set when the balancer answered, closed or reset the socket. */
  ended?: string;
}

async function openSlowHead(port: number): Promise<SlowSocket> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const socket: SlowSocket = { conn };
  await conn.write(encoder.encode("GET /slowloris HTTP/1.1\r\nHost: bench\r\n"));
  // Anything the balancer sends (an answer, EOF, a reset) means it ended the socket.
  (async () => {
    const buffer = new Uint8Array(1024);
    try {
      const n = await conn.read(buffer);
      socket.ended ??= n === null ? "closed by balancer" : decoder.decode(buffer.subarray(0, n));
    } catch (error) {
      socket.ended ??= `${(error as Error).name}`;
    }
  })();
  return socket;
}

/** Percentile of sorted numbers. */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function latencySummary(results: (number | string)[]) {
  const ok = results.filter((r): r is number => typeof r === "number").sort((a, b) => a - b);
  const failed = results.filter((r) => typeof r === "string") as string[];
  return {
    sent: results.length,
    ok: ok.length,
    failed: failed.length,
    failures: [...new Set(failed)],
    p50ms: Number(percentile(ok, 50).toFixed(1)),
    p99ms: Number(percentile(ok, 99).toFixed(1)),
    maxms: Number((ok.at(-1) ?? NaN).toFixed(1)),
  };
}

function memorySummary(samples: ProcessSample[]) {
  const rss = samples.map((s) => s.rssKiB);
  const fds = samples.map((s) => s.fds);
  return {
    rssStartMiB: Number((rss[0] / 1024).toFixed(1)),
    rssPeakMiB: Number((Math.max(...rss) / 1024).toFixed(1)),
    fdsStart: fds[0],
    fdsPeak: Math.max(...fds),
  };
}

/** Runs both phases; returns the report. */
export async function runSlowloris(options: {
  connections: number;
  intervalMs: number;
  durationMs: number;
  probeIntervalMs: number;
  bodyTimeoutMs: number;
}) {
  const startedAt = performance.now();
  // Reads every body before answering, as an upload endpoint does: a backend that answered at
  // once would leave nothing for the body timeout to guard.
  const backend = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen: () => {}, onError: () => new Response("") },
    async (req) => {
      if (req.body !== null) await req.arrayBuffer().catch(() => {});
      return new Response("ok\n");
    },
  );
  await using balancer = spawnBalancer([
    `--backends=http://127.0.0.1:${backend.addr.port}`,
    "--port=0",
    "--host=127.0.0.1",
    "--health-interval=60s",
    `--body-timeout=${options.bodyTimeoutMs}ms`,
  ]);
  const port = await balancer.port();
  const pid = balancer.child.pid;
  try {
    // Baseline.
    const baselineProbes: (number | string)[] = [];
    for (let i = 0; i < 20; i++) baselineProbes.push(await probe(port, 5000));
    const baseline = await sampleProcess(pid, startedAt);

    // Phase 1: slow heads.
    const watch = sampler(pid, startedAt);
    const sockets: SlowSocket[] = [];
    for (let i = 0; i < options.connections; i++) sockets.push(await openSlowHead(port));
    const attackProbes: (number | string)[] = [];
    const deadline = performance.now() + options.durationMs;
    let nextLine = performance.now() + options.intervalMs;
    let line = 0;
    while (performance.now() < deadline) {
      attackProbes.push(await probe(port, 5000));
      if (performance.now() >= nextLine) {
        line++;
        await Promise.all(
          sockets.filter((s) => s.ended === undefined).map(async (s) => {
            try {
              await s.conn.write(encoder.encode(`X-Slow-${line}: ${"a".repeat(16)}\r\n`));
            } catch (error) {
              s.ended ??= `write failed: ${(error as Error).name}`;
            }
          }),
        );
        nextLine += options.intervalMs;
      }
      await sleep(options.probeIntervalMs);
    }
    const duringSamples = await watch.stop();
    const endedByBalancer = sockets.filter((s) => s.ended !== undefined);
    for (const s of sockets) {
      try {
        s.conn.close();
      } catch { /* closed */ }
    }
    await sleep(1000);
    const afterClose = await sampleProcess(pid, startedAt);

    // Phase 2: slow bodies, which the body timeout covers.
    const bodyStarted = performance.now();
    const bodySockets = await Promise.all(
      Array.from({ length: options.connections }, async () => {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        await conn.write(encoder.encode(
          "POST /slow-body HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ));
        return conn;
      }),
    );
    const bodyWatch = sampler(pid, startedAt);
    const answers = await Promise.all(bodySockets.map(async (conn) => {
      const buffer = new Uint8Array(1024);
      const timer = setTimeout(() => conn.close(), options.bodyTimeoutMs + 15_000);
      try {
        const n = await conn.read(buffer);
        return {
          status: n === null ? "closed" : decoder.decode(buffer.subarray(0, n)).split(" ")[1],
          ms: performance.now() - bodyStarted,
        };
      } catch {
        return { status: "no answer", ms: performance.now() - bodyStarted };
      } finally {
        clearTimeout(timer);
      }
    }));
    const probesWhileHeld: (number | string)[] = [];
    for (let i = 0; i < 10; i++) probesWhileHeld.push(await probe(port, 5000));
    const heldAfter408 = await sampleProcess(pid, startedAt);
    for (const conn of bodySockets) {
      try {
        conn.close();
      } catch { /* closed */ }
    }
    const bodySamples = await bodyWatch.stop();
    await sleep(1000);
    const final = await sampleProcess(pid, startedAt);

    const statusCounts: Record<string, number> = {};
    for (const a of answers) statusCounts[a.status] = (statusCounts[a.status] ?? 0) + 1;
    const answeredMs = answers.map((a) => a.ms).sort((a, b) => a - b);
    return {
      deno: Deno.version.deno,
      options,
      baseline: { ...baseline, probes: latencySummary(baselineProbes) },
      slowHeads: {
        headerLinesSent: line,
        endedByBalancer: endedByBalancer.length,
        endReasons: [...new Set(endedByBalancer.map((s) => s.ended))],
        probes: latencySummary(attackProbes),
        process: memorySummary(duringSamples),
        afterClientsClosed: afterClose,
      },
      slowBodies: {
        answers: statusCounts,
        firstAnswerMs: Math.round(answeredMs[0]),
        lastAnswerMs: Math.round(answeredMs.at(-1)!),
        probesWhileSocketsHeld: latencySummary(probesWhileHeld),
        process: memorySummary(bodySamples),
        fdsWhileClientsHoldSockets: heldAfter408.fds,
        afterClientsClosed: final,
      },
      samples: { slowHeads: duringSamples, slowBodies: bodySamples },
    };
  } finally {
    await backend.shutdown();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      connections: { type: "string", default: "200" },
      interval: { type: "string", default: "5s" },
      duration: { type: "string", default: "30s" },
      "probe-interval": { type: "string", default: "1s" },
      "body-timeout": { type: "string", default: "2s" },
      json: { type: "string" },
    },
  });
  const report = await runSlowloris({
    connections: Number(values.connections),
    intervalMs: durationArg(values.interval),
    durationMs: durationArg(values.duration),
    probeIntervalMs: durationArg(values["probe-interval"]),
    bodyTimeoutMs: durationArg(values["body-timeout"]),
  });
  if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(report, null, 2) + "\n");
  const { samples: _samples, ...summary } = report;
  console.log(JSON.stringify(summary, null, 2));
}
