import assert from "node:assert/strict";
import { OutlierDetector, panicMode } from "../lib/outlier.ts";
/** The detector keys by identity and reads nothing else: any object stands for a backend. */
type Backend = { url: string };

function backends(count: number): Backend[] {
  return Array.from({ length: count }, (_, i) => ({ url: `http://10.0.0.${i}` }));
}

/** Records `count` failures at `now`; returns what the last one returned. */
function fail(
  detector: OutlierDetector,
  backend: Backend,
  now: number,
  count: number,
  total = 10,
) {
  let ejected = false;
  for (let i = 0; i < count; i++) ejected = detector.recordFailure(backend, now, total);
  return ejected;
}

Deno.test("OutlierDetector.recordFailure() ejects on the 5th failure in a row, for 30 s", () => {
  const detector = new OutlierDetector();
  const [backend] = backends(1);
  assert.equal(fail(detector, backend, 1_000, 4), false);
  assert.equal(detector.isEjected(backend, 1_000), false);
  assert.equal(detector.recordFailure(backend, 1_000, 10), true);
  assert.equal(detector.isEjected(backend, 1_000), true);
  assert.equal(detector.isEjected(backend, 30_999), true);
  assert.equal(detector.isEjected(backend, 31_000), false);
  assert.equal(detector.ejectedUntil(backend, 1_000), 31_000);
  assert.equal(detector.ejections(backend), 1);
});

Deno.test("OutlierDetector.recordSuccess() resets the failure streak", () => {
  const detector = new OutlierDetector();
  const [backend] = backends(1);
  fail(detector, backend, 0, 4);
  detector.recordSuccess(backend);
  assert.equal(fail(detector, backend, 0, 4), false);
  assert.equal(detector.isEjected(backend, 0), false);
  assert.equal(detector.recordFailure(backend, 0, 10), true);
});

Deno.test("OutlierDetector.recordFailure() doubles the second ejection and caps them", () => {
  const detector = new OutlierDetector({ baseEjectionMs: 30_000, maxEjectionMs: 100_000 });
  const [backend] = backends(1);
  let now = 0;
  const durations: number[] = [];
  for (let round = 0; round < 5; round++) {
    assert.equal(fail(detector, backend, now, 5), true);
    const until = detector.ejectedUntil(backend, now)!;
    durations.push(until - now);
    now = until; // fails again the moment it returns
  }
  assert.deepEqual(durations, [30_000, 60_000, 90_000, 100_000, 100_000]);
});

Deno.test("OutlierDetector.recordFailure() shortens ejections again after time in service", () => {
  const detector = new OutlierDetector({ baseEjectionMs: 30_000 });
  const [backend] = backends(1);
  fail(detector, backend, 0, 5);
  fail(detector, backend, 30_000, 5); // second ejection: 60 s, until 90 s
  assert.equal(detector.ejectedUntil(backend, 30_000), 90_000);
  // 60 s back in service earns two steps of credit: the next ejection is a first one again.
  assert.equal(fail(detector, backend, 150_000, 5), true);
  assert.equal(detector.ejectedUntil(backend, 150_000), 180_000);
  assert.equal(detector.ejections(backend), 1);
});

Deno.test("OutlierDetector.recordFailure() ignores failures while ejected", () => {
  const detector = new OutlierDetector();
  const [backend] = backends(1);
  fail(detector, backend, 0, 5);
  assert.equal(fail(detector, backend, 10_000, 20), false);
  assert.equal(detector.ejectedUntil(backend, 10_000), 30_000);
  // The stragglers did not count toward a new streak either.
  assert.equal(fail(detector, backend, 30_000, 4), false);
  assert.equal(detector.isEjected(backend, 30_000), false);
});

Deno.test("OutlierDetector.recordFailure() never ejects more than maxEjectedPercent", () => {
  const detector = new OutlierDetector({ maxEjectedPercent: 50 });
  const [a, b, c, d] = backends(4);
  assert.equal(fail(detector, a, 0, 5, 4), true);
  assert.equal(fail(detector, b, 0, 5, 4), true);
  assert.equal(fail(detector, c, 0, 5, 4), false);
  assert.equal(fail(detector, d, 0, 10, 4), false);
  assert.equal(detector.ejectedCount(0), 2);
  assert.equal(detector.isEjected(c, 0), false);
  // Once the first two return, c's standing streak ejects it on its next failure.
  assert.equal(detector.recordFailure(c, 30_000, 4), true);
  assert.equal(detector.ejectedCount(30_000), 1);
});

Deno.test("OutlierDetector.recordFailure() never ejects the only backend at 50 %", () => {
  const detector = new OutlierDetector();
  const [only] = backends(1);
  assert.equal(fail(detector, only, 0, 10, 1), false);
  assert.equal(detector.isEjected(only, 0), false);
});

Deno.test("OutlierDetector.forget() drops a backend's record", () => {
  const detector = new OutlierDetector();
  const [backend] = backends(1);
  fail(detector, backend, 0, 5);
  detector.forget(backend);
  assert.equal(detector.isEjected(backend, 0), false);
  assert.equal(detector.ejectedCount(0), 0);
  assert.equal(detector.ejections(backend), 0);
});

Deno.test("new OutlierDetector() rejects bad options with the value in the message", () => {
  assert.throws(() => new OutlierDetector({ consecutiveFailures: 0 }), /got 0/);
  assert.throws(() => new OutlierDetector({ baseEjectionMs: -1 }), /got -1/);
  assert.throws(() => new OutlierDetector({ maxEjectionMs: 10 }), /got 10/);
  assert.throws(() => new OutlierDetector({ maxEjectedPercent: 101 }), /got 101/);
});

Deno.test("panicMode() is true only when healthy backends fall below the threshold", () => {
  assert.equal(panicMode(1, 4), true);
  assert.equal(panicMode(2, 4), false);
  assert.equal(panicMode(0, 3), true);
  assert.equal(panicMode(3, 3), false);
  assert.equal(panicMode(0, 0), false);
  assert.equal(panicMode(0, 4, 0), false);
  assert.equal(panicMode(7, 10, 80), true);
});
