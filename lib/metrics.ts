/**
 * @module
 * A tiny Prometheus registry with no dependencies, and {@linkcode LoadBalancerMetrics}, the
 * balancer's own metric families.
 *
 * Families are {@linkcode Counter}, {@linkcode Gauge}, {@linkcode Histogram} and callback gauges
 * ({@linkcode Registry.gaugeFunc}) read at scrape time. {@linkcode Registry.render} writes the
 * text exposition format 0.0.4, served with {@linkcode PROMETHEUS_CONTENT_TYPE}.
 *
 * The request path is the hot path, so label handling is paid once: `family.labels({...})`
 * returns a cached child whose `inc`/`observe` only add numbers. Children are found through
 * nested maps keyed by each label value, so even the convenience form
 * `counter.inc(1, {backend, code})` builds no string per call; the rendered label text of a
 * child is built once, when the child is created.
 *
 * ```ts
 * const registry = new Registry();
 * const requests = registry.counter("http_requests_total", "Requests.", ["code"]);
 * const ok = requests.labels({ code: "2xx" }); // keep this handle
 * ok.inc();
 * registry.render(); // '# HELP http_requests_total Requests.\n# TYPE ...'
 * ```
 */

/** The `Content-Type` of {@linkcode Registry.render}'s output (text exposition format 0.0.4). */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/**
 * Default histogram buckets for request durations in seconds: 1 ms to 10 s, roughly ×2.5 per
 * step, so both a fast cache hit and a slow backend land in a bucket that tells them apart.
 */
export const DEFAULT_DURATION_BUCKETS: readonly number[] = Object.freeze([
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
]);

/** Label values of one series, keyed by label name. */
export type Labels<L extends string = string> = Readonly<Record<L, string>>;

/** One series of a callback gauge: its labels and its current value. */
export interface GaugeSample {
  /** Label values; names must be valid label names. @default {} */
  labels?: Labels;
  value: number;
}

/** The metric types this registry writes in `# TYPE` lines. */
export type MetricType = "counter" | "gauge" | "histogram";

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Formats a sample value as Prometheus (Go's ParseFloat) reads it. */
export function formatValue(value: number): string {
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  if (Number.isNaN(value)) return "NaN";
  return String(value);
}

/** Escapes a label value: backslash, double quote and newline (exposition format 0.0.4). */
export function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
}

/** Escapes HELP text: backslash and newline only (quotes are literal there). */
function escapeHelp(help: string): string {
  return help.replace(/[\\\n]/g, (c) => (c === "\n" ? "\\n" : "\\\\"));
}

/** Renders `{a="x",b="y"}` from names and values in order; empty string for no labels. */
function labelText(names: readonly string[], values: readonly string[]): string {
  if (names.length === 0) return "";
  const pairs = names.map((name, i) => `${name}="${escapeLabelValue(values[i])}"`);
  return `{${pairs.join(",")}}`;
}

/** Adds one more label (used for `le`) to an already rendered label text. */
function withLabel(text: string, name: string, value: string): string {
  const pair = `${name}="${escapeLabelValue(value)}"`;
  return text === "" ? `{${pair}}` : `${text.slice(0, -1)},${pair}}`;
}

function checkMetricName(name: string): void {
  if (!METRIC_NAME.test(name)) throw new Error(`metrics: invalid metric name "${name}"`);
}

