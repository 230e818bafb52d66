/**
 * @module
 * What a burst of wrong passwords costs the other requests of the same thread, with bcrypt on
 * the verifier's worker thread (lib/basic_auth.ts) and, for comparison, on the main thread.
 * No balancer: the main thread runs an echo server and the burst; a client on a thread of its
 * own (so that its own timing is not stalled) sends sequential requests to the echo server for
 * the whole burst, and the main thread samples its event-loop lag every 10 ms.
 *
 * Modes, each with `--count` wrong passwords (default 200) against a cost `--cost` hash
 * (default 10), all issued at once:
 * - `idle`: no burst, for the floor (lasts 2 s).
 * - `worker`: `BasicAuthVerifier` with room for the whole burst (`maxPending` = count).
 * - `worker-64`: `BasicAuthVerifier` with the default queue of 64; the rest answer busy.
 * - `main-sync`: bcryptjs `compareSync` on the main thread, one check per event-loop turn (what a
 *   request handler calling it directly does).
 * - `main-async`: bcryptjs's async `compare` on the main thread (it computes in slices and
 *   yields between them).
 *
 * Run: `deno run -A bench/basic_auth_burst.ts [--count 200] [--cost 10] [--modes worker,main-sync]`.
 * Results: bench/results/basic_auth/README.md.
 */

import { parseArgs } from "node:util";
import { compare, compareSync, hashSync } from "npm:bcryptjs@^3.0.3";
import { BasicAuthVerifier } from "../lib/basic_auth.ts";

const MODES = ["idle", "worker", "worker-64", "main-sync", "main-async"] as const;
type Mode = typeof MODES[number];
const LAG_INTERVAL_MS = 10;
/** Upper bounds, so that no run can go on for ever. */
const MAX_RUN_MS = 300_000;
const MAX_CLIENT_REQUESTS = 100_000;

/** One mode's figures. */
interface Result {
  mode: Mode;
  burstMs: number;
  verified: number;
  busy: number;
  lag: number[];
  echo: number[];
  startMs?: number;
}

/**
 * The client thread: sequential GETs with a 10 ms pause until told to stop; posts
 * [start, latency] pairs (start on the shared `performance.timeOrigin` + `now()` clock).
 */
const CLIENT = `
let stop = false;
self.onmessage = async (event) => {
  if (event.data.type === "stop") { stop = true; return; }
  const client = Deno.createHttpClient({});
  const latencies = [];
  const started = performance.now();
  while (!stop && latencies.length < ${MAX_CLIENT_REQUESTS} &&
    performance.now() - started < ${MAX_RUN_MS}) {
    const t0 = performance.now();
    const response = await fetch(event.data.url, { client });
    await response.arrayBuffer();
    latencies.push([performance.timeOrigin + t0, performance.now() - t0]);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  client.close();
  self.postMessage(latencies);
};`;

/** Nearest-rank percentile of unsorted samples. */
export function percentile(samples: number[], p: number): number {
  if (samples.length === 0) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** Samples how late a 10 ms interval fires, until stopped. */
function lagSampler(): { stop(): number[] } {
  const lags: number[] = [];
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    lags.push(Math.max(0, now - last - LAG_INTERVAL_MS));
    last = now;
  }, LAG_INTERVAL_MS);
  return {
    stop() {
      clearInterval(timer);
      // A burst that never let the interval fire is one long lag.
      lags.push(Math.max(0, performance.now() - last - LAG_INTERVAL_MS));
      return lags;
    },
  };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A mode ready to run: `run` resolves with [bcrypt runs, busy answers] when all answered. */
interface Burst {
  run(): Promise<[number, number]>;
  close(): Promise<void>;
  /** How long starting the worker thread blocked this thread, in ms (worker modes). */
  startMs?: number;
}

/** Prepares one mode; a worker is started and warmed up here, outside the measured window. */
async function prepare(mode: Mode, count: number, hash: string): Promise<Burst> {
  const guesses = Array.from({ length: count }, (_, i) => `wrong guess ${i}`);
  const close = () => Promise.resolve();
  switch (mode) {
    case "idle":
      return { run: () => delay(2000).then(() => [0, 0]), close };
    case "worker":
    case "worker-64": {
      const verifier = new BasicAuthVerifier({ maxPending: mode === "worker" ? count : 64 });
      const users = new Map([["alice", hash]]);
      const t0 = performance.now();
      verifier.start();
      const startMs = performance.now() - t0;
      await verifier.verify(users, `Basic ${btoa("alice:warm-up")}`);
      const before = verifier.stats.verifications;
      return {
        startMs,
        run: async () => {
          const outcomes = await Promise.all(
            guesses.map((g) => verifier.verify(users, `Basic ${btoa(`alice:${g}`)}`)),
          );
          return [
            verifier.stats.verifications - before,
            outcomes.filter((o) => o === "busy").length,
          ];
        },
        close: () => verifier.close(),
      };
    }
    case "main-sync":
      return {
        run: async () => {
          for (const guess of guesses) {
            // One check per macrotask, as one per request would be.
            await delay(0);
            compareSync(guess, hash);
          }
          return [count, 0];
        },
        close,
      };
    case "main-async":
      return {
        run: async () => {
          await Promise.all(guesses.map((guess) => compare(guess, hash)));
          return [count, 0];
        },
        close,
      };
  }
}

