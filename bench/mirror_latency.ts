/**
 * @module
 * What a mirror costs the client, measured (issue 14): client latency of POSTs through a front
 * built like the proxy's request path (lib/body.ts `prepareBody`, lib/mirror.ts `Mirror.tee`,
 * the native transport to a primary backend), with no mirror, with a mirror that answers at
 * once, with one that takes 2 s to answer, and with one that refuses connections. Scenarios
 * alternate over several rounds so that drift on a shared machine hits them all alike.
 *
 * Run: `deno run -A bench/mirror_latency.ts [--requests 400] [--concurrency 1,8] [--rounds 5]
 * [--write]`; `--write` saves bench/results/mirror/README.md.
 */

import { cpuUsage } from "node:process";
import { parseArgs } from "node:util";
import { prepareBody } from "../lib/body.ts";
import type { HeaderPairs } from "../lib/headers.ts";
import { createServiceMirrorTarget, Mirror, type MirrorStats } from "../lib/mirror.ts";
import { createPolicy } from "../lib/policies/mod.ts";
import { Pool } from "../lib/pool.ts";
import type { AttemptOptions } from "../lib/upstream.ts";
import { createNativeTransport, type NativeTransport } from "../lib/upstream_native.ts";

type Scenario = "none" | "fast" | "slow 2s" | "dead";
const SCENARIOS: Scenario[] = ["none", "fast", "slow 2s", "dead"];
const BODY = new Uint8Array(1024).fill(120);

interface Server {
  url: string;
  close(): Promise<void>;
}

function serve(handler: Deno.ServeHandler<Deno.NetAddr>): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, handler);
}