function checkLabelName(metric: string, name: string): void {
  // Names starting with __ are reserved for Prometheus itself.
  if (!LABEL_NAME.test(name) || name.startsWith("__")) {
    throw new Error(`metrics: ${metric}: invalid label name "${name}"`);
  }
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** What every child keeps: its label values and their rendered text. */
interface ChildBase {
  readonly labelValues: readonly string[];
  readonly labelText: string;
}

/**
 * The shared part of the labelled families: the label names, the child cache and HELP/TYPE.
 * Children live in nested maps, one level per label name, so a lookup is a few `Map.get`s with
 * no key string built.
 */
abstract class Family<L extends string, C extends ChildBase> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  abstract readonly type: MetricType;
  #root = new Map<string, unknown>();
  #children: C[] = [];
  /** The single child of a family without labels, created eagerly so it renders as 0. */
  #solo: C | undefined;

  constructor(name: string, help: string, labelNames: readonly L[]) {
    checkMetricName(name);
    for (const label of labelNames) checkLabelName(name, label);
    if (new Set(labelNames).size !== labelNames.length) {
      throw new Error(`metrics: ${name}: duplicate label name in [${labelNames.join(", ")}]`);
    }
    this.name = name;
    this.help = help;
    this.labelNames = Object.freeze([...labelNames]);
  }

  /** Builds a child for these label values; subclasses pick the child type. */
  protected abstract createChild(labelValues: readonly string[], labelText: string): C;

  /**
   * The cached child for `labels`, created on first use. Keep it to skip even the lookup.
   * The label set is checked (exactly the declared names) when a child is created; a cached
   * lookup reads only the declared names, so it stays a few `Map.get`s.
   * @throws Error when a new child's labels are not exactly the declared names.
   */
  labels(labels: Labels<L>): C {
    if (this.labelNames.length === 0) return this.#soloChild();
    const values = labels as Record<string, string>;
    let node = this.#root;
    const last = this.labelNames.length - 1;
    for (let i = 0; i < last; i++) {
      const value = values[this.labelNames[i]];
      let next = node.get(value) as Map<string, unknown> | undefined;
      if (next === undefined) {
        this.#checkLabels(values);
        next = new Map();
        node.set(value, next);
      }
      node = next;
    }
    const leafValue = values[this.labelNames[last]];
    const found = node.get(leafValue) as C | undefined;
    if (found !== undefined) return found;
    this.#checkLabels(values);
    const child = this.#newChild(this.labelNames.map((n) => values[n]));
    node.set(leafValue, child);
    return child;
  }

  /**
   * The child for `labels`, for the family methods that take `labels` last and optional: a
   * family without labels has one child, found without any.
   */
  protected series(labels?: Labels<L>): C {
    return this.labels(labels ?? ({} as Labels<L>));
  }

  /**
   * Forgets the series with these labels (e.g. a backend removed by a reload), so it is no
   * longer rendered. Handles kept by callers stop being exported. Returns whether it existed.
   */
  remove(labels: Labels<L>): boolean {
    const values = labels as Record<string, string>;
    if (this.labelNames.length === 0) return false;
    let node = this.#root;
    const last = this.labelNames.length - 1;
    for (let i = 0; i < last; i++) {
      const next = node.get(values[this.labelNames[i]]) as Map<string, unknown> | undefined;
      if (next === undefined) return false;
      node = next;
    }
    const child = node.get(values[this.labelNames[last]]) as C | undefined;
    if (child === undefined) return false;
    node.delete(values[this.labelNames[last]]);
    this.#children = this.#children.filter((c) => c !== child);
    return true;
  }

  /** HELP and TYPE lines, then every child's samples sorted by label text. */
  render(out: string[]): void {
    if (this.labelNames.length === 0) this.#soloChild();
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`);
    const sorted = [...this.#children].sort((a, b) => compareText(a.labelText, b.labelText));
    for (const child of sorted) this.renderChild(child, out);
  }

  /** Appends the sample lines of one child. */
  protected abstract renderChild(child: C, out: string[]): void;

  #soloChild(): C {
    this.#solo ??= this.#newChild([]);
    return this.#solo;
  }

  #newChild(values: string[]): C {
    const child = this.createChild(Object.freeze(values), labelText(this.labelNames, values));
    this.#children.push(child);
    return child;
  }

  /** Runs only when a child is created, so the hot path never pays for validation. */
  #checkLabels(values: Record<string, string>): void {
    const given = Object.keys(values);
    const missing = this.labelNames.filter((n) => typeof values[n] !== "string");
    const extra = given.filter((n) => !(this.labelNames as readonly string[]).includes(n));
    if (missing.length > 0 || extra.length > 0) {
      throw new Error(
        `metrics: ${this.name}: labels must be exactly [${this.labelNames.join(", ")}], ` +
          `got [${given.join(", ")}]`,
      );
    }
  }
}

/** A series that holds one number: the children of {@linkcode Counter} and {@linkcode Gauge}. */
abstract class ValueChild implements ChildBase {
  readonly labelValues: readonly string[];
  readonly labelText: string;
  /** The current value (a counter's total). */
  value = 0;

  constructor(labelValues: readonly string[], labelText: string) {
    this.labelValues = labelValues;
    this.labelText = labelText;
  }

  /** Adds `n` (default 1). */
  abstract inc(n?: number): void;
}

/** The shared part of {@linkcode Counter} and {@linkcode Gauge}: one sample line per series. */
abstract class ValueFamily<L extends string, C extends ValueChild> extends Family<L, C> {
  /**
   * Adds `n` to the series with `labels` (omit `labels` when the family has none).
   * @throws Error from a counter when `n` is negative (see {@linkcode CounterChild.inc}).
   */
  inc(n = 1, labels?: Labels<L>): void {
    this.series(labels).inc(n);
  }

  protected renderChild(child: C, out: string[]): void {
    out.push(`${this.name}${child.labelText} ${formatValue(child.value)}`);
  }
}

/** One series of a {@linkcode Counter}. */
export class CounterChild extends ValueChild {
  /**
   * Adds `n` (default 1).
   * @throws Error when `n` is negative or not a number: a counter only goes up.
   */
  inc(n = 1): void {
    if (!(n >= 0)) throw new Error(`metrics: counter increment must be >= 0, got ${n}`);
    this.value += n;
  }
}

/** A value that only goes up (requests, retries), reset only by a restart. */
export class Counter<L extends string = never> extends ValueFamily<L, CounterChild> {
  readonly type = "counter" as const;

  protected createChild(values: readonly string[], text: string): CounterChild {
    return new CounterChild(values, text);
  }
}

/** One series of a {@linkcode Gauge}. */
export class GaugeChild extends ValueChild {
  /** Sets the value. */
  set(value: number): void {
    this.value = value;
  }

  /** Adds `n` (default 1). */
  inc(n = 1): void {
    this.value += n;
  }

  /** Subtracts `n` (default 1). */
  dec(n = 1): void {
    this.value -= n;
  }
}

/** A value that goes up and down, set by the program. */
export class Gauge<L extends string = never> extends ValueFamily<L, GaugeChild> {
  readonly type = "gauge" as const;

  /** Sets the series with `labels` (omit `labels` when the family has none). */
  set(value: number, labels?: Labels<L>): void {
    this.series(labels).set(value);
  }

  /** Subtracts `n` from the series with `labels`. */
  dec(n = 1, labels?: Labels<L>): void {
    this.series(labels).dec(n);
  }

  protected createChild(values: readonly string[], text: string): GaugeChild {
    return new GaugeChild(values, text);
  }
}

/** One series of a {@linkcode Histogram}. */
export class HistogramChild implements ChildBase {
  readonly labelValues: readonly string[];
  readonly labelText: string;
  /** Upper bounds, ascending, without +Inf. Shared with the family. */
  readonly bounds: readonly number[];
  /** Observations per bucket, not cumulative; the last slot is the +Inf bucket. */
  readonly counts: Float64Array;
  /** Sum of all observed values. */
  sum = 0;
  /** Number of observations. */
  count = 0;

  constructor(labelValues: readonly string[], labelText: string, bounds: readonly number[]) {
    this.labelValues = labelValues;
    this.labelText = labelText;
    this.bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  /** Records one observation. NaN is ignored: it would poison `_sum` forever. */
  observe(value: number): void {
    if (Number.isNaN(value)) return;
    // A linear scan beats a binary search for a dozen buckets, and most values are small.
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]) i++;
    this.counts[i]++;
    this.sum += value;
    this.count++;
  }
}

/** Distribution of values (durations) in fixed buckets, with their sum and count. */
export class Histogram<L extends string = never> extends Family<L, HistogramChild> {
  readonly type = "histogram" as const;
  /** Upper bounds of the buckets, ascending; `+Inf` is implied. */
  readonly buckets: readonly number[];
  readonly #leTexts: readonly string[];

  constructor(
    name: string,
    help: string,
    labelNames: readonly L[],
    buckets: readonly number[] = DEFAULT_DURATION_BUCKETS,
  ) {
    super(name, help, labelNames);
    if ((labelNames as readonly string[]).includes("le")) {
      throw new Error(`metrics: ${name}: "le" is reserved for histogram buckets`);
    }
    this.buckets = Object.freeze(checkBuckets(name, buckets));
    this.#leTexts = [...this.buckets.map(formatValue), "+Inf"];
  }

  /** Records `value` in the series with `labels` (omit `labels` when the family has none). */
  observe(value: number, labels?: Labels<L>): void {
    this.series(labels).observe(value);
  }

  protected createChild(values: readonly string[], text: string): HistogramChild {
    return new HistogramChild(values, text, this.buckets);
  }

  /** Buckets are cumulative in the format, so counts are summed here, at scrape time. */
  protected renderChild(child: HistogramChild, out: string[]): void {
    let cumulative = 0;
    for (let i = 0; i < child.counts.length; i++) {
      cumulative += child.counts[i];
      const labels = withLabel(child.labelText, "le", this.#leTexts[i]);
      out.push(`${this.name}_bucket${labels} ${formatValue(cumulative)}`);
    }
    out.push(`${this.name}_sum${child.labelText} ${formatValue(child.sum)}`);
    out.push(`${this.name}_count${child.labelText} ${formatValue(child.count)}`);
  }
}

/** Validates bucket bounds: finite, strictly increasing; a trailing +Inf is dropped. */
function checkBuckets(name: string, buckets: readonly number[]): number[] {
  const bounds = buckets[buckets.length - 1] === Infinity ? buckets.slice(0, -1) : [...buckets];
  if (bounds.length === 0) throw new Error(`metrics: ${name}: at least one bucket is needed`);
  bounds.forEach((bound, i) => {
    if (!Number.isFinite(bound) || (i > 0 && bound <= bounds[i - 1])) {
      throw new Error(
        `metrics: ${name}: buckets must be finite and strictly increasing, got [${buckets}]`,
      );
    }
  });
  return bounds;
}

/** A gauge or counter whose series come from a callback run at each scrape. */
class SampledFamily {
  readonly type: "gauge" | "counter";
  readonly name: string;
  readonly help: string;
  readonly #collect: () => Iterable<GaugeSample>;

  constructor(
    type: "gauge" | "counter",
    name: string,
    help: string,
    collect: () => Iterable<GaugeSample>,
  ) {
    checkMetricName(name);
    this.type = type;
    this.name = name;
    this.help = help;
    this.#collect = collect;
  }

  /**
   * Samples are validated here, at scrape time, because they are only known then. A duplicate
   * series would make the whole scrape invalid, so it throws rather than render it.
   */
  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`);
    const lines = new Map<string, string>();
    for (const { labels = {}, value } of this.#collect()) {
      const names = Object.keys(labels);
      for (const label of names) checkLabelName(this.name, label);
      const text = labelText(names, names.map((n) => String(labels[n])));
      if (lines.has(text)) throw new Error(`metrics: ${this.name}: duplicate series ${text}`);
      lines.set(text, `${this.name}${text} ${formatValue(value)}`);
    }
    const keys = [...lines.keys()].sort(compareText);
    for (const key of keys) out.push(lines.get(key)!);
  }
}

