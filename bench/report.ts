/**
 * @module
 * Turns the runs into the summary (medians over rounds, ratios to nginx from the same round),
 * the Markdown tables and the SVG chart. Pure functions: everything they show comes from the
 * records passed in.
 */

import type { MachineInfo } from "./system.ts";
import type { WrkResult } from "./wrk.ts";

/** One measured (round, profile, target) run: what wrk saw, and what the harness measured. */
export interface RunRecord extends Omit<WrkResult, "bytes"> {
  round: number;
  profile: string;
  target: string;
  /** False when the target failed to start or wrk failed; `error` says why. */
  ok: boolean;
  error?: string;
  /** wrk's bytes received per answer (headers included). */
  responseBytes: number;
  /** gzip profile: whether a client got the backend's compressed bytes unchanged; else null. */
  gzipPassThrough: boolean | null;
  /** gzip profile: what that client received. */
  gzipDetail?: string;
  /** CPU seconds of the balancer's process tree during the run; null for `direct`. */
  cpuSeconds: number | null;
  /** `cpuSeconds` per request in microseconds; null for `direct`. */
  cpuUsPerRequest: number | null;
  /** Share of `cpuSeconds` spent in the kernel (stime), percent. */
  cpuSystemPercent: number | null;
  /**
   * Main-thread garbage-collection time per request (µs) from `--trace-gc` lines in the
   * target's log; null unless it ran with `--v8-flags=--trace-gc`.
   */
  gcUsPerRequest?: number | null;
  /** Young and full collections during the run, with `--trace-gc`. */
  gcCollections?: { young: number; full: number } | null;
  /** Sum of VmHWM over the balancer's serving processes (MiB); null for `direct`. */
  peakRssMiB: number | null;
  /** Connections the two backends accepted after the first second of the run (stub_status). */
  backendConnections: number;
  /** The same over the whole measured run, ramp-up included. */
  backendConnectionsWholeRun: number;
  /** CPU seconds of both nginx backends per request (µs): the load side's share. */
  backendCpuUsPerRequest: number;
  /** Busy percentage of each CPU during the run (from /proc/stat). */
  cpuBusyPercent: number[];
  /** Busy time of the balancer's core per request (µs), when pinned to one core. */
  balancerCoreUsPerRequest: number | null;
}

/** A (profile, target) cell: medians over the rounds that succeeded. */
export interface Summary {
  profile: string;
  target: string;
  rounds: number;
  failures: number;
  requestsPerSecond: number | null;
  /** (max - min) / median of requests/s over rounds, percent. */
  rpsSpreadPercent: number | null;
  p50Us: number | null;
  p99Us: number | null;
  errorCount: number;
  /** wrk timeouts summed over rounds (also counted in `errorCount`). */
  timeouts: number;
  /** Median of wrk's bytes per answer. */
  responseBytes: number | null;
  /** True when every round's check passed, false when one failed, null when not checked. */
  gzipPassThrough: boolean | null;
  /** The check's detail from the first round that failed it, else from the first round. */
  gzipDetail: string | null;
  cpuUsPerRequest: number | null;
  cpuSpreadPercent: number | null;
  /** Median kernel share of the CPU time, percent. */
  cpuSystemPercent: number | null;
  /** Median busy time of the balancer's core per request (µs). */
  balancerCoreUsPerRequest: number | null;
  /** Largest peak RSS over rounds. */
  peakRssMiB: number | null;
  /** Largest count over rounds. */
  backendConnections: number | null;
  /** Median over rounds of (this / nginx) in the same round. */
  rpsVsNginx: number | null;
  cpuVsNginx: number | null;
  /** Median over rounds of (this p50 - direct p50) in the same round. */
  addedP50Us: number | null;
  /** Median over rounds of this added p50 / nginx's added p50 in the same round. */
  addedP50VsNginx: number | null;
  /** Highest busy percentage seen per CPU. */
  cpuBusyPercent: number[];
}

