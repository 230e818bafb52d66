/**
 * @module
 * Back-pressure through the balancer, measured: a backend streams `--size` bytes (default
 * 1 GiB) through a balancer process to a deliberately slow raw-socket reader, while the
 * balancer's RSS (VmRSS in /proc/PID/status) is sampled every 500 ms. If the balancer buffered
 * what the reader cannot take yet, RSS would grow towards the size of the response; bounded
 * RSS shows that fetch and Deno.serve pass back-pressure from the client to the backend.
 *
 * Two phases on one balancer process:
 * 1. **Stalled reader**: the client reads nothing for `--stall`; the backend counts what it was
 *    able to hand over. Everything beyond the client's socket buffer sits in the balancer or
 *    the sockets, so that count bounds what back-pressure let through.
 * 2. **Slow reader**: the client reads `--chunk` bytes every `--every` until the whole body
 *    has arrived or `--max-time` passes.
 *
 * Run: `deno run -A bench/backpressure.ts [--size 1GiB] [--chunk 64KiB] [--every 2ms]`.
 */

import { parseArgs } from "node:util";
import { spawnBalancer } from "../tests/process.ts";
import { parseSize } from "../lib/units.ts";
import { durationArg, type ProcessSample, sampleProcess, sampler, sleep } from "./slowloris.ts";

const encoder = new TextEncoder();
const MiB = 1024 * 1024;

/** A size flag's value (`1GiB`, `64KiB`, plain bytes) in bytes; throws a one-line error. */
export function sizeArg(text: string): number {
  const bytes = parseSize(text);
  if (bytes === undefined) {
    throw new Error(`not a size: ${JSON.stringify(text)} (use e.g. 64KiB, 1GiB)`);
  }
  return bytes;
}
/** A backend that streams `size` bytes per request, produced only as fast as they are taken. */
function streamingBackend(size: number) {
  const produced = { bytes: 0 };
  const block = new Uint8Array(64 * 1024).fill(0x61);
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (req) => {
    if (!req.url.endsWith("/big")) return new Response("ok\n");
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= size) return controller.close();
        const chunk = block.subarray(0, Math.min(block.length, size - sent));
        sent += chunk.length;
        produced.bytes += chunk.length;
        // A copy each time: the stream may hold on to what it was given.
        controller.enqueue(chunk.slice());
      },
    }, { highWaterMark: 0 });
    return new Response(body, {
      headers: { "content-type": "application/octet-stream", "content-length": String(size) },
    });
  });
  return { server, produced };
}

/** Opens a raw connection and sends `GET /big`; the caller reads the answer. */
async function requestBig(port: number): Promise<Deno.Conn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(encoder.encode("GET /big HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"));
  return conn;
}

/** Reads `chunk` bytes every `everyMs` until EOF or `deadline`; returns the bytes read. */
async function readSlowly(
  conn: Deno.Conn,
  chunk: number,
  everyMs: number,
  deadline: number,
  onProgress: (bytes: number) => void,
): Promise<{ bytes: number; complete: boolean }> {
  const buffer = new Uint8Array(chunk);
  let bytes = 0;
  while (performance.now() < deadline) {
    // Up to `chunk` bytes per tick, in as many reads as the socket needs to give them.
    let tick = 0;
    while (tick < chunk) {
      const n = await conn.read(buffer.subarray(tick));
      if (n === null) return { bytes, complete: true };
      tick += n;
      bytes += n;
    }
    onProgress(bytes);
    if (everyMs > 0) await sleep(everyMs);
  }
  return { bytes, complete: false };
}

function mib(bytes: number): number {
  return Number((bytes / MiB).toFixed(1));
}

function rssSummary(samples: ProcessSample[], baseline: ProcessSample) {
  const peak = Math.max(...samples.map((s) => s.rssKiB));
  return {
    samples: samples.length,
    baselineMiB: mib(baseline.rssKiB * 1024),
    peakMiB: mib(peak * 1024),
    growthMiB: mib((peak - baseline.rssKiB) * 1024),
  };
}

/** Runs both phases and returns the report. */
export async function runBackpressure(options: {
  size: number;
  chunk: number;
  everyMs: number;
  stallMs: number;
  maxTimeMs: number;
}) {
  const startedAt = performance.now();
  const backend = streamingBackend(options.size);
  await using balancer = spawnBalancer([
    `--backends=http://127.0.0.1:${backend.server.addr.port}`,
    "--port=0",
    "--host=127.0.0.1",
    "--health-interval=60s",
  ]);
  const port = await balancer.port();
  const pid = balancer.child.pid;
  try {
    // Warm up (JIT, connection pool) so the baseline is the process at work, not at rest.
    for (let i = 0; i < 20; i++) await (await fetch(`http://127.0.0.1:${port}/`)).text();
    await sleep(500);
    const baseline = await sampleProcess(pid, startedAt);

    // Phase 1: a reader that takes nothing.
    const stallWatch = sampler(pid, startedAt);
    const stalled = await requestBig(port);
    await sleep(options.stallMs);
    const producedWhileStalled = backend.produced.bytes;
    stalled.close();
    const stallSamples = await stallWatch.stop();
    await sleep(1000);

    // Phase 2: a slow reader, to the end.
    backend.produced.bytes = 0;
    const slowWatch = sampler(pid, startedAt);
    const conn = await requestBig(port);
    const started = performance.now();
    const lag: number[] = [];
    let result: { bytes: number; complete: boolean };
    try {
      result = await readSlowly(
        conn,
        options.chunk,
        options.everyMs,
        started + options.maxTimeMs,
        (read) => lag.push(backend.produced.bytes - read),
      );
    } finally {
      try {
        conn.close();
      } catch { /* closed */ }
    }
    const seconds = (performance.now() - started) / 1000;
    const slowSamples = await slowWatch.stop();
    const final = await sampleProcess(pid, startedAt);
    return {
      deno: Deno.version.deno,
      options: {
        sizeMiB: mib(options.size),
        chunkKiB: options.chunk / 1024,
        everyMs: options.everyMs,
        stallMs: options.stallMs,
        maxTimeMs: options.maxTimeMs,
      },
      baseline,
      stalledReader: {
        producedByBackendMiB: mib(producedWhileStalled),
        rss: rssSummary(stallSamples, baseline),
      },
      slowReader: {
        readMiB: mib(result.bytes),
        complete: result.complete,
        seconds: Number(seconds.toFixed(1)),
        throughputMiBps: Number((result.bytes / MiB / seconds).toFixed(1)),
        // Produced by the backend but not yet read by the client: in flight in between.
        maxAheadOfReaderMiB: mib(Math.max(0, ...lag)),
        rss: rssSummary(slowSamples, baseline),
      },
      afterMiB: mib(final.rssKiB * 1024),
      samples: { stalled: stallSamples, slow: slowSamples },
    };
  } finally {
    await backend.server.shutdown();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      size: { type: "string", default: "1GiB" },
      chunk: { type: "string", default: "64KiB" },
      every: { type: "string", default: "2ms" },
      stall: { type: "string", default: "10s" },
      "max-time": { type: "string", default: "180s" },
      json: { type: "string" },
    },
  });
  const report = await runBackpressure({
    size: sizeArg(values.size),
    chunk: sizeArg(values.chunk),
    everyMs: durationArg(values.every),
    stallMs: durationArg(values.stall),
    maxTimeMs: durationArg(values["max-time"]),
  });
  if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(report, null, 2) + "\n");
  const { samples: _samples, ...summary } = report;
  console.log(JSON.stringify(summary, null, 2));
}