/** Anything the registry can render. */
interface Renderable {
  readonly name: string;
  readonly type: MetricType;
  render(out: string[]): void;
}

/**
 * A set of metric families with unique names, rendered together. Families are created through
 * the registry so a name can never be exported twice.
 */
export class Registry {
  #families = new Map<string, Renderable>();
  /** Names a histogram's series use, so a counter cannot collide with `x_count`. */
  #reserved = new Set<string>();

  /** Creates and registers a counter. @throws Error on an invalid or taken name. */
  counter<L extends string = never>(
    name: string,
    help: string,
    labelNames: readonly L[] = [],
  ): Counter<L> {
    return this.#add(new Counter<L>(name, help, labelNames));
  }

  /** Creates and registers a gauge. @throws Error on an invalid or taken name. */
  gauge<L extends string = never>(
    name: string,
    help: string,
    labelNames: readonly L[] = [],
  ): Gauge<L> {
    return this.#add(new Gauge<L>(name, help, labelNames));
  }

  /**
   * Creates and registers a histogram.
   * @param buckets Upper bounds, strictly increasing; `+Inf` is added. @default DEFAULT_DURATION_BUCKETS
   * @throws Error on an invalid or taken name, a label named `le`, or bad buckets.
   */
  histogram<L extends string = never>(
    name: string,
    help: string,
    labelNames: readonly L[] = [],
    buckets: readonly number[] = DEFAULT_DURATION_BUCKETS,
  ): Histogram<L> {
    return this.#add(new Histogram<L>(name, help, labelNames, buckets), [
      `${name}_bucket`,
      `${name}_sum`,
      `${name}_count`,
    ]);
  }

  /**
   * Registers a gauge whose series `collect` returns at each scrape, for values that live
   * elsewhere (backend state, in-flight counts) and would go stale if copied.
   * Errors thrown by `collect` propagate out of {@linkcode Registry.render}.
   */
  gaugeFunc(name: string, help: string, collect: () => Iterable<GaugeSample>): void {
    this.#add(new SampledFamily("gauge", name, help, collect));
  }

  /**
   * Registers a counter whose series `collect` returns at each scrape, for totals another
   * component keeps (the transport's connects). Each value must never decrease.
   */
  counterFunc(name: string, help: string, collect: () => Iterable<GaugeSample>): void {
    this.#add(new SampledFamily("counter", name, help, collect));
  }

  /** All families in the text exposition format 0.0.4, sorted by name, ending in a newline. */
  render(): string {
    const out: string[] = [];
    const names = [...this.#families.keys()].sort(compareText);
    for (const name of names) this.#families.get(name)!.render(out);
    return out.length === 0 ? "" : `${out.join("\n")}\n`;
  }

  #add<T extends Renderable>(family: T, extraNames: string[] = []): T {
    for (const name of [family.name, ...extraNames]) {
      if (this.#families.has(name) || this.#reserved.has(name)) {
        throw new Error(`metrics: metric "${name}" is already registered`);
      }
    }
    this.#families.set(family.name, family);
    for (const name of extraNames) this.#reserved.add(name);
    return family;
  }
}

