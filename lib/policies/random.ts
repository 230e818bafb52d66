/**
 * @module
 * Weighted random selection. Stateless in effect (no cursor), so it needs no coordination
 * between processes and behaves the same however requests are interleaved.
 */

import type { Backend, Policy } from "../pool.ts";
import type { RandomSource } from "./random_source.ts";

/** Options for {@linkcode RandomPolicy}. */
export interface RandomOptions {
  /** The draw. @default Math.random */
  random?: RandomSource;
}

/**
 * Picks a candidate with probability `weight / total weight`.
 *
 * Cost: O(1) when all weights are equal, otherwise O(log n) by binary search over cumulative
 * weights. The cumulative table is cached for one candidate array and rebuilt (O(n), reusing its
 * buffer) only when a different array arrives. The pool hands over the same array until the
 * available set changes, so the rebuild is rare; a retry passes a freshly filtered array and
 * pays O(n) once, no worse than a linear scan.
 */
export class RandomPolicy implements Policy {
  readonly #random: RandomSource;
  #cachedFor: readonly Backend[] | undefined;
  /** Checked with the identity in case a caller reuses an array and changes its length. */
  #cachedLength = 0;
  #uniform = true;
  #total = 0;
  /** `cumulative[i]` is the sum of weights of candidates `0..i`. */
  #cumulative = new Float64Array(16);

  /** Creates the policy; `options.random` makes the draws. */
  constructor(options: RandomOptions = {}) {
    this.#random = options.random ?? Math.random;
  }

  /** One draw; O(1) for equal weights, O(log n) otherwise (see the class notes). */
  select(candidates: readonly Backend[]): Backend {
    const n = candidates.length;
    if (n === 1) return candidates[0];
    if (candidates !== this.#cachedFor || n !== this.#cachedLength) this.#rebuild(candidates);
    if (this.#uniform) return candidates[Math.floor(this.#random() * n)];
    const target = this.#random() * this.#total;
    // The first index whose cumulative weight exceeds the target. A zero-weight candidate has
    // the same cumulative value as its predecessor and so can never be that first index.
    let low = 0;
    let high = n - 1;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.#cumulative[middle] > target) high = middle;
      else low = middle + 1;
    }
    return candidates[low];
  }

  #rebuild(candidates: readonly Backend[]): void {
    const n = candidates.length;
    if (this.#cumulative.length < n) {
      this.#cumulative = new Float64Array(Math.max(n, this.#cumulative.length * 2));
    }
    let total = 0;
    let uniform = true;
    for (let i = 0; i < n; i++) {
      const weight = candidates[i].effectiveWeight;
      if (weight !== candidates[0].effectiveWeight) uniform = false;
      total += weight;
      this.#cumulative[i] = total;
    }
    this.#cachedFor = candidates;
    this.#cachedLength = n;
    this.#uniform = uniform;
    this.#total = total;
  }
}
