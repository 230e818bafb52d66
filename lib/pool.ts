/**
 * @module
 * The backend pool: the set of backends, their availability, and selection through a policy.
 *
 * Availability lives here and nowhere else: health with rise/fall hysteresis (reported by
 * lib/health.ts), passive outlier ejection (reported by the proxy after each attempt), slow start,
 * per-backend concurrency limits and panic mode. *Which* available backend serves a request is
 * the policy's job. The pool does not know how health is checked or how requests are sent.
 *
 * The array of available backends is rebuilt only when something changes (a flip, an ejection
 * ending, a slow-start step), never per request, and the policy is told then
 * ({@linkcode Policy.rebuild}), as Pingora's `BackendSelection::build` is.
 */

import { OutlierDetector, type OutlierOptions, panicMode } from "./outlier.ts";
import { LatencyWindow } from "./stats.ts";
import type { Failure } from "./retry.ts";

/** Health as active checks (and refused connects) established it. */
export type HealthState = "up" | "down";

/**
 * An operator's switch: `enabled` takes traffic when healthy; `draining` takes no new requests
 * and is removed (when asked) once its in-flight requests finish; `disabled` takes none.
 */
export type AdminState = "enabled" | "draining" | "disabled";

/**
 * What an operator sees: the admin state when it is not `enabled`, else health, with
 * `ejected` for a healthy backend ejected as an outlier.
 */
export type BackendStatus = "up" | "down" | "ejected" | "draining" | "disabled";

/** Slow start ramps a backend's share in this many equal steps. */
export const SLOW_START_STEPS = 10;

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
  /** Configured relative share (changed through {@linkcode Pool.setWeight}). */
  weight: number;
  /**
   * The share policies use: `weight × SLOW_START_STEPS` normally, less while slow start ramps
   * up. Integer, so weighted schedules stay exact.
   */
  effectiveWeight: number;
  state: HealthState = "up";
  /** The operator's switch; see {@linkcode AdminState}. */
  admin: AdminState = "enabled";
  /** Set when removal was asked for: the backend leaves the pool once nothing is in flight. */
  removing = false;
  /** Consecutive passing checks while down (rise) or failing checks while up (fall). */
  streak = 0;
  /** When the current passive ejection ends (monotonic ms); 0 when not ejected. */
  ejectedUntil = 0;
  /** When the backend last became available (monotonic ms), for slow start. */
  availableSince: number;
  /** Requests sent to this backend whose responses have not finished. */
  inflight = 0;
  /** Attempts sent to this backend. */
  requests = 0;
  /** Attempts that failed (connect errors, resets, timeouts). */
  failures = 0;
  /** Responses with a 5xx status. */
  serverErrors = 0;
  /** Recent latencies to response headers (ms). */
  readonly latency = new LatencyWindow();
  /** Last active check: whether it passed, when (epoch ms) and why it failed. */
  lastCheck: { ok: boolean; at: number; detail: string } | undefined;

  constructor(spec: BackendSpec, now: number = performance.now()) {
    this.url = spec.url;
    this.weight = spec.weight;
    this.effectiveWeight = spec.weight * SLOW_START_STEPS;
    this.availableSince = now;
  }

  /** Health and ejection combined, as shown to operators. */
  get status(): BackendStatus {
    if (this.admin !== "enabled") return this.admin;
    if (this.state === "down") return "down";
    return this.ejectedUntil > 0 ? "ejected" : "up";
  }
}

/** Per-request facts a policy may use (hash and sticky policies key on these). */
export interface SelectContext {
  /** The client's address as seen on the socket. */
  clientIp: string;
  /** Request headers (read-only), e.g. for a header or cookie hash key. */
  headers: Headers;
  /** The validated path and query (never the raw `req.url`, whose host the client controls). */
  path: string;
}

/** Something that learns from attempt outcomes; the attempt loop reports to it. */
export interface LatencyObserver {
  /** An attempt got response headers after `latencyMs`. */
  observe(backend: Backend, latencyMs: number): void;
  /** An attempt failed before response headers (connect error, reset, timeout). */
  observeFailure(backend: Backend): void;
}

/**
 * Says whether a backend may serve this attempt (not tried yet, below its concurrency limit).
 * The pool's own function, reused for every pick, so a pick allocates nothing.
 */
export type Accept = (backend: Backend) => boolean;

/**
 * A balancing algorithm, as Pingora's `BackendSelection`: the pool calls
 * {@linkcode Policy.rebuild} whenever the set it offers changes, and per request
 * {@linkcode Policy.select} only picks from that set. A policy serves one pool; it keeps only its
 * own cursor/state and reads `effectiveWeight` for shares.
 */