// ---------------------------------------------------------------------------------------------
// The load balancer's metrics.

/** What {@linkcode LoadBalancerMetrics} reads about each backend of each service at scrape time. */
export interface BackendSnapshot {
  /** The service whose pool holds the backend, used as the `service` label. */
  service: string;
  /** The backend's URL, used as the `backend` label. */
  url: string;
  /** `up`, `down` or `ejected` (the pool's `BackendStatus`). */
  status: string;
  /** Requests in flight to it now (from this service's pool). */
  inflight: number;
  /** Configured weight in this service. */
  weight: number;
}

/** Options for {@linkcode LoadBalancerMetrics}. */
export interface LoadBalancerMetricsOptions {
  /** Version exported as `lb_build_info{version}`. */
  version: string;
  /**
   * Called at every scrape for the backend-state gauges, so they are never stale: every backend
   * of every service (a URL in two services comes twice, once with each service).
   * @default no backends
   */
  backends?: () => Iterable<BackendSnapshot>;
  /** Buckets of `lb_request_duration_seconds`. @default DEFAULT_DURATION_BUCKETS */
  buckets?: readonly number[];
  /**
   * The upstream transport's connections to a backend origin, read at every scrape; undefined
   * for a transport that does not say (fetch). Connections are per origin, not per service, so
   * two services sharing a backend URL show the same figures under each. @default none
   */
  connections?: (backend: string) => ConnectionStats | undefined;
}

