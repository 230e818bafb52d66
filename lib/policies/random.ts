/**
 * @module
 * Weighted random selection. Stateless in effect (no cursor), so it needs no coordination
 * between processes and behaves the same however requests are interleaved.
 */

import type { Accept, Backend, Policy, SelectContext } from "../pool.ts";
import type { RandomSource } from "./random_source.ts";

/** Options for {@linkcode RandomPolicy}. */
export interface RandomOptions {
  /** The draw. @default Math.random */
  random?: RandomSource;
}

/**
 * Picks a candidate with probability `weight / total weight`.
 *
 * Cost: O(1) when all weights are equal, otherwise O(log n) by binary search over the cumulative
 * weights {@linkcode RandomPolicy.rebuild} computes. A pick filtered by `accept` (a retry,
 * max-conns) draws among the accepted backends in two O(n) passes, allocating nothing.
 */
export class RandomPolicy implements Policy {
  readonly #random: RandomSource;
  #backends: readonly Backend[] = [];
  #uniform = true;
  #total = 0;
  /** `cumulative[i]` is the sum of weights of backends `0..i`. */
  #cumulative = new Float64Array(16);

  /** Creates the policy; `options.random` makes the draws. */
  constructor(options: RandomOptions = {}) {
    this.#random = options.random ?? Math.random;
  }

  /** Computes the cumulative weights, O(n), reusing the buffer when it is large enough. */
  rebuild(backends: readonly Backend[]): void {
    const n = backends.length;
    if (this.#cumulative.length < n) {
      this.#cumulative = new Float64Array(Math.max(n, this.#cumulative.length * 2));
    }
    let total = 0;
    let uniform = true;
    for (let i = 0; i < n; i++) {
      const weight = backends[i].effectiveWeight;
      if (weight !== backends[0].effectiveWeight) uniform = false;
      total += weight;
      this.#cumulative[i] = total;
    }
    this.#backends = backends;
    this.#uniform = uniform;
    this.#total = total;
  }

  /** One draw; O(1) for equal weights, O(log n) otherwise (see the class notes). */
  select(_context: SelectContext, accept?: Accept): Backend | undefined {
    const backends = this.#backends;
    const n = backends.length;
    if (accept !== undefined) return this.#drawAccepted(accept);
    if (n <= 1) return backends[0];
    if (this.#uniform) return backends[Math.floor(this.#random() * n)];
    const target = this.#random() * this.#total;
    // The first index whose cumulative weight exceeds the target. A zero-weight backend has
    // the same cumulative value as its predecessor and so can never be that first index.
    let low = 0;
    let high = n - 1;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.#cumulative[middle] > target) high = middle;
      else low = middle + 1;
    }
    return backends[low];
  }

  /** One weighted draw among the accepted backends: a pass to sum them, a pass to find it. */
  #drawAccepted(accept: Accept): Backend | undefined {
    const backends = this.#backends;
    let count = 0;
    let total = 0;
    let uniform = true;
    let first: Backend | undefined;
    for (const backend of backends) {
      if (!accept(backend)) continue;
      first ??= backend;
      if (backend.effectiveWeight !== first.effectiveWeight) uniform = false;
      count++;
      total += backend.effectiveWeight;
    }
    if (count <= 1) return first;
    // Equal weights draw a position, which also serves a set of zero weights.
    const draw = this.#random();
    let position = uniform ? Math.floor(draw * count) : -1;
    const target = draw * total;
    let sum = 0;
    let last = first;
    for (const backend of backends) {
      if (!accept(backend)) continue;
      if (position-- === 0) return backend;
      sum += backend.effectiveWeight;
      if (!uniform && sum > target) return backend;
      last = backend;
    }
    // Only rounding can leave the target unreached: the last accepted backend takes it.
    return last;
  }
}
