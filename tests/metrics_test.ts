import assert from "node:assert/strict";
import {
  DEFAULT_DURATION_BUCKETS,
  escapeLabelValue,
  LoadBalancerMetrics,
  NO_BACKEND,
  NO_ROUTE,
  PROMETHEUS_CONTENT_TYPE,
  Registry,
  statusClass,
} from "../lib/metrics.ts";
import {
  findPromtool,
  parseExposition,
  PROMTOOL_MISSING,
  promtoolCheck,
  sampleValue as value,
} from "./prometheus.ts";

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
    { service: "api", url: "http://127.0.0.1:8082", status: "down", inflight: 0, weight: 1 },
    { service: "api", url: "http://127.0.0.1:8081", status: "up", inflight: 3, weight: 2 },
    { service: "api", url: "http://127.0.0.1:8083", status: "ejected", inflight: 1, weight: 1 },
    // The same origin in a second service: its own series.
    { service: "web", url: "http://127.0.0.1:8081", status: "up", inflight: 1, weight: 5 },
  ];
  const metrics = new LoadBalancerMetrics({ version: "1.2.3", backends: () => backends });
  const a = metrics.backend("api", "http://127.0.0.1:8081");
  a.record(200, 0.004);
  a.record(503, 0.2);
  a.record(undefined, 30);
  metrics.backend("web", "http://127.0.0.1:8081").record(404, 0.001);
  metrics.backend("api", NO_BACKEND).record(503, 0.0001);
  metrics.route("v1").record(200);
  metrics.refused("v1", "rate-limit");
  metrics.refused("v1", "rate-limit");
  metrics.route("v1").record(503);
  metrics.route("v1").record(undefined);
  metrics.route("old-site").record(308);
  metrics.route(NO_ROUTE).record(404);
  metrics.retries.inc(2);
  metrics.retryBudgetExhausted.inc();
  metrics.healthCheck("api", "http://127.0.0.1:8082", false);
  metrics.healthCheck("api", "http://127.0.0.1:8081", true);
  metrics.stateTransition("api", "http://127.0.0.1:8082", "up", "down");
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
    "lb_route_refused_total",
    "lb_route_requests_total",
  ]);
  const a = { service: "api", backend: "http://127.0.0.1:8081" };
  const b = { service: "api", backend: "http://127.0.0.1:8082" };
  const c = { service: "api", backend: "http://127.0.0.1:8083" };
  const w = { service: "web", backend: "http://127.0.0.1:8081" };
  assert.equal(value(families, "lb_requests_total", { ...a, code: "2xx" }), 1);
  assert.equal(value(families, "lb_requests_total", { ...a, code: "5xx" }), 1);
  assert.equal(value(families, "lb_requests_total", { ...a, code: "error" }), 1);
  assert.equal(value(families, "lb_requests_total", { ...a, code: "4xx" }), 0);
  assert.equal(value(families, "lb_requests_total", { ...w, code: "4xx" }), 1);
  assert.equal(value(families, "lb_requests_total", { ...w, code: "2xx" }), 0);
  assert.equal(
    value(families, "lb_requests_total", { service: "api", backend: "none", code: "5xx" }),
    1,
  );
  assert.equal(value(families, "lb_request_duration_seconds_count", a), 3);
  assert.equal(value(families, "lb_request_duration_seconds_count", w), 1);
  assert.equal(value(families, "lb_request_duration_seconds_bucket", { ...a, le: "10" }), 2);
  assert.equal(value(families, "lb_route_requests_total", { route: "v1", code: "2xx" }), 1);
  assert.equal(value(families, "lb_route_requests_total", { route: "v1", code: "5xx" }), 1);
  assert.equal(value(families, "lb_route_requests_total", { route: "v1", code: "error" }), 1);
  assert.equal(value(families, "lb_route_requests_total", { route: "old-site", code: "3xx" }), 1);
  assert.equal(value(families, "lb_route_requests_total", { route: "none", code: "4xx" }), 1);
  assert.equal(
    value(families, "lb_route_refused_total", { route: "v1", reason: "rate-limit" }),
    2,
  );
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
  assert.equal(value(families, "lb_backend_inflight", w), 1);
  assert.equal(value(families, "lb_backend_weight", a), 2);
  assert.equal(value(families, "lb_backend_weight", w), 5);
  assert.equal(value(families, "lb_build_info", { version: "1.2.3" }), 1);
});

Deno.test("LoadBalancerMetrics.backend() caches its handles per service and backend", () => {
  const metrics = new LoadBalancerMetrics({ version: "0" });
  assert.equal(metrics.backend("s", "http://x"), metrics.backend("s", "http://x"));
  assert.notEqual(metrics.backend("s", "http://x"), metrics.backend("s", "http://y"));
  assert.notEqual(metrics.backend("s", "http://x"), metrics.backend("t", "http://x"));
  // With no backends callback and no traffic, the exposition is still valid.
  parseExposition(new LoadBalancerMetrics({ version: "0" }).render());
});

Deno.test("LoadBalancerMetrics.route() caches its handles; route none is exported from the start", () => {
  const metrics = new LoadBalancerMetrics({ version: "0" });
  assert.equal(metrics.route("a"), metrics.route("a"));
  assert.notEqual(metrics.route("a"), metrics.route("b"));
  const fresh = parseExposition(new LoadBalancerMetrics({ version: "0" }).render());
  const series = fresh.get("lb_route_requests_total")!.samples;
  assert.deepEqual(
    series.map((x) => [x.labels.route, x.labels.code, x.value]),
    ["1xx", "2xx", "3xx", "4xx", "5xx", "error"].map((code) => [NO_ROUTE, code, 0]),
  );
});

Deno.test("connection families carry the service; a shared origin shows its figures under each", () => {
  const url = "http://127.0.0.1:8081";
  const backends = [
    { service: "api", url, status: "up", inflight: 0, weight: 1 },
    { service: "web", url, status: "up", inflight: 0, weight: 1 },
    { service: "web", url: "http://127.0.0.1:8082", status: "up", inflight: 0, weight: 1 },
  ];
  const metrics = new LoadBalancerMetrics({
    version: "0",
    backends: () => backends,
    connections: (origin) =>
      origin === url ? { open: 2, idle: 1, connects: 5, reuses: 40 } : undefined,
  });
  const families = parseExposition(metrics.render());
  for (const service of ["api", "web"]) {
    const labels = { service, backend: url };
    assert.equal(value(families, "lb_backend_connections_open", labels), 2);
    assert.equal(value(families, "lb_backend_connections_idle", labels), 1);
    assert.equal(value(families, "lb_backend_connects_total", labels), 5);
    assert.equal(value(families, "lb_backend_connection_reuses_total", labels), 40);
  }
  assert.equal(families.get("lb_backend_connects_total")!.type, "counter");
  assert.equal(
    families.get("lb_backend_connections_open")!.samples.length,
    2,
    "an origin the transport says nothing about has no series",
  );
});

// ---------------------------------------------------------------------------------------------
// promtool, when installed (Debian package `prometheus`), as an independent second opinion.

const promtool = findPromtool();
if (!promtool) console.log(PROMTOOL_MISSING);

Deno.test({
  name: "LoadBalancerMetrics.render() passes promtool check metrics",
  ignore: !promtool,
  async fn() {
    const { code, report } = await promtoolCheck(promtool!, busyBalancer().render());
    assert.equal(code, 0, report);
    assert.equal(report.trim(), "");
  },
});
