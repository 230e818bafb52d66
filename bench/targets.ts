/**
 * @module
 * The two nginx backends and the targets under test: direct (no balancer), nginx, HAProxy, this
 * balancer, and this balancer with `--workers` when `main.ts` has that flag. Each target starts
 * fresh for every run, so its peak RSS belongs to one profile.
 */

import { freePort, processTree, start, type Started, waitReady } from "./system.ts";

const BENCH_DIR = new URL(".", import.meta.url).pathname;
/** The project folder: `main.ts` runs from here so that its `deno.json` applies. */
export const PROJECT_DIR = new URL("..", import.meta.url).pathname;

/** Size of the `/64k` response. */
export const LARGE_BODY_BYTES = 64 * 1024;
/** Uncompressed size of the `/gzip` response. */
export const GZIP_BODY_BYTES = 32 * 1024;

/** Fills `{{NAME}}` placeholders of a template in `bench/`; an unknown one is an error. */
export async function render(template: string, values: Record<string, string | number>) {
  const text = await Deno.readTextFile(`${BENCH_DIR}${template}`);
  return text.replace(/\{\{([A-Z_]+)\}\}/g, (_, name: string) => {
    if (!(name in values)) throw new Error(`${template}: no value for {{${name}}}`);
    return String(values[name]);
  });
}

/** nginx's `user` line: root keeps workers able to read the 0700 temp dir; ignored otherwise. */
function userLine(): string {
  return Deno.uid() === 0 ? "user root;" : "";
}

/** A running nginx backend. */
export interface Backend {
  port: number;
  proc: Started;
  /** Connections nginx has accepted so far (stub_status `accepts`); the query itself is one. */
  accepts(): Promise<number>;
}

/** Starts one nginx backend in `dir` (its config, files, logs), pinned to `cpus`. */
export async function startBackend(dir: string, cpus: string): Promise<Backend> {
  await Deno.mkdir(`${dir}/www`, { recursive: true });
  await Deno.writeFile(`${dir}/www/64k`, largeBody());
  const text = compressibleBody();
  await Deno.writeTextFile(`${dir}/www/gzip`, text);
  await Deno.writeFile(`${dir}/www/gzip.gz`, await gzip(new TextEncoder().encode(text)));
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    await render("nginx/backend.conf", { USER: userLine(), DIR: dir, PORT: port }),
  );
  const proc = await start(
    `nginx backend :${port}`,
    ["nginx", "-p", dir, "-e", `${dir}/error.log`, "-c", `${dir}/nginx.conf`],
    { cpus, logFile: `${dir}/output.log` },
  );
  await readyOrStop(`http://127.0.0.1:${port}/`, proc);
  return { port, proc, accepts: () => stubStatusAccepts(port) };
}

/**
 * Reads `accepts` from the backend's stub_status over a fresh connection (HTTP/1.0, closed
 * after), so each query adds exactly one accepted connection.
 */
async function stubStatusAccepts(port: number): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode("GET /_status HTTP/1.0\r\nHost: x\r\n\r\n"));
    const text = await new Response(conn.readable).text();
    const match = /server accepts handled requests\s+(\d+)/.exec(text);
    if (match === null) throw new Error(`unexpected stub_status answer: ${text.slice(0, 200)}`);
    return Number(match[1]);
  } finally {
    try {
      conn.close();
    } catch { /* closed with its readable */ }
  }
}

