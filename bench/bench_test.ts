/**
 * @module
 * Tests of the harness's pure parts: parsing wrk's summary and /proc lines, options, the
 * summary's medians and same-round ratios, and the Markdown and SVG output.
 * Run with `deno test bench/bench_test.ts` (no network, no processes).
 */

import assert from "node:assert/strict";
import { parseWrkOutput } from "./wrk.ts";
import { parseStat } from "./system.ts";
import { parseOptions, parseSeconds } from "./run.ts";
import { markdown, median, type RunInfo, type RunRecord, summarise, svgChart } from "./report.ts";
import { analyse, type CpuProfile } from "./cpu_profile.ts";

Deno.test("parseWrkOutput() reads the done() hook's JSON line and totals the errors", () => {
  const out = parseWrkOutput(
    "Running 5s test @ http://127.0.0.1:1/\n" +
      'WRKJSON {"requests":1000,"duration_us":2000000,"bytes":5,"connect":1,"read":2,' +
      '"write":0,"status":3,"timeout":4,"p50":100,"p90":200,"p99":300,"max":900,"mean":120.5}\n',
  );
  assert.equal(out.requestsPerSecond, 500);
  assert.equal(out.errorCount, 10);
  assert.deepEqual(out.latencyUs, { p50: 100, p90: 200, p99: 300, max: 900, mean: 120.5 });
});

Deno.test("parseWrkOutput() throws when wrk printed no summary", () => {
  assert.throws(() => parseWrkOutput("unable to connect"), /no summary/);
});

Deno.test("parseStat() counts fields from the last parenthesis of the command name", () => {
  const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
  // utime is field 14, stime 15, cutime 16, cstime 17 (1-based).
  const text = `42 (a) b (c)) ${fields.join(" ")}`;
  const stat = parseStat(text);
  assert.equal(stat.pid, 42);
  assert.equal(stat.ppid, 4);
  assert.equal(stat.comm, "a) b (c)");
  assert.equal(stat.userTicks, 14 + 16);
  assert.equal(stat.systemTicks, 15 + 17);
});

Deno.test("parseSeconds() takes whole seconds and minutes, and refuses fractions", () => {
  assert.equal(parseSeconds("5s", "--duration"), 5);
  assert.equal(parseSeconds("2m", "--duration"), 120);
  assert.equal(parseSeconds("7", "--duration"), 7);
  assert.throws(() => parseSeconds("1.5s", "--duration"), /--duration.*"1.5s"/);
});

Deno.test("parseOptions() applies --quick and accepts single-dash flags", () => {
  const quick = parseOptions(["--quick"]);
  assert.ok(quick !== "help");
  assert.equal(quick.durationSeconds, 2);
  assert.equal(quick.rounds, 1);
  const explicit = parseOptions(["-duration=10s", "-rounds", "3", "--profiles", "small"]);
  assert.ok(explicit !== "help");
  assert.equal(explicit.durationSeconds, 10);
  assert.equal(explicit.rounds, 3);
  assert.deepEqual(explicit.profiles, ["small"]);
  assert.throws(() => parseOptions(["--profiles", "nope"]), /unknown profile "nope"/);
});

Deno.test("median() of an even count is the mean of the middle two", () => {
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([]), null);
});

function record(
  round: number,
  target: string,
  rps: number,
  cpu: number | null,
  p50 = 100,
): RunRecord {
  return {
    round,
    profile: "small",
    target,
    ok: true,
    requests: rps * 5,
    durationSeconds: 5,
    requestsPerSecond: rps,
    latencyUs: { p50, p90: p50, p99: p50 * 2, max: p50 * 3, mean: p50 },
    errors: { connect: 0, read: 0, write: 0, timeout: 0, status: 0 },
    errorCount: 0,
    cpuSeconds: cpu === null ? null : (cpu * rps * 5) / 1e6,
    cpuUsPerRequest: cpu,
    cpuSystemPercent: cpu === null ? null : 50,
    peakRssMiB: cpu === null ? null : 10 * round,
    backendConnections: 0,
    backendConnectionsWholeRun: 3,
    backendCpuUsPerRequest: 5,
    cpuBusyPercent: [90, 99],
    balancerCoreUsPerRequest: cpu,
  };
}