export interface Policy {
  /**
   * The backends offered from now on, in pool order (possibly empty). Called at start-up and
   * whenever a backend joins or leaves the set or an effective weight changes, never per request.
   */
  rebuild(backends: readonly Backend[]): void;
  /**
   * One of the last rebuilt backends for which `accept` is true (every one when `accept` is
   * undefined), or undefined when there is none: "try another backend" lives in `accept`,
   * outside the algorithm (Pingora's `select_with`).
   */
  select(context: SelectContext, accept?: Accept): Backend | undefined;
  /**
   * Told after `backend.inflight` changed, for policies that index backends by load
   * (least-conn). @default none
   */
  loadChanged?(backend: Backend): void;
  /** Set on policies that learn from attempt outcomes (p2c-ewma). @default undefined */
  readonly latencyObserver?: LatencyObserver;
}

/** Called when a backend's status flips; `reason` is human-readable. */
export type StatusChangeListener = (
  backend: Backend,
  from: BackendStatus,
  to: BackendStatus,
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
  /** Told about every status flip (logging, alerts, metrics). @default none */
  onStatusChange?: StatusChangeListener;
  /**
   * Told about every health flip, also while the status shows the operator's switch (a backend
   * draining or disabled): worker threads report what they found out. @default none
   */
  onHealthChange?: (backend: Backend, to: HealthState, reason: string) => void;
  /** Told when a backend joins the pool after start-up (sticky tokens). @default none */
  onAdd?: (backend: Backend) => void;
  /** Told when a removed backend has left the pool (its connections can close). @default none */
  onRemove?: (backend: Backend) => void;
  /** Ramp time of a backend that becomes available (ms); 0 is off. @default 0 */
  slowStartMs?: number;
  /** Concurrent requests one backend may have; a full backend is skipped. @default Infinity */
  maxConns?: number;
  /** Passive outlier detection; undefined disables ejection. @default undefined */
  outlier?: OutlierOptions;
  /**
   * Panic threshold (percent): when ejections leave fewer than this share of the healthy
   * backends, ejections are ignored. 0 disables. @default 50
   */
  panicThresholdPercent?: number;
  /** Monotonic clock in ms. @default performance.now */
  now?: () => number;
}

/** The set of backends with availability bookkeeping and policy-driven selection. */
export class Pool {
  #backends: Backend[];
  #options: PoolOptions;
  readonly #now: () => number;
  #outlier: OutlierDetector<Backend> | undefined;
  #maxConns: number;
  #available: Backend[] = [];
  /** The policy last told the available set; a reload may bring a new one. */
  #rebuilt: Policy | undefined;
  /** Earlier attempts of the pick in progress, read by {@linkcode Pool.#accept}. */
  #tried: ReadonlySet<Backend> | undefined;
  /** One function for every filtered pick, so that picks allocate no closure. */
  readonly #accept: Accept = (backend) =>
    backend.inflight < this.#maxConns && !(this.#tried?.has(backend) ?? false);
  /** When the available set must next be recomputed (an ejection ends, a ramp step). */
  #nextRefresh = Infinity;
  /** Open {@linkcode Pool.batch} calls: refreshes wait for the outermost to end. */
  #batchDepth = 0;
  /** The effective weights the policy last saw, by position in #available. */
  #rebuiltWeights: number[] = [];

  constructor(specs: readonly BackendSpec[], options: PoolOptions) {
    this.#options = options;
    this.#now = options.now ?? (() => performance.now());
    this.#outlier = options.outlier ? new OutlierDetector<Backend>(options.outlier) : undefined;
    this.#maxConns = options.maxConns ?? Infinity;
    const now = this.#now();
    // Backends present at start-up take their full share at once: slow start is for newcomers.
    this.#backends = specs.map((spec) => new Backend(spec, now - (options.slowStartMs ?? 0)));
    this.#refresh(now);
  }

