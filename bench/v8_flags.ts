/**
 * @module
 * Which V8 flags keep a busy balancer small (issue 12, part 4): runs `bench/run.ts` with every
 * Deno target once per V8 flag set, interleaved in the same rounds, and writes
 * `bench/results/v8_flags.{md,json}`: peak RSS and CPU per request per flag set and profile,
 * each as a ratio to the run without flags in the same round, and the recommended set.
 *
 *     deno run -A bench/v8_flags.ts                                  # about 15 minutes
 *     deno run -A bench/v8_flags.ts --targets deno,deno-fetch --rounds 2 --duration 5s
 *     deno run -A bench/v8_flags.ts --sets "none;--max-semi-space-size=2"
 *     deno run -A bench/v8_flags.ts --from a/v8_flags.json,b/v8_flags.json   # pool two runs
 *
 * Every set runs with `--trace-gc` too, so that bench/run.ts counts the main thread's GC time
 * during each run: on this shared 2-core machine whole-process CPU per request moves by 10-30%
 * between runs, while GC time per request is what a heap flag changes, measured to a fraction
 * of a microsecond. The recommendation is the set with the lowest peak RSS (largest of the
 * profiles' medians) whose GC cost stays within `--cpu-tolerance` (default 3%) of no flags' CPU
 * per request in every profile; the no-flags run wins ties.
 */

import { parseArgs } from "node:util";
import { median, type RunInfo, type RunRecord } from "./report.ts";
import { parseSeconds, parseV8FlagSets } from "./run.ts";
import { PROJECT_DIR } from "./targets.ts";

/** The flag sets measured by default: semi-space sizes, and flags that might matter. */
export const DEFAULT_SETS = [
  "none",
  "--max-semi-space-size=1",
  "--max-semi-space-size=2",
  "--max-semi-space-size=4",
  "--max-semi-space-size=8",
  // The old generation's cap: expected to change nothing under load (RSS is young generation).
  "--max-old-space-size=64",
  // GC on the main thread only: the balancer is pinned to one core anyway.
  "--single-threaded-gc",
  "--max-semi-space-size=2,--single-threaded-gc",
  "--optimize-for-size",
].join(";");

const USAGE = `Usage: deno run -A bench/v8_flags.ts [options]

  --targets LIST       Deno targets to measure (default deno; e.g. deno,deno-fetch)
  --profiles LIST      profiles (default small,c2000)
  --sets SETS          V8 flag sets, as bench/run.ts --v8-flags takes them
                       (default: ${DEFAULT_SETS})
  --rounds N           interleaved rounds (default 3)
  --duration DUR       measured time of each run (default 5s)
  --cpu-tolerance PCT  CPU per request allowed above no flags (default 3)
  --out DIR            where v8_flags.{md,json} go (default bench/results)
  --from FILES         no new run: report from earlier runs' JSON (comma-separated
                       v8_flags.json or latest.json files), their rounds pooled
  --help               this text`;

/** One (target, flag set, profile) cell: medians over rounds. */
export interface FlagRow {
  /** Base target id (`deno`), without the flags. */
  target: string;
  /** V8 flags, "" for none. */
  flags: string;
  profile: string;
  rounds: number;
  peakRssMiB: number | null;
  cpuUsPerRequest: number | null;
  /** Main-thread GC time per request (µs), when the runs had `--trace-gc`. */
  gcUsPerRequest: number | null;
  requestsPerSecond: number | null;
  /** Median over rounds of this / no flags in the same round. */
  rssVsNone: number | null;
  cpuVsNone: number | null;
  /**
   * Median over rounds of 1 + (this GC time - no flags' GC time) / no flags' CPU, per request,
   * in the same round: what the flags cost, without the noise of whole-process CPU time.
   */
  gcCostVsNone: number | null;
  /** This / no flags of CPU per request in each round, in round order (to judge the noise). */
  cpuRatios: number[];
  errors: number;
  timeouts: number;
}

/** The flag that makes bench/run.ts count collections; not part of a set's name. */
const TRACE_GC = "--trace-gc";