async function runMode(mode: Mode, count: number, hash: string, echoUrl: string): Promise<Result> {
  const burst = await prepare(mode, count, hash);
  const client = new Worker(`data:application/javascript,${encodeURIComponent(CLIENT)}`, {
    type: "module",
  });
  const echo = new Promise<[number, number][]>((resolve) => {
    client.onmessage = (event: MessageEvent<[number, number][]>) => resolve(event.data);
  });
  client.postMessage({ type: "start", url: echoUrl });
  // Let the client thread start and make its first connection before the burst.
  await delay(500);
  const sampler = lagSampler();
  const t0 = performance.now();
  const [verified, busy] = await burst.run();
  const t1 = performance.now();
  const lag = sampler.stop();
  client.postMessage({ type: "stop" });
  // Only requests that were under way at some point of the burst.
  const [from, to] = [performance.timeOrigin + t0, performance.timeOrigin + t1];
  const latencies = (await echo)
    .filter(([start, latency]) => start < to && start + latency > from)
    .map(([, latency]) => latency);
  const burstMs = t1 - t0;
  client.terminate();
  await burst.close();
  return { mode, burstMs, verified, busy, lag, echo: latencies, startMs: burst.startMs };
}

function ms(value: number): string {
  return Number.isNaN(value) ? "-" : value.toFixed(1);
}

/** The results as a Markdown table. */
export function table(results: Result[]): string {
  const lines = [
    "| mode | burst (ms) | bcrypt runs | busy | loop lag p50 / p99 / max (ms) | echo requests | echo p50 / p99 / max (ms) |",
    "| --- | ---: | ---: | ---: | --- | ---: | --- |",
  ];
  for (const r of results) {
    const lag = [50, 99, 100].map((p) => ms(percentile(r.lag, p))).join(" / ");
    const echo = [50, 99, 100].map((p) => ms(percentile(r.echo, p))).join(" / ");
    lines.push(
      `| ${r.mode} | ${r.burstMs.toFixed(0)} | ${r.verified} | ${r.busy} | ${lag} | ` +
        `${r.echo.length} | ${echo} |`,
    );
  }
  const starts = results.filter((r) => r.startMs !== undefined);
  if (starts.length > 0) {
    lines.push(
      "",
      `Starting the worker thread (\`new Worker()\`, before the window) blocked the main thread ` +
        `${starts.map((r) => `${r.startMs!.toFixed(0)} ms`).join(", ")}.`,
    );
  }
  return lines.join("\n");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args.map((a) => a.replace(/^-(?=[a-z]{2})/, "--")),
    options: {
      count: { type: "string", default: "200" },
      cost: { type: "string", default: "10" },
      modes: { type: "string", default: MODES.join(",") },
    },
    strict: true,
  });
  const count = Number(values.count);
  const cost = Number(values.cost);
  const modes = values.modes.split(",") as Mode[];
  if (!Number.isInteger(count) || count < 1 || count > 10_000) {
    throw new Error(`--count: ${values.count} is not a whole number 1-10000`);
  }
  if (!Number.isInteger(cost) || cost < 4 || cost > 14) {
    throw new Error(`--cost: ${values.cost} is not a whole number 4-14`);
  }
  const unknown = modes.filter((m) => !MODES.includes(m));
  if (unknown.length > 0) throw new Error(`--modes: unknown ${unknown.join(", ")}`);

  const hash = hashSync("correct horse battery staple", cost);
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen: () => {} },
    () => new Response("echo"),
  );
  const echoUrl = `http://127.0.0.1:${server.addr.port}/`;
  const results: Result[] = [];
  try {
    for (const mode of modes) {
      console.error(`${mode}...`);
      results.push(await runMode(mode, count, hash, echoUrl));
    }
  } finally {
    await server.shutdown();
  }
  console.log(
    `${count} wrong passwords, bcrypt cost ${cost}, Deno ${Deno.version.deno}, ` +
      `${navigator.hardwareConcurrency} CPUs\n`,
  );
  console.log(table(results));
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    console.error(`basic_auth_burst: ${(error as Error).message}`);
    Deno.exit(2);
  }
}