/** What the native transport reports of its connections to one backend. */
export interface ConnectionStats {
  /** Connections open now, idle or carrying a request. */
  open: number;
  /** Open connections waiting in the keep-alive pool. */
  idle: number;
  /** Connections made since start-up. */
  connects: number;
  /** Requests sent on a kept-alive connection since start-up. */
  reuses: number;
}

/** Status class label of `lb_requests_total`: the response's class, or `error` for none. */
export type StatusClass = "1xx" | "2xx" | "3xx" | "4xx" | "5xx" | "error";

const STATUS_CLASSES: readonly StatusClass[] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/**
 * The `code` label for a status: `2xx` for 200-299 and so on; `error` when there was no response
 * (undefined) or the number is not a valid HTTP status.
 */
export function statusClass(status: number | undefined): StatusClass {
  if (status === undefined || !(status >= 100 && status <= 599)) return "error";
  return STATUS_CLASSES[Math.floor(status / 100) - 1];
}

/** Why a route's protection answered a request itself. */
export type RefusalReason = "access" | "rate-limit" | "auth" | "auth-busy";

/** `backend` label of a request routed to a service that had no backend for it (503). */
export const NO_BACKEND = "none";

/** `route` label of a request that no route matched. */
export const NO_ROUTE = "none";

/** One counter child per status class, made up front so recording never builds labels. */
function classHandles(
  child: (code: StatusClass) => CounterChild,
): Record<StatusClass, CounterChild> {
  const byClass = {} as Record<StatusClass, CounterChild>;
  for (const code of STATUS_CLASSES) byClass[code] = child(code);
  return byClass;
}

