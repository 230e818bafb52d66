/**
 * @module
 * Benchmarks this load balancer side by side with nginx, HAProxy and a Go
 * `httputil.ReverseProxy` balancer on loopback, in the same run (issues 6 and 12). Two nginx
 * backends answer fixed bodies; each target in turn balances them while wrk sends one of seven
 * load profiles; targets are interleaved and every measurement is repeated for `--rounds`.
 *
 *     deno run -A bench/run.ts                 # full run (about 12 minutes)
 *     deno run -A bench/run.ts --quick         # smoke run (about 2 minutes)
 *     deno run -A bench/run.ts --duration 10s --rounds 3 --targets nginx,deno --profiles small
 *     deno run -A bench/run.ts --targets deno --v8-flags "none;--max-semi-space-size=2"
 *
 * Per (round, profile, target) it records requests/s, p50/p99, errors (socket errors, wrk
 * timeouts and non-2xx/3xx), the balancer's CPU time per request (utime+stime of its process
 * tree from /proc, delta over the run), peak RSS (VmHWM), the connections the backends accepted
 * during the run (stub_status `accepts`), which shows whether keep-alive to the backends works,
 * and for gzip whether a client got the backend's compressed bytes unchanged.
 * Writes `bench/results/latest.{json,md,svg}` and prints the Markdown to stdout; progress goes
 * to stderr. Needs root for apt-get only when wrk, nginx or haproxy is missing; without `go` the
 * Go peer is skipped.
 */

import { parseArgs } from "node:util";
import {
  busyPercent,
  cpuTimes,
  describeMachine,
  ensureTools,
  peakRssKiB,
  pinSelf,
  raiseFileLimit,
  run,
  stopAll,
  treeCpu,
  treeCpuSeconds,
} from "./system.ts";
import {
  type Backend,
  buildGoPeer,
  type DenoTargetOptions,
  direct,
  goPeer,
  haproxy,
  LAYER_TARGETS,
  layeredForwarder,
  minimalForwarder,
  nginx,
  PROJECT_DIR,
  rawListenForwarder,
  rawMinimalForwarder,
  type RunningTarget,
  startBackend,
  type Target,
  thisBalancer,
} from "./targets.ts";
import { checkGzipPassThrough } from "./http_check.ts";
import { type GcTotals, parseTraceGc } from "./gc_trace.ts";
import { type Profile, PROFILES, runWrk, writeScript } from "./wrk.ts";
import { markdown, type RunInfo, type RunRecord, summarise, svgChart } from "./report.ts";

/** Every target id, in the order targets appear in reports. */
export const TARGET_IDS = [
  "direct",
  "nginx",
  "haproxy",
  "go",
  "deno",
  "deno-native-front",
  "deno-fetch",
  "deno-workers",
  "deno-minimal",
  "deno-minimal-raw",
  "deno-minimal-listen",
  "deno-layer-front",
  "deno-layer-mini",
  "deno-layer-transport",
];

