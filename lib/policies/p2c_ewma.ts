/**
 * @module
 * Power of two choices over a peak-EWMA latency estimate, the approach of Finagle's and Linkerd's
 * "p2c + peak EWMA" balancers: it steers traffic away from slow backends within a few requests
 * and drifts back once they recover, without scanning every backend per request.
 *
 * The attempt loop feeds it through {@linkcode Policy.latencyObserver}:
 * {@linkcode P2cEwmaPolicy.observe} after each attempt with the time to response headers,
 * {@linkcode P2cEwmaPolicy.observeFailure} when an attempt failed.
 */

import type { Accept, Backend, LatencyObserver, Policy, SelectContext } from "../pool.ts";
import type { RandomSource } from "./random_source.ts";

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
  #backends: readonly Backend[] = [];
  /** This policy learns from outcomes: the attempt loop reports each one here. */
  readonly latencyObserver: LatencyObserver = this;

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

  /** Keeps the set; there is nothing to precompute. */
  rebuild(backends: readonly Backend[]): void {
    this.#backends = backends;
  }

  /**
   * Draws two distinct candidates and returns the one with the lower score. A pick filtered by
   * `accept` draws among the accepted backends (see {@linkcode P2cEwmaPolicy.#drawAccepted}).
   */
  select(_context: SelectContext, accept?: Accept): Backend | undefined {
    const backends = this.#backends;
    const n = backends.length;
    if (accept !== undefined) return this.#drawAccepted(backends, accept);
    if (n <= 1) return backends[0];
    const first = Math.floor(this.#random() * n);
    // Draw the second from the n - 1 others so the two are always distinct.
    let second = Math.floor(this.#random() * (n - 1));
    if (second >= first) second++;
    return this.#better(backends[first], backends[second]);
  }

  /**
   * Two distinct accepted backends, each uniform: by rejection, which takes one or two draws when
   * most are accepted (max-conns with room), else by counting them and walking to each draw.
   */
  #drawAccepted(backends: readonly Backend[], accept: Accept): Backend | undefined {
    const n = backends.length;
    for (let tries = 0; n >= 2 && tries < REJECTION_TRIES; tries++) {
      const first = Math.floor(this.#random() * n);
      if (!accept(backends[first])) continue;
      for (let more = 0; more < REJECTION_TRIES; more++) {
        let second = Math.floor(this.#random() * (n - 1));
        if (second >= first) second++;
        if (accept(backends[second])) return this.#better(backends[first], backends[second]);
      }
      break;
    }
    const count = countAccepted(backends, accept);
    if (count <= 1) return nthAccepted(backends, accept, 0);
    const first = Math.floor(this.#random() * count);
    let second = Math.floor(this.#random() * (count - 1));
    if (second >= first) second++;
    return this.#better(
      nthAccepted(backends, accept, first)!,
      nthAccepted(backends, accept, second)!,
    );
  }

  /** The lower-scoring of two backends, `a` on a tie. */
  #better(a: Backend, b: Backend): Backend {
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

/** Rejected draws before a filtered pick counts the accepted backends instead. */
const REJECTION_TRIES = 4;

/** How many of `backends` `accept` lets through. */
function countAccepted(backends: readonly Backend[], accept: Accept): number {
  let count = 0;
  for (const backend of backends) if (accept(backend)) count++;
  return count;
}

/** The `n`-th (from 0) backend `accept` lets through, or undefined when there are fewer. */
function nthAccepted(backends: readonly Backend[], accept: Accept, n: number): Backend | undefined {
  for (const backend of backends) {
    if (accept(backend) && n-- === 0) return backend;
  }
  return undefined;
}

/** Lower is better; `+ 1` counts the request being placed so idle backends still differ. */
function score(backend: Backend, latencyMs: number): number {
  return (latencyMs * (backend.inflight + 1)) / backend.effectiveWeight;
}
