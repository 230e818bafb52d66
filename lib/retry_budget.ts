/**
 * @module
 * Limits on retrying: a budget so that retries cannot multiply load when backends are already
 * struggling (a retry storm), and full-jitter exponential backoff so that retries of many
 * requests that failed together do not arrive together.
 */

import type { RandomSource } from "./policies/random_source.ts";

/** Options for {@linkcode RetryBudget}. */
export interface RetryBudgetOptions {
  /** Retries allowed as a fraction of requests in the window. @default 0.2 */
  ratio?: number;
  /** Length of the sliding window in ms, rounded up to whole seconds. @default 10000 */
  windowMs?: number;
  /**
   * Retries allowed in each second whatever the ratio, so that low-traffic services (where 20 %
   * of a handful of requests is zero) can still retry. @default 10
   */
  minPerSecond?: number;
}

/** Width of one bucket of the sliding window. */
const BUCKET_MS = 1_000;

/**
 * A retry budget over a sliding window of one-second buckets, as Finagle and Linkerd bound
 * retries. A retry is allowed when either
 *
 * - retries in the window are fewer than `ratio` × requests in the window, or
 * - retries in the current second are fewer than `minPerSecond`.
 *
 * So over a window of `s` seconds at most `ratio × requests + minPerSecond × s` retries pass.
 * Call {@linkcode RetryBudget.recordRequest} once per client request (not per attempt) and
 * {@linkcode RetryBudget.tryAcquireRetry} before each retry. The clock is the caller's, in ms;
 * a clock that steps back is treated as not having moved.
 */
export class RetryBudget {
  readonly #ratio: number;
  readonly #minPerSecond: number;
  readonly #requests: Uint32Array;
  readonly #retries: Uint32Array;
  /** Index (time / BUCKET_MS) of the newest bucket; buckets older than the window are zero. */
  #newest = -Infinity;
  #windowRequests = 0;
  #windowRetries = 0;

  /** Validates the options; throws an Error naming a value that is out of range. */
  constructor(options: RetryBudgetOptions = {}) {
    const { ratio = 0.2, windowMs = 10_000, minPerSecond = 10 } = options;
    if (!(ratio >= 0 && Number.isFinite(ratio))) {
      throw new Error(`retry budget: ratio must be >= 0, got ${ratio}`);
    }
    if (!(windowMs >= BUCKET_MS && windowMs <= 3_600_000)) {
      throw new Error(`retry budget: windowMs must be 1000-3600000, got ${windowMs}`);
    }
    if (!(Number.isInteger(minPerSecond) && minPerSecond >= 0)) {
      throw new Error(
        `retry budget: minPerSecond must be a whole number >= 0, got ${minPerSecond}`,
      );
    }
    this.#ratio = ratio;
    this.#minPerSecond = minPerSecond;
    const buckets = Math.ceil(windowMs / BUCKET_MS);
    this.#requests = new Uint32Array(buckets);
    this.#retries = new Uint32Array(buckets);
  }

  /** Counts one client request at `now` (ms). */
  recordRequest(now: number): void {
    const bucket = this.#advance(now);
    this.#requests[bucket]++;
    this.#windowRequests++;
  }

  /** Takes one retry from the budget at `now` (ms) if there is one; false means do not retry. */
  tryAcquireRetry(now: number): boolean {
    const bucket = this.#advance(now);
    const allowed = this.#windowRetries < this.#ratio * this.#windowRequests ||
      this.#retries[bucket] < this.#minPerSecond;
    if (!allowed) return false;
    this.#retries[bucket]++;
    this.#windowRetries++;
    return true;
  }

  /** Requests and retries currently in the window, for metrics and tests. */
  get window(): { requests: number; retries: number } {
    return { requests: this.#windowRequests, retries: this.#windowRetries };
  }

  /** Moves the window forward to `now`, zeroing buckets that fell out; returns the current one. */
  #advance(now: number): number {
    const size = this.#requests.length;
    const index = Math.floor(now / BUCKET_MS);
    if (index > this.#newest) {
      // Clear at most one full turn of the ring: older buckets are all stale anyway.
      const from = Math.max(this.#newest + 1, index - size + 1);
      for (let i = from; i <= index; i++) {
        const slot = modulo(i, size);
        this.#windowRequests -= this.#requests[slot];
        this.#windowRetries -= this.#retries[slot];
        this.#requests[slot] = 0;
        this.#retries[slot] = 0;
      }
      this.#newest = index;
    }
    return modulo(this.#newest, size);
  }
}

/** Remainder that is never negative, so a clock before 0 still maps into the ring. */
function modulo(value: number, size: number): number {
  return ((value % size) + size) % size;
}

/** Options for {@linkcode backoffDelay}. */
export interface BackoffOptions {
  /** Upper bound of the first retry's delay, in ms; it doubles per retry. @default 25 */
  baseMs?: number;
  /** The most any delay may be, in ms. @default 250 */
  capMs?: number;
}

/**
 * Delay before retry number `attempt` (1 for the first retry): "full jitter", uniform in
 * `[0, min(capMs, baseMs × 2^(attempt-1)))`. Spreading the whole range rather than adding a
 * little jitter to a fixed delay is what breaks up synchronized retries (AWS Architecture Blog,
 * "Exponential Backoff And Jitter", 2015).
 *
 * @throws Error when `attempt` is not a whole number >= 1.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: RandomSource = Math.random,
): number {
  const { baseMs = 25, capMs = 250 } = options;
  if (!Number.isInteger(attempt) || attempt < 1) {
    throw new Error(`backoff: attempt must be a whole number >= 1, got ${attempt}`);
  }
  // 2 ** attempt overflows to Infinity for huge attempts, which Math.min turns into the cap.
  return random() * Math.min(capMs, baseMs * 2 ** (attempt - 1));
}
