import assert from "node:assert/strict";
import { Backend, type Policy } from "../lib/pool.ts";
import { RoundRobinPolicy } from "../lib/policies/round_robin.ts";

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