const USAGE = `Usage: deno run -A bench/run.ts [options]

  --duration DUR     measured time of each run, whole seconds (default 5s; --quick: 2s)
  --warmup DUR       unmeasured load before each run (default 1s)
  --rounds N         interleaved rounds over all targets and profiles (default 2; --quick: 1)
  --quick            smoke run: --duration 2s --rounds 1 (about 2 minutes)
  --targets LIST     subset of: ${TARGET_IDS.join(",")}
                     (default: all available except deno-minimal and the deno-layer-*
                     targets, which take the native path apart: docs/performance.md)
  --baseline         add deno-minimal: Deno.serve + fetch with no features
  --profiles LIST    subset of: ${PROFILES.map((p) => p.id).join(",")} (default all)
  --workers N        worker count for the deno-workers target (default: cores)
  --deno-flags=F     extra \`deno run\` flags for the Deno targets (use the = form)
  --v8-flags SETS    run every Deno target once per V8 flag set; sets are separated by
                     ";", flags within a set by "," (as deno's --v8-flags takes them),
                     "none" is no flags, e.g. "none;--max-semi-space-size=2". Variants get
                     ids like deno[--max-semi-space-size=2]
  --balancer-cpu C   CPU list for the balancer under test (default 1)
  --load-cpu C       CPU list for wrk and the backends (default 0)
  --out DIR          where latest.{json,md,svg} go (default bench/results)
  --snapshot         measure a copy of the working tree taken now, so that edits made
                     by others during the run do not mix versions
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
  /** Extra `deno run` flags for the Deno targets. */
  denoFlags: string[];
  /** V8 flag sets to run each Deno target with ("" = none); undefined = one plain run. */
  v8FlagSets: string[] | undefined;
  /** Run from a copy of the working tree (`--snapshot`). */
  snapshot: boolean;
  /** The code under test as the report names it; set by `--snapshot` for its copy. */
  revision: string | undefined;
}

/** Parses `--v8-flags`: `;` between sets, `none` for no flags, blanks dropped. */
export function parseV8FlagSets(text: string): string[] {
  const sets = text.split(";").map((s) => s.trim()).filter(Boolean);
  if (sets.length === 0) throw new Error(`--v8-flags: expected flag sets, got "${text}"`);
  return sets.map((set) => {
    if (set === "none") return "";
    const flags = set.split(",").map((f) => f.trim());
    const bad = flags.find((f) => !/^--[a-z0-9_-]+(=[^\s,;]+)?$/i.test(f));
    if (bad !== undefined) throw new Error(`--v8-flags: "${bad}" is not a V8 flag like --x=1`);
    return flags.join(",");
  });
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
      "deno-flags": { type: "string", default: "" },
      "v8-flags": { type: "string" },
      snapshot: { type: "boolean", default: false },
      revision: { type: "string" },
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
    denoFlags: values["deno-flags"]!.split(" ").filter(Boolean),
    v8FlagSets: values["v8-flags"] === undefined ? undefined : parseV8FlagSets(values["v8-flags"]),
    snapshot: values.snapshot!,
    revision: values.revision,
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

/** Whether `main.ts --help` lists `--transport` (the native transport and its fetch fallback). */
async function transportSupport(): Promise<boolean> {
  const help = await run([Deno.execPath(), "run", "--allow-net", "main.ts", "--help"], {
    cwd: PROJECT_DIR,
  });
  return /--transport\b/.test(help.stdout + help.stderr);
}

/**
 * The targets of this run, in {@linkcode TARGET_IDS} order, each Deno target once per V8 flag
 * set. Builds the Go peer when it is wanted. Notes say what was skipped and why.
 */
async function chooseTargets(opts: BenchOptions, tmp: string, notes: string[]) {
  const unavailable = new Map<string, string>();
  const fixed = new Map<string, Target>([["direct", direct], ["nginx", nginx], [
    "haproxy",
    haproxy,
  ]]);
  if (opts.targets === undefined || opts.targets.includes("go")) {
    say("Building the Go peer (bench/go_peer/main.go)...");
    const built = await buildGoPeer(tmp);
    if ("binary" in built) fixed.set("go", goPeer(built.binary));
    else unavailable.set("go", `the Go peer was skipped: ${built.reason}`);
  }
  const deno = new Map<string, (o: DenoTargetOptions) => Target>();
  if (await transportSupport()) {
    deno.set("deno", (o) => thisBalancer({ ...o, transport: "native" }));
    deno.set("deno-fetch", (o) => thisBalancer({ ...o, transport: "fetch" }));
    deno.set("deno-native-front", (o) => thisBalancer({ ...o, frontend: "native" }));
  } else {
    deno.set("deno", (o) => thisBalancer({ ...o, transport: "default" }));
    unavailable.set(
      "deno-fetch",
      "`main.ts --help` lists no `--transport` flag, so deno-fetch was skipped and deno ran " +
        "main.ts's only transport",
    );
  }
  if (opts.targets === undefined || opts.targets.includes("deno-workers")) {
    const workers = await workersSupport(opts.workers);
    if (workers.ok) {
      deno.set("deno-workers", (o) => thisBalancer({ ...o, workers: opts.workers }));
      notes.push(
        `"this balancer, --workers ${opts.workers}" is not pinned: it may use every core, ` +
          "which it shares with wrk and the backends; compare its requests/s, not its CPU " +
          "per request.",
      );
    } else {
      unavailable.set("deno-workers", `${workers.reason}, so the multi-worker target was skipped`);
    }
  }
  deno.set("deno-minimal", minimalForwarder);
  deno.set("deno-minimal-raw", rawMinimalForwarder);
  deno.set("deno-minimal-listen", rawListenForwarder);
  for (const id of Object.keys(LAYER_TARGETS) as (keyof typeof LAYER_TARGETS)[]) {
    deno.set(id, (options) => layeredForwarder(id, options));
  }

  // The layers are asked for by name only.
  const wanted = opts.targets ??
    TARGET_IDS.filter((id) =>
      (id !== "deno-minimal" || opts.baseline) && !Object.hasOwn(LAYER_TARGETS, id)
    );
  const targets: Target[] = [];
  for (const id of TARGET_IDS.filter((id) => wanted.includes(id))) {
    const make = deno.get(id);
    if (fixed.has(id)) targets.push(fixed.get(id)!);
    else if (make !== undefined) {
      for (const v8Flags of opts.v8FlagSets ?? [""]) {
        targets.push(make({ denoFlags: opts.denoFlags, v8Flags }));
      }
    } else if (unavailable.has(id)) notes.push(`${capitalise(unavailable.get(id)!)}.`);
  }
  for (const id of wanted.filter((id) => !TARGET_IDS.includes(id))) {
    notes.push(`Target "${id}" is unknown: skipped.`);
  }
  for (const note of notes) say(note);
  return targets;
}

const capitalise = (text: string) => text[0].toUpperCase() + text.slice(1);

/**
 * The commit under test, flagged when the balancer's sources differ from it, with a fingerprint
 * of the difference (tracked changes and untracked files), so that two runs can be told apart.
 */
async function gitRevision(): Promise<string> {
  const git = (...args: string[]) => run(["git", ...args], { cwd: PROJECT_DIR });
  const head = await git("rev-parse", "--short", "HEAD");
  if (head.code !== 0) return "unknown (not a git checkout)";
  const paths = ["lib", "main.ts", "deno.json"];
  const dirty = await git("status", "--porcelain", "--", ...paths);
  if (dirty.stdout.trim() === "") return head.stdout.trim();
  const diff = await git("diff", "HEAD", "--", ...paths);
  const untracked = await git("ls-files", "--others", "--exclude-standard", "--", ...paths);
  let text = diff.stdout;
  for (const file of untracked.stdout.split("\n").filter(Boolean)) {
    text += file + (await Deno.readTextFile(`${PROJECT_DIR}${file}`).catch(() => ""));
  }
  const hash = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  const hex = [...new Uint8Array(hash).slice(0, 4)].map((b) => b.toString(16).padStart(2, "0"));
  return `${head.stdout.trim()} with uncommitted changes (diff ${hex.join("")})`;
}

/**
 * `--snapshot`: copies the working tree (without .git and dist) to a temporary directory and
 * runs this harness from there with the same options, writing to the same `--out`. Others may
 * edit the tree during a run of several minutes; every target then still runs the same code.
 */
async function runFromSnapshot(args: string[], opts: BenchOptions): Promise<number> {
  const revision = `${await gitRevision()}, snapshot of ${new Date().toISOString()}`;
  const dir = await Deno.makeTempDir({ prefix: "lb-bench-snapshot-" });
  try {
    const copy = await run([
      "sh",
      "-c",
      'tar -C "$1" --exclude=./.git --exclude=./dist -cf - . | tar -C "$2" -xf -',
      "copy",
      PROJECT_DIR,
      dir,
    ]);
    if (copy.code !== 0) throw new Error(`copying the tree failed: ${copy.stderr}`);
    say(`Measuring a snapshot of the working tree in ${dir} (${revision})`);
    const rest = args.filter((a) => !/^--?snapshot$/.test(a));
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${dir}/bench/run.ts`,
        ...rest,
        "--out",
        opts.outDir,
        "--revision",
        revision,
      ],
      stdin: "null",
    }).spawn();
    // The child stops what it started on SIGTERM; pass ours on.
    const forward = () => child.kill("SIGTERM");
    Deno.addSignalListener("SIGINT", forward);
    Deno.addSignalListener("SIGTERM", forward);
    try {
      return (await child.status).code;
    } finally {
      Deno.removeSignalListener("SIGINT", forward);
      Deno.removeSignalListener("SIGTERM", forward);
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
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
  if (opts.snapshot) return await runFromSnapshot(args, opts);
  await ensureTools({ wrk: "wrk", nginx: "nginx", haproxy: "haproxy", taskset: "util-linux" }, say);
  await pinSelf(opts.loadCpus);

  const notes: string[] = [];
  const fileLimit = await raiseFileLimit();
  const tmp = await Deno.makeTempDir({ prefix: "lb-bench-" });
  const targets = await chooseTargets(opts, tmp, notes);
  const profiles = opts.profiles === undefined
    ? PROFILES
    : PROFILES.filter((p) => opts.profiles!.includes(p.id));
  const most = Math.max(...profiles.map((p) => p.connections));
  if (fileLimit < 2 * most + 500) {
    notes.push(
      `Open files limit ${fileLimit} (hard limit reached): below the ~${2 * most + 500} ` +
        `descriptors a balancer needs at ${most} connections; expect refused connections.`,
    );
  }

  const runs = opts.rounds * profiles.length * targets.length;
  const estimate = runs * (opts.durationSeconds + opts.warmupSeconds + 0.4) + 5;
  say(
    `${runs} runs: ${targets.map((t) => t.id).join(", ")} x ${
      profiles.map((p) => p.id).join(", ")
    } x ${opts.rounds} round(s); about ${(estimate / 60).toFixed(1)} min`,
  );

  const onSignal = () => {
    say("Interrupted: stopping everything started...");
    stopAll()
      .then(() => opts.keep ? undefined : Deno.remove(tmp, { recursive: true }))
      .catch(() => {})
      .finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  const machine = await describeMachine();
  const revision = opts.revision ?? await gitRevision();
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
    const gzipFile = await Deno.readFile(`${backends[0].dir}/www/gzip.gz`);
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
            gzipFile,
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
    "Compressed bytes passed through: before each gzip run, one request with " +
      "`Accept-Encoding: gzip` over a raw socket (bench/http_check.ts); yes when the body is " +
      "byte for byte the backend's gzip file under `Content-Encoding: gzip`. \"bytes per " +
      'response" is what wrk received per answer, headers included, over the whole run.',
    "2,000 connections: wrk's default 2 s timeout (as in issue 12), one wrk thread on the load " +
      'core. Timeouts are wrk\'s "Socket errors: ... timeout N": requests without an answer ' +
      "after 2 s; they are counted in the errors too.",
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
  // The project's `deno fmt --check` covers bench/: format what was generated the same way,
  // with the deno.json above the output (not the snapshot's, whose options stop at its folder).
  await run([
    Deno.execPath(),
    "fmt",
    `${opts.outDir}/latest.json`,
    `${opts.outDir}/latest.md`,
    `${opts.outDir}/latest.svg`,
  ], { cwd: opts.outDir });
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
  /** The compressed body the backends serve for the gzip profile. */
  gzipFile: Uint8Array;
}

/** Starts `target`, warms it up, measures one run of `profile`, and stops it. */
async function measure(
  target: Target,
  profile: Profile,
  round: number,
  { tmp, backends, script, opts, gzipFile }: MeasureContext,
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
    const gzip = profile.id === "gzip"
      ? await checkGzipPassThrough(running.port, profile.path, gzipFile)
      : undefined;
    if (opts.warmupSeconds > 0) {
      await runWrk(profile, script, running.port, opts.warmupSeconds, opts.loadCpus);
    }
    const pid = running.proc?.pid;
    // With --trace-gc among its V8 flags, the collections logged during the run are counted.
    const logFile = running.proc?.logFile;
    const logBefore = logFile === undefined ? 0 : (await Deno.stat(logFile)).size;
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
    const gc = logFile === undefined ? undefined : await gcDuringRun(logFile, logBefore);
    const cpuAfter = pid === undefined ? undefined : treeCpu(pid);
    const cpuUser = cpuAfter === undefined ? 0 : cpuAfter.user - cpuBefore!.user;
    const cpuSystem = cpuAfter === undefined ? 0 : cpuAfter.system - cpuBefore!.system;
    const cpuSeconds = pid === undefined ? null : cpuUser + cpuSystem;
    const backendCpu = backends.reduce((s, b) => s + treeCpuSeconds(b.proc.pid), 0) -
      backendCpuBefore;
    const rssKiB = running.rssPids().reduce((sum, p) => sum + peakRssKiB(p), 0);
    const acceptsAfter = await Promise.all(backends.map((b) => b.accepts()));
    await Deno.writeTextFile(`${dir}/wrk.txt`, wrk.text);
    if (wrk.requests === 0) {
      throw new Error(
        `no request completed in ${opts.durationSeconds} s (${wrk.errorCount} errors)`,
      );
    }
    const requests = wrk.requests;
    return {
      ...base,
      ok: true,
      requests: wrk.requests,
      durationSeconds: wrk.durationSeconds,
      requestsPerSecond: wrk.requestsPerSecond,
      latencyUs: wrk.latencyUs,
      errors: wrk.errors,
      errorCount: wrk.errorCount,
      responseBytes: wrk.bytes / requests,
      gzipPassThrough: gzip?.passThrough ?? null,
      gzipDetail: gzip?.detail,
      cpuSeconds,
      cpuUsPerRequest: cpuSeconds === null ? null : (cpuSeconds * 1e6) / requests,
      cpuSystemPercent: cpuSeconds ? (100 * cpuSystem) / cpuSeconds : null,
      gcUsPerRequest: gc === undefined || gc.young + gc.full === 0
        ? null
        : ((gc.youngMs + gc.fullMs) * 1000) / requests,
      gcCollections: gc === undefined ? null : { young: gc.young, full: gc.full },
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
      responseBytes: 0,
      gzipPassThrough: null,
      cpuSeconds: null,
      cpuUsPerRequest: null,
      cpuSystemPercent: null,
      gcUsPerRequest: null,
      gcCollections: null,
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

/** `--trace-gc` totals of what `logFile` gained after byte `from` (its writer may lag a little). */
async function gcDuringRun(logFile: string, from: number): Promise<GcTotals> {
  const bytes = await Deno.readFile(logFile);
  return parseTraceGc(new TextDecoder().decode(bytes.subarray(from)));
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
  const head = `round ${r.round} ${r.profile.padEnd(8)} ${r.target.padEnd(16)}`;
  if (!r.ok) return `${head} FAILED: ${r.error?.split("\n")[0]}`;
  const cpu = r.cpuUsPerRequest === null ? "" : ` cpu ${r.cpuUsPerRequest.toFixed(1)}us/req` +
    (r.balancerCoreUsPerRequest === null ? "" : ` (core ${r.balancerCoreUsPerRequest.toFixed(1)})`);
  const rss = r.peakRssMiB === null ? "" : ` rss ${r.peakRssMiB.toFixed(1)}MiB`;
  return `${head} ${Math.round(r.requestsPerSecond).toString().padStart(6)} req/s` +
    ` p50 ${r.latencyUs.p50}us p99 ${r.latencyUs.p99}us err ${r.errorCount}${cpu}${rss}` +
    ` conns ${r.backendConnections} busy ${r.cpuBusyPercent.join("/")}%` +
    (r.errors.timeout > 0 ? ` timeouts ${r.errors.timeout}` : "") +
    (r.gzipPassThrough === null ? "" : ` gzip ${r.gzipPassThrough ? "passed" : "altered"}`);
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
