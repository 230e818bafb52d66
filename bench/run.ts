/**
 * @module
 * Benchmarks this load balancer side by side with nginx and HAProxy on loopback, in the same
 * run (issue 6). Two nginx backends answer fixed bodies; each target in turn balances them while
 * wrk sends one of six load profiles; targets are interleaved and every measurement is repeated
 * for `--rounds`.
 *
 *     deno run -A bench/run.ts                 # full run (about 5 minutes)
 *     deno run -A bench/run.ts --quick         # smoke run (about 75 s)
 *     deno run -A bench/run.ts --duration 10s --rounds 3 --targets nginx,deno --profiles small
 *
 * Per (round, profile, target) it records requests/s, p50/p99, errors (socket errors and
 * non-2xx/3xx), the balancer's CPU time per request (utime+stime of its process tree from
 * /proc, delta over the run), peak RSS (VmHWM), and the connections the backends accepted during
 * the run (stub_status `accepts`), which shows whether keep-alive to the backends works.
 * Writes `bench/results/latest.{json,md,svg}` and prints the Markdown to stdout; progress goes
 * to stderr. Needs root for apt-get only when wrk, nginx or haproxy is missing.
 */

import { parseArgs } from "node:util";
import {
  busyPercent,
  cpuTimes,
  describeMachine,
  ensureTools,
  peakRssKiB,
  pinSelf,
  run,
  stopAll,
  treeCpu,
  treeCpuSeconds,
} from "./system.ts";
import {
  type Backend,
  direct,
  haproxy,
  minimalForwarder,
  nginx,
  PROJECT_DIR,
  rawBalancer,
  rawMinimalForwarder,
  type RunningTarget,
  startBackend,
  type Target,
  thisBalancer,
} from "./targets.ts";
import { type Profile, PROFILES, runWrk, writeScript } from "./wrk.ts";
import { markdown, type RunInfo, type RunRecord, summarise, svgChart } from "./report.ts";

const USAGE = `Usage: deno run -A bench/run.ts [options]

  --duration DUR     measured time of each run, whole seconds (default 5s; --quick: 2s)
  --warmup DUR       unmeasured load before each run (default 1s)
  --rounds N         interleaved rounds over all targets and profiles (default 2; --quick: 1)
  --quick            smoke run: --duration 2s --rounds 1 (about 75 s)
  --targets LIST     subset of: direct,nginx,haproxy,deno,deno-workers,deno-minimal,
                     deno-raw,deno-minimal-raw (default: all available except
                     deno-minimal, deno-raw and deno-minimal-raw)
  --baseline         add deno-minimal: Deno.serve + fetch with no features (the floor)
  --raw              add deno-raw and deno-minimal-raw: the same two on the experimental
                     Deno.connect transport (bench/raw_transport.ts); opt-in only, also
                     when named in --targets
  --profiles LIST    subset of: ${PROFILES.map((p) => p.id).join(",")} (default all)
  --workers N        worker count for the deno-workers target (default: cores)
  --deno-flags=F     extra \`deno run\` flags for this balancer (use the = form),
                     e.g. --deno-flags="--v8-flags=--max-semi-space-size=4"
  --balancer-cpu C   CPU list for the balancer under test (default 1)
  --load-cpu C       CPU list for wrk and the backends (default 0)
  --out DIR          where latest.{json,md,svg} go (default bench/results)
  --keep             keep the temp dir with configs and logs
  --help             this text`;

/** Parsed options. */
export interface BenchOptions {
  durationSeconds: number;
  warmupSeconds: number;
  rounds: number;
  targets: string[] | undefined;
  profiles: string[] | undefined;
  workers: number;
  balancerCpus: string;
  loadCpus: string;
  outDir: string;
  keep: boolean;
  baseline: boolean;
  /** Add the experimental Deno.connect transport targets (deno-raw, deno-minimal-raw). */
  raw: boolean;
  /** Extra `deno run` flags for this balancer. */
  denoFlags: string[];
}

/** Whole seconds from `5`, `5s` or `1m` (wrk takes whole seconds only). */
export function parseSeconds(text: string, flag: string): number {
  const match = /^(\d+)(s|m)?$/.exec(text.trim());
  if (match === null) {
    throw new Error(`${flag}: expected whole seconds like 5s or 1m, got "${text}"`);
  }
  return Number(match[1]) * (match[2] === "m" ? 60 : 1);
}

