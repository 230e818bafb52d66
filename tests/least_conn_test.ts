import assert from "node:assert/strict";
import { Backend, type Policy, Pool, type PoolOptions } from "../lib/pool.ts";
import { LeastConnPolicy, SCAN_MAX_CANDIDATES } from "../lib/policies/least_conn.ts";
import { mulberry32, type RandomSource } from "../lib/policies/random_source.ts";

const context = { clientIp: "192.0.2.1", headers: new Headers(), path: "/" };

/** Tells `policy` the set, as the pool does, and picks once. */
function pickFrom(policy: Policy, candidates: readonly Backend[]): Backend | undefined {
  policy.rebuild(candidates);
  return policy.select(context);
}

function backends(specs: [weight: number, inflight: number][]): Backend[] {
  return specs.map(([weight, inflight], i) => {
    const backend = new Backend({ url: `http://10.0.0.${i + 1}:8080`, weight });
    backend.inflight = inflight;
    return backend;
  });
}

Deno.test("LeastConnPolicy.select() picks the least loaded when loads differ", () => {
  const policy: Policy = new LeastConnPolicy({ random: mulberry32(1) });
  const candidates = backends([[1, 3], [1, 1], [1, 2]]);
  policy.rebuild(candidates);
  for (let i = 0; i < 100; i++) assert.equal(policy.select(context), candidates[1]);
});

Deno.test("LeastConnPolicy.select() divides load by weight, counting the new request", () => {
  const policy: Policy = new LeastConnPolicy({ random: mulberry32(1) });
  // (2 + 1) / 4 = 0.75 beats (0 + 1) / 1 = 1: the heavy backend takes more in flight.
  const busyButHeavy = backends([[4, 2], [1, 0]]);
  assert.equal(pickFrom(policy, busyButHeavy), busyButHeavy[0]);
  // (4 + 1) / 4 = 1.25 loses to 1 / 1 once the heavy backend has four in flight.
  const saturated = backends([[4, 4], [1, 0]]);
  assert.equal(pickFrom(policy, saturated), saturated[1]);
  // Both idle: 1 / 5 beats 1 / 1, so weight matters even with nothing in flight.
  const idle = backends([[1, 0], [5, 0]]);
  assert.equal(pickFrom(policy, idle), idle[1]);
});

Deno.test("LeastConnPolicy.select() spreads ties evenly and never picks a busier backend", () => {
  const policy: Policy = new LeastConnPolicy({ random: mulberry32(42) });
  const candidates = backends([[1, 0], [1, 0], [1, 5], [1, 0], [1, 0]]);
  policy.rebuild(candidates);
  const counts = new Map<Backend, number>(candidates.map((b) => [b, 0]));
  const picks = 40_000;
  for (let i = 0; i < picks; i++) {
    const chosen = policy.select(context)!;
    counts.set(chosen, counts.get(chosen)! + 1);
  }
  assert.equal(counts.get(candidates[2]), 0);
  for (const index of [0, 1, 3, 4]) {
    const share = counts.get(candidates[index])! / picks;
    assert.ok(Math.abs(share - 0.25) < 0.02, `backend ${index} got ${share} of ties`);
  }
});

Deno.test("LeastConnPolicy.select() returns the single candidate without drawing", () => {
  const policy: Policy = new LeastConnPolicy({
    random: () => {
      throw new Error("random must not be called");
    },
  });
  const [only] = backends([[1, 9]]);
  assert.equal(pickFrom(policy, [only]), only);
});

// The index: arrays longer than SCAN_MAX_CANDIDATES, offered by a real Pool, which reports every
// load change to the policy.

/** A RandomSource that counts its calls, to tell the index (one per pick) from a scan. */
function counting(seed: number): RandomSource & { calls: number } {
  const random = mulberry32(seed);
  const source = Object.assign(() => {
    source.calls++;
    return random();
  }, { calls: 0 });
  return source;
}