/** Describes the run for the report. */
export interface RunInfo {
  startedAt: string;
  finishedAt: string;
  rounds: number;
  durationSeconds: number;
  warmupSeconds: number;
  balancerCpus: string;
  loadCpus: string;
  profiles: { id: string; label: string }[];
  targets: { id: string; label: string; description: string; pinned: boolean }[];
  notes: string[];
  /** Commit of the balancer measured, and whether lib/ or main.ts had uncommitted changes. */
  revision: string;
  /** 1-minute load average when the run started and ended (other work on the machine). */
  loadAverage: [number, number];
}

export function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function spread(values: number[]): number | null {
  const m = median(values);
  if (m === null || m === 0 || values.length < 2) return null;
  return (100 * (Math.max(...values) - Math.min(...values))) / m;
}

/** Summarises every (profile, target) over rounds. */
export function summarise(records: RunRecord[], info: RunInfo): Summary[] {
  const find = (round: number, profile: string, target: string) =>
    records.find((r) => r.ok && r.round === round && r.profile === profile && r.target === target);
  const out: Summary[] = [];
  for (const profile of info.profiles) {
    for (const target of info.targets) {
      const all = records.filter((r) => r.profile === profile.id && r.target === target.id);
      const ok = all.filter((r) => r.ok);
      const ratios = (pick: (r: RunRecord) => number | null) =>
        ok.flatMap((r) => {
          const base = find(r.round, profile.id, "nginx");
          const a = pick(r);
          const b = base === undefined ? null : pick(base);
          return a === null || b === null || b === 0 ? [] : [a / b];
        });
      const addedIn = (r: RunRecord | undefined) => {
        const base = r && find(r.round, profile.id, "direct");
        return r === undefined || base === undefined ? null : r.latencyUs.p50 - base.latencyUs.p50;
      };
      const added = ok.flatMap((r) => addedIn(r) ?? []);
      const addedRatios = ok.flatMap((r) => {
        const [a, b] = [addedIn(r), addedIn(find(r.round, profile.id, "nginx"))];
        return a === null || b === null || b <= 0 ? [] : [a / b];
      });
      const checked = ok.filter((r) => r.gzipPassThrough !== null);
      const failedCheck = checked.find((r) => r.gzipPassThrough === false);
      const cpu = ok.flatMap((r) => r.cpuUsPerRequest === null ? [] : [r.cpuUsPerRequest]);
      const rss = ok.flatMap((r) => r.peakRssMiB === null ? [] : [r.peakRssMiB]);
      const rps = ok.map((r) => r.requestsPerSecond);
      out.push({
        profile: profile.id,
        target: target.id,
        rounds: ok.length,
        failures: all.length - ok.length,
        requestsPerSecond: median(rps),
        rpsSpreadPercent: spread(rps),
        p50Us: median(ok.map((r) => r.latencyUs.p50)),
        p99Us: median(ok.map((r) => r.latencyUs.p99)),
        errorCount: ok.reduce((sum, r) => sum + r.errorCount, 0),
        timeouts: ok.reduce((sum, r) => sum + r.errors.timeout, 0),
        responseBytes: median(ok.map((r) => r.responseBytes)),
        gzipPassThrough: checked.length === 0 ? null : failedCheck === undefined,
        gzipDetail: (failedCheck ?? checked[0])?.gzipDetail ?? null,
        cpuUsPerRequest: median(cpu),
        cpuSpreadPercent: spread(cpu),
        balancerCoreUsPerRequest: median(
          ok.flatMap((r) =>
            r.balancerCoreUsPerRequest === null ? [] : [r.balancerCoreUsPerRequest]
          ),
        ),
        cpuSystemPercent: median(
          ok.flatMap((r) => r.cpuSystemPercent === null ? [] : [r.cpuSystemPercent]),
        ),
        peakRssMiB: rss.length === 0 ? null : Math.max(...rss),
        backendConnections: ok.length === 0
          ? null
          : Math.max(...ok.map((r) => r.backendConnections)),
        rpsVsNginx: target.id === "nginx" ? null : median(ratios((r) => r.requestsPerSecond)),
        cpuVsNginx: target.id === "nginx" ? null : median(ratios((r) => r.cpuUsPerRequest)),
        addedP50Us: target.id === "direct" ? null : median(added),
        addedP50VsNginx: target.id === "direct" || target.id === "nginx"
          ? null
          : median(addedRatios),
        cpuBusyPercent: ok.reduce<number[]>(
          (max, r) => r.cpuBusyPercent.map((v, i) => Math.max(v, max[i] ?? 0)),
          [],
        ),
      });
    }
  }
  return out;
}

