/**
 * @module
 * Power of two choices over a peak-EWMA latency estimate, the approach of Finagle's and Linkerd's
 * "p2c + peak EWMA" balancers: it steers traffic away from slow backends within a few requests
 * and drifts back once they recover, without scanning every backend per request.
 *
 * The proxy feeds it: {@linkcode P2cEwmaPolicy.observe} after each attempt with the time to
 * response headers, {@linkcode P2cEwmaPolicy.observeFailure} when an attempt failed.
 */

import type { Backend, Policy } from "../pool.ts";
import type { RandomSource } from "./random_source.ts";

/** Something that learns from attempt outcomes; the proxy reports to it when a policy has one. */
export interface LatencyObserver {
  /** An attempt got response headers after `latencyMs`. */
  observe(backend: Backend, latencyMs: number): void;
  /** An attempt failed before response headers (connect error, reset, timeout). */
  observeFailure(backend: Backend): void;
}

/** Options for {@linkcode P2cEwmaPolicy}. */
export interface P2cEwmaOptions {
  /**
   * Time constant of the moving average, in ms: an observation's influence falls to 1/e after
   * this long. Also how fast an unobserved backend's estimate decays toward zero.
   * @default 10000
   */
  decayMs?: number;
  /**
   * Latency recorded by {@linkcode P2cEwmaPolicy.observeFailure}, in ms. Through the peak rule it
   * replaces any lower estimate at once; the backend then earns its way back as it decays.
   * @default 1000
   */
  failurePenaltyMs?: number;
  /** Picks the two candidates. @default Math.random */
  random?: RandomSource;
  /** Monotonic clock in ms. @default performance.now */
  now?: () => number;
}

/** One backend's latency estimate and when it was last updated. */
interface Estimate {
  latencyMs: number;
  at: number;
}

/**
 * Power of two choices on `latency × (inflight + 1) / weight`.
 *
 * - **Choice:** two distinct candidates drawn uniformly (weight does not bias the draw); the one
 *   with the lower score wins. With two candidates both are compared, so the better one always
 *   wins; with many, the worst backend still gets nothing, while the rest share by score.
 * - **Peak EWMA:** an observation above the current estimate replaces it at once (one slow
 *   response is enough to back off); a lower one is blended in with weight `1 - e^(-Δt/decay)`,
 *   so the average is over time, not over a number of requests, whatever the request rate.
 * - **Idle decay:** between observations the estimate, as read, decays toward zero with the same
 *   time constant. A backend that was shunned and so gets no traffic would otherwise keep its bad
 *   score forever; decay guarantees it is tried again and can show that it recovered.
 * - **Unobserved backends** have no estimate; one borrows its rival's, so only load decides
 *   (neither favoured nor shunned). When neither was observed both use 1 ms.
 * - **Weight** divides the score: a weight-2 backend takes about twice the in-flight requests
 *   of a weight-1 backend of equal latency before it loses comparisons.
 */
export class P2cEwmaPolicy implements Policy, LatencyObserver {
  readonly #decayMs: number;
  readonly #penaltyMs: number;
  readonly #random: RandomSource;
  readonly #now: () => number;
  /** Weak so that backends dropped by a configuration reload do not pin their estimates. */
  readonly #estimates = new WeakMap<Backend, Estimate>();

  /** Validates the options; throws an Error naming a value that is out of range. */
  constructor(options: P2cEwmaOptions = {}) {
    const { decayMs = 10_000, failurePenaltyMs = 1_000 } = options;
    if (!(decayMs > 0 && Number.isFinite(decayMs))) {
      throw new Error(`p2c-ewma: decayMs must be a positive number of ms, got ${decayMs}`);
    }
    if (!(failurePenaltyMs >= 0 && Number.isFinite(failurePenaltyMs))) {
      throw new Error(`p2c-ewma: failurePenaltyMs must be >= 0 ms, got ${failurePenaltyMs}`);
    }
    this.#decayMs = decayMs;
    this.#penaltyMs = failurePenaltyMs;
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Draws two distinct candidates and returns the one with the lower score. */
  select(candidates: readonly Backend[]): Backend {
    const n = candidates.length;
    if (n === 1) return candidates[0];
    const first = Math.floor(this.#random() * n);
    // Draw the second from the n - 1 others so the two are always distinct.
    let second = Math.floor(this.#random() * (n - 1));
    if (second >= first) second++;
    const a = candidates[first];
    const b = candidates[second];
    const now = this.#now();
    const latencyA = this.latencyEstimate(a, now);
    const latencyB = this.latencyEstimate(b, now);
    const scoreA = score(a, latencyA ?? latencyB ?? 1);
    const scoreB = score(b, latencyB ?? latencyA ?? 1);
    return scoreB < scoreA ? b : a;
  }

  /** Records an attempt that got response headers after `latencyMs` (negative or NaN: ignored). */
  observe(backend: Backend, latencyMs: number): void {
    if (!(latencyMs >= 0)) return;
    const now = this.#now();
    const estimate = this.#estimates.get(backend);
    if (estimate === undefined) {
      this.#estimates.set(backend, { latencyMs, at: now });
      return;
    }
    if (latencyMs >= estimate.latencyMs) {
      estimate.latencyMs = latencyMs;
    } else {
      const keep = Math.exp(-Math.max(0, now - estimate.at) / this.#decayMs);
      estimate.latencyMs = estimate.latencyMs * keep + latencyMs * (1 - keep);
    }
    estimate.at = now;
  }

  /** Records a failed attempt as a `failurePenaltyMs` observation. */
  observeFailure(backend: Backend): void {
    this.observe(backend, this.#penaltyMs);
  }

  /**
   * The backend's latency estimate in ms as of `now`, idle decay applied, or undefined if it was
   * never observed. For tests and the admin view; reading does not change it.
   */
  latencyEstimate(backend: Backend, now: number = this.#now()): number | undefined {
    const estimate = this.#estimates.get(backend);
    if (estimate === undefined) return undefined;
    return estimate.latencyMs * Math.exp(-Math.max(0, now - estimate.at) / this.#decayMs);
  }
}

/** Lower is better; `+ 1` counts the request being placed so idle backends still differ. */
function score(backend: Backend, latencyMs: number): number {
  return (latencyMs * (backend.inflight + 1)) / backend.effectiveWeight;
}