/** Splits a variant id `deno[--a=1,--b]` into its base id and flags (without `--trace-gc`). */
export function splitVariant(id: string): { target: string; flags: string } {
  const match = /^([^[]+)\[(.*)\]$/.exec(id);
  if (match === null) return { target: id, flags: "" };
  return { target: match[1], flags: match[2].split(",").filter((f) => f !== TRACE_GC).join(",") };
}

/** Medians per (target, flags, profile) and same-round ratios to the target without flags. */
export function flagRows(records: RunRecord[]): FlagRow[] {
  const rows: FlagRow[] = [];
  const named = records.map((r) => ({ r, ...splitVariant(r.target) }));
  const keys = [...new Set(named.map((n) => `${n.target}\n${n.flags}\n${n.r.profile}`))];
  for (const key of keys) {
    const [target, flags, profile] = key.split("\n");
    if (target === "nginx" || target === "direct") continue;
    const ok = named.filter((n) =>
      n.r.ok && n.target === target && n.flags === flags && n.r.profile === profile
    ).map((n) => n.r).toSorted((a, b) => a.round - b.round);
    const base = (r: RunRecord) =>
      named.find((n) =>
        n.r.ok && n.target === target && n.flags === "" && n.r.profile === profile &&
        n.r.round === r.round
      )?.r;
    const paired = (f: (r: RunRecord, b: RunRecord) => number | null) =>
      ok.flatMap((r) => {
        const b = base(r);
        const v = b === undefined ? null : f(r, b);
        return v === null || !Number.isFinite(v) ? [] : [v];
      });
    const ratios = (pick: (r: RunRecord) => number | null) =>
      paired((r, b) => {
        const [x, y] = [pick(r), pick(b)];
        return x === null || y === null || y === 0 ? null : x / y;
      });
    const values = (pick: (r: RunRecord) => number | null) =>
      median(ok.flatMap((r) => pick(r) ?? []));
    const gc = (r: RunRecord) => r.gcUsPerRequest ?? null;
    rows.push({
      target,
      flags,
      profile,
      rounds: ok.length,
      peakRssMiB: values((r) => r.peakRssMiB),
      cpuUsPerRequest: values((r) => r.cpuUsPerRequest),
      gcUsPerRequest: values(gc),
      requestsPerSecond: values((r) => r.requestsPerSecond),
      rssVsNone: median(ratios((r) => r.peakRssMiB)),
      cpuVsNone: median(ratios((r) => r.cpuUsPerRequest)),
      gcCostVsNone: median(paired((r, b) => {
        const [x, y, cpu] = [gc(r), gc(b), b.cpuUsPerRequest];
        return x === null || y === null || !cpu ? null : 1 + (x - y) / cpu;
      })),
      cpuRatios: ratios((r) => r.cpuUsPerRequest),
      errors: ok.reduce((n, r) => n + r.errorCount - r.errors.timeout, 0),
      timeouts: ok.reduce((n, r) => n + r.errors.timeout, 0),
    });
  }
  return rows;
}

/** A set's cost: from GC time when it was traced, else from CPU per request. */
const cost = (r: FlagRow) => r.gcCostVsNone ?? r.cpuVsNone;

/**
 * The flag set of `target` with the lowest peak RSS (the largest over profiles) among those
 * that cost at most `1 + tolerance` times no flags' CPU per request in every profile; the cost
 * is measured by GC time when the runs traced it (see {@linkcode FlagRow.gcCostVsNone}), else
 * by CPU per request. "" (no flags) when nothing beats it.
 */
export function recommend(rows: FlagRow[], target: string, tolerance: number): string {
  const of = (flags: string) => rows.filter((r) => r.target === target && r.flags === flags);
  const sets = [...new Set(rows.filter((r) => r.target === target).map((r) => r.flags))];
  const worstRss = (flags: string) => Math.max(...of(flags).map((r) => r.peakRssMiB ?? Infinity));
  const acceptable = sets.filter((flags) =>
    flags === "" || of(flags).every((r) => cost(r) !== null && cost(r)! <= 1 + tolerance)
  );
  return acceptable.reduce((best, flags) => worstRss(flags) < worstRss(best) ? flags : best, "");
}

const fmt = (n: number | null, digits = 1, unit = "") =>
  n === null ? "–" : `${n.toFixed(digits)}${unit}`;
const pct = (r: number | null) =>
  r === null ? "–" : `${r >= 1 ? "+" : ""}${((r - 1) * 100).toFixed(0)}%`;

/** The Markdown report: one table per target, the recommendation under it. */
export function flagsMarkdown(
  rows: FlagRow[],
  context: { title: string; run: string; tolerance: number; profileLabels: Map<string, string> },
): string {
  const lines = [`# ${context.title}`, "", context.run, ""];
  for (const target of [...new Set(rows.map((r) => r.target))]) {
    const profiles = [...new Set(rows.filter((r) => r.target === target).map((r) => r.profile))];
    lines.push(`## ${target}`, "");
    lines.push(
      `| V8 flags | ${
        profiles.map((p) => {
          const l = context.profileLabels.get(p) ?? p;
          return `${l}: peak RSS | vs none | CPU per request | vs none | GC per request | ` +
            "GC cost vs none | requests/s | errors";
        }).join(" | ")
      } |`,
      `| --- |${
        profiles.map(() => " ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |").join("")
      }`,
    );
    for (const flags of [...new Set(rows.filter((r) => r.target === target).map((r) => r.flags))]) {
      const cells = profiles.map((p) => {
        const r = rows.find((x) => x.target === target && x.flags === flags && x.profile === p);
        if (r === undefined || r.rounds === 0) return "failed | | | | | | |";
        const errors = r.timeouts > 0 ? `${r.errors} (+${r.timeouts} timeouts)` : `${r.errors}`;
        return `${fmt(r.peakRssMiB, 1, " MiB")} | ${pct(r.rssVsNone)} | ` +
          `${fmt(r.cpuUsPerRequest, 1, " µs")} | ${pct(r.cpuVsNone)} | ` +
          `${fmt(r.gcUsPerRequest, 2, " µs")} | ${pct(r.gcCostVsNone)} | ` +
          `${fmt(r.requestsPerSecond, 0)} | ${errors}`;
      });
      lines.push(`| ${flags === "" ? "none" : `\`${flags}\``} | ${cells.join(" | ")} |`);
    }
    lines.push(
      "",
      "CPU per request as a ratio to no flags in each round (the spread shows the machine's noise):",
      "",
      `| V8 flags | ${profiles.map((p) => context.profileLabels.get(p) ?? p).join(" | ")} |`,
      `| --- |${profiles.map(() => " --- |").join("")}`,
    );
    for (const flags of [...new Set(rows.filter((r) => r.target === target).map((r) => r.flags))]) {
      if (flags === "") continue;
      const cells = profiles.map((p) =>
        rows.find((x) => x.target === target && x.flags === flags && x.profile === p)?.cpuRatios
          .map((r) => r.toFixed(2)).join(" / ") ?? "–"
      );
      lines.push(`| \`${flags}\` | ${cells.join(" | ")} |`);
    }
    const best = recommend(rows, target, context.tolerance);
    lines.push(
      "",
      `**Recommended for ${target}:** ${
        best === "" ? "no flags" : `\`--v8-flags=${best}\``
      } (lowest peak RSS whose cost is within ${
        Math.round(context.tolerance * 100)
      }% of no flags' CPU per request in every profile, same-round medians; the cost is the ` +
        "GC cost when the runs traced GC, else the CPU per request).",
      "",
    );
  }
  return lines.join("\n");
}