const fmtInt = (n: number) => Math.round(n).toLocaleString("en-US");

function fmtUs(us: number | null): string {
  if (us === null) return "–";
  if (Math.abs(us) < 1000) return `${Math.round(us)} µs`;
  return `${(us / 1000).toFixed(us < 10_000 ? 2 : 1)} ms`;
}

function fmtRatio(r: number | null): string {
  return r === null ? "–" : `×${r.toFixed(2)}`;
}

function fmtSpread(p: number | null): string {
  return p === null ? "" : ` ±${Math.round(p / 2)}%`;
}

function fmtCpu(us: number | null): string {
  return us === null ? "–" : `${us.toFixed(1)} µs`;
}

function fmtSys(p: number | null): string {
  return p === null ? "" : ` (${Math.round(p)}% sys)`;
}

function fmtMiB(m: number | null): string {
  return m === null ? "–" : `${m.toFixed(1)} MiB`;
}

/** The machine in one paragraph. */
export function describe(machine: MachineInfo): string {
  return `${machine.cpuModel}, ${machine.cores} cores, ${machine.memoryGiB} GiB RAM, ` +
    `Linux ${machine.kernel}; Deno ${machine.deno}, nginx ${machine.nginx}, ` +
    `HAProxy ${machine.haproxy}, wrk ${machine.wrk}`;
}

