import assert from "node:assert/strict";
import { type Accept, Backend, type Policy } from "../lib/pool.ts";
import { MAX_SCHEDULE_LENGTH, RoundRobinPolicy } from "../lib/policies/round_robin.ts";

const context = { clientIp: "192.0.2.1", headers: new Headers(), path: "/" };

function named(...weights: number[]): Backend[] {
  return weights.map((weight, i) =>
    new Backend({ url: `http://${String.fromCharCode(97 + i)}.test`, weight })
  );
}

/** A policy told the set `candidates`, as the pool tells it. */
function rotating(candidates: readonly Backend[]): Policy {
  const policy = new RoundRobinPolicy();
  policy.rebuild(candidates);
  return policy;
}

/** The next `count` picks as letters, "a" for the first backend. */
function letters(policy: Policy, count: number, accept?: Accept): string {
  const picks: string[] = [];
  for (let i = 0; i < count; i++) {
    picks.push(policy.select(context, accept)!.url.slice(7, 8));
  }
  return picks.join(" ");
}

Deno.test("RoundRobinPolicy.select() gives a a b a c a a for weights 5,1,1, every cycle", () => {
  const policy = rotating(named(5, 1, 1));
  assert.equal(letters(policy, 14), "a a b a c a a a a b a c a a");
});

Deno.test("RoundRobinPolicy.select() rotates exactly with equal weights", () => {
  const policy = rotating(named(1, 1, 1));
  assert.equal(letters(policy, 9), "a b c a b c a b c");
});

Deno.test("RoundRobinPolicy.select() shares by weight when the weights have no common factor", () => {
  const policy = rotating(named(3, 2));
  const counts = { a: 0, b: 0 };
  for (const letter of letters(policy, 500).split(" ")) {
    counts[letter as "a" | "b"]++;
  }
  assert.deepEqual(counts, { a: 300, b: 200 });
});

Deno.test("RoundRobinPolicy.select() returns the only candidate when one is left", () => {
  const [a, b] = named(5, 1);
  const policy = rotating([a, b]);
  policy.select(context);
  assert.equal(policy.select(context, (x) => x === b), b);
  policy.rebuild([b]);
  assert.equal(letters(policy, 3), "b b b");
  policy.rebuild([]);
  assert.equal(policy.select(context), undefined);
});

/** Live smooth WRR as nginx does it, from all-zero scores: what every path must reproduce. */
function reference(weights: readonly number[], count: number): string {
  const scores = weights.map(() => 0);
  const total = weights.reduce((sum, weight) => sum + weight, 0);
  const picks: string[] = [];
  for (let n = 0; n < count; n++) {
    let best = 0;
    for (let i = 0; i < weights.length; i++) {
      scores[i] += weights[i];
      if (scores[i] > scores[best]) best = i;
    }
    scores[best] -= total;
    picks.push(String.fromCharCode(97 + best));
  }
  return picks.join(" ");
}

function countLetters(sequence: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const letter of sequence.split(" ")) counts[letter] = (counts[letter] ?? 0) + 1;
  return counts;
}

Deno.test("RoundRobinPolicy.select() repeats a a b a c a a exactly over many cycles", () => {
  const policy = rotating(named(5, 1, 1));
  const cycle = "a a b a c a a";
  assert.equal(letters(policy, 7 * 50), Array(50).fill(cycle).join(" "));
});

Deno.test("RoundRobinPolicy.select() gives each of N equal backends exactly K of K*N picks", () => {
  for (const n of [2, 3, 7, 64]) {
    const candidates = named(...Array(n).fill(4));
    const policy = rotating(candidates);
    const expected = candidates.map((b) => b.url.slice(7, 8)).join(" ");
    assert.equal(letters(policy, n * 10), Array(10).fill(expected).join(" "));
  }
});

Deno.test("RoundRobinPolicy.select() matches live smooth WRR for assorted weights", () => {
  for (const weights of [[3, 2], [5, 1, 1], [7, 3, 2, 1], [1, 2, 3, 4, 5], [6, 4], [13, 1, 8]]) {
    const policy = rotating(named(...weights));
    const cycle = weights.reduce((sum, weight) => sum + weight, 0);
    assert.equal(
      letters(policy, cycle * 3),
      reference(weights, cycle * 3),
      `${weights}`,
    );
  }
});