/** 64 KiB of bytes that do not compress (nobody should gzip them by accident). */
function largeBody(): Uint8Array {
  const bytes = new Uint8Array(LARGE_BODY_BYTES);
  let x = 0x9e3779b9;
  for (let i = 0; i < bytes.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

/** 32 KiB of JSON-like text that compresses about 10:1, like a typical API answer. */
function compressibleBody(): string {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < GZIP_BODY_BYTES; i++) {
    const line = `{"id":${i},"name":"item-${i}","status":"${
      ["active", "pending", "closed"][i % 3]
    }","tags":["bench","load","balancer"],"score":${(i * 37) % 1000}}\n`;
    lines.push(line);
    size += line.length;
  }
  return lines.join("").slice(0, GZIP_BODY_BYTES);
}

async function gzip(bytes: Uint8Array<ArrayBuffer>): Promise<Uint8Array> {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** What a target needs to start. */
export interface TargetContext {
  /** Scratch directory for this start (config, logs). */
  dir: string;
  backends: Backend[];
  /** CPU list for the balancer (taskset -c). */
  cpus: string;
}

/** A started target: where to send load, and which processes to measure. */
export interface RunningTarget {
  port: number;
  /** The balancer's root process; undefined for `direct`. */
  proc: Started | undefined;
  /** PIDs whose VmHWM is summed for peak RSS (nginx: its workers, not the idle master). */
  rssPids(): number[];
}

/** A system under test. */
export interface Target {
  /** Short id used in JSON and file names. */
  id: string;
  /** Label in tables and the chart. */
  label: string;
  /** How it runs, for the report. */
  description: string;
  /** Whether it is pinned to the balancer core (the `--workers` target is not). */
  pinned: boolean;
  start(context: TargetContext): Promise<RunningTarget>;
}

/** The load goes straight to the first backend: the floor every balancer adds to. */
export const direct: Target = {
  id: "direct",
  label: "direct (no balancer)",
  description: "wrk to one nginx backend",
  pinned: false,
  start: ({ backends }) =>
    Promise.resolve({ port: backends[0].port, proc: undefined, rssPids: () => [] }),
};

/** nginx as a reverse proxy: 1 worker, keepalive upstream pool. */
export const nginx: Target = {
  id: "nginx",
  label: "nginx, 1 worker",
  description: "nginx proxy_pass, upstream keepalive 128, 1 worker",
  pinned: true,
  async start({ dir, backends, cpus }) {
    const port = freePort();
    await Deno.writeTextFile(
      `${dir}/nginx.conf`,
      await render("nginx/balancer.conf", {
        USER: userLine(),
        DIR: dir,
        PORT: port,
        BACKEND_A: backends[0].port,
        BACKEND_B: backends[1].port,
      }),
    );
    const proc = await start(
      "nginx balancer",
      ["nginx", "-p", dir, "-e", `${dir}/error.log`, "-c", `${dir}/nginx.conf`],
      { cpus, logFile: `${dir}/output.log` },
    );
    await readyOrStop(`http://127.0.0.1:${port}/`, proc);
    return { port, proc, rssPids: () => descendants(proc.pid) };
  },
};

/** HAProxy: 1 thread, `http-reuse always`. */
export const haproxy: Target = {
  id: "haproxy",
  label: "HAProxy, 1 thread",
  description: "HAProxy roundrobin, nbthread 1, http-reuse always",
  pinned: true,
  async start({ dir, backends, cpus }) {
    const port = freePort();
    await Deno.writeTextFile(
      `${dir}/haproxy.cfg`,
      await render("haproxy/balancer.cfg", {
        PORT: port,
        BACKEND_A: backends[0].port,
        BACKEND_B: backends[1].port,
      }),
    );
    // -db: stay in the foreground, no master process: one process to measure.
    const proc = await start("haproxy", ["haproxy", "-db", "-f", `${dir}/haproxy.cfg`], {
      cpus,
      logFile: `${dir}/output.log`,
    });
    await readyOrStop(`http://127.0.0.1:${port}/`, proc);
    return { port, proc, rssPids: () => [proc.pid] };
  },
};

/** This balancer with default features (health checks, retries, metrics...), log level warn. */
export function thisBalancer(
  { args = [], denoFlags = ["--allow-net"] }: {
    /** Balancer flags after the defaults; non-empty means the `--workers` target. */
    args?: string[];
    /** Flags for `deno run` (permissions, `--v8-flags=...`). */
    denoFlags?: string[];
  } = {},
): Target {
  const workers = args.length > 0;
  return {
    id: workers ? "deno-workers" : "deno",
    label: workers ? `this balancer, ${args.join(" ")}` : "this balancer, 1 worker",
    description: `deno run ${denoFlags.join(" ")} main.ts (default features, --log-level warn${
      workers ? `, ${args.join(" ")}, not pinned` : ""
    })`,
    pinned: !workers,
    start: startDenoTarget(
      "balancer",
      denoFlags,
      "main.ts",
      (backends, port) => [...balancerArgs(backends, port), ...args],
    ),
  };
}

/** {@linkcode ./minimal_forwarder.ts}: Deno.serve + fetch with no features, the floor. */
export const minimalForwarder: Target = {
  id: "deno-minimal",
  label: "Deno.serve + fetch, no features",
  description: "deno run --allow-net bench/minimal_forwarder.ts (baseline, not a correct proxy)",
  pinned: true,
  start: startDenoTarget(
    "minimal forwarder",
    ["--allow-net"],
    "bench/minimal_forwarder.ts",
    forwarderArgs,
  ),
};

/**
 * Experiment (issue 6): this balancer with the Deno.connect transport ({@linkcode
 * ./raw_transport.ts}) instead of fetch, same flags as {@linkcode thisBalancer}. Opt-in only.
 */
export function rawBalancer(denoFlags: string[] = ["--allow-net"]): Target {
  return {
    id: "deno-raw",
    label: "this balancer, Deno.connect transport (experiment)",
    description: `deno run ${
      denoFlags.join(" ")
    } bench/raw_balancer.ts (default features, --log-level warn, upstream over Deno.connect)`,
    pinned: true,
    start: startDenoTarget("raw balancer", denoFlags, "bench/raw_balancer.ts", balancerArgs),
  };
}

/** {@linkcode ./raw_minimal_forwarder.ts}: the minimal forwarder on the Deno.connect transport. */
export const rawMinimalForwarder: Target = {
  id: "deno-minimal-raw",
  label: "Deno.serve + Deno.connect, no features",
  description:
    "deno run --allow-net bench/raw_minimal_forwarder.ts (baseline on the experimental transport)",
  pinned: true,
  start: startDenoTarget(
    "minimal raw forwarder",
    ["--allow-net"],
    "bench/raw_minimal_forwarder.ts",
    forwarderArgs,
  ),
};

/** The backends as `http://127.0.0.1:PORT` URLs, in order. */
function backendUrls(backends: Backend[]): string[] {
  return backends.map((b) => `http://127.0.0.1:${b.port}`);
}

/**
 * Flags shared by `main.ts` and `bench/raw_balancer.ts`: loopback only, and log level warn so
 * that logging does not take a share of the measured time.
 */
function balancerArgs(backends: Backend[], port: number): string[] {
  return [
    `-backends=${backendUrls(backends).join(",")}`,
    `-port=${port}`,
    "--host",
    "127.0.0.1",
    "--log-level",
    "warn",
  ];
}

/** The minimal forwarders take positional arguments: their port, then the backend URLs. */
function forwarderArgs(backends: Backend[], port: number): string[] {
  return [String(port), ...backendUrls(backends)];
}

/**
 * The `start` of a target that is a Deno script: `deno run DENO_FLAGS SCRIPT SCRIPT_ARGS` from
 * {@linkcode PROJECT_DIR} (so its `deno.json` applies) on a free port. Readiness may take 30 s,
 * twice the default: Deno loads and compiles the script (and, on a cold cache, its npm packages)
 * before it listens.
 */
function startDenoTarget(
  name: string,
  denoFlags: string[],
  script: string,
  scriptArgs: (backends: Backend[], port: number) => string[],
): Target["start"] {
  return async ({ dir, backends, cpus }) => {
    const port = freePort();
    const proc = await start(
      name,
      [Deno.execPath(), "run", ...denoFlags, script, ...scriptArgs(backends, port)],
      { cwd: PROJECT_DIR, cpus, logFile: `${dir}/output.log` },
    );
    await readyOrStop(`http://127.0.0.1:${port}/`, proc, 30000);
    // Children too, should a script start any (the forwarders start none, so theirs is one PID).
    return { port, proc, rssPids: () => [proc.pid, ...descendants(proc.pid)] };
  };
}

/** PIDs of the live descendants of `pid` (not `pid` itself). */
function descendants(pid: number): number[] {
  return processTree(pid).map((s) => s.pid).filter((p) => p !== pid);
}

/** {@linkcode waitReady}, stopping `proc` when it never becomes ready. */
async function readyOrStop(url: string, proc: Started, timeoutMs?: number): Promise<void> {
  try {
    await waitReady(url, proc, timeoutMs);
  } catch (error) {
    await proc.stop();
    throw error;
  }
}
