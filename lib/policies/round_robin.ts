/**
 * @module
 * Smooth weighted round-robin, as nginx does it: weights 5,1,1 give `a a b a c a a`, spreading a
 * heavy backend's turns instead of bursting them. With equal weights it is exact round-robin.
 *
 * Smooth WRR is periodic: after `sum(weights) / gcd(weights)` picks every score is back to zero and
 * the sequence repeats. The pool hands policies the same array instance until the set or a
 * weight changes (lib/pool.ts), so the policy computes that array's cycle once and then answers
 * each pick with one array read: O(1) instead of a pass over every backend.
 *
 * - An array instance is precomputed the second time in a row it is seen as new (a retry copy in
 *   between delays this by one pick). The first time it is served by live smooth WRR (the O(n)
 *   algorithm, with per-backend scores kept in the policy), because the pool also passes one-off
 *   filtered copies: on retries, and on every pick when max-conns filtering is on. Those never get a table; they leave the precomputed rotation's cursor alone;
 *   and since the live scores persist across copies, max-conns mode still rotates by weight.
 * - When a new instance is precomputed, its cycle is entered just after the first turn of the
 *   backend its first (live) pick chose. With a fresh policy that is exactly the sequence live
 *   smooth WRR gives. After a set or weight change the rotation does not carry its position
 *   over: it continues wherever live smooth WRR placed the new set's first pick, so a backend
 *   leaving may repeat or skip a turn once; every full cycle after that is exact.
 * - Cycles longer than {@linkcode MAX_SCHEDULE_LENGTH} are not stored; such an array is served by
 *   live smooth WRR, with scores of its own so that retries do not disturb it either.
 * - Weights changed in place on a precomputed array instance (the pool never does this) are
 *   noticed at the end of the current cycle, which then restarts with the new weights; arrays
 *   served live read the weights on every pick.
 */

import type { Backend, Policy } from "../pool.ts";

/**
 * Longest cycle, after dividing the weights by their gcd, that is precomputed (one array of
 * that many references); longer cycles are served by live smooth WRR at O(n) a pick.
 */
export const MAX_SCHEDULE_LENGTH = 4096;

/** Smooth weighted round-robin over the candidates the pool offers. */
export class RoundRobinPolicy implements Policy {
  /** Scores for live picks on arrays without a rotation (first sightings, retry copies). */
  readonly #scores = new Map<Backend, number>();
  /** The rotation of the array instance seen repeatedly: the pool's available backends. */
  #rotation: Rotation | undefined;
  /** The last array seen for the first time, and what its live pick chose. */
  #pending: readonly Backend[] | undefined;
  #pendingPick: Backend | undefined;

  select(candidates: readonly Backend[]): Backend {
    if (candidates.length === 1) return candidates[0];
    const rotation = this.#rotation;
    if (rotation !== undefined && rotation.candidates === candidates) return rotation.next();
    if (candidates === this.#pending) {
      this.#rotation = new Rotation(candidates, this.#pendingPick!, this.#scores);
      this.#pending = this.#pendingPick = undefined;
      return this.#rotation.next();
    }
    this.#pending = candidates;
    return this.#pendingPick = this.#liveSelect(candidates);
  }

  /** One smooth WRR step on the policy-wide scores. */
  #liveSelect(candidates: readonly Backend[]): Backend {
    let total = 0;
    let best = candidates[0];
    let bestScore = -Infinity;
    for (const backend of candidates) {
      const score = (this.#scores.get(backend) ?? 0) + backend.effectiveWeight;
      this.#scores.set(backend, score);
      total += backend.effectiveWeight;
      if (score > bestScore) {
        best = backend;
        bestScore = score;
      }
    }
    this.#scores.set(best, bestScore - total);
    return best;
  }
}

/** Smooth WRR over one array instance: a precomputed cycle, or live steps when that is too long. */
class Rotation {
  readonly candidates: readonly Backend[];
  /** The effective weights the cycle was built from. */
  #weights: number[];
  /** One cycle of picks; undefined when it would be too long (live steps instead). */
  #schedule: Backend[] | undefined;
  #cursor = 0;
  /** Live steps' scores, by position in `candidates`. */
  #scores: number[];

  /**
   * Starts the rotation right after `firstPick`, which live smooth WRR chose when `candidates`
   * was first seen; `liveScores` are the scores that pick left behind.
   */
  constructor(
    candidates: readonly Backend[],
    firstPick: Backend,
    liveScores: Map<Backend, number>,
  ) {
    this.candidates = candidates;
    this.#weights = candidates.map((b) => b.effectiveWeight);
    this.#schedule = buildSchedule(this.#weights, candidates);
    if (this.#schedule !== undefined) {
      // indexOf is -1 only for a backend absent from the cycle; then start at its beginning.
      this.#cursor = (this.#schedule.indexOf(firstPick) + 1) % this.#schedule.length;
    }
    this.#scores = candidates.map((b) => liveScores.get(b) ?? 0);
  }

  next(): Backend {
    const schedule = this.#schedule;
    if (schedule === undefined) return this.candidates[step(this.#liveWeights(), this.#scores)];
    const backend = schedule[this.#cursor];
    if (++this.#cursor === schedule.length) this.#endCycle();
    return backend;
  }

  /** At the end of a cycle every score is zero: the place to adopt changed weights. */
  #endCycle(): void {
    this.#cursor = 0;
    const candidates = this.candidates;
    if (candidates.every((b, i) => b.effectiveWeight === this.#weights[i])) return;
    this.#weights = candidates.map((b) => b.effectiveWeight);
    this.#schedule = buildSchedule(this.#weights, candidates);
    this.#scores = candidates.map(() => 0);
  }

  /** Current weights for a live step; they are read on every pick, as live smooth WRR does. */
  #liveWeights(): number[] {
    const weights = this.#weights;
    for (let i = 0; i < weights.length; i++) weights[i] = this.candidates[i].effectiveWeight;
    return weights;
  }
}

/**
 * One smooth WRR step: every score rises by its weight, the first highest wins and drops by the
 * total. Returns the winner's index.
 */
function step(weights: readonly number[], scores: number[]): number {
  let total = 0;
  let best = 0;
  let bestScore = -Infinity;
  for (let i = 0; i < weights.length; i++) {
    const score = scores[i] + weights[i];
    scores[i] = score;
    total += weights[i];
    if (score > bestScore) {
      best = i;
      bestScore = score;
    }
  }
  scores[best] = bestScore - total;
  return best;
}

/**
 * One full cycle of smooth WRR from all-zero scores, or undefined when the weights are not
 * non-negative integers, are all zero, or make a cycle longer than MAX_SCHEDULE_LENGTH.
 * Dividing by the gcd changes no comparison (every score scales by the same factor), only the
 * length; the effective weights always share SLOW_START_STEPS unless a backend is ramping up.
 */
function buildSchedule(
  weights: readonly number[],
  candidates: readonly Backend[],
): Backend[] | undefined {
  let divisor = 0;
  let total = 0;
  for (const weight of weights) {
    if (!Number.isSafeInteger(weight) || weight < 0) return undefined;
    divisor = gcd(divisor, weight);
    total += weight;
  }
  if (total === 0 || total / divisor > MAX_SCHEDULE_LENGTH) return undefined;
  const reduced = weights.map((weight) => weight / divisor);
  const scores = reduced.map(() => 0);
  return Array.from({ length: total / divisor }, () => candidates[step(reduced, scores)]);
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}
