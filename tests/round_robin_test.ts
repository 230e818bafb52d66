import assert from "node:assert/strict";
import { Backend, type Policy } from "../lib/pool.ts";
import { MAX_SCHEDULE_LENGTH, RoundRobinPolicy } from "../lib/policies/round_robin.ts";

const context = { clientIp: "192.0.2.1", headers: new Headers(), path: "/" };

function named(...weights: number[]): Backend[] {
  return weights.map((weight, i) =>
    new Backend({ url: `http://${String.fromCharCode(97 + i)}.test`, weight })
  );
}

function letters(policy: Policy, candidates: Backend[], count: number): string {
  const picks: string[] = [];
  for (let i = 0; i < count; i++) {
    picks.push(policy.select(candidates, context).url.slice(7, 8));
  }
  return picks.join(" ");
}

Deno.test("RoundRobinPolicy.select() gives a a b a c a a for weights 5,1,1, every cycle", () => {
  const policy: Policy = new RoundRobinPolicy();
  const candidates = named(5, 1, 1);
  assert.equal(letters(policy, candidates, 14), "a a b a c a a a a b a c a a");
});

Deno.test("RoundRobinPolicy.select() rotates exactly with equal weights", () => {
  const policy: Policy = new RoundRobinPolicy();
  const candidates = named(1, 1, 1);
  assert.equal(letters(policy, candidates, 9), "a b c a b c a b c");
});

Deno.test("RoundRobinPolicy.select() shares by weight when the weights have no common factor", () => {
  const policy: Policy = new RoundRobinPolicy();
  const candidates = named(3, 2);
  const counts = { a: 0, b: 0 };
  for (const letter of letters(policy, candidates, 500).split(" ")) {
    counts[letter as "a" | "b"]++;
  }
  assert.deepEqual(counts, { a: 300, b: 200 });
});

Deno.test("RoundRobinPolicy.select() returns the only candidate when one is left", () => {
  const policy: Policy = new RoundRobinPolicy();
  const [a, b] = named(5, 1);
  policy.select([a, b], context);
  assert.equal(policy.select([b], context), b);
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
  const policy: Policy = new RoundRobinPolicy();
  const candidates = named(5, 1, 1);
  const cycle = "a a b a c a a";
  assert.equal(letters(policy, candidates, 7 * 50), Array(50).fill(cycle).join(" "));
});

Deno.test("RoundRobinPolicy.select() gives each of N equal backends exactly K of K*N picks", () => {
  for (const n of [2, 3, 7, 64]) {
    const policy: Policy = new RoundRobinPolicy();
    const candidates = named(...Array(n).fill(4));
    const expected = candidates.map((b) => b.url.slice(7, 8)).join(" ");
    assert.equal(letters(policy, candidates, n * 10), Array(10).fill(expected).join(" "));
  }
});

Deno.test("RoundRobinPolicy.select() matches live smooth WRR for assorted weights", () => {
  for (const weights of [[3, 2], [5, 1, 1], [7, 3, 2, 1], [1, 2, 3, 4, 5], [6, 4], [13, 1, 8]]) {
    const policy: Policy = new RoundRobinPolicy();
    const candidates = named(...weights);
    const cycle = weights.reduce((sum, weight) => sum + weight, 0);
    assert.equal(
      letters(policy, candidates, cycle * 3),
      reference(weights, cycle * 3),
      `${weights}`,
    );
  }
});

Deno.test("RoundRobinPolicy.select() over weights too long to precompute matches live smooth WRR", () => {
  // Both sides of the cap: 4093+2+1 is exactly MAX_SCHEDULE_LENGTH, one more is past it.
  assert.equal(MAX_SCHEDULE_LENGTH, 4096);
  for (const weights of [[4093, 2, 1], [4094, 2, 1], [5003, 7, 1, 2], [10007, 9973]]) {
    const policy: Policy = new RoundRobinPolicy();
    const candidates = named(...weights);
    const count = 3 * weights.reduce((sum, weight) => sum + weight, 0);
    assert.equal(letters(policy, candidates, count), reference(weights, count), `${weights}`);
  }
});

Deno.test("RoundRobinPolicy.select() rebuilds when the pool passes a new array with new weights", () => {
  const policy: Policy = new RoundRobinPolicy();
  const candidates = named(5, 1, 1);
  assert.equal(letters(policy, candidates, 7), "a a b a c a a");
  // As the pool does: weights change on the backends, and a new array instance is offered.
  for (const backend of candidates) backend.effectiveWeight = 10;
  const renewed = [...candidates];
  const after = letters(policy, renewed, 3 * 20).split(" ");
  for (let i = 0; i + 3 <= after.length; i += 3) {
    assert.deepEqual(after.slice(i, i + 3).sort(), ["a", "b", "c"], `window at ${i}`);
  }
});

Deno.test("RoundRobinPolicy.select() restarts with new weights changed in place at the end of a cycle", () => {
  const policy: Policy = new RoundRobinPolicy();
  const candidates = named(1, 1, 1);
  assert.equal(letters(policy, candidates, 4), "a b c a");
  candidates[2].effectiveWeight = 50; // c: 5 to a's and b's 1, on the same array instance
  // The running cycle finishes as built, then the new cycle starts from its beginning.
  assert.equal(letters(policy, candidates, 2 + 14), "b c " + reference([1, 1, 5], 14));
});

Deno.test("RoundRobinPolicy.select() keeps the main rotation when a retry passes a filtered copy", () => {
  const policy: Policy = new RoundRobinPolicy();
  const candidates = named(5, 1, 1);
  const [a, b, c] = candidates;
  assert.equal(letters(policy, candidates, 3), "a a b");
  // Retries of one request, each on a fresh copy without what was tried.
  assert.ok([a, c].includes(policy.select([a, c], context)));
  assert.ok([b, c].includes(policy.select([b, c], context)));
  assert.equal(letters(policy, candidates, 4 + 14), "a c a a " + reference([5, 1, 1], 14));

  const equal = named(1, 1, 1, 1);
  const rotation: Policy = new RoundRobinPolicy();
  assert.equal(letters(rotation, equal, 2), "a b");
  rotation.select([equal[0], equal[2], equal[3]], context);
  assert.equal(letters(rotation, equal, 6), "c d a b c d");
});

Deno.test("RoundRobinPolicy.select() still shares by weight when every pick gets a fresh copy", () => {
  // With max-conns filtering the pool filters anew for each pick: no instance repeats.
  const policy: Policy = new RoundRobinPolicy();
  const candidates = named(5, 1, 1);
  const picks: string[] = [];
  for (let i = 0; i < 70; i++) picks.push(policy.select([...candidates], context).url.slice(7, 8));
  assert.equal(picks.join(" "), reference([5, 1, 1], 70));
  assert.deepEqual(countLetters(picks.join(" ")), { a: 50, b: 10, c: 10 });
});