/** The Markdown report: the issue's summary table, then one table per profile, then notes. */
export function markdown(
  summaries: Summary[],
  info: RunInfo,
  machine: MachineInfo,
): string {
  const label = (id: string) => info.targets.find((t) => t.id === id)?.label ?? id;
  const lines: string[] = [];
  lines.push("# Load balancer benchmark", "");
  lines.push(`**Machine:** ${describe(machine)}.`, "");
  lines.push(
    `**Run:** ${info.startedAt} to ${info.finishedAt}; ${info.rounds} round(s), targets ` +
      `interleaved; each run ${info.durationSeconds} s after a ${info.warmupSeconds} s warm-up, ` +
      `every target started fresh per run. Balancers pinned to CPU ${info.balancerCpus}, wrk ` +
      `(1 thread) and the two nginx backends (1 worker each) on CPU ${info.loadCpus}. Figures ` +
      `are medians over rounds; ±x% is half the spread between rounds; ratios compare with nginx ` +
      `in the same round. Balancer code: ${info.revision}. Load average ` +
      `${info.loadAverage[0].toFixed(2)} at the start, ${
        info.loadAverage[1].toFixed(2)
      } at the end.`,
    "",
  );

  const small = summaries.filter((s) => s.profile === "small");
  const c1 = summaries.filter((s) => s.profile === "small-c1");
  if (small.length > 0) {
    lines.push(`## Summary: small GET, 50 connections`, "");
    lines.push(
      "| target | CPU per request | vs nginx | requests/s | vs nginx | added latency at 1 connection (p50) | peak RSS | errors |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const s of small) {
      const one = c1.find((c) => c.target === s.target);
      const added = s.target === "direct"
        ? `(p50 ${fmtUs(one?.p50Us ?? null)})`
        : one?.addedP50Us == null
        ? "–"
        : `${one.addedP50Us >= 0 ? "+" : ""}${fmtUs(one.addedP50Us)}`;
      lines.push(
        `| ${label(s.target)} | ${fmtCpu(s.cpuUsPerRequest)}${fmtSpread(s.cpuSpreadPercent)} | ` +
          `${fmtRatio(s.cpuVsNginx)} | ${cell(s.requestsPerSecond, fmtInt)}` +
          `${fmtSpread(s.rpsSpreadPercent)} | ${fmtRatio(s.rpsVsNginx)} | ${added} | ` +
          `${fmtMiB(s.peakRssMiB)} | ${s.rounds === 0 ? "failed" : fmtInt(s.errorCount)} |`,
      );
    }
    lines.push("");
  }

  lines.push(...ratioTable(summaries, label));
  lines.push(...manyConnectionsTable(summaries, label));

  for (const profile of info.profiles) {
    const rows = summaries.filter((s) => s.profile === profile.id);
    const gzip = rows.some((s) => s.gzipPassThrough !== null);
    lines.push(`## ${profile.label}`, "");
    lines.push(
      "| target | requests/s | vs nginx | p50 | p99 | errors | CPU per request | vs nginx | peak RSS | backend connections opened (after 1 s) | CPU busy (per core) |" +
        (gzip ? " compressed bytes passed through | bytes per response |" : ""),
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |" +
        (gzip ? " --- | ---: |" : ""),
    );
    for (const s of rows) {
      if (s.rounds === 0) {
        lines.push(`| ${label(s.target)} | failed | | | | | | | | | |${gzip ? " | |" : ""}`);
        continue;
      }
      lines.push(
        `| ${label(s.target)} | ${cell(s.requestsPerSecond, fmtInt)}` +
          `${fmtSpread(s.rpsSpreadPercent)} | ${fmtRatio(s.rpsVsNginx)} | ${fmtUs(s.p50Us)} | ` +
          `${fmtUs(s.p99Us)} | ${fmtErrors(s)} | ${fmtCpu(s.cpuUsPerRequest)}` +
          `${fmtSpread(s.cpuSpreadPercent)}${fmtSys(s.cpuSystemPercent)} | ` +
          `${fmtRatio(s.cpuVsNginx)} | ${fmtMiB(s.peakRssMiB)} | ${
            s.backendConnections ?? "–"
          } | ` +
          `${s.cpuBusyPercent.map((p) => `${Math.round(p)}%`).join(" / ")} |` +
          (gzip ? ` ${fmtPassThrough(s)} | ${cell(s.responseBytes, fmtInt)} |` : ""),
      );
    }
    lines.push("");
  }

  lines.push("## How to read this", "");
  for (const note of info.notes) lines.push(`- ${note}`);
  lines.push("");
  lines.push("| target | how it runs |", "| --- | --- |");
  for (const t of info.targets) lines.push(`| ${t.label} | ${t.description} |`);
  lines.push("");
  return lines.join("\n");
}

/** Errors, with how many of them were wrk timeouts. */
function fmtErrors(s: Summary): string {
  return s.timeouts === 0
    ? fmtInt(s.errorCount)
    : `${fmtInt(s.errorCount)} (${fmtInt(s.timeouts)} timeouts)`;
}

function fmtPassThrough(s: Summary): string {
  if (s.gzipPassThrough === null) return "–";
  return s.gzipPassThrough ? "yes" : `**no**: ${s.gzipDetail ?? ""}`;
}

/**
 * Issue 12's targets in one table: each profile's figure as a ratio to nginx in the same round
 * (CPU per request; requests/s at 2,000 connections), plus the gzip check, timeouts, the
 * largest peak RSS of any profile and all errors but the 2,000-connection timeouts.
 */
