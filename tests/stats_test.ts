/**
 * @module
 * The latency window (lib/stats.ts) called directly: nearest-rank percentiles, numeric order,
 * and the ring that forgets the oldest samples.
 */

import assert from "node:assert/strict";
import { LatencyWindow, percentilesOf } from "../lib/stats.ts";

Deno.test("percentilesOf() gives nearest-rank p50, p90 and p99, and null without samples", () => {
  assert.deepEqual(percentilesOf(new Float64Array()), { p50: null, p90: null, p99: null });
  assert.deepEqual(percentilesOf(new Float64Array([7])), { p50: 7, p90: 7, p99: 7 });
  const hundred = Float64Array.from({ length: 100 }, (_, i) => 100 - i); // 100 down to 1
  assert.deepEqual(percentilesOf(hundred), { p50: 50, p90: 90, p99: 99 });
  // Sorted as numbers, not as text (where "10" < "9").
  assert.deepEqual(percentilesOf(new Float64Array([10, 9, 100, 2])), {
    p50: 9,
    p90: 100,
    p99: 100,
  });
  assert.equal(percentilesOf(new Float64Array([1.23456])).p50, 1.235, "rounded to microseconds");
});

Deno.test("LatencyWindow keeps the last `capacity` samples, replacing the oldest", () => {
  const window = new LatencyWindow(4);
  assert.deepEqual(window.samples(), []);
  assert.deepEqual(window.percentiles(), { p50: null, p90: null, p99: null });
  for (const ms of [1000, 1000, 1, 2]) window.record(ms);
  assert.equal(window.percentiles().p99, 1000);
  for (const ms of [3, 4]) window.record(ms); // the two 1000s are the oldest: they go
  assert.deepEqual(window.samples().sort((a, b) => a - b), [1, 2, 3, 4]);
  assert.deepEqual(window.percentiles(), { p50: 2, p90: 4, p99: 4 });
  // percentiles() sorts a copy: the ring's order, and so which sample goes next, is kept.
  window.record(5);
  assert.deepEqual(window.samples().sort((a, b) => a - b), [2, 3, 4, 5]);
});