function backend(delayMs: number): Server {
  const server = serve(async (req) => {
    await req.arrayBuffer();
    if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
    return new Response("ok");
  });
  return { url: `http://127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

function refusingUrl(): string {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  listener.close();
  return `http://127.0.0.1:${listener.addr.port}`;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

/** What one measurement shares: the transport, the backends, the mirrors' addresses. */
interface Rig {
  native: NativeTransport;
  attempt: AttemptOptions;
  primary: Server;
  targets: Record<Scenario, string | undefined>;
}

/** A mirror for `scenario`, or undefined for none. */
function mirrorFor(rig: Rig, scenario: Scenario): Mirror | undefined {
  const url = rig.targets[scenario];
  if (url === undefined) return undefined;
  const pool = new Pool([{ url, weight: 1 }], {
    rise: 2,
    fall: 3,
    policy: createPolicy("round-robin"),
  });
  return new Mirror(
    { service: "shadow", percent: 100, maxBody: 64 * 1024 },
    createServiceMirrorTarget({ pool, transport: rig.native.send, attempt: rig.attempt }),
  );
}

/** A front like the proxy's request path: prepareBody, Mirror.tee, the native transport. */
function startFront(rig: Rig, mirror: Mirror | undefined): Deno.HttpServer<Deno.NetAddr> {
  const { native, primary, attempt } = rig;
  return serve(async (req, info) => {
    const path = new URL(req.url).pathname;
    const headers: HeaderPairs = [...req.headers];
    let body = await prepareBody(req);
    if (mirror) body = mirror.tee({ method: req.method, path, headers }, body, info.completed);
    const result = await native.send(
      primary.url,
      primary.url + path,
      {
        method: req.method,
        headers,
        body: body.forAttempt(),
      },
      req.signal,
      attempt,
    );
    if (!result.ok) return new Response(null, { status: 502 });
    return new Response(result.value.body, { status: result.value.status });
  });
}

/** Runs every scenario `rounds` times, alternating; returns the Markdown table. */
async function measure(
  rig: Rig,
  requests: number,
  concurrency: number,
  rounds: number,
): Promise<string> {
  const latencies: Record<string, number[]> = {};
  const stats: Record<string, MirrorStats[]> = {};
  const cpuUs: Record<string, number> = {};
  for (let round = 0; round < rounds; round++) {
    for (const scenario of SCENARIOS) {
      const mirror = mirrorFor(rig, scenario);
      const front = startFront(rig, mirror);
      const frontUrl = `http://127.0.0.1:${front.addr.port}/upload`;
      const times: number[] = (latencies[scenario] ??= []);
      let next = 0;
      const cpuBefore = cpuUsage();
      await Promise.all(Array.from({ length: concurrency }, async () => {
        while (next++ < requests) {
          const start = performance.now();
          const response = await fetch(frontUrl, {
            method: "POST",
            body: BODY,
            client: rig.attempt.client,
          });
          await response.arrayBuffer();
          if (response.status !== 200) throw new Error(`status ${response.status}`);
          times.push(performance.now() - start);
        }
      }));
      const cpu = cpuUsage(cpuBefore);
      cpuUs[scenario] = (cpuUs[scenario] ?? 0) + cpu.user + cpu.system;
      if (mirror) {
        (stats[scenario] ??= []).push(mirror.stats());
        await mirror.close();
      }
      await front.shutdown();
    }
  }
  const lines = [
    "| mirror | requests | CPU µs/request | p50 ms | p90 ms | p99 ms | max ms | copies sent | " +
    "dropped (full) | failed | answered |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const scenario of SCENARIOS) {
    const sorted = latencies[scenario].sort((a, b) => a - b);
    const s = stats[scenario] ?? [];
    const sum = (f: (x: MirrorStats) => number) => s.reduce((n, x) => n + f(x), 0);
    const answered = sum((x) => Object.values(x.statuses).reduce((a, b) => a + b, 0));
    const cells = [
      scenario,
      sorted.length,
      Math.round(cpuUs[scenario] / sorted.length),
      ...[0.5, 0.9, 0.99, 1].map((p) => percentile(sorted, p).toFixed(2)),
      ...(s.length === 0 ? ["-", "-", "-", "-"] : [
        sum((x) => x.sent),
        sum((x) => x.dropped.full),
        sum((x) => x.failed),
        answered,
      ]),
    ];
    lines.push(`| ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      requests: { type: "string", default: "400" },
      concurrency: { type: "string", default: "1,8" },
      rounds: { type: "string", default: "5" },
      write: { type: "boolean", default: false },
    },
  });
  const requests = Number(values.requests);
  const levels = values.concurrency.split(",").map(Number);
  const rounds = Number(values.rounds);
  const client = Deno.createHttpClient({});
  const [primary, fast, slow] = [backend(0), backend(0), backend(2000)];
  const rig: Rig = {
    native: createNativeTransport(),
    attempt: { client, timeout: 30_000, connectTimeout: 3_000 },
    primary,
    targets: { none: undefined, fast: fast.url, "slow 2s": slow.url, dead: refusingUrl() },
  };
  const sections: string[] = [];
  for (const concurrency of levels) {
    const table = await measure(rig, requests, concurrency, rounds);
    console.log(`concurrency ${concurrency}\n${table}\n`);
    sections.push(`### Concurrency ${concurrency}\n\n${table}\n`);
  }
  await Promise.all([primary.close(), fast.close(), slow.close()]);
  await rig.native.close();
  client.close();
  if (values.write) await write(sections, requests, values.concurrency, rounds);
}

async function write(
  sections: string[],
  requests: number,
  concurrency: string,
  rounds: number,
): Promise<void> {
  const dir = new URL("./results/mirror/", import.meta.url);
  await Deno.mkdir(dir, { recursive: true });
  const load = (await Deno.readTextFile("/proc/loadavg").catch(() => "?")).split(" ")[0];
  await Deno.writeTextFile(
    new URL("README.md", dir),
    `# Mirroring: what a mirror costs the client\n\n` +
      `\`deno run -A bench/mirror_latency.ts --requests ${requests} --concurrency ${concurrency} ` +
      `--rounds ${rounds} --write\` on ${new Date().toISOString().slice(0, 10)}, Deno ` +
      `${Deno.version.deno}, ${navigator.hardwareConcurrency} CPUs shared with other work ` +
      `(1-minute load ${load} at the end). One process: a front built like the proxy's request ` +
      `path (prepareBody, Mirror.tee, native transport) sends 1 KiB POSTs to a primary backend ` +
      `and copies every one (percent 100, maxInFlight 64) to the mirror. Client, front and ` +
      `backends all run in this process, so "CPU" covers all of them. Latency is the client's, ` +
      `request sent to response body read; each row pools ${rounds} rounds of ${requests} ` +
      `requests, scenarios alternating.\n\n${sections.join("\n")}\n` +
      `- **slow 2s**: the mirror answers each copy after 2 s. At most 64 copies are in flight, ` +
      `so beyond them copies are dropped and counted (\`dropped.full\`).\n` +
      `- **dead**: the mirror's port refuses connections; every copy fails at once and is ` +
      `counted (\`failed\`).\n` +
      `- Nothing waits for a copy: the **slow 2s** row, whose copies stall 2 s each, is no ` +
      `slower than the **fast** one. What a copy costs is CPU on the same event loop (it is a ` +
      `second upstream request made by the same process), which shows as a fraction of a ` +
      `millisecond at concurrency 1; a dropped copy costs nearly nothing. A dead mirror costs ` +
      `a refused connect and an error per copy here; in the balancer the mirror service's ` +
      `health checks take its backend down, and copies then fail before any connect ("no ` +
      `backend available"). The machine was shared with other test runs: compare rows of one ` +
      `table, not across runs.\n` +
      `- "answered" counts copies whose status was counted before the round ended (a copy ` +
      `still in flight then is waited for by \`close()\`, up to 5 s, and not counted here).\n`,
  );
}

if (import.meta.main) await main();
