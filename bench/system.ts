/**
 * @module
 * What the benchmark needs from the machine: tools installed from Debian, versions and the CPU
 * for the report, free loopback ports, child processes started (and stopped) by PID, and the
 * CPU time and peak memory of a process tree read from `/proc`.
 */

/** A process the harness started; {@linkcode stopAll} stops whatever is still running. */
export interface Started {
  /** Label used in messages. */
  readonly name: string;
  /** PID of the process itself (`taskset` execs, so this is the program's own PID). */
  readonly pid: number;
  /** Resolves when the process has exited. */
  readonly status: Promise<Deno.CommandStatus>;
  /** File that receives its stdout and stderr. */
  readonly logFile: string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited. */
  stop(graceMs?: number): Promise<void>;
}

const running = new Set<Started>();

/** Options for {@linkcode start}. */
export interface StartOptions {
  /** Working directory. @default the harness's own */
  cwd?: string;
  /** CPU list for `taskset -c` (e.g. `"1"` or `"0,1"`); undefined = not pinned. @default undefined */
  cpus?: string;
  /** File for stdout and stderr (appended). */
  logFile: string;
  /** Environment variables added to the harness's own. @default {} */
  env?: Record<string, string>;
}

/** Starts `argv`, pinned with taskset when `cpus` is given; output goes to `logFile`. */
export async function start(name: string, argv: string[], options: StartOptions): Promise<Started> {
  const full = options.cpus === undefined ? argv : ["taskset", "-c", options.cpus, ...argv];
  const child = new Deno.Command(full[0], {
    args: full.slice(1),
    cwd: options.cwd,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const log = await Deno.open(options.logFile, { create: true, append: true });
  // Drained continuously: a full pipe would block the process under test.
  const copies = [child.stdout, child.stderr].map(async (stream) => {
    for await (const chunk of stream) await log.write(chunk);
  });
  const status = child.status.then(async (s) => {
    await Promise.allSettled(copies);
    log.close();
    return s;
  });
  let exited = false;
  status.finally(() => (exited = true));
  const started: Started = {
    name,
    pid: child.pid,
    status,
    logFile: options.logFile,
    async stop(graceMs = 5000) {
      if (!exited) {
        try {
          child.kill("SIGTERM");
        } catch { /* already gone */ }
        const timer = setTimeout(() => {
          try {
            child.kill("SIGKILL");
          } catch { /* already gone */ }
        }, graceMs);
        await status;
        clearTimeout(timer);
      }
      running.delete(started);
    },
  };
  running.add(started);
  return started;
}

/** Stops every process started by {@linkcode start} that is still running. */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop(2000)));
}

