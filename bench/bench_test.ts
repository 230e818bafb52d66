/**
 * @module
 * Tests of the harness's pure parts: parsing wrk's summary, /proc lines and raw HTTP answers,
 * options, the summary's medians and same-round ratios, and the Markdown and SVG output; one
 * loopback test of the gzip pass-through check. Run with `deno test --allow-net
 * bench/bench_test.ts` (no processes started).
 */

import assert from "node:assert/strict";
import { parseWrkOutput } from "./wrk.ts";
import { parseOpenFilesLimit, parseStat } from "./system.ts";
import { parseOptions, parseSeconds, parseV8FlagSets } from "./run.ts";
import { checkGzipPassThrough, parseHttpResponse } from "./http_check.ts";
import { markdown, median, type RunInfo, type RunRecord, summarise, svgChart } from "./report.ts";
import { analyse, type CpuProfile } from "./cpu_profile.ts";
import { flagRows, flagsMarkdown, recommend, splitVariant } from "./v8_flags.ts";
import { parseTraceGc } from "./gc_trace.ts";

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
    responseBytes: 100,
    gzipPassThrough: null,
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

Deno.test("parseOpenFilesLimit() reads soft and hard limits, unlimited as Infinity", () => {
  const text = "Max processes             63432                63432                processes\n" +
    "Max open files            1024                 unlimited            files     \n";
  assert.deepEqual(parseOpenFilesLimit(text), { soft: 1024, hard: Infinity });
  assert.throws(() => parseOpenFilesLimit("Max processes 1 1"), /Max open files/);
});

Deno.test("parseV8FlagSets() splits sets on ; and keeps none as no flags", () => {
  assert.deepEqual(
    parseV8FlagSets("none; --max-semi-space-size=2 ;--max-semi-space-size=1,--single-threaded-gc"),
    ["", "--max-semi-space-size=2", "--max-semi-space-size=1,--single-threaded-gc"],
  );
  assert.throws(() => parseV8FlagSets("max-semi-space-size=2"), /not a V8 flag/);
  assert.throws(() => parseV8FlagSets(" ; "), /expected flag sets/);
  const opts = parseOptions(["--v8-flags", "none;--max-semi-space-size=4"]);
  assert.ok(opts !== "help");
  assert.deepEqual(opts.v8FlagSets, ["", "--max-semi-space-size=4"]);
});

const bytes = (text: string) => new TextEncoder().encode(text);

Deno.test("parseHttpResponse() reads Content-Length, chunked and close-delimited bodies", () => {
  const sized = parseHttpResponse(
    bytes("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabcdef"),
  );
  assert.equal(sized.status, 200);
  assert.equal(sized.headers.get("x-a"), "1, 2");
  assert.deepEqual(sized.body, bytes("abc"));
  const chunked = parseHttpResponse(
    bytes(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    ),
  );
  assert.deepEqual(chunked.body, bytes("abcde"));
  const closed = parseHttpResponse(bytes("HTTP/1.0 404 Not Found\r\n\r\nnope"));
  assert.equal(closed.status, 404);
  assert.deepEqual(closed.body, bytes("nope"));
});

Deno.test("parseHttpResponse() throws on a bad status line or a short body", () => {
  assert.throws(() => parseHttpResponse(bytes("HTTP/2 200\r\n\r\n")), /bad status line/);
  assert.throws(
    () => parseHttpResponse(bytes("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab")),
    /cut short: 2 of 9/,
  );
  assert.throws(() => parseHttpResponse(bytes("HTTP/1.1 200 OK\r\n")), /no complete/);
});

Deno.test("checkGzipPassThrough() tells the backend's bytes from a decoded body", async () => {
  const gz = new Uint8Array([0x1f, 0x8b, 8, 0, 1, 2, 3]);
  const answers = [
    { encoding: "gzip", body: gz },
    { encoding: null, body: bytes("decoded text") },
  ];
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served = (async () => {
    for (const { encoding, body } of answers) {
      const conn = await listener.accept();
      await conn.read(new Uint8Array(4096));
      const head = `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n` +
        (encoding === null ? "" : `Content-Encoding: ${encoding}\r\n`) + "\r\n";
      await conn.write(bytes(head));
      await conn.write(body);
      conn.close();
    }
  })();
  const port = (listener.addr as Deno.NetAddr).port;
  const passed = await checkGzipPassThrough(port, "/gzip", gz);
  assert.equal(passed.passThrough, true, passed.detail);
  const altered = await checkGzipPassThrough(port, "/gzip", gz);
  assert.equal(altered.passThrough, false);
  assert.match(altered.detail, /12 bytes, Content-Encoding none, differs/);
  await served;
  listener.close();
});

