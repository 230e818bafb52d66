import assert from "node:assert/strict";
import {
  DEFAULT_DURATION_BUCKETS,
  escapeLabelValue,
  LoadBalancerMetrics,
  NO_BACKEND,
  PROMETHEUS_CONTENT_TYPE,
  Registry,
  statusClass,
} from "../lib/metrics.ts";

// ---------------------------------------------------------------------------------------------
// A strict parser of the text exposition format 0.0.4. Stricter than Prometheus on purpose: it
// rejects anything this registry should never write (blank lines, stray comments, trailing
// commas, samples before their HELP/TYPE, interleaved families, unknown escapes).

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface ParsedFamily {
  name: string;
  type: string;
  help: string;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const FLOAT = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

function parseNumber(text: string, where: string): number {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  if (!FLOAT.test(text)) throw new Error(`${where}: bad number "${text}"`);
  return Number(text);
}

/** Undoes the escapes `allowed` lists (\\ and \n always; \" in label values); others fail. */
function unescape(text: string, allowQuote: boolean, where: string): string {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\n") throw new Error(`${where}: raw newline`);
    if (c !== "\\") {
      out += c;
      continue;
    }
    const next = text[++i];
    if (next === "\\") out += "\\";
    else if (next === "n") out += "\n";
    else if (next === '"' && allowQuote) out += '"';
    else throw new Error(`${where}: bad escape "\\${next ?? ""}"`);
  }
  return out;
}

/** Parses `{a="x",b="y"}` starting at `text[0] === "{"`; returns labels and the rest. */
function parseLabels(text: string, where: string): [Record<string, string>, string] {
  const labels: Record<string, string> = {};
  let i = 1;
  if (text[i] === "}") return [labels, text.slice(2)];
  for (;;) {
    const eq = text.indexOf("=", i);
    if (eq < 0) throw new Error(`${where}: label without "="`);
    const name = text.slice(i, eq);
    if (!LABEL_NAME.test(name) || name.startsWith("__")) {
      throw new Error(`${where}: bad label name "${name}"`);
    }
    if (name in labels) throw new Error(`${where}: duplicate label "${name}"`);
    if (text[eq + 1] !== '"') throw new Error(`${where}: label value not quoted`);
    let j = eq + 2;
    let raw = "";
    while (j < text.length && text[j] !== '"') {
      if (text[j] === "\\") raw += text[j++];
      raw += text[j++];
    }
    if (j >= text.length) throw new Error(`${where}: unterminated label value`);
    labels[name] = unescape(raw, true, where);
    j++;
    if (text[j] === "}") return [labels, text.slice(j + 1)];
    if (text[j] !== ",") throw new Error(`${where}: expected "," or "}" after label`);
    i = j + 1;
    if (text[i] === "}") throw new Error(`${where}: trailing comma in labels`);
  }
}