const INFO: RunInfo = {
  startedAt: "2026-01-01T00:00:00Z",
  finishedAt: "2026-01-01T00:05:00Z",
  rounds: 2,
  durationSeconds: 5,
  warmupSeconds: 1,
  balancerCpus: "1",
  loadCpus: "0",
  profiles: [{ id: "small", label: "small GET, 50 connections" }],
  targets: [
    { id: "direct", label: "direct", description: "wrk to a backend", pinned: false },
    { id: "nginx", label: "nginx <1 worker>", description: "nginx", pinned: true },
    { id: "deno", label: "this balancer", description: "main.ts", pinned: true },
  ],
  notes: ["a note"],
  revision: "abc123",
  loadAverage: [0.5, 1.5],
};

const MACHINE = {
  cpuModel: "Test CPU",
  cores: 2,
  kernel: "6.1",
  memoryGiB: 4,
  deno: "2.9.6",
  nginx: "1.22.1",
  haproxy: "2.6.12",
  wrk: "4.1.0",
};

const RECORDS = [
  record(1, "direct", 70000, null, 20),
  record(1, "nginx", 50000, 20, 150),
  record(1, "deno", 10000, 100, 300),
  record(2, "direct", 70000, null, 20),
  record(2, "nginx", 40000, 20, 150),
  record(2, "deno", 10000, 120, 320),
];

Deno.test("summarise() takes medians and ratios to nginx from the same round", () => {
  const deno = summarise(RECORDS, INFO).find((s) => s.target === "deno")!;
  assert.equal(deno.requestsPerSecond, 10000);
  assert.equal(deno.cpuUsPerRequest, 110);
  // Round 1: 10000/50000 = 0.2; round 2: 10000/40000 = 0.25.
  assert.equal(deno.rpsVsNginx, 0.225);
  assert.equal(deno.cpuVsNginx, 5.5);
  // p50 minus direct's p50 in the same round: 280 and 300.
  assert.equal(deno.addedP50Us, 290);
  assert.equal(deno.peakRssMiB, 20);
});

Deno.test("markdown() prints the machine and one row per target", () => {
  const md = markdown(summarise(RECORDS, INFO), INFO, MACHINE);
  assert.match(md, /Test CPU, 2 cores/);
  // No 1-connection profile in this run: the added-latency cell is empty.
  assert.match(
    md,
    /\| this balancer \| 110\.0 µs ±9% \| ×5\.50 \| 10,000 ±0% \| ×0\.23 \| – \|/,
  );
  assert.match(md, /- a note/);
});

Deno.test("svgChart() escapes labels and draws a bar per target with a value", () => {
  const svg = svgChart(summarise(RECORDS, INFO), INFO, MACHINE);
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /nginx &#60;1 worker&#62;/);
  assert.ok(!svg.includes("<1 worker>"));
  assert.match(svg, /n\/a \(no balancer\)/);
  assert.equal((svg.match(/<rect /g) ?? []).length, 1 + 2 + 3);
});

Deno.test("analyse() splits self and inclusive time along the stack", () => {
  const frame = (functionName: string, url = "") => ({
    functionName,
    url,
    lineNumber: 0,
    columnNumber: 0,
  });
  const profile: CpuProfile = {
    nodes: [
      { id: 1, callFrame: frame("(root)"), children: [2, 4] },
      { id: 2, callFrame: frame("outer", "file:///x.ts"), children: [3] },
      { id: 3, callFrame: frame("inner", "file:///x.ts") },
      { id: 4, callFrame: frame("(idle)") },
    ],
    samples: [3, 3, 2, 4],
    timeDeltas: [1000, 1000, 1000, 1000],
    startTime: 0,
    endTime: 4000,
  };
  const { functions, totalMs, byOrigin } = analyse(profile);
  const outer = functions.find((f) => f.name === "outer")!;
  const inner = functions.find((f) => f.name === "inner")!;
  assert.equal(totalMs, 4);
  assert.equal(inner.selfMs, 2);
  assert.equal(outer.selfMs, 1);
  assert.equal(outer.totalMs, 3);
  assert.equal(byOrigin.get("idle"), 1);
});
