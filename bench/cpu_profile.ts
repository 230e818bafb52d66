/**
 * @module
 * CPU profile of the balancer under load (small GET by default): starts the two nginx backends, runs
 * `deno run --cpu-prof` on `main.ts` pinned to its own core, drives it with wrk, stops it (the
 * profile is written at exit) and summarises the `.cpuprofile`: top self-time functions, the
 * inclusive time of this project's functions, and time by origin, each also per request.
 *
 *     deno run -A bench/cpu_profile.ts                          # small GET, 10 s, 50 connections
 *     deno run -A bench/cpu_profile.ts --profile headers        # any profile of bench/wrk.ts
 *     deno run -A bench/cpu_profile.ts --frontend native        # the native front end
 *     deno run -A bench/cpu_profile.ts --duration 20s --prof-dir /tmp/prof
 *     deno run -A bench/cpu_profile.ts --summarize /tmp/prof/CPU.123.cpuprofile --requests 150000
 */

import { parseArgs } from "node:util";
import {
  ensureTools,
  freePort,
  pinSelf,
  start,
  stopAll,
  threadCpu,
  treeCpu,
  waitReady,
} from "./system.ts";
import { PROJECT_DIR, startBackend } from "./targets.ts";
import { PROFILES, runWrk, writeScript } from "./wrk.ts";
import { parseSeconds } from "./run.ts";

/** A V8 `.cpuprofile` (the parts used here). */
export interface CpuProfile {
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
    children?: number[];
  }[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Time attributed to one function (all its call sites merged). */
export interface FunctionTime {
  name: string;
  /** `file:line` (1-based), shortened to the project or Deno extension. */
  location: string;
  /** Time at the top of the stack, ms. */
  selfMs: number;
  /** Time anywhere on the stack (counted once per sample), ms. */
  totalMs: number;
}

/** Where a function comes from, for grouping. */
export function origin(url: string, name: string): string {
  if (url === "") {
    if (name === "(garbage collector)") return "garbage collector";
    if (name === "(idle)") return "idle";
    if (name === "(program)") return "native (program)";
    return "native";
  }
  if (url.startsWith(`file://${PROJECT_DIR}lib/`) || url.startsWith(`file://${PROJECT_DIR}main`)) {
    return "this project";
  }
  if (url.startsWith("ext:")) return url.split("/")[0];
  if (url.startsWith("node:")) return "node compat";
  if (url.includes("/npm/") || url.includes("node_modules")) return "npm packages";
  return "other";
}

function shortUrl(url: string): string {
  if (url.startsWith(`file://${PROJECT_DIR}`)) return url.slice(`file://${PROJECT_DIR}`.length);
  return url;
}

/**
 * Self and inclusive time per function. A sample's duration is the next sample's time delta
 * (the last one gets the mean), as Chrome DevTools counts it.
 */
export function analyse(profile: CpuProfile): {
  functions: FunctionTime[];
  totalMs: number;
  byOrigin: Map<string, number>;
} {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const keyOf = (id: number) => {
    const f = byId.get(id)!.callFrame;
    return `${
      f.functionName || "(anonymous)"
    }\u0000${f.url}\u0000${f.lineNumber}\u0000${f.columnNumber}`;
  };
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  const byOrigin = new Map<string, number>();
  const mean = profile.timeDeltas.length === 0
    ? 0
    : profile.timeDeltas.reduce((a, b) => a + b, 0) / profile.timeDeltas.length;
  let totalUs = 0;
  profile.samples.forEach((id, i) => {
    const us = Math.max(0, profile.timeDeltas[i + 1] ?? mean);
    totalUs += us;
    const top = keyOf(id);
    self.set(top, (self.get(top) ?? 0) + us);
    const f = byId.get(id)!.callFrame;
    const o = origin(f.url, f.functionName);
    byOrigin.set(o, (byOrigin.get(o) ?? 0) + us / 1000);
    const seen = new Set<string>();
    for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
      const key = keyOf(n);
      if (seen.has(key)) continue;
      seen.add(key);
      total.set(key, (total.get(key) ?? 0) + us);
    }
  });
  const functions = [...total.entries()].map(([key, us]) => {
    const [name, url, line, column] = key.split("\u0000");
    // Deno's own ext: scripts are minified to one line: the column tells functions apart.
    const where = url.startsWith("ext:")
      ? `${url}:${Number(line) + 1}:${Number(column) + 1}`
      : `${shortUrl(url)}:${Number(line) + 1}`;
    return {
      name,
      location: url === "" ? "" : where,
      selfMs: (self.get(key) ?? 0) / 1000,
      totalMs: us / 1000,
    };
  });
  return { functions, totalMs: totalUs / 1000, byOrigin };
}