function ratioTable(summaries: Summary[], label: (id: string) => string): string[] {
  const get = (profile: string, target: string) =>
    summaries.find((s) => s.profile === profile && s.target === target);
  const profiles = new Set(summaries.map((s) => s.profile));
  if (!profiles.has("small") || !profiles.has("c2000")) return [];
  const targets = [...new Set(summaries.map((s) => s.target))].filter((t) =>
    t !== "direct" && t !== "nginx"
  );
  const nginxTimeouts = get("c2000", "nginx")?.timeouts;
  const lines = [
    "## Summary: ratios to nginx (same round, medians)",
    "",
    "| target | small GET CPU | added p50 at 1 connection | 64 KiB CPU | 1 MiB upload CPU | gzip CPU | gzip bytes passed through | 2,000 conns requests/s | 2,000 conns timeouts (nginx: " +
    `${nginxTimeouts ?? "–"}) | largest peak RSS | errors (besides 2,000-conn timeouts) |`,
    "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
  ];
  for (const target of targets) {
    const at = (profile: string) => get(profile, target);
    const rss = summaries.filter((s) => s.target === target && s.peakRssMiB !== null)
      .map((s) => s.peakRssMiB!);
    const errors = summaries.filter((s) => s.target === target).reduce(
      (sum, s) => sum + s.errorCount - (s.profile === "c2000" ? s.timeouts : 0),
      0,
    );
    const gzip = at("gzip");
    lines.push(
      `| ${label(target)} | ${fmtRatio(at("small")?.cpuVsNginx ?? null)} | ` +
        `${fmtRatio(at("small-c1")?.addedP50VsNginx ?? null)} | ` +
        `${fmtRatio(at("64k")?.cpuVsNginx ?? null)} | ` +
        `${fmtRatio(at("upload")?.cpuVsNginx ?? null)} | ` +
        `${fmtRatio(gzip?.cpuVsNginx ?? null)} | ` +
        `${gzip?.gzipPassThrough == null ? "–" : gzip.gzipPassThrough ? "yes" : "**no**"} | ` +
        `${fmtRatio(at("c2000")?.rpsVsNginx ?? null)} | ${
          at("c2000")?.rounds ? fmtInt(at("c2000")!.timeouts) : "–"
        } | ${fmtMiB(rss.length === 0 ? null : Math.max(...rss))} | ${fmtInt(errors)} |`,
    );
  }
  lines.push(
    "",
    "Timeouts and errors are totals over rounds; the other figures are medians. A ratio below " +
      "1 is better than nginx for requests/s only.",
    "",
  );
  return lines;
}

/** The 2,000-connection profile on its own: what the issue's targets name. */
function manyConnectionsTable(summaries: Summary[], label: (id: string) => string): string[] {
  const rows = summaries.filter((s) => s.profile === "c2000");
  if (rows.length === 0) return [];
  const lines = [
    "## Summary: small GET, 2,000 connections",
    "",
    "| target | requests/s | vs nginx | wrk timeouts | other errors | p99 | peak RSS |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const s of rows) {
    lines.push(
      s.rounds === 0
        ? `| ${label(s.target)} | failed | | | | | |`
        : `| ${label(s.target)} | ${cell(s.requestsPerSecond, fmtInt)}${
          fmtSpread(s.rpsSpreadPercent)
        } | ${fmtRatio(s.rpsVsNginx)} | ${fmtInt(s.timeouts)} | ${
          fmtInt(s.errorCount - s.timeouts)
        } | ${fmtUs(s.p99Us)} | ${fmtMiB(s.peakRssMiB)} |`,
    );
  }
  lines.push("");
  return lines;
}

function cell(value: number | null, format: (n: number) => string): string {
  return value === null ? "–" : format(value);
}

const COLORS: Record<string, string> = {
  direct: "#9e9e9e",
  nginx: "#2e7d32",
  haproxy: "#1565c0",
  go: "#00838f",
  deno: "#ef6c00",
  "deno-fetch": "#8e24aa",
  "deno-native-front": "#00897b",
  "deno-workers": "#ffa726",
  "deno-minimal": "#bcaaa4",
  "deno-minimal-raw": "#ce93d8",
  "deno-minimal-listen": "#80cbc4",
  "deno-layer-front": "#b2dfdb",
  "deno-layer-mini": "#4db6ac",
  "deno-layer-transport": "#26a69a",
};

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * Two bar panels for one profile: CPU per request (lower is better) and requests/s (higher is
 * better), one bar per target, drawn as plain SVG.
 */