function parseSample(line: string, where: string): Sample {
  const nameEnd = line.search(/[{ ]/);
  if (nameEnd <= 0) throw new Error(`${where}: no metric name`);
  const name = line.slice(0, nameEnd);
  if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name "${name}"`);
  let rest = line.slice(nameEnd);
  let labels: Record<string, string> = {};
  if (rest[0] === "{") [labels, rest] = parseLabels(rest, where);
  if (rest[0] !== " ") throw new Error(`${where}: expected one space before the value`);
  const parts = rest.slice(1).split(" ");
  if (parts.length > 2 || parts.some((p) => p === "")) {
    throw new Error(`${where}: expected "value [timestamp]", got "${rest}"`);
  }
  if (parts.length === 2 && !/^-?\d+$/.test(parts[1])) {
    throw new Error(`${where}: bad timestamp "${parts[1]}"`);
  }
  return { name, labels, value: parseNumber(parts[0], where) };
}

/** Which family a sample name belongs to, given the family's type. */
function belongsTo(sample: string, family: ParsedFamily): boolean {
  if (sample === family.name) return family.type !== "histogram";
  if (family.type !== "histogram") return false;
  return ["_bucket", "_sum", "_count"].some((s) => sample === family.name + s);
}

function parseExposition(text: string): Map<string, ParsedFamily> {
  assert.ok(text.endsWith("\n"), "exposition must end with a newline");
  const families = new Map<string, ParsedFamily>();
  const seenSeries = new Set<string>();
  let current: ParsedFamily | undefined;
  let declaring: { name: string; help?: string; type?: string } | undefined;
  text.slice(0, -1).split("\n").forEach((line, index) => {
    const where = `line ${index + 1} "${line}"`;
    if (line === "") throw new Error(`${where}: blank line`);
    const meta = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
    if (line.startsWith("#")) {
      if (!meta) throw new Error(`${where}: unexpected comment`);
      const [, keyword, name, rest] = meta;
      if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name`);
      if (families.has(name)) throw new Error(`${where}: family ${name} declared twice`);
      if (declaring?.name !== name) {
        if (declaring) throw new Error(`${where}: ${declaring.name} lacks HELP or TYPE`);
        declaring = { name };
      }
      if (keyword === "HELP") {
        if (declaring.help !== undefined) throw new Error(`${where}: second HELP`);
        if (declaring.type !== undefined) throw new Error(`${where}: HELP after TYPE`);
        declaring.help = unescape(rest, false, where);
      } else {
        if (declaring.type !== undefined) throw new Error(`${where}: second TYPE`);
        if (!TYPES.has(rest)) throw new Error(`${where}: unknown type "${rest}"`);
        declaring.type = rest;
      }
      if (declaring.help !== undefined && declaring.type !== undefined) {
        current = { name, type: declaring.type, help: declaring.help, samples: [] };
        families.set(name, current);
        declaring = undefined;
      }
      return;
    }
    if (declaring) throw new Error(`${where}: sample inside ${declaring.name}'s HELP/TYPE`);
    const sample = parseSample(line, where);
    if (!current || !belongsTo(sample.name, current)) {
      throw new Error(`${where}: sample without HELP and TYPE before it (or interleaved)`);
    }
    const series = `${sample.name}${JSON.stringify(Object.entries(sample.labels).sort())}`;
    if (seenSeries.has(series)) throw new Error(`${where}: duplicate series`);
    seenSeries.add(series);
    current.samples.push(sample);
  });
  if (declaring) throw new Error(`${declaring.name}: HELP or TYPE missing at end`);
  for (const family of families.values()) {
    if (family.type === "histogram") checkHistogram(family);
    if (family.type === "counter") {
      for (const s of family.samples) assert.ok(s.value >= 0, `${s.name} counter is negative`);
    }
  }
  return families;
}