Deno.test("RoundRobinPolicy.select() over weights too long to precompute matches live smooth WRR", () => {
  // Both sides of the cap: 4093+2+1 is exactly MAX_SCHEDULE_LENGTH, one more is past it.
  assert.equal(MAX_SCHEDULE_LENGTH, 4096);
  for (const weights of [[4093, 2, 1], [4094, 2, 1], [5003, 7, 1, 2], [10007, 9973]]) {
    const policy = rotating(named(...weights));
    const count = 3 * weights.reduce((sum, weight) => sum + weight, 0);
    assert.equal(letters(policy, count), reference(weights, count), `${weights}`);
  }
});

Deno.test("RoundRobinPolicy.rebuild() adopts new weights without starting the rotation over", () => {
  const candidates = named(5, 1, 1);
  const policy = rotating(candidates);
  assert.equal(letters(policy, 7), "a a b a c a a");
  // As the pool does: weights change on the backends, and the policy is told.
  for (const backend of candidates) backend.effectiveWeight = 10;
  policy.rebuild([...candidates]);
  const after = letters(policy, 3 * 20).split(" ");
  for (let i = 0; i + 3 <= after.length; i += 3) {
    assert.deepEqual(after.slice(i, i + 3).sort(), ["a", "b", "c"], `window at ${i}`);
  }
});

Deno.test("RoundRobinPolicy.rebuild() goes on with the backend that was next", () => {
  const candidates = named(1, 1, 1, 1);
  const policy = rotating(candidates);
  assert.equal(letters(policy, 2), "a b");
  policy.rebuild(candidates.filter((b) => b.url !== "http://d.test"));
  assert.equal(letters(policy, 5), "c a b c a");
  policy.rebuild(candidates);
  assert.equal(letters(policy, 4), "b c d a", "rejoining, d takes its turn in order");
});

Deno.test("RoundRobinPolicy.select() keeps the main rotation when a retry skips tried backends", () => {
  const candidates = named(5, 1, 1);
  const [a, b, c] = candidates;
  const policy = rotating(candidates);
  assert.equal(letters(policy, 3), "a a b");
  // Retries of one request, each accepting only what was not tried.
  assert.ok([a, c].includes(policy.select(context, (x) => x !== b)!));
  assert.ok([b, c].includes(policy.select(context, (x) => x !== a)!));
  assert.equal(letters(policy, 4 + 14), "a c a a " + reference([5, 1, 1], 14));

  const equal = named(1, 1, 1, 1);
  const rotation = rotating(equal);
  assert.equal(letters(rotation, 2), "a b");
  rotation.select(context, (x) => x !== equal[1]);
  assert.equal(letters(rotation, 6), "c d a b c d");
});

Deno.test("RoundRobinPolicy.select() still shares by weight when every pick is filtered", () => {
  // With max-conns the pool filters every pick; here nothing is full, so all are accepted.
  const policy = rotating(named(5, 1, 1));
  const picks = letters(policy, 70, () => true);
  assert.equal(picks, reference([5, 1, 1], 70));
  assert.deepEqual(countLetters(picks), { a: 50, b: 10, c: 10 });
});

Deno.test("RoundRobinPolicy.select() never returns a backend `accept` refuses", () => {
  const candidates = named(5, 1, 1);
  const policy = rotating(candidates);
  const picks = letters(policy, 60, (x) => x !== candidates[0]).split(" ");
  assert.deepEqual(countLetters(picks.join(" ")), { b: 30, c: 30 });
  assert.equal(policy.select(context, () => false), undefined);
});

Deno.test("RoundRobinPolicy keeps every backend its share when the set changes as often as picks", () => {
  // A flapping fourth backend at low traffic: a rebuild every k picks must not starve anyone.
  const [a, b, c, d] = named(5, 1, 1, 1);
  for (const k of [1, 2, 3, 5]) {
    const policy = rotating([a, b, c, d]);
    const counts = new Map<Backend, number>();
    for (let i = 0; i < 7000; i++) {
      if (i % k === 0) policy.rebuild(Math.floor(i / k) % 2 === 0 ? [a, b, c] : [a, b, c, d]);
      const picked = policy.select(context)!;
      counts.set(picked, (counts.get(picked) ?? 0) + 1);
    }
    // Weight shares are 5/8 to 5/7 for a, 1/8 to 1/7 for b and c, at most 1/8 for d (up half the time).
    const share = (backend: Backend) => (counts.get(backend) ?? 0) / 7000;
    assert.ok(share(a) > 0.55 && share(a) < 0.75, `k=${k}: a ${share(a)}`);
    for (const backend of [b, c]) {
      assert.ok(share(backend) > 0.1 && share(backend) < 0.17, `k=${k}: ${backend.url}`);
    }
    assert.ok(share(d) > 0.03 && share(d) < 0.13, `k=${k}: d ${share(d)}`);
  }
});