Deno.test("markdown() adds the ratio and 2,000-connection tables when both profiles ran", () => {
  const at = (r: RunRecord, profile: string, extra: Partial<RunRecord> = {}) => ({
    ...r,
    profile,
    ...extra,
  });
  const timeouts = (n: number) => ({
    errors: { connect: 0, read: 0, write: 0, timeout: n, status: 0 },
    errorCount: n,
  });
  const records = [
    ...RECORDS,
    at(RECORDS[1], "c2000", timeouts(10)),
    at(RECORDS[2], "c2000", { ...timeouts(30), requestsPerSecond: 25000 }),
    at(RECORDS[2], "gzip", { gzipPassThrough: false, gzipDetail: "32,768 bytes" }),
    at(RECORDS[1], "gzip", { gzipPassThrough: true, gzipDetail: "3,337 bytes" }),
  ];
  const info = {
    ...INFO,
    profiles: [
      ...INFO.profiles,
      { id: "gzip", label: "gzip" },
      { id: "c2000", label: "small GET, 2,000 connections" },
    ],
  };
  const md = markdown(summarise(records, info), info, MACHINE);
  assert.match(md, /2,000 conns timeouts \(nginx: 10\)/);
  // CPU ×5.50 at 50 connections, gzip not passed through, 2,000-connection req/s 25000/50000.
  assert.match(
    md,
    /\| this balancer \| ×5\.50 \| – \| – \| – \| ×5\.00 \| \*\*no\*\* \| ×0\.50 \| 30 \|/,
  );
  assert.match(md, /\| this balancer \| 25,000 \| ×0\.50 \| 30 \| 0 \|/);
  assert.match(md, /\*\*no\*\*: 32,768 bytes/);
});

Deno.test("splitVariant() separates a target id from its V8 flags", () => {
  assert.deepEqual(splitVariant("deno[--a=1,--b]"), { target: "deno", flags: "--a=1,--b" });
  assert.deepEqual(splitVariant("deno-fetch"), { target: "deno-fetch", flags: "" });
});

Deno.test("recommend() takes the smallest set within the CPU tolerance in every profile", () => {
  const runs = (flags: string, rss: number, cpu: number, c2000Cpu = cpu): RunRecord[] => {
    const id = flags === "" ? "deno" : `deno[${flags}]`;
    return [
      { ...record(1, id, 1000, cpu), peakRssMiB: rss },
      { ...record(1, id, 1000, c2000Cpu), profile: "c2000", peakRssMiB: rss * 2 },
    ];
  };
  const rows = flagRows([
    ...runs("", 150, 100),
    ...runs("--semi=1", 80, 110), // smallest, but 10% more CPU
    ...runs("--semi=2", 90, 102),
    ...runs("--semi=4", 85, 101, 104), // within 3% at 50 connections only
  ]);
  const semi2 = rows.find((r) => r.flags === "--semi=2" && r.profile === "c2000")!;
  assert.equal(semi2.rssVsNone, 0.6);
  assert.equal(semi2.cpuVsNone, 1.02);
  assert.equal(recommend(rows, "deno", 0.03), "--semi=2");
  assert.equal(recommend(rows, "deno", 0.001), "");
  assert.match(
    flagsMarkdown(rows, { title: "t", run: "r", tolerance: 0.03, profileLabels: new Map() }),
    /Recommended for deno:\*\* `--v8-flags=--semi=2`/,
  );
});

Deno.test("parseTraceGc() sums young and full collections with incremental steps", () => {
  const text = [
    "[1:0x1]   63 ms: Scavenge 3.3 (4.4) -> 3.2 (5.4) MB, pooled: 0.0 MB, 1.50 / 0.00 ms " +
    "(average mu = 1.000, current mu = 1.000) allocation failure; ",
    "listening on 127.0.0.1:3030",
    "[1:0x1]   68 ms: Scavenge 3.3 (5.4) -> 3.3 (6.4) MB, pooled: 0.0 MB, 0.50 / 0.00 ms " +
    "(average mu = 1.000, current mu = 1.000) allocation failure; ",
    "[1:0x1] 1933 ms: Incremental Mark-Compact 92.0 (109.6) -> 72.0 (100.1) MB, pooled: 0.0 " +
    "MB, 2.00 / 0.00 ms (+ 0.3 ms in 17 steps since start of marking, biggest step 0.1 ms, " +
    "walltime since start of marking 232 ms) (average mu = 0.881) finalize incremental marking",
  ].join("\n");
  const totals = parseTraceGc(text);
  assert.equal(totals.young, 2);
  assert.equal(totals.youngMs, 2);
  assert.equal(totals.full, 1);
  assert.ok(Math.abs(totals.fullMs - 2.3) < 1e-9);
});

Deno.test("flagRows() pairs --trace-gc variants with the traced run without flags", () => {
  assert.deepEqual(splitVariant("deno[--trace-gc]"), { target: "deno", flags: "" });
  const traced = (flags: string, cpu: number, gc: number): RunRecord => ({
    ...record(1, `deno[${flags === "" ? "" : `${flags},`}--trace-gc]`, 1000, cpu),
    gcUsPerRequest: gc,
    peakRssMiB: flags === "" ? 100 : 80,
  });
  // CPU per request says +20% (noise); GC time says 1 µs more on 100: +1%.
  const rows = flagRows([traced("", 100, 1), traced("--semi=4", 120, 2)]);
  const semi = rows.find((r) => r.flags === "--semi=4")!;
  assert.equal(semi.cpuVsNone, 1.2);
  assert.equal(semi.gcCostVsNone, 1.01);
  assert.equal(recommend(rows, "deno", 0.03), "--semi=4");
});