function poolOf(weights: number[], policy: Policy, options: Partial<PoolOptions> = {}): Pool {
  const specs = weights.map((weight, i) => ({
    url: `http://10.0.${i >> 8}.${i & 255}:80`,
    weight,
  }));
  return new Pool(specs, { rise: 1, fall: 1, policy, ...options });
}

/** Every candidate with the lowest `(inflight + 1) / effectiveWeight`, by the O(n) definition. */
function lowest(candidates: readonly Backend[]): Set<Backend> {
  let best: Backend[] = [];
  for (const b of candidates) {
    const a = best[0];
    const diff = a === undefined
      ? -1
      : (b.inflight + 1) * a.effectiveWeight - (a.inflight + 1) * b.effectiveWeight;
    if (diff < 0) best = [b];
    else if (diff === 0) best.push(b);
  }
  return new Set(best);
}

/** Chi-square statistic of `counts` against equal expected counts. */
function chiSquare(counts: number[]): number {
  const total = counts.reduce((sum, c) => sum + c, 0);
  const expected = total / counts.length;
  return counts.reduce((sum, c) => sum + (c - expected) ** 2 / expected, 0);
}

Deno.test("LeastConnPolicy.select() answers from its index, one draw per pick", () => {
  const random = counting(1);
  const pool = poolOf(Array(20).fill(1), new LeastConnPolicy({ random }));
  // All idle: the index draws once per pick (a scan would draw 19 times, once per extra tie).
  for (let i = 1; i <= 100; i++) {
    pool.pick(context);
    assert.equal(random.calls, i);
  }
});

Deno.test("LeastConnPolicy.select() matches an O(n) scan through random acquire/release", () => {
  const rng = mulberry32(2024);
  for (const size of [SCAN_MAX_CANDIDATES + 1, 30, 200]) {
    const random = counting(size);
    // Weights 1-4 (×10 effective) make equal loads across different weights common: ties
    // between a busy heavy backend and an idle light one exercise the index's levels.
    const weights = Array.from({ length: size }, () => 1 + Math.floor(rng() * 4));
    const pool = poolOf(weights, new LeastConnPolicy({ random }));
    const outstanding: Backend[] = [];
    for (let op = 0; op < 20_000; op++) {
      const roll = rng();
      if (roll < 0.001) {
        // A weight change: the pool rebuilds the policy, which indexes afresh.
        const backend = pool.backends[Math.floor(rng() * size)];
        pool.setWeight(backend, 1 + Math.floor(rng() * 4));
      } else if (roll < 0.5 || outstanding.length === 0) {
        const expected = lowest(pool.available);
        const before = random.calls;
        const chosen = pool.pick(context)!;
        assert.ok(expected.has(chosen), `op ${op}, n=${size}: not among the least loaded`);
        // Indexed: at most one draw, however many tie.
        assert.ok(random.calls - before <= 1, `op ${op}, n=${size}: not indexed`);
        pool.acquire(chosen);
        outstanding.push(chosen);
      } else {
        // Requests finish in any order, not first-in first-out.
        const at = Math.floor(rng() * outstanding.length);
        pool.release(outstanding[at]);
        outstanding[at] = outstanding[outstanding.length - 1];
        outstanding.pop();
      }
    }
  }
});

Deno.test("LeastConnPolicy.select() spreads ties uniformly when requests come one at a time", () => {
  // Pick, acquire, release: every backend is idle again at each pick. A tie-breaker kept per
  // backend would keep choosing the last winner here (see lib/policies/least_conn.ts).
  const pool = poolOf(Array(20).fill(1), new LeastConnPolicy({ random: mulberry32(7) }));
  const counts = new Map<Backend, number>(pool.backends.map((b) => [b, 0]));
  const picks = 40_000;
  let repeats = 0;
  let last: Backend | undefined;
  for (let i = 0; i < picks; i++) {
    const chosen = pool.pick(context)!;
    pool.acquire(chosen);
    pool.release(chosen);
    counts.set(chosen, counts.get(chosen)! + 1);
    if (chosen === last) repeats++;
    last = chosen;
  }
  // 19 degrees of freedom: P(chi-square > 43.8) = 0.001 for a fair draw.
  const statistic = chiSquare([...counts.values()]);
  assert.ok(statistic < 43.8, `chi-square ${statistic.toFixed(1)} over 20 backends`);
  // A fair draw repeats the previous backend 1 time in 20 (2000 ± 44).
  assert.ok(Math.abs(repeats - picks / 20) < 200, `${repeats} repeats in ${picks} picks`);
});

