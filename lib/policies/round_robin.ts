/**
 * @module
 * Smooth weighted round-robin, as nginx does it: weights 5,1,1 give `a a b a c a a`, spreading a
 * heavy backend's turns instead of bursting them. With equal weights it is exact round-robin.
 *
 * Smooth WRR is periodic: after `sum(weights) / gcd(weights)` picks every score is back to zero
 * and the sequence repeats, so {@linkcode RoundRobinPolicy.rebuild} computes one cycle and each
 * pick is one array read. Cycles longer than {@linkcode MAX_SCHEDULE_LENGTH} are served by live
 * smooth WRR steps instead, O(n) a pick.
 *
 * Picks with an `accept` filter (retries, max-conns) take live smooth WRR steps over the accepted
 * backends on scores of their own, as nginx does with its tried bitmap: they leave the rotation's
 * cursor alone, and when every pick is filtered the shares still follow the weights.
 */

import type { Accept, Backend, Policy, SelectContext } from "../pool.ts";

/**
 * Longest cycle, after dividing the weights by their gcd, that is precomputed (one array of
 * that many references); longer cycles are served by live smooth WRR at O(n) a pick.
 */
export const MAX_SCHEDULE_LENGTH = 4096;

/** Smooth weighted round-robin over the backends the pool offers. */
export class RoundRobinPolicy implements Policy {
  #backends: readonly Backend[] = [];
  /** One cycle of picks; undefined when it would be too long (live steps instead). */
  #schedule: Backend[] | undefined;
  #cursor = 0;
  /** Effective weights at the last rebuild, by position in #backends. */
  #weights: number[] = [];
  /** Scores of the unfiltered live steps, when there is no schedule. */
  #scores: number[] = [];
  /** Scores of the filtered live steps; kept apart so retries do not disturb the rotation. */
  #filteredScores: number[] = [];

  /**
   * Computes the new set's cycle and keeps the cursor's place in it: a change neither restarts
   * the rotation nor sends it back to a backend's first turn, so changes as frequent as picks
   * (a flapping backend at low traffic) still leave every position of the cycle its turn.
   */
  rebuild(backends: readonly Backend[]): void {
    const oldIndex = new Map(this.#backends.map((b, i) => [b, i]));
    const carry = (scores: number[]) => backends.map((b) => scores[oldIndex.get(b) ?? -1] ?? 0);
    this.#scores = carry(this.#scores);
    this.#filteredScores = carry(this.#filteredScores);
    this.#backends = backends;
    this.#weights = backends.map((b) => b.effectiveWeight);
    this.#schedule = buildSchedule(this.#weights, backends);
    this.#cursor = this.#schedule === undefined ? 0 : this.#cursor % this.#schedule.length;
  }

  /** One array read; a live step when the cycle is too long or `accept` filters. */
  select(_context: SelectContext, accept?: Accept): Backend | undefined {
    const backends = this.#backends;
    if (accept !== undefined) {
      const index = step(this.#weights, this.#filteredScores, backends, accept);
      return index === -1 ? undefined : backends[index];
    }
    if (backends.length <= 1) return backends[0];
    const schedule = this.#schedule;
    if (schedule === undefined) return backends[step(this.#weights, this.#scores, backends)];
    const backend = schedule[this.#cursor];
    if (++this.#cursor === schedule.length) this.#cursor = 0;
    return backend;
  }
}

/**
 * One smooth WRR step over the backends `accept` lets through (all when it is undefined): every
 * score rises by its weight, the first highest wins and drops by the total. Returns the winner's
 * index, or -1 when nothing was accepted.
 */
function step(
  weights: readonly number[],
  scores: number[],
  backends?: readonly Backend[],
  accept?: Accept,
): number {
  let total = 0;
  let best = -1;
  let bestScore = -Infinity;
  for (let i = 0; i < weights.length; i++) {
    if (accept !== undefined && !accept(backends![i])) continue;
    const score = scores[i] + weights[i];
    scores[i] = score;
    total += weights[i];
    if (best === -1 || score > bestScore) {
      best = i;
      bestScore = score;
    }
  }
  if (best !== -1) scores[best] = bestScore - total;
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
  backends: readonly Backend[],
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
  return Array.from({ length: total / divisor }, () => backends[step(reduced, scores)]);
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}
