import assert from "node:assert/strict";
import { Backend, type SelectContext } from "../lib/pool.ts";
import { P2cEwmaPolicy } from "../lib/policies/p2c_ewma.ts";
import { mulberry32 } from "../lib/policies/random_source.ts";

function backends(...weights: number[]): Backend[] {
  return weights.map((weight, i) => new Backend({ url: `http://10.0.0.${i + 1}:8080`, weight }));
}

const context: SelectContext = { clientIp: "192.0.2.1", headers: new Headers(), path: "/" };

/** Tells `policy` the set, as the pool does, and picks once. */
function pickFrom(policy: P2cEwmaPolicy, candidates: readonly Backend[]): Backend {
  policy.rebuild(candidates);
  return policy.select(context)!;
}

/** A clock the test moves by hand. */
function fakeClock() {
  const clock = { ms: 0, now: () => clock.ms };
  return clock;
}

/**
 * Traffic at one request per millisecond, each holding its backend's `inflight` until it
 * completes and is observed, as the proxy would. `latencyOf` may change over time. Returns how
 * many requests each backend got in each simulated second.
 */
function simulate(
  policy: P2cEwmaPolicy,
  clock: { ms: number },
  candidates: Backend[],
  seconds: number,
  latencyOf: (backend: Backend, ms: number) => number,
): Map<Backend, number>[] {
  // Completions in time order: latencies within one run are few, so one FIFO per latency stays
  // sorted without a heap.
  const queues = new Map<number, { at: number; backend: Backend }[]>();
  policy.rebuild(candidates);
  const perSecond: Map<Backend, number>[] = [];
  for (let second = 0; second < seconds; second++) {
    const counts = new Map<Backend, number>(candidates.map((b) => [b, 0]));
    for (let tick = 0; tick < 1000; tick++) {
      for (const [latency, queue] of queues) {
        while (queue.length > 0 && queue[0].at <= clock.ms) {
          const { backend } = queue.shift()!;
          backend.inflight--;
          policy.observe(backend, latency);
        }
      }
      const chosen = policy.select(context)!;
      counts.set(chosen, counts.get(chosen)! + 1);
      chosen.inflight++;
      const latency = latencyOf(chosen, clock.ms);
      if (!queues.has(latency)) queues.set(latency, []);
      queues.get(latency)!.push({ at: clock.ms + latency, backend: chosen });
      clock.ms++;
    }
    perSecond.push(counts);
  }
  return perSecond;
}

function share(perSecond: Map<Backend, number>[], backend: Backend, from: number, to: number) {
  let mine = 0;
  let all = 0;
  for (const counts of perSecond.slice(from, to)) {
    for (const [b, count] of counts) {
      all += count;
      if (b === backend) mine += count;
    }
  }
  return mine / all;
}

Deno.test("P2cEwmaPolicy.select() starves a slow backend and brings it back after it recovers", () => {
  const clock = fakeClock();
  const policy = new P2cEwmaPolicy({ random: mulberry32(7), now: clock.now });
  const candidates = backends(1, 1, 1);
  const slow = candidates[1];
  const recoversAt = 30_000;
  const perSecond = simulate(
    policy,
    clock,
    candidates,
    90,
    (backend, ms) => backend === slow && ms < recoversAt ? 500 : 10,
  );
  const whileSlow = share(perSecond, slow, 5, 30);
  assert.ok(whileSlow < 0.02, `slow backend kept ${whileSlow} of traffic`);
  const afterRecovery = share(perSecond, slow, 80, 90);
  assert.ok(afterRecovery > 0.25, `recovered backend only got ${afterRecovery} back`);
});

Deno.test("P2cEwmaPolicy.select() spreads equal backends evenly under load", () => {
  const clock = fakeClock();
  const policy = new P2cEwmaPolicy({ random: mulberry32(3), now: clock.now });
  const candidates = backends(1, 1, 1, 1);
  const perSecond = simulate(policy, clock, candidates, 20, () => 20);
  for (const backend of candidates) {
    const got = share(perSecond, backend, 2, 20);
    assert.ok(Math.abs(got - 0.25) < 0.05, `${backend.url} got ${got}`);
  }
});

Deno.test("P2cEwmaPolicy.select() sends a weight-3 backend 2-3.5 times a weight-1 share", () => {
  const clock = fakeClock();
  const policy = new P2cEwmaPolicy({ random: mulberry32(5), now: clock.now });
  const candidates = backends(3, 1, 1, 1);
  const perSecond = simulate(policy, clock, candidates, 20, () => 20);
  const heavy = share(perSecond, candidates[0], 2, 20);
  const light = share(perSecond, candidates[1], 2, 20);
  // Weight only scales the score, so p2c approximates the 3:1 ratio through the in-flight term
  // rather than meeting it exactly; without weights the ratio would be 1.
  const ratio = heavy / light;
  assert.ok(ratio > 2 && ratio < 3.5, `weight 3 vs 1 gave a ratio of ${ratio}`);
});