Deno.test("LeastConnPolicy.select() treats equal ratios of different weights as ties", () => {
  // Ten weight-2 backends with one request each, ten idle weight-1 ones: all at (1+1)/2 = 1/1.
  const weights = [...Array(10).fill(2), ...Array(10).fill(1)];
  const pool = poolOf(weights, new LeastConnPolicy({ random: mulberry32(3) }));
  for (const backend of pool.backends.slice(0, 10)) pool.acquire(backend);
  const counts = new Map<Backend, number>(pool.backends.map((b) => [b, 0]));
  for (let i = 0; i < 40_000; i++) {
    const chosen = pool.pick(context)!;
    pool.acquire(chosen);
    pool.release(chosen);
    counts.set(chosen, counts.get(chosen)! + 1);
  }
  const statistic = chiSquare([...counts.values()]);
  assert.ok(statistic < 43.8, `chi-square ${statistic.toFixed(1)} over 20 backends`);
});

Deno.test("LeastConnPolicy.select() stays fair after loads rose and fell far", () => {
  const pool = poolOf(Array(12).fill(1), new LeastConnPolicy({ random: mulberry32(21) }));
  // Each backend in turn climbs to 100 in flight and back: hundreds of loads are used once and
  // left empty, so the index must drop and later recreate them.
  for (const backend of pool.backends) {
    for (let i = 0; i < 100; i++) pool.acquire(backend);
    for (let i = 0; i < 100; i++) pool.release(backend);
  }
  // One request each: all tied at 2 in flight, to be reached again through recreated loads.
  for (const backend of pool.backends) pool.acquire(backend);
  const counts = new Map<Backend, number>(pool.backends.map((b) => [b, 0]));
  for (let i = 0; i < 24_000; i++) {
    const chosen = pool.pick(context)!;
    pool.acquire(chosen);
    pool.release(chosen);
    counts.set(chosen, counts.get(chosen)! + 1);
  }
  // 11 degrees of freedom: P(chi-square > 31.3) = 0.001 for a fair draw.
  const statistic = chiSquare([...counts.values()]);
  assert.ok(statistic < 31.3, `chi-square ${statistic.toFixed(1)} over 12 backends`);
});

Deno.test("LeastConnPolicy.select() keeps in-flight requests proportional to weight", () => {
  const weights = Array.from({ length: 24 }, (_, i) => 1 + (i % 4));
  const total = weights.reduce((sum, w) => sum + w, 0);
  const pool = poolOf(weights, new LeastConnPolicy({ random: mulberry32(5) }));
  const rng = mulberry32(6);
  // Four requests in flight per unit of weight once full, finishing in random order.
  const outstanding: Backend[] = [];
  for (let i = 0; i < 20_000; i++) {
    const chosen = pool.pick(context)!;
    pool.acquire(chosen);
    outstanding.push(chosen);
    if (outstanding.length <= 4 * total) continue;
    const at = Math.floor(rng() * outstanding.length);
    pool.release(outstanding[at]);
    outstanding[at] = outstanding[outstanding.length - 1];
    outstanding.pop();
    // Every backend stays within one request per unit of weight of 4 per unit of weight.
    for (const backend of pool.backends) {
      const perWeight = backend.inflight / backend.weight;
      assert.ok(Math.abs(perWeight - 4) <= 1, `weight ${backend.weight}: ${backend.inflight}`);
    }
  }
});

