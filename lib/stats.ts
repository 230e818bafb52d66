/**
 * @module
 * A sliding window of recent latencies for one backend, for percentiles in the admin view.
 * Recording is O(1) into a ring; percentiles sort a copy, which happens only when someone looks.
 */

/** The last `capacity` latency samples (ms). */
export class LatencyWindow {
  readonly #samples: Float64Array;
  #next = 0;
  #count = 0;

  /** @param capacity Samples kept. @default 512 */
  constructor(capacity = 512) {
    this.#samples = new Float64Array(capacity);
  }

  /** Adds one sample, replacing the oldest when full. */
  record(ms: number): void {
    this.#samples[this.#next] = ms;
    this.#next = (this.#next + 1) % this.#samples.length;
    if (this.#count < this.#samples.length) this.#count++;
  }

  /** Nearest-rank percentiles of the window; null when there are no samples. */
  percentiles(): Percentiles {
    return percentilesOf(this.#samples.slice(0, this.#count));
  }

  /** A copy of the samples in the window (worker threads send theirs to the main thread). */
  samples(): number[] {
    return Array.from(this.#samples.subarray(0, this.#count));
  }
}

/** p50, p90 and p99 in ms; null without samples. */
export type Percentiles = { p50: number | null; p90: number | null; p99: number | null };

/** Nearest-rank percentiles of `samples` (sorted in place). */
export function percentilesOf(samples: Float64Array): Percentiles {
  if (samples.length === 0) return { p50: null, p90: null, p99: null };
  const sorted = samples.sort();
  const at = (p: number) =>
    round(sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]);
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99) };
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
