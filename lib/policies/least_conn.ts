/**
 * @module
 * Weighted least-connections: the candidate with the fewest requests in flight per unit of
 * weight wins. "In flight" is {@linkcode Backend.inflight}, the requests sent whose response
 * bodies have not been fully delivered (so a long stream counts as load), which makes this count
 * active requests, not TCP connections.
 */

import type { Backend, Policy } from "../pool.ts";
import type { RandomSource } from "./random_source.ts";

/** Options for {@linkcode LeastConnPolicy}. */
export interface LeastConnOptions {
  /** Breaks ties between equally loaded candidates. @default Math.random */
  random?: RandomSource;
}

/**
 * Picks the candidate with the lowest `(inflight + 1) / weight`, choosing uniformly at random
 * among those tied for lowest.
 *
 * The `+ 1` counts the request being placed: with plain `inflight / weight` every idle backend
 * scores 0 whatever its weight, so a weight-5 backend would not be preferred over a weight-1 one
 * until both were busy. Random tie-breaking matters most when everything is idle: always taking
 * the first tied candidate would send every quiet-period request to the same backend.
 */
export class LeastConnPolicy implements Policy {
  readonly #random: RandomSource;

  /** Creates the policy; `options.random` breaks ties. */
  constructor(options: LeastConnOptions = {}) {
    this.#random = options.random ?? Math.random;
  }

  /** One O(n) pass; no allocation. Calls `random` once per tie found. */
  select(candidates: readonly Backend[]): Backend {
    let best = candidates[0];
    let ties = 1;
    for (let i = 1; i < candidates.length; i++) {
      const backend = candidates[i];
      // Cross-multiplied so integer counts and weights compare exactly, without division.
      const mine = (backend.inflight + 1) * best.effectiveWeight;
      const theirs = (best.inflight + 1) * backend.effectiveWeight;
      if (mine < theirs) {
        best = backend;
        ties = 1;
      } else if (mine === theirs) {
        // Reservoir sampling of size one: the k-th tie replaces the choice with chance 1/k,
        // which leaves every tied candidate equally likely without collecting them in an array.
        ties++;
        if (this.#random() * ties < 1) best = backend;
      }
    }
    return best;
  }
}