/**
 * Per-backend handles onto the request metrics, made once per service and backend so that
 * recording a request is two `Map.get`s plus two additions.
 */
export class BackendRequestMetrics {
  readonly #byClass: Record<StatusClass, CounterChild>;
  readonly #duration: HistogramChild;

  constructor(
    requests: Counter<"service" | "backend" | "code">,
    duration: Histogram<"service" | "backend">,
    service: string,
    backend: string,
  ) {
    this.#byClass = classHandles((code) => requests.labels({ service, backend, code }));
    this.#duration = duration.labels({ service, backend });
  }

  /**
   * Counts one finished client request and its duration.
   * @param status The response status, or undefined when the backend gave none.
   * @param seconds Time from the request's arrival to the response headers.
   */
  record(status: number | undefined, seconds: number): void {
    this.#byClass[statusClass(status)].inc();
    this.#duration.observe(seconds);
  }
}

/** Per-route handles onto `lb_route_requests_total`, made once per route name. */
export class RouteRequestMetrics {
  readonly #byClass: Record<StatusClass, CounterChild>;

  constructor(requests: Counter<"route" | "code">, route: string) {
    this.#byClass = classHandles((code) => requests.labels({ route, code }));
  }

  /**
   * Counts one client request that this route matched (or that none did).
   * @param status The status sent to the client, or undefined when none was sent.
   */
  record(status: number | undefined): void {
    this.#byClass[statusClass(status)].inc();
  }
}

/**
 * The balancer's metric families on one {@linkcode Registry}. Counters are recorded by the
 * proxy and health checker; backend state is read from `options.backends` at scrape time.
 * Every backend family carries the `service` label: one backend URL may serve several services.
 */