/** Runs the study; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      targets: { type: "string", default: "deno" },
      profiles: { type: "string", default: "small,c2000" },
      sets: { type: "string", default: DEFAULT_SETS },
      rounds: { type: "string", default: "3" },
      duration: { type: "string", default: "5s" },
      "cpu-tolerance": { type: "string", default: "3" },
      out: { type: "string", default: new URL("results", import.meta.url).pathname },
      from: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const tolerance = Number(values["cpu-tolerance"]) / 100;
  // --trace-gc on every set (none included) lets bench/run.ts count GC time per request.
  const sets = parseV8FlagSets(values.sets!).map((s) => s === "" ? TRACE_GC : `${s},${TRACE_GC}`)
    .join(";");
  const duration = parseSeconds(values.duration!, "--duration");
  const made = "`deno run -A bench/v8_flags.ts" +
    `${args.map((a) => /^[\w=.,/-]+$/.test(a) ? ` ${a}` : ` "${a}"`).join("")}\``;
  if (values.from !== undefined) {
    const sources = await Promise.all(
      values.from.split(",").map(async (f) => JSON.parse(await Deno.readTextFile(f))),
    );
    await writeReport(sources, made, tolerance, values.out!);
    return 0;
  }
  const tmp = await Deno.makeTempDir({ prefix: "lb-v8-flags-" });
  try {
    // nginx runs in the same rounds as a yardstick for the machine's noise.
    const bench = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "bench/run.ts",
        "--snapshot",
        "--targets",
        `nginx,${values.targets}`,
        "--profiles",
        values.profiles!,
        // The = form: a set may start with a dash, which parseArgs would take for an option.
        `--v8-flags=${sets}`,
        "--rounds",
        values.rounds!,
        "--duration",
        `${duration}s`,
        "--out",
        tmp,
      ],
      cwd: PROJECT_DIR,
      stdout: "null",
      stderr: "inherit",
    }).output();
    await writeReport(
      [JSON.parse(await Deno.readTextFile(`${tmp}/latest.json`))],
      made,
      tolerance,
      values.out!,
    );
    return bench.code;
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

/** What bench/run.ts writes to latest.json (and this script to v8_flags.json), as read here. */
interface RunFile {
  machine: { cpuModel: string; cores: number; deno: string };
  info: Pick<
    RunInfo,
    | "startedAt"
    | "finishedAt"
    | "rounds"
    | "durationSeconds"
    | "warmupSeconds"
    | "balancerCpus"
    | "revision"
    | "profiles"
  >;
  runs: RunRecord[];
  /** In a v8_flags.json written from several runs: their infos. */
  sources?: RunFile["info"][];
}