  /**
   * Applies new settings (a reload): backends keep their health, counters and in-flight
   * requests. Failure streaks and ejections in force carry over to new ejection settings.
   */
  reconfigure(
    settings: Pick<
      PoolOptions,
      "rise" | "fall" | "policy" | "slowStartMs" | "maxConns" | "outlier" | "panicThresholdPercent"
    >,
  ): void {
    const outlierChanged = JSON.stringify(settings.outlier) !==
      JSON.stringify(this.#options.outlier);
    this.#options = { ...this.#options, ...settings };
    this.#maxConns = settings.maxConns ?? Infinity;
    if (outlierChanged) {
      const previous = this.#outlier;
      this.#outlier = settings.outlier ? new OutlierDetector<Backend>(settings.outlier) : undefined;
      if (previous !== undefined) this.#outlier?.adopt(previous);
    }
    this.#refresh(this.#now());
  }

  /** The balancing policy in force. */
  get policy(): Policy {
    return this.#options.policy;
  }

  /** Every backend in the pool, in order, whatever its state. Replaced when the set changes. */
  get backends(): readonly Backend[] {
    return this.#backends;
  }

  /** The backend with this origin, if it is in the pool. */
  find(url: string): Backend | undefined {
    return this.#backends.find((b) => b.url === url);
  }

  /**
   * Adds a backend. It starts up (health checks will judge it) and, with slow start, ramps its
   * share from the first step. A backend still draining after a removal is revived instead: the
   * same object, enabled again with `spec`'s weight, keeping its in-flight requests (so its
   * concurrency limit holds), counters and health, as Envoy keeps a host whose address comes
   * back. Throws when the URL is already in the pool and not being removed.
   */
  add(spec: BackendSpec): Backend {
    const existing = this.find(spec.url);
    if (existing !== undefined && !existing.removing) {
      throw new Error(`backend ${spec.url} is already in the pool`);
    }
    if (existing !== undefined) return this.#revive(existing, spec);
    const backend = new Backend(spec, this.#now());
    this.#backends = [...this.#backends, backend];
    this.#refresh(this.#now());
    this.#options.onAdd?.(backend);
    return backend;
  }

  /** Takes back a backend that was draining to leave (see {@linkcode Pool.add}). */
  #revive(backend: Backend, spec: BackendSpec): Backend {
    this.batch(() => {
      backend.removing = false;
      backend.weight = spec.weight;
      this.setAdmin(backend, "enabled", "added again");
    });
    this.#options.onAdd?.(backend);
    return backend;
  }

  /**
   * Removes a backend gracefully: it drains (no new requests) and leaves the pool when its
   * in-flight requests are done, at once if there are none. Returns false for an unknown URL.
   */
  remove(url: string): boolean {
    const backend = this.find(url);
    if (backend === undefined || backend.removing) return backend !== undefined;
    backend.removing = true;
    this.setAdmin(backend, "draining", "removed");
    if (backend.inflight === 0) this.#finishRemoval(backend);
    return true;
  }

  /** Sets the operator's switch of `backend`, announcing the status change. */
  setAdmin(backend: Backend, admin: AdminState, reason: string): void {
    if (backend.removing && admin !== "draining") return;
    const before = backend.status;
    if (backend.admin === "enabled" && admin === "enabled") return;
    if (backend.admin !== "enabled" && admin === "enabled") backend.availableSince = this.#now();
    backend.admin = admin;
    this.#refresh(this.#now());
    this.#announce(backend, before, reason);
  }

  /**
   * Runs `change` (several adds, removes or weight changes) and recomputes the available set and
   * rebuilds the policy once at the end, not once per backend.
   */
  batch<T>(change: () => T): T {
    this.#batchDepth++;
    try {
      return change();
    } finally {
      if (--this.#batchDepth === 0) this.#refresh(this.#now());
    }
  }

  /** Changes `backend`'s weight; policies see it from the next pick. */
  setWeight(backend: Backend, weight: number): void {
    backend.weight = weight;
    this.#refresh(this.#now());
  }

  /**
   * Makes the pool match `specs` (a reload): backends with a known URL keep their health,
   * counters and in-flight requests (weights are updated); new ones are added; missing ones
   * are removed gracefully, and revived when wanted again while they drain. Returns what
   * changed.
   */
  update(
    specs: readonly BackendSpec[],
  ): { added: string[]; removed: string[]; reweighted: string[] } {
    return this.batch(() => this.#update(specs));
  }

  #update(
    specs: readonly BackendSpec[],
  ): { added: string[]; removed: string[]; reweighted: string[] } {
    const wanted = new Map(specs.map((spec) => [spec.url, spec]));
    const change = { added: [] as string[], removed: [] as string[], reweighted: [] as string[] };
    for (const backend of [...this.#backends]) {
      const spec = wanted.get(backend.url);
      if (spec === undefined) {
        if (!backend.removing) change.removed.push(backend.url);
        this.remove(backend.url);
      } else if (backend.removing) {
        // Removed earlier, wanted again: the draining backend is revived with its requests.
        this.add(spec);
        change.added.push(spec.url);
        wanted.delete(spec.url);
      } else {
        if (spec.weight !== backend.weight) {
          this.setWeight(backend, spec.weight);
          change.reweighted.push(spec.url);
        }
        wanted.delete(spec.url);
      }
    }
    for (const spec of wanted.values()) {
      this.add(spec);
      change.added.push(spec.url);
    }
    return change;
  }

  /** Counts a request sent to `backend`; pair with {@linkcode Pool.release}. */
  acquire(backend: Backend): void {
    backend.inflight++;
    backend.requests++;
    this.#options.policy.loadChanged?.(backend);
  }

  /** A request to `backend` has finished; a removed backend leaves once it has none left. */
  release(backend: Backend): void {
    backend.inflight--;
    this.#options.policy.loadChanged?.(backend);
    if (backend.removing && backend.inflight === 0) this.#finishRemoval(backend);
  }

  #finishRemoval(backend: Backend): void {
    if (!this.#backends.includes(backend)) return;
    this.#backends = this.#backends.filter((b) => b !== backend);
    this.#outlier?.forget(backend);
    this.#refresh(this.#now());
    this.#options.onRemove?.(backend);
  }

  /** Backends currently offered to the policy. Rebuilt on changes, not per request. */
  get available(): readonly Backend[] {
    return this.#available;
  }

  /**
   * Chooses a backend for one attempt, skipping those in `tried` (earlier attempts of the same
   * request) and those at their concurrency limit. Returns undefined when nothing is left.
   * `preferred` is given the available backends; its choice, when it is neither tried nor full,
   * wins over the policy (sticky sessions).
   */
  pick(
    context: SelectContext,
    tried?: ReadonlySet<Backend>,
    preferred?: (available: readonly Backend[]) => Backend | undefined,
  ): Backend | undefined {
    const accept = this.#acceptFor(tried);
    const chosen = preferred?.(this.#available);
    const backend = chosen !== undefined && (accept === undefined || accept(chosen))
      ? chosen
      : this.#available.length === 0
      ? undefined
      : this.#options.policy.select(context, accept);
    // The set belongs to one request: it must not outlive the pick.
    this.#tried = undefined;
    return backend;
  }

  /**
   * Whether {@linkcode Pool.pick} would find a backend now, given the same `tried`. Lets the
   * caller skip a retry that has nowhere to go before it spends retry budget and backoff on it.
   */
  hasCandidate(tried?: ReadonlySet<Backend>): boolean {
    const accept = this.#acceptFor(tried);
    const found = accept === undefined ? this.#available.length > 0 : this.#available.some(accept);
    this.#tried = undefined;
    return found;
  }

  /**
   * Brings the available set up to date and returns the filter for one pick: undefined when
   * nothing is tried and there is no concurrency limit, the common case.
   */
  #acceptFor(tried: ReadonlySet<Backend> | undefined): Accept | undefined {
    const now = this.#now();
    if (now >= this.#nextRefresh) this.#refresh(now);
    const filterTried = tried !== undefined && tried.size > 0;
    if (!filterTried && this.#maxConns === Infinity) return undefined;
    this.#tried = filterTried ? tried : undefined;
    return this.#accept;
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
      this.#setHealth(backend, ok ? "up" : "down", reason);
    }
  }

  /**
   * A request could not even connect: the backend is marked down at once (no waiting for `fall`
   * checks) and comes back only through `rise` passing health checks.
   */
  reportConnectFailure(backend: Backend, detail: string): void {
    if (backend.state === "down") return;
    this.#setHealth(backend, "down", `connection failed: ${detail}`);
  }

  /**
   * Sets `backend`'s health as another component decided it, without rise/fall: a worker
   * thread applying the main thread's verdict (lib/worker_thread.ts).
   */
  setHealth(backend: Backend, to: HealthState, reason: string): void {
    if (backend.state !== to) this.#setHealth(backend, to, reason);
  }

  /**
   * An attempt got an answer with `status` after `latencyMs`: recorded, and told to outlier
   * detection as a success, or as a failure when it is a 5xx and `failOn5xx`.
   */
  attemptAnswered(backend: Backend, status: number, latencyMs: number, failOn5xx: boolean): void {
    backend.latency.record(latencyMs);
    if (status >= 500) {
      backend.serverErrors++;
      if (failOn5xx) return this.reportFailure(backend, `HTTP ${status}`);
    }
    this.reportSuccess(backend);
  }

  /**
   * An attempt failed by the backend's doing (never pass a client's hang-up): counted, told to
   * outlier detection, and a refused or broken connect marks the backend down at once. A connect
   * timeout is only counted: a saturated balancer times out connects to healthy backends, and
   * marking them down or ejecting them turned a slowdown into failed requests.
   */
  attemptFailed(backend: Backend, failure: Failure): void {
    backend.failures++;
    // Under saturation Deno delivers completed connects seconds late (docs/performance.md):
    // health checks judge a backend that no longer answers.
    if (failure.kind === "connect" && failure.timedOut === true) return;
    if (failure.kind === "connect") this.reportConnectFailure(backend, failure.detail);
    this.reportFailure(backend, failure.detail);
  }

  /** An attempt got a response that counts as success for outlier detection. */
  reportSuccess(backend: Backend): void {
    this.#outlier?.recordSuccess(backend);
  }

  /** An attempt failed (gateway error, or a 5xx when those count): may eject the backend. */
  reportFailure(backend: Backend, detail: string): void {
    if (this.#outlier === undefined) return;
    const now = this.#now();
    if (!this.#outlier.recordFailure(backend, now, this.backends.length)) return;
    const until = this.#outlier.ejectedUntil(backend, now)!;
    const before = backend.status;
    backend.ejectedUntil = until;
    // Tenths: ejections may be shorter than a second, which whole seconds would show as "0s".
    const seconds = Number(((until - now) / 1000).toFixed(1));
    this.#refresh(now);
    this.#announce(backend, before, `outlier: ${detail}; ejected for ${seconds}s`);
  }

  #setHealth(backend: Backend, to: HealthState, reason: string): void {
    const before = backend.status;
    backend.state = to;
    backend.streak = 0;
    const now = this.#now();
    if (to === "up") backend.availableSince = now;
    this.#refresh(now);
    this.#options.onHealthChange?.(backend, to, reason);
    this.#announce(backend, before, reason);
  }

  #announce(backend: Backend, from: BackendStatus, reason: string): void {
    const to = backend.status;
    if (from !== to) this.#options.onStatusChange?.(backend, from, to, reason);
  }

  /**
   * Recomputes ejection expiry, slow-start weights and the available array, and when the next
   * recomputation is due, and tells the policy when the set or a weight changed. Runs on changes
   * and at those due times only.
   */
  #refresh(now: number): void {
    if (this.#batchDepth > 0) return;
    let next = Infinity;
    const slowStart = this.#options.slowStartMs ?? 0;
    for (const backend of this.#backends) {
      if (backend.ejectedUntil > 0) {
        if (now >= backend.ejectedUntil) {
          backend.ejectedUntil = 0;
          backend.availableSince = now;
          if (backend.state === "up") {
            this.#options.onStatusChange?.(backend, "ejected", "up", "ejection ended");
          }
        } else {
          next = Math.min(next, backend.ejectedUntil);
        }
      }
      let steps = SLOW_START_STEPS;
      if (slowStart > 0) {
        const elapsed = now - backend.availableSince;
        if (elapsed < slowStart) {
          const due = (step: number) =>
            backend.availableSince + (step * slowStart) / SLOW_START_STEPS;
          // At least one step at once, so a newcomer gets some traffic to prove itself.
          steps = Math.max(1, Math.floor((elapsed / slowStart) * SLOW_START_STEPS));
          // The division can round to just under a step at the very time `due` named for it;
          // the step would then be missed and every pick at that time would rebuild the array.
          if (now >= due(steps + 1)) steps++;
          if (steps < SLOW_START_STEPS) next = Math.min(next, due(steps + 1));
        }
      }
      backend.effectiveWeight = backend.weight * steps;
    }
    this.#nextRefresh = next;
    const healthy = this.#backends.filter((b) =>
      b.state === "up" && b.weight > 0 && b.admin === "enabled"
    );
    const unejected = healthy.filter((b) => b.ejectedUntil === 0);
    // Panic: if ejections took out too many healthy backends, passive signals are more likely
    // wrong than the backends (a shared blip): ignore them. Health-check verdicts still hold.
    const panic = panicMode(
      unejected.length,
      healthy.length,
      this.#options.panicThresholdPercent ?? 50,
    );
    const available = panic ? healthy : unejected;
    const policy = this.#options.policy;
    // Only what the policy sees counts: a ramp step of a backend that is down rebuilds nothing.
    if (
      policy !== this.#rebuilt || !sameMembers(available, this.#available) ||
      available.some((b, i) => b.effectiveWeight !== this.#rebuiltWeights[i])
    ) {
      this.#available = available;
      this.#rebuiltWeights = available.map((b) => b.effectiveWeight);
      this.#rebuilt = policy;
      policy.rebuild(available);
    }
  }
}

/** Whether two arrays hold the same backends in the same order. */
function sameMembers(a: readonly Backend[], b: readonly Backend[]): boolean {
  return a.length === b.length && a.every((backend, i) => backend === b[i]);
}