Deno.test("LeastConnPolicy.select() scans retries without disturbing its index", () => {
  const random = counting(11);
  const pool = poolOf(Array(20).fill(1), new LeastConnPolicy({ random }));
  const [a, b, c] = pool.backends;
  pool.acquire(a);
  pool.acquire(b);
  pool.acquire(b);
  for (let i = 0; i < 200; i++) {
    // A retry that already tried every idle backend: only a and b are accepted.
    const tried = new Set(pool.backends.slice(2));
    const copy = pool.pick(context, tried)!;
    assert.equal(copy, a);
    // A retry accepting all but c: 17 idle backends tie, so a scan draws 16 times.
    const before = random.calls;
    const retry = pool.pick(context, new Set([c]))!;
    assert.equal(random.calls - before, 16);
    assert.ok(retry !== a && retry !== b && retry !== c);
    // An unfiltered pick still answers from the index (one draw) with up-to-date loads.
    pool.acquire(retry);
    const chosen = pool.pick(context)!;
    assert.ok(lowest(pool.available).has(chosen));
    assert.notEqual(chosen, retry);
    pool.release(retry);
  }
  assert.equal(pool.pick(context, new Set(pool.backends.slice(1))), a);
});

Deno.test("LeastConnPolicy.select() scans every pick under max-conns and stays exact", () => {
  const random = counting(12);
  const pool = poolOf(Array(20).fill(1), new LeastConnPolicy({ random }), { maxConns: 3 });
  const rng = mulberry32(13);
  const outstanding: Backend[] = [];
  for (let op = 0; op < 5_000; op++) {
    const candidates = pool.available.filter((b) => b.inflight < 3);
    if (rng() < 0.5 && candidates.length > 0) {
      const chosen = pool.pick(context)!;
      assert.ok(lowest(candidates).has(chosen));
      pool.acquire(chosen);
      outstanding.push(chosen);
    } else if (outstanding.length > 0) {
      pool.release(outstanding.splice(Math.floor(rng() * outstanding.length), 1)[0]);
    }
  }
  // Every pick is filtered, so every pick scans: all idle, a scan draws 19 times.
  for (const backend of outstanding) pool.release(backend);
  const before = random.calls;
  pool.pick(context);
  assert.equal(random.calls - before, 19);
});

Deno.test("LeastConnPolicy.loadChanged() ignores a backend it has not indexed", () => {
  const policy = new LeastConnPolicy({ random: mulberry32(14) });
  const stranger = new Backend({ url: "http://192.0.2.9:80", weight: 1 });
  policy.loadChanged(stranger); // nothing indexed yet
  const pool = poolOf(Array(12).fill(1), policy);
  stranger.inflight = 5;
  policy.loadChanged(stranger);
  const [first] = pool.backends;
  for (const backend of pool.backends.slice(1)) pool.acquire(backend);
  assert.equal(pool.pick(context), first);
});

Deno.test("LeastConnPolicy.select() does not crash on zero-weight candidates", () => {
  const policy: Policy = new LeastConnPolicy({ random: mulberry32(15) });
  // The pool never offers weight 0; a caller might. They lose to any weight and tie together.
  const mixed = backends([...Array(10).fill([0, 0]), [1, 7]]);
  policy.rebuild(mixed);
  for (let i = 0; i < 3; i++) assert.equal(policy.select(context), mixed[10]);
  mixed[10].inflight++;
  policy.loadChanged!(mixed[10]);
  assert.equal(policy.select(context), mixed[10]);
  const zeros = backends(Array(12).fill([0, 0]));
  policy.rebuild(zeros);
  for (let i = 0; i < 3; i++) assert.ok(zeros.includes(policy.select(context)!));
  zeros[0].inflight++;
  policy.loadChanged!(zeros[0]);
  assert.ok(zeros.includes(policy.select(context)!));
});
