/**
 * @module
 * The two nginx backends and the targets under test: direct (no balancer), nginx, HAProxy, the
 * Go peer, this balancer on each transport (and with `--workers` when `main.ts` has that flag),
 * and the feature-less Deno forwarders. Each target starts fresh for every run, so its peak RSS
 * belongs to one profile.
 */

import { freePort, processTree, run, start, type Started, waitReady, which } from "./system.ts";

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
  /** Its directory; `www/gzip.gz` is the compressed body it serves for `/gzip`. */
  dir: string;
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
  return { port, dir, proc, accepts: () => stubStatusAccepts(port) };
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

/** What the Deno targets share: extra `deno run` flags and an optional V8 flags variant. */
export interface DenoTargetOptions {
  /** Extra `deno run` flags, after the target's own permissions. @default [] */
  denoFlags?: string[];
  /**
   * V8 flags (comma-separated, as `deno run --v8-flags=` takes them). When set, the target's id
   * and label carry them (`deno[--max-semi-space-size=2]`), so that variants can run side by
   * side in one run. @default ""
   */
  v8Flags?: string;
}

/** `deno run` flags of a Deno target: permissions, then the extra flags, then `--v8-flags`. */
function runFlags(permissions: string[], { denoFlags = [], v8Flags = "" }: DenoTargetOptions) {
  return [...permissions, ...denoFlags, ...(v8Flags === "" ? [] : [`--v8-flags=${v8Flags}`])];
}

/** The id and label of a Deno target, with its V8 flags variant when it has one. */
function named(id: string, label: string, { v8Flags = "" }: DenoTargetOptions) {
  return v8Flags === ""
    ? { id, label }
    : { id: `${id}[${v8Flags}]`, label: `${label}, --v8-flags=${v8Flags}` };
}

/**
 * This balancer with default features (health checks, retries, metrics...), log level warn.
 * `transport`: `"native"` runs `main.ts` without `--transport` (native is its default),
 * `"fetch"` passes `--transport fetch`, and `"default"` (for a `main.ts` that has no
 * `--transport` flag yet) runs it without the flag under the plain `deno` id.
 */
export function thisBalancer(
  { transport = "native", workers, frontend = "deno", ...options }: DenoTargetOptions & {
    /** @default "native" */
    transport?: "native" | "fetch" | "default";
    /** Run with `--workers N`: the `deno-workers` target, not pinned. @default undefined */
    workers?: number;
    /** `"native"` runs `--frontend native`: the `deno-native-front` target. @default "deno" */
    frontend?: "deno" | "native";
  } = {},
): Target {
  const args = [
    ...(transport === "fetch" ? ["--transport", "fetch"] : []),
    ...(frontend === "native" ? ["--frontend", "native"] : []),
    ...(workers === undefined ? [] : ["--workers", String(workers)]),
  ];
  // Worker threads need read access to their module (lib/worker_thread.ts).
  const permissions = workers === undefined ? ["--allow-net"] : ["--allow-net", "--allow-read"];
  const flags = runFlags(permissions, options);
  const { id, label } = named(
    workers !== undefined
      ? "deno-workers"
      : frontend === "native"
      ? "deno-native-front"
      : transport === "fetch"
      ? "deno-fetch"
      : "deno",
    workers !== undefined
      ? `this balancer, --workers ${workers}`
      : frontend === "native"
      ? "this balancer, native front end"
      : transport === "default"
      ? "this balancer, 1 worker"
      : `this balancer, ${transport} transport`,
    options,
  );
  return {
    id,
    label,
    description: `deno run ${flags.join(" ")} main.ts${
      args.length === 0 ? "" : ` ${args.join(" ")}`
    } (default features, --log-level warn${workers === undefined ? "" : ", not pinned"})`,
    pinned: workers === undefined,
    start: startDenoTarget(
      "balancer",
      flags,
      "main.ts",
      (backends, port) => [...balancerArgs(backends, port), ...args],
    ),
  };
}

/**
 * A feature-less forwarder of bench/ as a pinned target (id, report label, process name):
 * `script` run with `--allow-net` and the forwarders' positional arguments (its port, then the
 * backend URLs).
 */
function forwarderTarget(
  [id, label, processName]: [string, string, string],
  script: string,
  what: string,
  options: DenoTargetOptions,
  leadingArgs: string[] = [],
): Target {
  const flags = runFlags(["--allow-net"], options);
  const args = leadingArgs.map((arg) => ` ${arg}`).join("");
  return {
    ...named(id, label, options),
    description: `deno run ${flags.join(" ")} ${script}${args} (${what})`,
    pinned: true,
    start: startDenoTarget(
      processName,
      flags,
      script,
      (backends, port) => [...leadingArgs, ...forwarderArgs(backends, port)],
    ),
  };
}