/** Markdown summary of a profile taken over `requests` requests. */
export function summarize(profile: CpuProfile, requests: number, top = 15): string {
  const { functions, totalMs, byOrigin } = analyse(profile);
  const idle = byOrigin.get("idle") ?? 0;
  const busy = totalMs - idle;
  const perReq = (ms: number) => requests > 0 ? `${((ms * 1000) / requests).toFixed(2)} µs` : "–";
  const pct = (ms: number) => `${((100 * ms) / busy).toFixed(1)}%`;
  const lines: string[] = [];
  lines.push(
    `Sampled ${(totalMs / 1000).toFixed(1)} s, of which ${(busy / 1000).toFixed(1)} s busy ` +
      `(not idle); ${requests.toLocaleString("en-US")} requests, so ${perReq(busy)} of ` +
      `main-thread CPU per request. Percentages are of busy time.`,
    "",
    `### Top ${top} functions by self time`,
    "",
    "| # | function | where | self | % busy | per request |",
    "| ---: | --- | --- | ---: | ---: | ---: |",
  );
  const bySelf = functions.filter((f) => f.name !== "(idle)").sort((a, b) => b.selfMs - a.selfMs);
  bySelf.slice(0, top).forEach((f, i) => {
    lines.push(
      `| ${i + 1} | \`${f.name}\` | ${f.location || "native"} | ${f.selfMs.toFixed(0)} ms | ` +
        `${pct(f.selfMs)} | ${perReq(f.selfMs)} |`,
    );
  });
  lines.push("", "### Self time by origin", "", "| origin | self | % busy | per request |");
  lines.push("| --- | ---: | ---: | ---: |");
  for (const [o, ms] of [...byOrigin.entries()].sort((a, b) => b[1] - a[1])) {
    if (o === "idle") continue;
    lines.push(`| ${o} | ${ms.toFixed(0)} ms | ${pct(ms)} | ${perReq(ms)} |`);
  }
  lines.push(
    "",
    "### This project's functions by inclusive time (self + everything they call)",
    "",
    "| function | where | inclusive | % busy | per request | self |",
    "| --- | --- | ---: | ---: | ---: | ---: |",
  );
  const ours = functions
    .filter((f) => f.location.startsWith("lib/") || f.location.startsWith("main.ts"))
    .sort((a, b) => b.totalMs - a.totalMs);
  for (const f of ours.slice(0, 25)) {
    lines.push(
      `| \`${f.name}\` | ${f.location} | ${f.totalMs.toFixed(0)} ms | ${pct(f.totalMs)} | ` +
        `${perReq(f.totalMs)} | ${f.selfMs.toFixed(0)} ms |`,
    );
  }
  const byFile = new Map<string, number>();
  for (const f of ours) {
    const file = f.location.replace(/:\d+$/, "");
    byFile.set(file, (byFile.get(file) ?? 0) + f.selfMs);
  }
  lines.push("", "### Self time in this project's files", "", "| file | self | per request |");
  lines.push("| --- | ---: | ---: |");
  for (const [file, ms] of [...byFile.entries()].sort((a, b) => b[1] - a[1])) {
    lines.push(`| ${file} | ${ms.toFixed(0)} ms | ${perReq(ms)} |`);
  }
  return lines.join("\n") + "\n";
}