export class LoadBalancerMetrics {
  readonly registry: Registry = new Registry();
  /**
   * `lb_requests_total{service,backend,code}`: requests proxied to a service, by final backend
   * and status class. Requests answered by a route itself (redirect, fixed response) or matched
   * by no route are not here, only in {@linkcode routeRequests}.
   */
  readonly requests: Counter<"service" | "backend" | "code">;
  /** `lb_request_duration_seconds{service,backend}`: arrival to response headers. */
  readonly requestDuration: Histogram<"service" | "backend">;
  /** `lb_route_requests_total{route,code}`: every client request by the route that matched. */
  readonly routeRequests: Counter<"route" | "code">;
  /** `lb_route_refused_total{route,reason}`: requests a route's protection answered itself. */
  readonly routeRefused: Counter<"route" | "reason">;
  /** `lb_retries_total`: attempts after the first. */
  readonly retries: CounterChild;
  /** `lb_retry_budget_exhausted_total`: retries refused by the retry budget. */
  readonly retryBudgetExhausted: CounterChild;
  /** `lb_health_checks_total{service,backend,result}`. */
  readonly healthChecks: Counter<"service" | "backend" | "result">;
  /** `lb_backend_state_transitions_total{service,backend,from,to}`. */
  readonly stateTransitions: Counter<"service" | "backend" | "from" | "to">;
  /** Service -> backend -> handles: two `Map.get`s, no key string built per request. */
  readonly #perBackend = new Map<string, Map<string, BackendRequestMetrics>>();
  readonly #perRoute = new Map<string, RouteRequestMetrics>();

  constructor(options: LoadBalancerMetricsOptions) {
    const r = this.registry;
    this.requests = r.counter(
      "lb_requests_total",
      "Client requests proxied to a service, by the backend that answered last and the response " +
        'status class ("error": no response from it; backend "none": the service had no backend ' +
        "available). Requests a route answered itself or no route matched are not counted here.",
      ["service", "backend", "code"],
    );
    this.requestDuration = r.histogram(
      "lb_request_duration_seconds",
      "Time from a request's arrival to its response headers, in seconds, retries included.",
      ["service", "backend"],
      options.buckets,
    );
    this.routeRequests = r.counter(
      "lb_route_requests_total",
      'Client requests by the route that matched (route "none": no route matched) and the ' +
        'status class of the response ("error": none was sent).',
      ["route", "code"],
    );
    this.routeRefused = r.counter(
      "lb_route_refused_total",
      "Requests a route's protection refused, by reason: access (403), rate-limit (429), " +
        "auth (401), auth-busy (too many password checks waiting).",
      ["route", "reason"],
    );
    this.retries = r.counter("lb_retries_total", "Attempts on another backend after a failure.")
      .labels({});
    this.retryBudgetExhausted = r.counter(
      "lb_retry_budget_exhausted_total",
      "Retries not made because the retry budget was spent.",
    ).labels({});
    this.healthChecks = r.counter(
      "lb_health_checks_total",
      "Active health checks by result (pass or fail).",
      ["service", "backend", "result"],
    );
    this.stateTransitions = r.counter(
      "lb_backend_state_transitions_total",
      "Changes of a backend's status (up, down, ejected, draining, disabled) in a service.",
      ["service", "backend", "from", "to"],
    );
    r.gauge("lb_build_info", "Build information; the value is always 1.", ["version"])
      .set(1, { version: options.version });
    // Exported from the start, so an alert on unmatched requests has a series to watch.
    this.route(NO_ROUTE);
    this.#registerBackendGauges(options.backends ?? (() => []));
    if (options.connections !== undefined) {
      this.#registerConnectionFamilies(options.backends ?? (() => []), options.connections);
    }
  }

  /**
   * Handles for recording requests proxied by `service` to `backend` (a URL, or
   * {@linkcode NO_BACKEND} when the service had none available); cached.
   */
  backend(service: string, backend: string): BackendRequestMetrics {
    let byBackend = this.#perBackend.get(service);
    if (byBackend === undefined) {
      byBackend = new Map();
      this.#perBackend.set(service, byBackend);
    }
    let handles = byBackend.get(backend);
    if (handles === undefined) {
      handles = new BackendRequestMetrics(
        this.requests,
        this.requestDuration,
        service,
        backend,
      );
      byBackend.set(backend, handles);
    }
    return handles;
  }