/** {@linkcode ./minimal_forwarder.ts}: Deno.serve + fetch with no features. */
export function minimalForwarder(options: DenoTargetOptions = {}): Target {
  return forwarderTarget(
    ["deno-minimal", "Deno.serve + fetch, no features", "minimal forwarder"],
    "bench/minimal_forwarder.ts",
    "baseline, not a correct proxy",
    options,
  );
}

/**
 * {@linkcode ./raw_minimal_forwarder.ts}: Deno.serve + a Deno.connect keep-alive pool with no
 * features, the platform's floor.
 */
export function rawMinimalForwarder(options: DenoTargetOptions = {}): Target {
  return forwarderTarget(
    ["deno-minimal-raw", "Deno.serve + Deno.connect, no features", "minimal raw forwarder"],
    "bench/raw_minimal_forwarder.ts",
    "the platform's floor, not a correct proxy",
    options,
  );
}

/**
 * {@linkcode ./raw_listen_forwarder.ts}: Deno.listen with its own connection loop + a Deno.connect
 * keep-alive pool, no features: the native front end's floor.
 */
export function rawListenForwarder(options: DenoTargetOptions = {}): Target {
  return forwarderTarget(
    ["deno-minimal-listen", "Deno.listen + Deno.connect, no features", "minimal listen forwarder"],
    "bench/raw_listen_forwarder.ts",
    "the native front end's floor, not a correct proxy",
    options,
  );
}

/** The layers of {@linkcode ./layered_forwarder.ts}, as target ids. */
export const LAYER_TARGETS = {
  "deno-layer-front": ["front", "native front end alone, answering itself"],
  "deno-layer-mini": ["mini", "native front end + a minimal Deno.connect upstream"],
  "deno-layer-transport": ["transport", "native front end + native transport, no proxy"],
} as const;

/**
 * {@linkcode ./layered_forwarder.ts} with one `--layer`: the native path taken apart between
 * its floor and the balancer (docs/performance.md).
 */
export function layeredForwarder(
  id: keyof typeof LAYER_TARGETS,
  options: DenoTargetOptions = {},
): Target {
  const [layer, label] = LAYER_TARGETS[id];
  return forwarderTarget(
    [id, label, `layered forwarder (${layer})`],
    "bench/layered_forwarder.ts",
    "a measuring tool, not a correct proxy",
    options,
    [`--layer=${layer}`],
  );
}

/** Where `go build` keeps its cache between runs (it takes ~15 s to build net/http cold). */
function goCacheDir(): string {
  const base = Deno.env.get("XDG_CACHE_HOME") ??
    (Deno.env.get("HOME") ? `${Deno.env.get("HOME")}/.cache` : Deno.makeTempDirSync());
  return `${base}/lb-bench-go`;
}

/**
 * Builds {@linkcode ./go_peer/main.go} into `dir` with the Debian Go toolchain (offline, standard
 * library only). Returns the binary's path, or why it could not be built.
 */
export async function buildGoPeer(dir: string): Promise<{ binary: string } | { reason: string }> {
  if (await which("go") === undefined) {
    return { reason: "no `go` on PATH (Debian package golang-go)" };
  }
  const cache = goCacheDir();
  const binary = `${dir}/go-peer`;
  const result = await run([
    "env",
    `GOCACHE=${cache}/build`,
    `GOPATH=${cache}/path`,
    "GOPROXY=off",
    "GOFLAGS=",
    "GO111MODULE=off",
    "CGO_ENABLED=0",
    "go",
    "build",
    "-o",
    binary,
    `${BENCH_DIR}go_peer/main.go`,
  ]);
  if (result.code !== 0) {
    return { reason: `go build failed: ${result.stderr.trim().split("\n")[0]}` };
  }
  return { binary };
}

/**
 * The original tool's design (issue 12): Go's `httputil.ReverseProxy`, round-robin, built by
 * {@linkcode buildGoPeer}, run with GOMAXPROCS=1 so that it is comparable with the one-thread
 * targets.
 */
export function goPeer(binary: string): Target {
  return {
    id: "go",
    label: "Go httputil.ReverseProxy",
    description: "bench/go_peer/main.go (round-robin, health checks, 128 idle conns per " +
      "backend), GOMAXPROCS=1",
    pinned: true,
    async start({ dir, backends, cpus }) {
      const port = freePort();
      const proc = await start(
        "go peer",
        [
          binary,
          `-backends=${backendUrls(backends).join(",")}`,
          `-port=${port}`,
          "-host=127.0.0.1",
        ],
        { cpus, logFile: `${dir}/output.log`, env: { GOMAXPROCS: "1" } },
      );
      await readyOrStop(`http://127.0.0.1:${port}/`, proc);
      return { port, proc, rssPids: () => [proc.pid, ...descendants(proc.pid)] };
    },
  };
}

/** The backends as `http://127.0.0.1:PORT` URLs, in order. */
function backendUrls(backends: Backend[]): string[] {
  return backends.map((b) => `http://127.0.0.1:${b.port}`);
}

/**
 * Flags of `main.ts`: loopback only, and log level warn so that logging does not take a share of
 * the measured time.
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