/**
 * Writes v8_flags.{md,json} from one or more runs; the rounds of later runs are numbered after
 * those of earlier ones, so that every same-round ratio stays within one run.
 */
async function writeReport(files: RunFile[], made: string, tolerance: number, out: string) {
  const records: RunRecord[] = [];
  const infos: RunFile["info"][] = [];
  for (const file of files) {
    const offset = records.reduce((max, r) => Math.max(max, r.round), 0);
    records.push(...file.runs.map((r) => ({ ...r, round: r.round + offset })));
    infos.push(...(file.sources ?? [file.info]));
  }
  const rows = flagRows(records);
  const machine = files[0].machine;
  const describeRun = (info: RunFile["info"]) =>
    `${info.startedAt} to ${info.finishedAt}, ${info.rounds} round(s), balancer code ` +
    info.revision;
  const first = infos[0];
  const md = flagsMarkdown(rows, {
    title: "V8 flags: peak RSS and CPU per request",
    run: `**Runs:** ${infos.map(describeRun).join("; ")}. Rounds of ${first.durationSeconds} s ` +
      `after a ${first.warmupSeconds} s warm-up, interleaved, each variant started fresh per ` +
      `run, pinned to CPU ${first.balancerCpus}; machine: ${machine.cpuModel}, ${machine.cores} ` +
      `cores, Deno ${machine.deno}. Figures are medians over all rounds; "vs none" is the ` +
      `median of the same-round ratios to the run without flags. Peak RSS is VmHWM. Made by ` +
      `${made}. nginx in the same rounds: ${nginxLine(records)}.`,
    tolerance,
    profileLabels: new Map(infos.flatMap((i) => i.profiles.map((p) => [p.id, p.label]))),
  });
  await Deno.mkdir(out, { recursive: true });
  await Deno.writeTextFile(`${out}/v8_flags.md`, md);
  await Deno.writeTextFile(
    `${out}/v8_flags.json`,
    JSON.stringify({ machine, info: first, sources: infos, rows, runs: records }, null, 2) + "\n",
  );
  await new Deno.Command(Deno.execPath(), {
    args: ["fmt", `${out}/v8_flags.md`, `${out}/v8_flags.json`],
    cwd: out,
    stdout: "null",
    stderr: "null",
  }).output();
  console.log(await Deno.readTextFile(`${out}/v8_flags.md`));
}

/** nginx's CPU per request per profile, to show how noisy the machine was. */
function nginxLine(records: RunRecord[]): string {
  const profiles = [...new Set(records.map((r) => r.profile))];
  return profiles.map((p) => {
    const cpu = records.filter((r) => r.ok && r.target === "nginx" && r.profile === p)
      .map((r) => r.cpuUsPerRequest!);
    return `${p} ${cpu.map((c) => c.toFixed(1)).join(" / ")} µs per request`;
  }).join("; ");
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