  /** Handles for recording requests matched by the route `name` (or {@linkcode NO_ROUTE}); cached. */
  route(name: string): RouteRequestMetrics {
    let handles = this.#perRoute.get(name);
    if (handles === undefined) {
      handles = new RouteRequestMetrics(this.routeRequests, name);
      this.#perRoute.set(name, handles);
    }
    return handles;
  }

  /** Counts one request `route`'s protection refused for `reason`. */
  refused(route: string, reason: RefusalReason): void {
    this.routeRefused.inc(1, { route, reason });
  }

  /** Counts one health check of `backend` in `service`. */
  healthCheck(service: string, backend: string, passed: boolean): void {
    this.healthChecks.inc(1, { service, backend, result: passed ? "pass" : "fail" });
  }

  /** Counts one status change of `backend` in `service` (the pool's status-change listener). */
  stateTransition(service: string, backend: string, from: string, to: string): void {
    this.stateTransitions.inc(1, { service, backend, from, to });
  }

  /** The exposition text; serve it with {@linkcode PROMETHEUS_CONTENT_TYPE}. */
  render(): string {
    return this.registry.render();
  }

  #registerBackendGauges(backends: () => Iterable<BackendSnapshot>): void {
    const gauge = (name: string, help: string, value: (b: BackendSnapshot) => number) =>
      this.registry.gaugeFunc(name, help, function* () {
        for (const b of backends()) {
          yield { labels: { service: b.service, backend: b.url }, value: value(b) };
        }
      });
    gauge("lb_backend_inflight", "Requests in flight to the backend.", (b) => b.inflight);
    gauge("lb_backend_up", "1 when the backend's status is up, else 0.", (b) => is(b, "up"));
    gauge("lb_backend_ejected", "1 while the backend is ejected, else 0.", (b) => is(b, "ejected"));
    gauge("lb_backend_weight", "Configured weight of the backend.", (b) => b.weight);
  }

  #registerConnectionFamilies(
    backends: () => Iterable<BackendSnapshot>,
    connections: (backend: string) => ConnectionStats | undefined,
  ): void {
    type Field = keyof ConnectionStats;
    const sample = (service: string, backend: string, value: number) => ({
      labels: { service, backend },
      value,
    });
    const gauge = (name: string, help: string, field: Field) =>
      this.registry.gaugeFunc(name, help, function* () {
        for (const b of backends()) {
          const stats = connections(b.url);
          if (stats !== undefined) yield sample(b.service, b.url, stats[field]);
        }
      });
    // Removed backends' and services' counter series stay: counters never vanish nor restart.
    const counted = new Map<string, { service: string; url: string }>();
    const counter = (name: string, help: string, field: Field) =>
      this.registry.counterFunc(name, help, function* () {
        for (const { service, url } of backends()) {
          counted.set(`${url} ${service}`, { service, url }); // a URL holds no space
        }
        for (const { service, url } of counted.values()) {
          const stats = connections(url);
          if (stats !== undefined) yield sample(service, url, stats[field]);
        }
      });
    const shared = " Per backend origin: services sharing the origin show the same figures.";
    gauge("lb_backend_connections_open", "Open connections." + shared, "open");
    gauge("lb_backend_connections_idle", "Kept-alive idle connections." + shared, "idle");
    counter("lb_backend_connects_total", "Connections made." + shared, "connects");
    counter(
      "lb_backend_connection_reuses_total",
      "Requests sent on a kept-alive connection." + shared,
      "reuses",
    );
  }
}

/** 1 when `backend` has `status`, else 0: a gauge per status rather than a string label. */
function is(backend: BackendSnapshot, status: string): number {
  return backend.status === status ? 1 : 0;
}
