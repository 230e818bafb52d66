/**
 * @module
 * Passive outlier detection: a backend whose real requests keep failing is ejected (taken out of
 * rotation) for a while, without waiting for active health checks to notice. A pure state machine
 * driven by the caller's clock, with no timers, so tests step through it exactly.
 *
 * Also {@linkcode panicMode}: when too few backends are healthy, balancing across all of them
 * beats failing every request.
 */

/** Options for {@linkcode OutlierDetector}. */
export interface OutlierOptions {
  /** Failed attempts in a row that eject a backend. @default 5 */
  consecutiveFailures?: number;
  /** Length of a first ejection, in ms; the n-th ejection lasts n times as long. @default 30000 */
  baseEjectionMs?: number;
  /** Longest an ejection may last, in ms. @default 300000 */
  maxEjectionMs?: number;
  /**
   * Most of the backends that may be ejected at once, in percent. Ejecting more would shift their
   * load onto too few survivors, and many backends failing together usually means the fault is
   * shared (the network, a dependency) rather than in the backends. @default 50
   */
  maxEjectedPercent?: number;
}

/** One backend's record. */
interface OutlierState {
  /** Failures in a row since the last success or ejection. */
  streak: number;
  /** The ejection multiplier: ejections so far, less credit for time back in service. */
  ejections: number;
  /** When the current or last ejection ends (ms on the caller's clock); -Infinity if never. */
  ejectedUntil: number;
}

/**
 * Counts consecutive failures per backend and ejects outliers. A backend is any object: the
 * detector keys its records by identity and reads nothing of it, so it needs nothing of the pool.
 *
 * The n-th ejection lasts `baseEjectionMs × n`, capped at `maxEjectionMs`, so a backend that
 * keeps failing is tried less and less often. The multiplier is not a lifetime count: when a
 * backend is ejected again, it first loses one for every `baseEjectionMs` it spent back in
 * service since the last ejection ended, so a backend that failed once a week ago starts again at
 * the base duration.
 *
 * Failures reported while a backend is ejected (requests that were already in flight) are
 * ignored: they say nothing new and must not extend the ejection.
 */
export class OutlierDetector<Backend extends object = object> {
  readonly #threshold: number;
  readonly #baseMs: number;
  readonly #maxMs: number;
  readonly #maxPercent: number;
  readonly #states = new Map<Backend, OutlierState>();
  /** Backends whose ejection may still be running; expired ones are pruned when counted. */
  readonly #ejected = new Set<Backend>();

  /** Validates the options; throws an Error naming a value that is out of range. */
  constructor(options: OutlierOptions = {}) {
    const {
      consecutiveFailures = 5,
      baseEjectionMs = 30_000,
      maxEjectionMs = 300_000,
      maxEjectedPercent = 50,
    } = options;
    if (!Number.isInteger(consecutiveFailures) || consecutiveFailures < 1) {
      throw new Error(
        `outlier: consecutiveFailures must be a whole number >= 1, got ${consecutiveFailures}`,
      );
    }
    if (!(baseEjectionMs > 0 && Number.isFinite(baseEjectionMs))) {
      throw new Error(`outlier: baseEjectionMs must be > 0 ms, got ${baseEjectionMs}`);
    }
    if (!(maxEjectionMs >= baseEjectionMs && Number.isFinite(maxEjectionMs))) {
      throw new Error(
        `outlier: maxEjectionMs must be >= baseEjectionMs (${baseEjectionMs}), got ${maxEjectionMs}`,
      );
    }
    if (!(maxEjectedPercent >= 0 && maxEjectedPercent <= 100)) {
      throw new Error(`outlier: maxEjectedPercent must be 0-100, got ${maxEjectedPercent}`);
    }
    this.#threshold = consecutiveFailures;
    this.#baseMs = baseEjectionMs;
    this.#maxMs = maxEjectionMs;
    this.#maxPercent = maxEjectedPercent;
  }

  /**
   * Takes over `previous`'s streaks and ejections (a reload with new settings): ejections in
   * force keep counting toward `maxEjectedPercent`, and a streak goes on.
   */
  adopt(previous: OutlierDetector<Backend>): void {
    for (const [backend, state] of previous.#states) this.#states.set(backend, state);
    for (const backend of previous.#ejected) this.#ejected.add(backend);
  }

  /** An attempt to `backend` succeeded: its failure streak starts over. */
  recordSuccess(backend: Backend): void {
    const state = this.#states.get(backend);
    if (state !== undefined) state.streak = 0;
  }

  /**
   * An attempt to `backend` failed at `now` (ms). Returns true when this failure ejects it.
   *
   * @param totalBackends How many backends the pool has (available or not), the base for
   * `maxEjectedPercent`. Passed per call because the set can change on reload.
   */
  recordFailure(backend: Backend, now: number, totalBackends: number): boolean {
    let state = this.#states.get(backend);
    if (state === undefined) {
      state = { streak: 0, ejections: 0, ejectedUntil: -Infinity };
      this.#states.set(backend, state);
    }
    if (now < state.ejectedUntil) return false;
    state.streak++;
    if (state.streak < this.#threshold) return false;
    // The streak is kept when the cap refuses, so the next failure tries again once room frees.
    if ((this.ejectedCount(now) + 1) * 100 > this.#maxPercent * totalBackends) return false;
    if (state.ejections > 0) {
      const credit = Math.floor((now - state.ejectedUntil) / this.#baseMs);
      state.ejections = Math.max(0, state.ejections - credit);
    }
    state.ejections++;
    state.ejectedUntil = now + Math.min(this.#baseMs * state.ejections, this.#maxMs);
    state.streak = 0;
    this.#ejected.add(backend);
    return true;
  }

  /** Whether `backend` is ejected at `now` (ms). */
  isEjected(backend: Backend, now: number): boolean {
    const state = this.#states.get(backend);
    return state !== undefined && now < state.ejectedUntil;
  }

  /** When `backend`'s current ejection ends (ms), or undefined if it is not ejected at `now`. */
  ejectedUntil(backend: Backend, now: number): number | undefined {
    const state = this.#states.get(backend);
    return state !== undefined && now < state.ejectedUntil ? state.ejectedUntil : undefined;
  }

  /** The current ejection multiplier of `backend` (0 if never ejected), for the admin view. */
  ejections(backend: Backend): number {
    return this.#states.get(backend)?.ejections ?? 0;
  }

  /** How many backends are ejected at `now` (ms). */
  ejectedCount(now: number): number {
    for (const backend of this.#ejected) {
      if (!this.isEjected(backend, now)) this.#ejected.delete(backend);
    }
    return this.#ejected.size;
  }

  /** Drops all state about `backend`, e.g. when a reload removes it. */
  forget(backend: Backend): void {
    this.#states.delete(backend);
    this.#ejected.delete(backend);
  }
}

/**
 * Whether to enter panic mode: true when fewer than `thresholdPercent` of `totalCount` backends
 * are healthy. In panic mode the caller balances across all backends, healthy or not: with most
 * of them marked down, the marks are more likely wrong (a shared network blip, a slow dependency)
 * than the backends, and sending some requests to a sick backend beats a 503 for every request.
 * A threshold of 0 disables panic mode.
 *
 * @param thresholdPercent @default 50
 */
export function panicMode(
  healthyCount: number,
  totalCount: number,
  thresholdPercent = 50,
): boolean {
  if (totalCount <= 0) return false;
  return healthyCount * 100 < thresholdPercent * totalCount;
}