/** Markdown table of CPU per thread name between two {@linkcode threadCpu} samples. */
function threadTable(
  before: Map<string, { user: number; system: number }>,
  after: Map<string, { user: number; system: number }>,
  requests: number,
): string {
  const rows = [...after.entries()].map(([name, a]) => {
    const b = before.get(name) ?? { user: 0, system: 0 };
    return { name, user: a.user - b.user, system: a.system - b.system };
  }).filter((r) => r.user + r.system > 0).sort((x, y) => y.user + y.system - (x.user + x.system));
  const us = (s: number) => ((s * 1e6) / requests).toFixed(1);
  const lines = [
    "| thread | user | system | per request |",
    "| --- | ---: | ---: | ---: |",
    ...rows.map((r) =>
      `| ${r.name} | ${r.user.toFixed(2)} s | ${r.system.toFixed(2)} s | ${
        us(r.user + r.system)
      } µs |`
    ),
  ];
  return lines.join("\n") + "\n";
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args: args.map((a) => /^-[a-z]/.test(a) ? `-${a}` : a),
    strict: true,
    options: {
      duration: { type: "string", default: "10s" },
      warmup: { type: "string", default: "2s" },
      connections: { type: "string" },
      profile: { type: "string", default: "small" },
      frontend: { type: "string", default: "deno" },
      "prof-dir": { type: "string", default: "/tmp/prof" },
      "balancer-cpu": { type: "string", default: "1" },
      "load-cpu": { type: "string", default: "0" },
      top: { type: "string", default: "15" },
      summarize: { type: "string" },
      requests: { type: "string", default: "0" },
      out: { type: "string", default: new URL("results/profile.md", import.meta.url).pathname },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(
      "Usage: deno run -A bench/cpu_profile.ts [--duration 10s] [--warmup 2s] " +
        "[--profile small] [--frontend deno|native] [--connections N] [--prof-dir /tmp/prof] " +
        "[--top 15] [--out FILE]\n" +
        "       deno run -A bench/cpu_profile.ts --summarize FILE.cpuprofile [--requests N]",
    );
    return 0;
  }
  const top = Number(values.top);
  if (values.summarize !== undefined) {
    const profile = JSON.parse(await Deno.readTextFile(values.summarize)) as CpuProfile;
    console.log(summarize(profile, Number(values.requests), top));
    return 0;
  }

  await ensureTools({ wrk: "wrk", nginx: "nginx", taskset: "util-linux" }, console.error);
  const loadCpus = values["load-cpu"]!;
  await pinSelf(loadCpus);
  const duration = parseSeconds(values.duration!, "--duration");
  const warmup = parseSeconds(values.warmup!, "--warmup");
  const profDir = values["prof-dir"]!;
  await Deno.mkdir(profDir, { recursive: true });
  const tmp = await Deno.makeTempDir({ prefix: "lb-prof-" });
  const chosen = PROFILES.find((p) => p.id === values.profile);
  if (chosen === undefined) {
    console.error(`--profile: one of ${PROFILES.map((p) => p.id).join(", ")}`);
    return 2;
  }
  const workload = {
    ...chosen,
    connections: values.connections === undefined ? chosen.connections : Number(values.connections),
  };
  let requests = 0;
  let threads = "";
  let loadLine = "";
  let profilePath: string | undefined;
  const startedAt = Date.now();
  try {
    const backends = [
      await startBackend(`${tmp}/backend-a`, loadCpus),
      await startBackend(`${tmp}/backend-b`, loadCpus),
    ];
    const port = freePort();
    const balancer = await start("balancer", [
      Deno.execPath(),
      "run",
      "--cpu-prof",
      `--cpu-prof-dir=${profDir}`,
      "--allow-net",
      "main.ts",
      `-backends=${backends.map((b) => `http://127.0.0.1:${b.port}`).join(",")}`,
      `-port=${port}`,
      "--host",
      "127.0.0.1",
      "--log-level",
      "warn",
      "--frontend",
      values.frontend,
    ], { cwd: PROJECT_DIR, cpus: values["balancer-cpu"], logFile: `${tmp}/balancer.log` });
    await waitReady(`http://127.0.0.1:${port}/`, balancer, 30000);
    const script = await writeScript(workload, tmp);
    if (warmup > 0) requests += (await runWrk(workload, script, port, warmup, loadCpus)).requests;
    const threadsBefore = threadCpu(balancer.pid);
    const cpuBefore = treeCpu(balancer.pid);
    const result = await runWrk(workload, script, port, duration, loadCpus);
    const cpuAfter = treeCpu(balancer.pid);
    threads = threadTable(threadsBefore, threadCpu(balancer.pid), result.requests);
    requests += result.requests;
    const cpu = cpuAfter.user + cpuAfter.system - cpuBefore.user - cpuBefore.system;
    loadLine = `${result.requests.toLocaleString("en-US")} requests in ${duration} s ` +
      `(${Math.round(result.requestsPerSecond).toLocaleString("en-US")}/s, ` +
      `${result.errorCount} errors); process CPU ${
        ((cpu * 1e6) / result.requests).toFixed(1)
      } µs per request (${
        Math.round((100 * (cpuAfter.system - cpuBefore.system)) / cpu)
      }% system), with the profiler on.`;
    console.error(loadLine);
    // SIGTERM: main.ts drains and exits, and Deno writes the profile on exit.
    await balancer.stop(15000);
    for (const entry of Deno.readDirSync(profDir)) {
      if (!entry.name.endsWith(".cpuprofile")) continue;
      const path = `${profDir}/${entry.name}`;
      const info = Deno.statSync(path);
      if ((info.mtime?.getTime() ?? 0) >= startedAt) profilePath = path;
    }
  } finally {
    await stopAll();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  if (profilePath === undefined) {
    console.error(`No new .cpuprofile in ${profDir}`);
    return 1;
  }
  const profile = JSON.parse(await Deno.readTextFile(profilePath)) as CpuProfile;
  const text = `# CPU profile: ${workload.label.replace(/, \d+ connections?$/, "")}, ` +
    `${workload.connections} connections\n\n` +
    `Profile: \`${profilePath}\` (${warmup} s warm-up + ${duration} s load; the balancer ` +
    `pinned to CPU ${values["balancer-cpu"]}).\n\n${loadLine}\n\n` +
    summarize(profile, requests, top) + `\n### Process CPU by thread (measured run, /proc)\n\n` +
    threads;
  await Deno.writeTextFile(values.out!, text);
  await new Deno.Command(Deno.execPath(), {
    args: ["fmt", values.out!],
    cwd: PROJECT_DIR,
    stdout: "null",
    stderr: "null",
  }).output();
  console.log(await Deno.readTextFile(values.out!));
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