/** Runs a command to completion and returns its output (never throws for a non-zero exit). */
export async function run(
  argv: string[],
  options: { cwd?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const out = await new Deno.Command(argv[0], {
      args: argv.slice(1),
      cwd: options.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const decoder = new TextDecoder();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } catch (error) {
    return { code: 127, stdout: "", stderr: (error as Error).message };
  }
}

/** The path of `program` on PATH (or in the sbin directories), or undefined. */
export async function which(program: string): Promise<string | undefined> {
  for (const dir of [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/sbin"]) {
    if (dir === "") continue;
    try {
      const info = await Deno.stat(`${dir}/${program}`);
      if (info.isFile) return `${dir}/${program}`;
    } catch { /* not here */ }
  }
  return undefined;
}

/**
 * Installs the Debian packages whose programs are missing (apt-get; needs root). Idempotent:
 * nothing happens when all programs are present. Runs `apt-get update` once if the first
 * install attempt fails (stale or empty package lists).
 */
export async function ensureTools(
  programs: Record<string, string>,
  say: (line: string) => void,
): Promise<void> {
  const missing: string[] = [];
  for (const [program, pkg] of Object.entries(programs)) {
    if (await which(program) === undefined) missing.push(pkg);
  }
  if (missing.length === 0) return;
  say(`Installing ${missing.join(", ")} with apt-get...`);
  const install = () =>
    run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", ...missing]);
  let result = await install();
  if (result.code !== 0) {
    await run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "update", "-q"]);
    result = await install();
  }
  if (result.code !== 0) {
    throw new Error(`apt-get install ${missing.join(" ")} failed:\n${result.stderr.slice(-2000)}`);
  }
}

/** A free TCP port on 127.0.0.1 (bound, then released). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Polls `url` until it answers 200 or `timeoutMs` passes; `proc` exiting fails at once. */
export async function waitReady(url: string, proc: Started | undefined, timeoutMs = 15000) {
  let exited = false;
  proc?.status.then(() => (exited = true));
  const deadline = performance.now() + timeoutMs;
  let last = "";
  while (performance.now() < deadline) {
    if (exited) break;
    const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
    try {
      const response = await fetch(url, { client, signal: AbortSignal.timeout(1000) });
      await response.body?.cancel();
      if (response.status === 200) return;
      last = `HTTP ${response.status}`;
    } catch (error) {
      last = (error as Error).message;
    } finally {
      client.close();
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  let log = "";
  if (proc !== undefined) {
    log = await Deno.readTextFile(proc.logFile).catch(() => "");
    log = log.length > 0 ? `\n--- ${proc.logFile} ---\n${log.slice(-3000)}` : "";
  }
  throw new Error(`${url} not ready (${exited ? "process exited" : last})${log}`);
}

/** One line of `/proc/PID/stat`, the fields the harness uses. */
export interface ProcStat {
  pid: number;
  ppid: number;
  /** utime + cutime, in clock ticks. */
  userTicks: number;
  /** stime + cstime, in clock ticks. */
  systemTicks: number;
  /** The command (or thread) name. */
  comm: string;
}

/**
 * Parses `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses, so the
 * fields are counted from the last `)`.
 */
export function parseStat(text: string): ProcStat {
  const close = text.lastIndexOf(")");
  const pid = Number(text.slice(0, text.indexOf(" ")));
  // After ")": state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
  const f = text.slice(close + 2).split(" ");
  return {
    pid,
    ppid: Number(f[1]),
    userTicks: Number(f[11]) + Number(f[13]),
    systemTicks: Number(f[12]) + Number(f[14]),
    comm: text.slice(text.indexOf("(") + 1, close),
  };
}

function readAllStats(): ProcStat[] {
  const stats: ProcStat[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      stats.push(parseStat(Deno.readTextFileSync(`/proc/${entry.name}/stat`)));
    } catch { /* exited meanwhile */ }
  }
  return stats;
}

/**
 * `root` and its live descendants. The sum of utime+stime+cutime+cstime over the live tree
 * counts every process exactly once: an exited child's time moves into its parent's cutime.
 */
export function processTree(root: number): ProcStat[] {
  const stats = readAllStats();
  const byParent = new Map<number, ProcStat[]>();
  for (const s of stats) byParent.set(s.ppid, [...(byParent.get(s.ppid) ?? []), s]);
  const tree = stats.filter((s) => s.pid === root);
  for (let i = 0; i < tree.length; i++) tree.push(...(byParent.get(tree[i].pid) ?? []));
  return tree;
}

/** USER_HZ: 100 on every Linux ABI in use (x86, arm64); /proc reports times in these ticks. */
const CLOCK_TICKS_PER_SECOND = 100;

/** CPU seconds (children included) used so far by `root`'s process tree. */
export function treeCpu(root: number): { user: number; system: number } {
  let user = 0, system = 0;
  for (const s of processTree(root)) {
    user += s.userTicks;
    system += s.systemTicks;
  }
  return { user: user / CLOCK_TICKS_PER_SECOND, system: system / CLOCK_TICKS_PER_SECOND };
}

/** Total CPU seconds (user + system, children included) of `root`'s process tree. */
export function treeCpuSeconds(root: number): number {
  const { user, system } = treeCpu(root);
  return user + system;
}

/** CPU seconds per thread name of process `pid` (threads of the same name summed). */
export function threadCpu(pid: number): Map<string, { user: number; system: number }> {
  const out = new Map<string, { user: number; system: number }>();
  for (const entry of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const s = parseStat(Deno.readTextFileSync(`/proc/${pid}/task/${entry.name}/stat`));
      const name = s.pid === pid ? `${s.comm} (main thread)` : s.comm;
      const t = out.get(name) ?? { user: 0, system: 0 };
      t.user += s.userTicks / CLOCK_TICKS_PER_SECOND;
      t.system += s.systemTicks / CLOCK_TICKS_PER_SECOND;
      out.set(name, t);
    } catch { /* exited meanwhile */ }
  }
  return out;
}

/** Peak resident set (VmHWM) of one process in KiB, 0 when it is gone. */
export function peakRssKiB(pid: number): number {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const match = /^VmHWM:\s+(\d+) kB/m.exec(status);
    return match === null ? 0 : Number(match[1]);
  } catch {
    return 0;
  }
}

