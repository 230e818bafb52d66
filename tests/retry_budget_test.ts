import assert from "node:assert/strict";
import { backoffDelay, RetryBudget } from "../lib/retry_budget.ts";
import { mulberry32 } from "../lib/policies/random_source.ts";

Deno.test("RetryBudget.tryAcquireRetry() allows at most 20 % plus the floor at 100 requests/s", () => {
  const budget = new RetryBudget({ ratio: 0.2, windowMs: 10_000, minPerSecond: 10 });
  // Every request wants two retries (a total outage); the budget must stop the multiplication.
  const granted: number[] = [];
  for (let second = 0; second < 60; second++) {
    let count = 0;
    for (let i = 0; i < 100; i++) {
      const now = second * 1_000 + i * 10;
      budget.recordRequest(now);
      if (budget.tryAcquireRetry(now)) count++;
      if (budget.tryAcquireRetry(now)) count++;
    }
    granted.push(count);
  }
  for (let end = 10; end <= granted.length; end++) {
    const inWindow = granted.slice(end - 10, end).reduce((sum, n) => sum + n, 0);
    assert.ok(inWindow <= 0.2 * 1_000 + 10 * 10, `window ending at ${end}s allowed ${inWindow}`);
  }
  // And it is a budget, not a ban: in steady state about 20 % get through.
  const steady = granted.slice(30).reduce((sum, n) => sum + n, 0) / 30;
  assert.ok(steady >= 19 && steady <= 21, `steady state allowed ${steady} retries/s`);
});

Deno.test("RetryBudget.tryAcquireRetry() allows minPerSecond retries each second without traffic", () => {
  const budget = new RetryBudget({ minPerSecond: 10 });
  for (const second of [0, 1, 5]) {
    for (let i = 0; i < 10; i++) assert.equal(budget.tryAcquireRetry(second * 1_000 + i), true);
    assert.equal(budget.tryAcquireRetry(second * 1_000 + 999), false);
  }
});

Deno.test("RetryBudget.tryAcquireRetry() forgets requests that left the window", () => {
  const budget = new RetryBudget({ ratio: 0.5, windowMs: 10_000, minPerSecond: 0 });
  for (let i = 0; i < 100; i++) budget.recordRequest(0);
  assert.equal(budget.tryAcquireRetry(9_999), true);
  assert.deepEqual(budget.window, { requests: 100, retries: 1 });
  // At 10 s the requests' bucket has left the ten-second window; the retry's (at 9.999 s) has not.
  assert.equal(budget.tryAcquireRetry(10_000), false);
  assert.deepEqual(budget.window, { requests: 0, retries: 1 });
  budget.recordRequest(19_999);
  assert.deepEqual(budget.window, { requests: 1, retries: 0 });
});

Deno.test("RetryBudget.tryAcquireRetry() refuses everything with ratio 0 and no floor", () => {
  const budget = new RetryBudget({ ratio: 0, minPerSecond: 0 });
  budget.recordRequest(0);
  assert.equal(budget.tryAcquireRetry(0), false);
});

Deno.test("RetryBudget.recordRequest() treats a clock stepping back as not moving", () => {
  const budget = new RetryBudget({ ratio: 1, minPerSecond: 0 });
  budget.recordRequest(5_000);
  budget.recordRequest(1_000);
  assert.deepEqual(budget.window, { requests: 2, retries: 0 });
  assert.equal(budget.tryAcquireRetry(-20_000), true);
});

Deno.test("new RetryBudget() rejects bad options with the value in the message", () => {
  assert.throws(() => new RetryBudget({ ratio: -0.1 }), /ratio .* got -0.1/);
  assert.throws(() => new RetryBudget({ windowMs: 500 }), /windowMs .* got 500/);
  assert.throws(() => new RetryBudget({ minPerSecond: 1.5 }), /minPerSecond .* got 1.5/);
});

Deno.test("backoffDelay() stays below min(cap, base * 2^(attempt-1)) and reaches near it", () => {
  const random = mulberry32(99);
  const expectedBounds = [25, 50, 100, 200, 250, 250, 250];
  expectedBounds.forEach((bound, index) => {
    const attempt = index + 1;
    let largest = 0;
    for (let i = 0; i < 2_000; i++) {
      const delay = backoffDelay(attempt, { baseMs: 25, capMs: 250 }, random);
      assert.ok(delay >= 0 && delay < bound, `attempt ${attempt}: ${delay}`);
      largest = Math.max(largest, delay);
    }
    assert.ok(largest > bound * 0.95, `attempt ${attempt} never came near ${bound}`);
  });
  assert.equal(backoffDelay(1, {}, () => 0), 0);
  assert.equal(backoffDelay(2000, {}, () => 0.5), 125);
});

Deno.test("backoffDelay() rejects an attempt that is not a whole number >= 1", () => {
  assert.throws(() => backoffDelay(0), /got 0/);
  assert.throws(() => backoffDelay(1.5), /got 1.5/);
});