/** Parses the command line (one or two dashes). */
export function parseOptions(args: string[]): BenchOptions | "help" {
  const normalised = args.map((a) => /^-[a-z]/.test(a) ? `-${a}` : a);
  const { values } = parseArgs({
    args: normalised,
    strict: true,
    options: {
      duration: { type: "string" },
      warmup: { type: "string", default: "1s" },
      rounds: { type: "string" },
      quick: { type: "boolean", default: false },
      targets: { type: "string" },
      profiles: { type: "string" },
      workers: { type: "string" },
      "balancer-cpu": { type: "string", default: "1" },
      "load-cpu": { type: "string", default: "0" },
      out: { type: "string", default: new URL("results", import.meta.url).pathname },
      keep: { type: "boolean", default: false },
      baseline: { type: "boolean", default: false },
      raw: { type: "boolean", default: false },
      "deno-flags": { type: "string", default: "" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) return "help";
  const rounds = Number(values.rounds ?? (values.quick ? 1 : 2));
  if (!Number.isInteger(rounds) || rounds < 1) {
    throw new Error(`--rounds: expected a whole number >= 1, got "${values.rounds}"`);
  }
  const durationSeconds = parseSeconds(
    values.duration ?? (values.quick ? "2s" : "5s"),
    "--duration",
  );
  if (durationSeconds < 1) throw new Error("--duration: at least 1s");
  const workers = Number(values.workers ?? navigator.hardwareConcurrency);
  if (!Number.isInteger(workers) || workers < 1) {
    throw new Error(`--workers: expected a whole number >= 1, got "${values.workers}"`);
  }
  const list = (v: string | undefined) => v?.split(",").map((s) => s.trim()).filter(Boolean);
  const profiles = list(values.profiles);
  for (const p of profiles ?? []) {
    if (!PROFILES.some((q) => q.id === p)) throw new Error(`--profiles: unknown profile "${p}"`);
  }
  return {
    durationSeconds,
    warmupSeconds: parseSeconds(values.warmup!, "--warmup"),
    rounds,
    targets: list(values.targets),
    profiles,
    workers,
    balancerCpus: values["balancer-cpu"]!,
    loadCpus: values["load-cpu"]!,
    outDir: values.out!,
    keep: values.keep!,
    baseline: values.baseline!,
    raw: values.raw!,
    denoFlags: values["deno-flags"]!.split(" ").filter(Boolean),
  };
}

const say = (line: string) => console.error(line);

/**
 * Whether `main.ts` runs with `--workers N`: its help must list the flag and `--check` must
 * accept it (a version may parse the flag but refuse it until implemented). Returns the reason
 * when not.
 */
async function workersSupport(workers: number): Promise<{ ok: boolean; reason: string }> {
  const deno = Deno.execPath();
  const help = await run([deno, "run", "--allow-net", "main.ts", "--help"], { cwd: PROJECT_DIR });
  if (!/--workers\b/.test(help.stdout + help.stderr)) {
    return { ok: false, reason: "`main.ts --help` lists no `--workers` flag" };
  }
  const check = await run([
    deno,
    "run",
    "--allow-all",
    "main.ts",
    "--check",
    "-backends=http://127.0.0.1:1",
    "--workers",
    String(workers),
  ], { cwd: PROJECT_DIR });
  if (check.code !== 0) {
    const why = (check.stderr || check.stdout).trim().split("\n")[0];
    return { ok: false, reason: `\`main.ts --check --workers ${workers}\` refuses it (${why})` };
  }
  return { ok: true, reason: "" };
}

/** The commit under test, flagged when the balancer's sources differ from it. */
async function gitRevision(): Promise<string> {
  const head = await run(["git", "rev-parse", "--short", "HEAD"], { cwd: PROJECT_DIR });
  if (head.code !== 0) return "unknown (not a git checkout)";
  const dirty = await run(["git", "status", "--porcelain", "--", "lib", "main.ts", "deno.json"], {
    cwd: PROJECT_DIR,
  });
  return `${head.stdout.trim()}${dirty.stdout.trim() === "" ? "" : " with uncommitted changes"}`;
}

/** Runs the benchmark and returns the exit code. */
export async function main(args: string[]): Promise<number> {
  let options: BenchOptions | "help";
  try {
    options = parseOptions(args);
  } catch (error) {
    console.error(`bench: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (options === "help") {
    console.log(USAGE);
    return 0;
  }
  const opts = options;
  await ensureTools({ wrk: "wrk", nginx: "nginx", haproxy: "haproxy", taskset: "util-linux" }, say);
  await pinSelf(opts.loadCpus);

  const notes: string[] = [];
  const denoFlags = ["--allow-net", ...opts.denoFlags];
  const available: Target[] = [direct, nginx, haproxy, thisBalancer({ denoFlags })];
  const workers = await workersSupport(opts.workers);
  if (workers.ok) {
    // Worker threads need read access to their module (lib/worker_thread.ts).
    available.push(
      thisBalancer({
        args: ["--workers", String(opts.workers)],
        denoFlags: ["--allow-net", "--allow-read", ...opts.denoFlags],
      }),
    );
    notes.push(
      `"this balancer, --workers ${opts.workers}" is not pinned: it may use every core, which ` +
        "it shares with wrk and the backends; compare its requests/s, not its CPU per request.",
    );
  } else {
    notes.push(`${workers.reason}, so the multi-worker target was skipped.`);
  }
  const raw = [rawBalancer(denoFlags), rawMinimalForwarder];
  const wanted = opts.targets ??
    [
      ...available.map((t) => t.id),
      ...(opts.baseline ? [minimalForwarder.id] : []),
      ...(opts.raw ? raw.map((t) => t.id) : []),
    ];
  available.push(minimalForwarder, ...raw);
  const targets = available.filter((t) => wanted.includes(t.id));
  for (const id of opts.targets ?? []) {
    if (!available.some((t) => t.id === id)) {
      notes.push(`Target "${id}" is not available: skipped.`);
    }
  }
  const profiles = opts.profiles === undefined
    ? PROFILES
    : PROFILES.filter((p) => opts.profiles!.includes(p.id));

  const runs = opts.rounds * profiles.length * targets.length;
  const estimate = runs * (opts.durationSeconds + opts.warmupSeconds + 0.4) + 5;
  say(
    `${runs} runs: ${targets.map((t) => t.id).join(", ")} x ${
      profiles.map((p) => p.id).join(", ")
    } x ${opts.rounds} round(s); about ${(estimate / 60).toFixed(1)} min`,
  );

  const tmp = await Deno.makeTempDir({ prefix: "lb-bench-" });
  const onSignal = () => {
    say("Interrupted: stopping everything started...");
    stopAll().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  const machine = await describeMachine();
  const revision = await gitRevision();
  const loadBefore = Deno.loadavg()[0];
  const startedAt = new Date().toISOString();
  const records: RunRecord[] = [];
  try {
    const backends = [
      await startBackend(`${tmp}/backend-a`, opts.loadCpus),
      await startBackend(`${tmp}/backend-b`, opts.loadCpus),
    ];
    const scripts = new Map<string, string>();
    for (const p of profiles) scripts.set(p.id, await writeScript(p, tmp));
    for (let round = 1; round <= opts.rounds; round++) {
      for (const profile of profiles) {
        // Rotated each round so that no target always runs first (or right after another).
        const order = targets.map((_, i) => targets[(i + round - 1) % targets.length]);
        for (const target of order) {
          const record = await measure(target, profile, round, {
            tmp,
            backends,
            script: scripts.get(profile.id)!,
            opts,
          });
          records.push(record);
          say(progressLine(record));
        }
      }
    }
  } finally {
    await stopAll();
    if (!opts.keep) await Deno.remove(tmp, { recursive: true }).catch(() => {});
    else say(`Configs and logs kept in ${tmp}`);
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }

  notes.push(
    "CPU per request: utime+stime of the balancer's processes (children included) from " +
      "/proc/PID/stat, delta over the measured run, divided by the requests wrk completed; " +
      "\"sys\" is the kernel's share (on loopback the sender's system time includes the " +
      "receiving side of the TCP stack).",
    "Peak RSS: VmHWM from /proc/PID/status at the end of the run, summed over the serving " +
      "processes (nginx: its worker, not the idle master; HAProxy: its single process; Deno: " +
      "the process and any children). Each target starts fresh per run, so this is the peak of " +
      "one profile.",
    "Backend connections opened: the `accepts` counter of both backends' stub_status (each " +
      "read is one connection, subtracted), from 1 s into the measured run to its end. 0 means " +
      "every request reused a kept-alive backend connection. The first second is left out: " +
      "wrk stops mid-request at the end of the warm-up, balancers close the backend " +
      "connections of those requests, and the run reopens them while it ramps up " +
      "(`backendConnectionsWholeRun` in latest.json counts them too; for `direct` it is wrk's " +
      "own connections plus the one wrk opens first to check the address).",
    "latest.json also has `balancerCoreUsPerRequest`: busy time of the balancer's core per " +
      "request, which adds the softirq network work done on that core to the process's own time.",
    "Added latency: p50 at 1 connection minus the p50 of `direct` in the same round.",
    "CPU busy (per core): share of each CPU busy during the run (/proc/stat), highest round. " +
      `The load core (${opts.loadCpus}) near 100% means wrk and the backends, not the balancer, ` +
      "limited requests/s.",
    "Uploads: the backend reads the whole 1 MiB body before answering (nginx mirror module " +
      "with mirror_request_body); gzip: the backend serves a pre-compressed file (gzip_static) " +
      "so it spends no CPU compressing.",
  );
  const info: RunInfo = {
    startedAt,
    finishedAt: new Date().toISOString(),
    rounds: opts.rounds,
    durationSeconds: opts.durationSeconds,
    warmupSeconds: opts.warmupSeconds,
    balancerCpus: opts.balancerCpus,
    loadCpus: opts.loadCpus,
    profiles: profiles.map((p) => ({ id: p.id, label: p.label })),
    targets: targets.map((t) => ({
      id: t.id,
      label: t.label,
      description: t.description,
      pinned: t.pinned,
    })),
    notes,
    revision,
    loadAverage: [loadBefore, Deno.loadavg()[0]],
  };
  const summaries = summarise(records, info);
  const md = markdown(summaries, info, machine);
  await Deno.mkdir(opts.outDir, { recursive: true });
  await Deno.writeTextFile(
    `${opts.outDir}/latest.json`,
    JSON.stringify({ machine, info, summaries, runs: records }, null, 2) + "\n",
  );
  await Deno.writeTextFile(`${opts.outDir}/latest.md`, md);
  await Deno.writeTextFile(`${opts.outDir}/latest.svg`, svgChart(summaries, info, machine));
  // The project's `deno fmt --check` covers bench/: format what was generated the same way.
  await run([
    Deno.execPath(),
    "fmt",
    `${opts.outDir}/latest.json`,
    `${opts.outDir}/latest.md`,
    `${opts.outDir}/latest.svg`,
  ], { cwd: PROJECT_DIR });
  console.log(await Deno.readTextFile(`${opts.outDir}/latest.md`));
  say(`Wrote ${opts.outDir}/latest.{json,md,svg}`);
  return records.some((r) => !r.ok) ? 1 : 0;
}

/** What one run needs besides the target and profile. */
interface MeasureContext {
  tmp: string;
  backends: Backend[];
  script: string;
  opts: BenchOptions;
}

/** Starts `target`, warms it up, measures one run of `profile`, and stops it. */
async function measure(
  target: Target,
  profile: Profile,
  round: number,
  { tmp, backends, script, opts }: MeasureContext,
): Promise<RunRecord> {
  const base = { round, profile: profile.id, target: target.id };
  const dir = await Deno.makeTempDir({ dir: tmp, prefix: `${target.id}-${profile.id}-${round}-` });
  let running: RunningTarget | undefined;
  try {
    running = await target.start({
      dir,
      backends,
      cpus: target.pinned ? opts.balancerCpus : `${opts.loadCpus},${opts.balancerCpus}`,
    });
    if (opts.warmupSeconds > 0) {
      await runWrk(profile, script, running.port, opts.warmupSeconds, opts.loadCpus);
    }
    const pid = running.proc?.pid;
    const acceptsBefore = await Promise.all(backends.map((b) => b.accepts()));
    const backendCpuBefore = backends.reduce((s, b) => s + treeCpuSeconds(b.proc.pid), 0);
    const cpuBefore = pid === undefined ? undefined : treeCpu(pid);
    const coresBefore = cpuTimes();
    const load = runWrk(profile, script, running.port, opts.durationSeconds, opts.loadCpus);
    // wrk stopping mid-request at the end of the warm-up makes balancers drop the backend
    // connections of those requests, and the run's first moments reopen them: connections
    // opened after the ramp-up are the ones that show whether keep-alive holds.
    const settleMs = Math.min(1000, opts.durationSeconds * 200);
    const acceptsSettled = await new Promise<number[]>((resolve, reject) =>
      setTimeout(
        () => Promise.all(backends.map((b) => b.accepts())).then(resolve, reject),
        settleMs,
      )
    );
    const wrk = await load;
    const coresAfter = cpuTimes();
    const cpuAfter = pid === undefined ? undefined : treeCpu(pid);
    const cpuUser = cpuAfter === undefined ? 0 : cpuAfter.user - cpuBefore!.user;
    const cpuSystem = cpuAfter === undefined ? 0 : cpuAfter.system - cpuBefore!.system;
    const cpuSeconds = pid === undefined ? null : cpuUser + cpuSystem;
    const backendCpu = backends.reduce((s, b) => s + treeCpuSeconds(b.proc.pid), 0) -
      backendCpuBefore;
    const rssKiB = running.rssPids().reduce((sum, p) => sum + peakRssKiB(p), 0);
    const acceptsAfter = await Promise.all(backends.map((b) => b.accepts()));
    await Deno.writeTextFile(`${dir}/wrk.txt`, wrk.text);
    const requests = Math.max(1, wrk.requests);
    return {
      ...base,
      ok: true,
      requests: wrk.requests,
      durationSeconds: wrk.durationSeconds,
      requestsPerSecond: wrk.requestsPerSecond,
      latencyUs: wrk.latencyUs,
      errors: wrk.errors,
      errorCount: wrk.errorCount,
      cpuSeconds,
      cpuUsPerRequest: cpuSeconds === null ? null : (cpuSeconds * 1e6) / requests,
      cpuSystemPercent: cpuSeconds ? (100 * cpuSystem) / cpuSeconds : null,
      peakRssMiB: pid === undefined ? null : rssKiB / 1024,
      backendConnections: acceptsAfter.reduce((s, a, i) => s + (a - acceptsSettled[i] - 1), 0),
      backendConnectionsWholeRun: acceptsAfter.reduce(
        (s, a, i) => s + (a - acceptsBefore[i] - 2),
        0,
      ),
      backendCpuUsPerRequest: (backendCpu * 1e6) / requests,
      cpuBusyPercent: busyPercent(coresBefore, coresAfter),
      balancerCoreUsPerRequest: coreUs(coresBefore, coresAfter, target, opts, requests),
    };
  } catch (error) {
    return {
      ...base,
      ok: false,
      error: (error as Error).message.slice(0, 4000),
      requests: 0,
      durationSeconds: 0,
      requestsPerSecond: 0,
      latencyUs: { p50: 0, p90: 0, p99: 0, max: 0, mean: 0 },
      errors: { connect: 0, read: 0, write: 0, timeout: 0, status: 0 },
      errorCount: 0,
      cpuSeconds: null,
      cpuUsPerRequest: null,
      cpuSystemPercent: null,
      peakRssMiB: null,
      backendConnections: 0,
      backendConnectionsWholeRun: 0,
      backendCpuUsPerRequest: 0,
      cpuBusyPercent: [],
      balancerCoreUsPerRequest: null,
    };
  } finally {
    await running?.proc?.stop();
  }
}

/**
 * Busy time of the balancer's core per request (µs), when the target is pinned to one core:
 * unlike the process's own CPU time it includes softirq network work done on that core (and
 * anything else that ran there).
 */
function coreUs(
  before: { busy: number; total: number }[],
  after: { busy: number; total: number }[],
  target: Target,
  opts: BenchOptions,
  requests: number,
): number | null {
  if (!target.pinned || !/^\d+$/.test(opts.balancerCpus)) return null;
  const core = Number(opts.balancerCpus);
  if (before[core] === undefined || after[core] === undefined) return null;
  return ((after[core].busy - before[core].busy) / 100) * 1e6 / requests;
}

function progressLine(r: RunRecord): string {
  const head = `round ${r.round} ${r.profile.padEnd(8)} ${r.target.padEnd(12)}`;
  if (!r.ok) return `${head} FAILED: ${r.error?.split("\n")[0]}`;
  const cpu = r.cpuUsPerRequest === null ? "" : ` cpu ${r.cpuUsPerRequest.toFixed(1)}us/req` +
    (r.balancerCoreUsPerRequest === null ? "" : ` (core ${r.balancerCoreUsPerRequest.toFixed(1)})`);
  const rss = r.peakRssMiB === null ? "" : ` rss ${r.peakRssMiB.toFixed(1)}MiB`;
  return `${head} ${Math.round(r.requestsPerSecond).toString().padStart(6)} req/s` +
    ` p50 ${r.latencyUs.p50}us p99 ${r.latencyUs.p99}us err ${r.errorCount}${cpu}${rss}` +
    ` conns ${r.backendConnections} busy ${r.cpuBusyPercent.join("/")}%`;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