export function svgChart(
  summaries: Summary[],
  info: RunInfo,
  machine: MachineInfo,
  profile = "small",
): string {
  const rows = summaries.filter((s) => s.profile === profile && s.rounds > 0);
  const label = (id: string) => info.targets.find((t) => t.id === id)?.label ?? id;
  const profileLabel = info.profiles.find((p) => p.id === profile)?.label ?? profile;
  // Labels are right-aligned before the bars: wide enough for the longest (~7 px a character
  // at 13 px), or long target names run off the left edge.
  const longest = Math.max(0, ...rows.map((s) => label(s.target).length));
  const barH = 26, gap = 10, labelW = Math.max(200, Math.ceil(longest * 7.2) + 12);
  const panelW = 330, top = 78, left = 16;
  const height = top + rows.length * (barH + gap) + 44;
  const width = left + labelW + 2 * panelW + 60;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="13">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="${left}" y="24" font-size="16" font-weight="bold">` +
      `${escapeXml(`Load balancer benchmark: ${profileLabel}`)}</text>`,
    `<text x="${left}" y="44" font-size="11" fill="#555">` +
      `${escapeXml(describe(machine))}</text>`,
  );
  const panels = [
    {
      title: "CPU per request (µs, lower is better)",
      value: (s: Summary) => s.cpuUsPerRequest,
      text: (v: number) => `${v.toFixed(1)} µs`,
    },
    {
      title: "requests/s (higher is better)",
      value: (s: Summary) => s.requestsPerSecond,
      text: (v: number) => fmtInt(v),
    },
  ];
  panels.forEach((panel, p) => {
    const x0 = left + labelW + p * (panelW + 30);
    const max = Math.max(1, ...rows.map((s) => panel.value(s) ?? 0));
    const scale = (panelW - 80) / max;
    parts.push(
      `<text x="${x0}" y="${top - 12}" font-weight="bold">${escapeXml(panel.title)}</text>`,
      `<line x1="${x0}" y1="${top - 4}" x2="${x0}" y2="${
        top + rows.length * (barH + gap) - gap + 4
      }" stroke="#333"/>`,
    );
    rows.forEach((s, i) => {
      const y = top + i * (barH + gap);
      const v = panel.value(s);
      if (p === 0) {
        parts.push(
          `<text x="${left + labelW - 8}" y="${y + barH / 2 + 4}" text-anchor="end">` +
            `${escapeXml(label(s.target))}</text>`,
        );
      }
      if (v === null) {
        parts.push(
          `<text x="${x0 + 6}" y="${y + barH / 2 + 4}" fill="#777">n/a (no balancer)</text>`,
        );
        return;
      }
      const w = Math.max(1, v * scale);
      parts.push(
        `<rect x="${x0}" y="${y}" width="${w.toFixed(1)}" height="${barH}" ` +
          `fill="${COLORS[s.target] ?? "#607d8b"}"/>`,
        `<text x="${(x0 + w + 6).toFixed(1)}" y="${y + barH / 2 + 4}">${
          escapeXml(panel.text(v))
        }</text>`,
      );
    });
  });
  parts.push(
    `<text x="${left}" y="${height - 14}" font-size="11" fill="#555">${
      escapeXml(
        `Medians of ${info.rounds} interleaved round(s), ${info.durationSeconds} s each; ` +
          `balancers pinned to CPU ${info.balancerCpus}, wrk and backends on CPU ${info.loadCpus}. ` +
          info.finishedAt,
      )
    }</text>`,
    `</svg>`,
  );
  return parts.join("\n") + "\n";
}
