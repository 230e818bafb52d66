/**
 * @module
 * The backend pool: the set of backends, their availability, and selection through a policy.
 *
 * Availability (health with rise/fall hysteresis, passive marking) lives here; *which* available
 * backend serves a request is the policy's job. The pool does not know how health is checked
 * (lib/health.ts reports results into it) nor how requests are sent (lib/proxy.ts).
 */

/** Health as the balancer sees it. A backend starts `up` so traffic flows at once on start-up. */
export type HealthState = "up" | "down";

/** What configuration says about one backend. */
export interface BackendSpec {
  /** Origin only, e.g. `http://127.0.0.1:8081` (no path, query or credentials). */
  url: string;
  /** Relative share of traffic; 0 receives nothing. @default 1 */
  weight: number;
}

/** One backend and its live state. Counters are plain fields: the request path must stay cheap. */
export class Backend {
  /** Origin string used to build upstream URLs, e.g. `http://127.0.0.1:8081`. */
  readonly url: string;
  readonly weight: number;
  state: HealthState = "up";
  /** Consecutive passing checks while down (rise) or failing checks while up (fall). */
  streak = 0;
  /** Requests sent and not yet answered with headers. */
  inflight = 0;
  /** Attempts sent to this backend. */
  requests = 0;
  /** Attempts that failed before response headers (connect errors, resets, timeouts). */
  failures = 0;
  /** Last active check: whether it passed, when (epoch ms) and why it failed. */
  lastCheck: { ok: boolean; at: number; detail: string } | undefined;

  constructor(spec: BackendSpec) {
    this.url = spec.url;
    this.weight = spec.weight;
  }

  /** Whether the pool may offer this backend to a policy. */
  get available(): boolean {
    return this.state === "up" && this.weight > 0;
  }
}

/** Per-request facts a policy may use (hash and sticky policies key on these). */
export interface SelectContext {
  /** The client's address as seen on the socket. */
  clientIp: string;
  /** The incoming request (headers, path); read-only. */
  request: Request;
}

/**
 * A balancing algorithm. `select` gets the available backends not yet tried for this request,
 * in pool order (never empty), and returns one of them. It keeps only its own cursor/state.
 */
export interface Policy {
  select(candidates: readonly Backend[], context: SelectContext): Backend;
}

/** Called when a backend's health flips; `reason` is human-readable. */
export type StateChangeListener = (
  backend: Backend,
  from: HealthState,
  to: HealthState,
  reason: string,
) => void;

/** Pool options. */
export interface PoolOptions {
  /** Consecutive passing checks that bring a down backend back. @default 2 */
  rise: number;
  /** Consecutive failing checks that take an up backend down. @default 3 */
  fall: number;
  /** The balancing algorithm. */
  policy: Policy;
  /** Told about every state flip (logging, later alerts and metrics). @default none */
  onStateChange?: StateChangeListener;
}

/** The set of backends with health bookkeeping and policy-driven selection. */
export class Pool {
  readonly backends: readonly Backend[];
  #available: Backend[];
  readonly #options: PoolOptions;

  constructor(specs: readonly BackendSpec[], options: PoolOptions) {
    this.backends = specs.map((spec) => new Backend(spec));
    this.#options = options;
    this.#available = this.backends.filter((b) => b.available);
  }

  /** Backends currently offered to the policy. Rebuilt on state changes, not per request. */
  get available(): readonly Backend[] {
    return this.#available;
  }

  /**
   * Chooses a backend for one attempt, skipping those in `tried` (earlier attempts of the same
   * request). Returns undefined when nothing is left.
   */
  pick(context: SelectContext, tried?: ReadonlySet<Backend>): Backend | undefined {
    let candidates: readonly Backend[] = this.#available;
    if (tried !== undefined && tried.size > 0) {
      candidates = candidates.filter((b) => !tried.has(b));
    }
    if (candidates.length === 0) return undefined;
    return this.#options.policy.select(candidates, context);
  }

  /** Records an active health check result, flipping state after rise/fall in a row. */
  reportCheck(backend: Backend, ok: boolean, detail: string, now = Date.now()): void {
    backend.lastCheck = { ok, at: now, detail };
    const healthyNow = backend.state === "up";
    if (ok === healthyNow) {
      backend.streak = 0;
      return;
    }
    backend.streak++;
    const needed = healthyNow ? this.#options.fall : this.#options.rise;
    if (backend.streak >= needed) {
      const reason = ok
        ? `${backend.streak} passing checks`
        : `${backend.streak} failed checks, last: ${detail}`;
      this.#setState(backend, ok ? "up" : "down", reason);
    }
  }

  /**
   * A request could not even connect: the backend is marked down at once (no waiting for `fall`
   * checks) and comes back only through `rise` passing health checks.
   */
  reportConnectFailure(backend: Backend, detail: string): void {
    if (backend.state === "down") return;
    this.#setState(backend, "down", `connection failed: ${detail}`);
  }

  #setState(backend: Backend, to: HealthState, reason: string): void {
    const from = backend.state;
    backend.state = to;
    backend.streak = 0;
    this.#available = this.backends.filter((b) => b.available);
    this.#options.onStateChange?.(backend, from, to, reason);
  }
}