Deno.test("P2cEwmaPolicy.select() lets an unobserved backend compete on load alone", () => {
  const clock = fakeClock();
  const policy = new P2cEwmaPolicy({ random: mulberry32(11), now: clock.now });
  const [seen, fresh] = backends(1, 1);
  policy.observe(seen, 100);
  // Idle and tied on borrowed latency: either may win, and both do.
  const picks = new Set<Backend>();
  for (let i = 0; i < 50; i++) picks.add(pickFrom(policy, [seen, fresh]));
  assert.equal(picks.size, 2);
  // One request in flight on the observed backend tips every choice to the fresh one.
  seen.inflight = 1;
  for (let i = 0; i < 50; i++) assert.equal(pickFrom(policy, [seen, fresh]), fresh);
});

Deno.test("P2cEwmaPolicy.observe() jumps to a higher sample and averages lower ones over time", () => {
  const clock = fakeClock();
  const policy = new P2cEwmaPolicy({ decayMs: 10_000, now: clock.now });
  const [backend] = backends(1);
  assert.equal(policy.latencyEstimate(backend), undefined);
  policy.observe(backend, 10);
  policy.observe(backend, 100);
  assert.equal(policy.latencyEstimate(backend), 100);
  clock.ms += 10_000;
  // One time constant later a 10 ms sample moves the estimate 1 - 1/e of the way from 100.
  policy.observe(backend, 10);
  const expected = 100 / Math.E + 10 * (1 - 1 / Math.E);
  assert.ok(Math.abs(policy.latencyEstimate(backend)! - expected) < 1e-9);
});

Deno.test("P2cEwmaPolicy.latencyEstimate() decays toward zero while a backend is not observed", () => {
  const clock = fakeClock();
  const policy = new P2cEwmaPolicy({ decayMs: 10_000, now: clock.now });
  const [backend] = backends(1);
  policy.observe(backend, 300);
  clock.ms += 20_000;
  const expected = 300 / Math.E ** 2;
  assert.ok(Math.abs(policy.latencyEstimate(backend)! - expected) < 1e-9);
});

Deno.test("P2cEwmaPolicy.observeFailure() replaces a low estimate with the penalty at once", () => {
  const clock = fakeClock();
  const policy = new P2cEwmaPolicy({ failurePenaltyMs: 2_000, now: clock.now });
  const [failing, healthy] = backends(1, 1);
  policy.observe(failing, 5);
  policy.observe(healthy, 50);
  policy.observeFailure(failing);
  assert.equal(policy.latencyEstimate(failing), 2_000);
  for (let i = 0; i < 20; i++) assert.equal(pickFrom(policy, [failing, healthy]), healthy);
});

Deno.test("P2cEwmaPolicy.select() compares two accepted backends and never a refused one", () => {
  const clock = fakeClock();
  const policy = new P2cEwmaPolicy({ random: mulberry32(13), now: clock.now });
  const candidates = backends(1, 1, 1, 1);
  const [slow, tried, fast, other] = candidates;
  policy.observe(slow, 500);
  policy.observe(fast, 1);
  policy.observe(other, 1);
  policy.rebuild(candidates);
  const picks = new Set<Backend>();
  for (let i = 0; i < 200; i++) picks.add(policy.select(context, (b) => b !== tried)!);
  // Three accepted: two distinct are compared, so the slowest never wins.
  assert.deepEqual(picks, new Set([fast, other]));
  for (let i = 0; i < 20; i++) {
    assert.equal(policy.select(context, (b) => b === slow || b === fast), fast);
    assert.equal(policy.select(context, (b) => b === slow), slow);
  }
  assert.equal(policy.select(context, () => false), undefined);
  assert.equal(policy.latencyObserver, policy);
});

Deno.test("P2cEwmaPolicy.observe() ignores negative and NaN latencies", () => {
  const policy = new P2cEwmaPolicy({ now: () => 0 });
  const [backend] = backends(1);
  policy.observe(backend, -1);
  policy.observe(backend, NaN);
  assert.equal(policy.latencyEstimate(backend), undefined);
});

Deno.test("new P2cEwmaPolicy() rejects a non-positive decay with the value in the message", () => {
  assert.throws(() => new P2cEwmaPolicy({ decayMs: 0 }), /decayMs .* got 0/);
  assert.throws(() => new P2cEwmaPolicy({ failurePenaltyMs: -5 }), /failurePenaltyMs .* got -5/);
});