/** Per-CPU busy and total ticks from `/proc/stat`, to tell whether a core was saturated. */
export function cpuTimes(): { busy: number; total: number }[] {
  const lines = Deno.readTextFileSync("/proc/stat").split("\n");
  const cpus: { busy: number; total: number }[] = [];
  for (const line of lines) {
    const match = /^cpu(\d+) (.*)$/.exec(line);
    if (match === null) continue;
    const v = match[2].trim().split(/\s+/).map(Number);
    // user nice system idle iowait irq softirq steal ...; idle + iowait are not busy.
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    cpus[Number(match[1])] = { busy: total - v[3] - v[4], total };
  }
  return cpus;
}

/** Busy percentage of each CPU between two {@linkcode cpuTimes} samples. */
export function busyPercent(
  before: { busy: number; total: number }[],
  after: { busy: number; total: number }[],
): number[] {
  return after.map((a, i) => {
    const total = a.total - before[i].total;
    return total <= 0 ? 0 : Math.round((1000 * (a.busy - before[i].busy)) / total) / 10;
  });
}

/** The machine, for the report. */
export interface MachineInfo {
  cpuModel: string;
  cores: number;
  kernel: string;
  memoryGiB: number;
  deno: string;
  nginx: string;
  haproxy: string;
  wrk: string;
}

/** Reads the CPU model, core count, kernel and tool versions. */
export async function describeMachine(): Promise<MachineInfo> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  const [deno, nginx, haproxy, wrk] = await Promise.all([
    run([Deno.execPath(), "--version"]),
    run(["nginx", "-v"]),
    run(["haproxy", "-v"]),
    run(["wrk", "-v"]),
  ]);
  const first = (r: { stdout: string; stderr: string }, pattern: RegExp) =>
    pattern.exec(r.stdout + r.stderr)?.[1] ?? "unknown";
  return {
    cpuModel: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? "unknown",
    cores: navigator.hardwareConcurrency,
    kernel: Deno.osRelease(),
    memoryGiB: Math.round(Number(/^MemTotal:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0) / 1048576),
    deno: first(deno, /deno (\S+)/),
    nginx: first(nginx, /nginx\/(\S+)/),
    haproxy: first(haproxy, /HAProxy version (\S+)/),
    wrk: first(wrk, /wrk (\S+)/),
  };
}

/** Pins the harness itself (all its threads) to `cpus`, so it stays off the balancer's core. */
export async function pinSelf(cpus: string): Promise<void> {
  await run(["taskset", "-a", "-p", "-c", cpus, String(Deno.pid)]);
}

/** The `Max open files` line of `/proc/PID/limits`: soft and hard limits (Infinity = unlimited). */
export function parseOpenFilesLimit(text: string): { soft: number; hard: number } {
  const match = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  if (match === null) throw new Error("no `Max open files` line");
  const value = (v: string) => v === "unlimited" ? Infinity : Number(v);
  return { soft: value(match[1]), hard: value(match[2]) };
}

/**
 * Raises the harness's soft open-files limit to its hard limit (no privilege needed), so that
 * every process it starts inherits it: 2,000 client connections need ~4,000 descriptors in a
 * balancer and 2,000 in wrk. Returns the soft limit in effect.
 */
export async function raiseFileLimit(): Promise<number> {
  const read = () => parseOpenFilesLimit(Deno.readTextFileSync("/proc/self/limits"));
  const { soft, hard } = read();
  if (soft < hard) {
    const to = hard === Infinity ? "unlimited" : String(hard);
    await run(["prlimit", "--pid", String(Deno.pid), `--nofile=${to}:${to}`]);
  }
  return read().soft;
}
