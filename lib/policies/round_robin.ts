/**
 * @module
 * Smooth weighted round-robin, as nginx does it: weights 5,1,1 give `a a b a c a a`, spreading a
 * heavy backend's turns instead of bursting them. With equal weights it is exact round-robin.
 */

import type { Backend, Policy } from "../pool.ts";

/** Smooth weighted round-robin over the candidates the pool offers. */
export class RoundRobinPolicy implements Policy {
  /** Each backend's running score; the policy's only state. */
  readonly #current = new Map<Backend, number>();

  select(candidates: readonly Backend[]): Backend {
    if (candidates.length === 1) return candidates[0];
    let total = 0;
    let best = candidates[0];
    let bestScore = -Infinity;
    for (const backend of candidates) {
      const score = (this.#current.get(backend) ?? 0) + backend.effectiveWeight;
      this.#current.set(backend, score);
      total += backend.effectiveWeight;
      if (score > bestScore) {
        best = backend;
        bestScore = score;
      }
    }
    this.#current.set(best, bestScore - total);
    return best;
  }
}