/** Buckets cumulative and monotonic, `+Inf` present and equal to `_count`, `_sum` present. */
function checkHistogram(family: ParsedFamily): void {
  const groups = new Map<string, Sample[]>();
  for (const s of family.samples) {
    if (s.name === `${family.name}_bucket` && !("le" in s.labels)) {
      throw new Error(`${family.name}: bucket without le`);
    }
    const { le: _le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    groups.set(key, [...(groups.get(key) ?? []), s]);
  }
  for (const [key, samples] of groups) {
    const where = `${family.name}${key}`;
    const buckets = samples.filter((s) => s.name.endsWith("_bucket"));
    const sum = samples.filter((s) => s.name.endsWith("_sum"));
    const count = samples.filter((s) => s.name.endsWith("_count"));
    assert.equal(sum.length, 1, `${where}: one _sum`);
    assert.equal(count.length, 1, `${where}: one _count`);
    assert.ok(buckets.length >= 1, `${where}: has buckets`);
    let lastLe = -Infinity;
    let lastCount = 0;
    for (const b of buckets) {
      const le = parseNumber(b.labels.le, where);
      assert.ok(le > lastLe, `${where}: le ${b.labels.le} not increasing`);
      assert.ok(b.value >= lastCount, `${where}: bucket le=${b.labels.le} not cumulative`);
      lastLe = le;
      lastCount = b.value;
    }
    assert.equal(buckets.at(-1)!.labels.le, "+Inf", `${where}: last bucket is +Inf`);
    assert.equal(buckets.at(-1)!.value, count[0].value, `${where}: +Inf equals _count`);
  }
}

function value(families: Map<string, ParsedFamily>, name: string, labels = {}): number {
  const family = families.get(name.replace(/_(bucket|sum|count)$/, "")) ?? families.get(name);
  assert.ok(family, `family for ${name}`);
  const want = JSON.stringify(Object.entries(labels).sort());
  const found = family.samples.find((s) =>
    s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want
  );
  assert.ok(found, `${name}${want} present`);
  return found.value;
}

// ---------------------------------------------------------------------------------------------
// The parser itself: it must reject what it claims to reject, or the other tests prove nothing.

Deno.test("parseExposition() (test helper) rejects malformed expositions", () => {
  const good = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n";
  parseExposition(good);
  const bad = [
    "a_total 1\n", // no HELP/TYPE
    "# HELP a_total x\n# TYPE a_total counter\na_total 1", // no final newline
    '# HELP a_total x\n# TYPE a_total counter\na_total{x="1",} 1\n', // trailing comma
    '# HELP a_total x\n# TYPE a_total counter\na_total{x="\\t"} 1\n', // unknown escape
    '# HELP a_total x\n# TYPE a_total counter\na_total{1x="a"} 1\n', // bad label name
    "# HELP a_total x\n# TYPE a_total counter\na_total one\n", // bad number
    "# HELP a_total x\n# TYPE a_total counter\na_total 1\na_total 2\n", // duplicate series
    "# HELP a_total x\n# TYPE a_total counter\n\na_total 1\n", // blank line
    "# HELP h x\n# TYPE h histogram\n" + // not cumulative
    'h_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    "# HELP h x\n# TYPE h histogram\n" + // +Inf differs from _count
    'h_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 2\n',
  ];
  for (const text of bad) assert.throws(() => parseExposition(text), Error, text);
});

// ---------------------------------------------------------------------------------------------

Deno.test("Registry.render() writes an exact, sorted exposition", () => {
  const registry = new Registry();
  const hist = registry.histogram("b_seconds", "B.", ["path"], [0.1, 1]);
  const requests = registry.counter("a_total", "A with \\ and\nnewline.", ["code"]);
  registry.gauge("c", "C.").set(-2.5);
  requests.inc(3, { code: "5xx" });
  requests.labels({ code: "2xx" }).inc();
  hist.observe(0.05, { path: "/" });
  hist.observe(0.1, { path: "/" }); // on the bound: le is "less or equal"
  hist.observe(7, { path: "/" });
  assert.equal(
    registry.render(),
    [
      "# HELP a_total A with \\\\ and\\nnewline.",
      "# TYPE a_total counter",
      'a_total{code="2xx"} 1',
      'a_total{code="5xx"} 3',
      "# HELP b_seconds B.",
      "# TYPE b_seconds histogram",
      'b_seconds_bucket{path="/",le="0.1"} 2',
      'b_seconds_bucket{path="/",le="1"} 2',
      'b_seconds_bucket{path="/",le="+Inf"} 3',
      'b_seconds_sum{path="/"} 7.15',
      'b_seconds_count{path="/"} 3',
      "# HELP c C.",
      "# TYPE c gauge",
      "c -2.5",
      "",
    ].join("\n"),
  );
  parseExposition(registry.render());
  assert.equal(PROMETHEUS_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
});

Deno.test("Registry.render() output does not depend on registration or update order", () => {
  const build = (order: number[]) => {
    const registry = new Registry();
    const steps = [
      () => registry.counter("z_total", "Z.", ["k"]).inc(1, { k: "b" }),
      () => registry.counter("m_total", "M.", ["k"]).inc(2, { k: "a" }),
      () => registry.gauge("a", "A.", ["k", "j"]).set(1, { k: "x", j: "y" }),
    ];
    for (const i of order) steps[i]();
    return registry;
  };
  const a = build([0, 1, 2]);
  const b = build([2, 1, 0]);
  assert.equal(a.render(), b.render());
  assert.equal(a.render(), a.render());
  const names = [...parseExposition(a.render()).keys()];
  assert.deepEqual(names, [...names].sort());
});

Deno.test("Counter.labels() returns one cached child per label set", () => {
  const registry = new Registry();
  const counter = registry.counter("req_total", "R.", ["backend", "code"]);
  const child = counter.labels({ backend: "http://a", code: "2xx" });
  assert.equal(counter.labels({ code: "2xx", backend: "http://a" }), child);
  assert.notEqual(counter.labels({ backend: "http://a", code: "5xx" }), child);
  child.inc();
  child.inc(2);
  counter.inc(1, { backend: "http://a", code: "2xx" });
  assert.equal(child.value, 4);
  const families = parseExposition(registry.render());
  assert.equal(families.get("req_total")!.samples.length, 2);
  assert.equal(value(families, "req_total", { backend: "http://a", code: "2xx" }), 4);
});

Deno.test("Counter rejects negative increments, wrong label sets and bad names", () => {
  const registry = new Registry();
  const counter = registry.counter("x_total", "X.", ["a"]);
  assert.throws(() => counter.inc(-1, { a: "1" }), /must be >= 0/);
  assert.throws(() => counter.inc(NaN, { a: "1" }), /must be >= 0/);
  assert.throws(() => counter.inc(1), /labels must be exactly \[a\]/);
  // Checked when a child is created; a cached lookup only reads the declared names.
  // deno-lint-ignore no-explicit-any
  assert.throws(() => counter.inc(1, { a: "2", b: "2" } as any), /labels must be exactly/);
  assert.throws(() => registry.counter("x_total", "again"), /already registered/);
  assert.throws(() => registry.counter("1bad", "B."), /invalid metric name/);
  assert.throws(() => registry.counter("ok_total", "B.", ["__reserved"]), /invalid label name/);
  assert.throws(() => registry.counter("ok_total", "B.", ["a", "a"]), /duplicate label/);
  registry.histogram("h", "H.");
  assert.throws(() => registry.counter("h_count", "C."), /already registered/);
});

Deno.test("escapeLabelValue() escapes backslash, double quote and newline, and round-trips", () => {
  const nasty = 'a\\b"c\nd} x="y';
  assert.equal(escapeLabelValue(nasty), 'a\\\\b\\"c\\nd} x=\\"y');
  const registry = new Registry();
  registry.counter("e_total", "E.", ["v"]).inc(1, { v: nasty });
  const families = parseExposition(registry.render());
  assert.deepEqual(families.get("e_total")!.samples[0].labels, { v: nasty });
});

Deno.test("Gauge set(), inc() and dec() move the value both ways", () => {
  const registry = new Registry();
  const gauge = registry.gauge("g", "G.", ["k"]);
  const child = gauge.labels({ k: "a" });
  child.set(10);
  child.inc();
  child.dec(4);
  gauge.inc(2, { k: "a" });
  gauge.dec(1, { k: "b" });
  const families = parseExposition(registry.render());
  assert.equal(value(families, "g", { k: "a" }), 9);
  assert.equal(value(families, "g", { k: "b" }), -1);
});

Deno.test("Registry.gaugeFunc() reads its callback at each scrape", () => {
  const registry = new Registry();
  let inflight = 1;
  registry.gaugeFunc("inflight", "In flight.", () => [
    { labels: { backend: "b" }, value: inflight },
    { labels: { backend: "a" }, value: 0 },
  ]);
  assert.equal(value(parseExposition(registry.render()), "inflight", { backend: "b" }), 1);
  inflight = 5;
  const text = registry.render();
  assert.equal(value(parseExposition(text), "inflight", { backend: "b" }), 5);
  assert.ok(text.indexOf('backend="a"') < text.indexOf('backend="b"'), "series sorted");
});

Deno.test("Registry.gaugeFunc() refuses duplicate series and bad label names at scrape", () => {
  const dup = new Registry();
  dup.gaugeFunc("d", "D.", () => [{ labels: { k: "1" }, value: 1 }, {
    labels: { k: "1" },
    value: 2,
  }]);
  assert.throws(() => dup.render(), /duplicate series/);
  const bad = new Registry();
  bad.gaugeFunc("b", "B.", () => [{ labels: { "not-valid": "1" }, value: 1 }]);
  assert.throws(() => bad.render(), /invalid label name/);
});

Deno.test("Histogram uses the default duration buckets and keeps them cumulative", () => {
  assert.deepEqual(
    [...DEFAULT_DURATION_BUCKETS],
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  );
  const registry = new Registry();
  const hist = registry.histogram("d_seconds", "D.", ["backend"]);
  assert.deepEqual(hist.buckets, DEFAULT_DURATION_BUCKETS);
  const child = hist.labels({ backend: "x" });
  for (const v of [0.0005, 0.001, 0.003, 0.3, 0.3, 2, 11, 100]) child.observe(v);
  child.observe(NaN); // ignored
  const families = parseExposition(registry.render());
  const bucket = (le: string) => value(families, "d_seconds_bucket", { backend: "x", le });
  assert.equal(bucket("0.001"), 2);
  assert.equal(bucket("0.005"), 3);
  assert.equal(bucket("0.5"), 5);
  assert.equal(bucket("2.5"), 6);
  assert.equal(bucket("10"), 6);
  assert.equal(bucket("+Inf"), 8);
  assert.equal(value(families, "d_seconds_count", { backend: "x" }), 8);
  assert.ok(Math.abs(value(families, "d_seconds_sum", { backend: "x" }) - 113.6045) < 1e-9);
});

Deno.test("Histogram rejects bad buckets and a label named le", () => {
  const registry = new Registry();
  assert.throws(() => registry.histogram("h1", "H.", [], [1, 1]), /strictly increasing/);
  assert.throws(() => registry.histogram("h2", "H.", [], [2, 1]), /strictly increasing/);
  assert.throws(() => registry.histogram("h3", "H.", [], [NaN]), /strictly increasing/);
  assert.throws(() => registry.histogram("h4", "H.", [], []), /at least one bucket/);
  assert.throws(() => registry.histogram("h5", "H.", ["le"]), /reserved/);
  // A trailing +Inf is accepted and not doubled.
  registry.histogram("h6", "H.", [], [1, Infinity]).observe(2);
  const text = registry.render();
  assert.equal(text.match(/le="\+Inf"/g)?.length, 1);
  parseExposition(text);
});

Deno.test("statusClass() maps statuses to 1xx..5xx and anything else to error", () => {
  assert.equal(statusClass(101), "1xx");
  assert.equal(statusClass(200), "2xx");
  assert.equal(statusClass(304), "3xx");
  assert.equal(statusClass(499), "4xx");
  assert.equal(statusClass(599), "5xx");
  assert.equal(statusClass(undefined), "error");
  assert.equal(statusClass(600), "error");
  assert.equal(statusClass(NaN), "error");
});

function busyBalancer(): LoadBalancerMetrics {
  const backends = [
    { url: "http://127.0.0.1:8082", status: "down", inflight: 0, weight: 1 },
    { url: "http://127.0.0.1:8081", status: "up", inflight: 3, weight: 2 },
    { url: "http://127.0.0.1:8083", status: "ejected", inflight: 1, weight: 1 },
  ];
  const metrics = new LoadBalancerMetrics({ version: "1.2.3", backends: () => backends });
  const a = metrics.backend("http://127.0.0.1:8081");
  a.record(200, 0.004);
  a.record(503, 0.2);
  a.record(undefined, 30);
  metrics.backend(NO_BACKEND).record(503, 0.0001);
  metrics.retries.inc(2);
  metrics.retryBudgetExhausted.inc();
  metrics.healthCheck("http://127.0.0.1:8082", false);
  metrics.healthCheck("http://127.0.0.1:8081", true);
  metrics.stateTransition("http://127.0.0.1:8082", "up", "down");
  return metrics;
}

Deno.test("LoadBalancerMetrics.render() exports every family with the recorded values", () => {
  const families = parseExposition(busyBalancer().render());
  assert.deepEqual([...families.keys()], [
    "lb_backend_ejected",
    "lb_backend_inflight",
    "lb_backend_state_transitions_total",
    "lb_backend_up",
    "lb_backend_weight",
    "lb_build_info",
    "lb_health_checks_total",
    "lb_request_duration_seconds",
    "lb_requests_total",
    "lb_retries_total",
    "lb_retry_budget_exhausted_total",
  ]);
  const a = { backend: "http://127.0.0.1:8081" };
  const b = { backend: "http://127.0.0.1:8082" };
  const c = { backend: "http://127.0.0.1:8083" };
  assert.equal(value(families, "lb_requests_total", { ...a, code: "2xx" }), 1);
  assert.equal(value(families, "lb_requests_total", { ...a, code: "5xx" }), 1);
  assert.equal(value(families, "lb_requests_total", { ...a, code: "error" }), 1);
  assert.equal(value(families, "lb_requests_total", { ...a, code: "4xx" }), 0);
  assert.equal(value(families, "lb_requests_total", { backend: "none", code: "5xx" }), 1);
  assert.equal(value(families, "lb_request_duration_seconds_count", a), 3);
  assert.equal(value(families, "lb_request_duration_seconds_bucket", { ...a, le: "10" }), 2);
  assert.equal(value(families, "lb_retries_total"), 2);
  assert.equal(value(families, "lb_retry_budget_exhausted_total"), 1);
  assert.equal(value(families, "lb_health_checks_total", { ...b, result: "fail" }), 1);
  assert.equal(value(families, "lb_health_checks_total", { ...a, result: "pass" }), 1);
  assert.equal(
    value(families, "lb_backend_state_transitions_total", { ...b, from: "up", to: "down" }),
    1,
  );
  assert.equal(value(families, "lb_backend_up", a), 1);
  assert.equal(value(families, "lb_backend_up", b), 0);
  assert.equal(value(families, "lb_backend_up", c), 0);
  assert.equal(value(families, "lb_backend_ejected", c), 1);
  assert.equal(value(families, "lb_backend_ejected", a), 0);
  assert.equal(value(families, "lb_backend_inflight", a), 3);
  assert.equal(value(families, "lb_backend_weight", a), 2);
  assert.equal(value(families, "lb_build_info", { version: "1.2.3" }), 1);
});

Deno.test("LoadBalancerMetrics.backend() caches its handles per backend", () => {
  const metrics = new LoadBalancerMetrics({ version: "0" });
  assert.equal(metrics.backend("http://x"), metrics.backend("http://x"));
  assert.notEqual(metrics.backend("http://x"), metrics.backend("http://y"));
  // With no backends callback and no traffic, the exposition is still valid.
  parseExposition(new LoadBalancerMetrics({ version: "0" }).render());
});

// ---------------------------------------------------------------------------------------------
// promtool, when installed (Debian package `prometheus`), as an independent second opinion.

function findPromtool(): string | undefined {
  try {
    const out = new Deno.Command("promtool", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .outputSync();
    return out.success ? "promtool" : undefined;
  } catch {
    return undefined;
  }
}

const promtool = findPromtool();
if (!promtool) {
  console.log("promtool check skipped: promtool not found (apt-get install prometheus)");
}

Deno.test({
  name: "LoadBalancerMetrics.render() passes promtool check metrics",
  ignore: !promtool,
  async fn() {
    const child = new Deno.Command(promtool!, {
      args: ["check", "metrics"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(busyBalancer().render()));
    await writer.close();
    const { code, stdout, stderr } = await child.output();
    const report = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    assert.equal(code, 0, report);
    assert.equal(report.trim(), "");
  },
});
