import assert from "node:assert/strict";
import { Backend, type Policy } from "../lib/pool.ts";
import { RandomPolicy } from "../lib/policies/random.ts";
import { mulberry32 } from "../lib/policies/random_source.ts";

const context = { clientIp: "192.0.2.1", headers: new Headers(), path: "/" };

function backends(...weights: number[]): Backend[] {
  return weights.map((weight, i) => new Backend({ url: `http://10.0.0.${i + 1}:8080`, weight }));
}

function shares(policy: Policy, candidates: Backend[], picks: number): number[] {
  const counts = candidates.map(() => 0);
  for (let i = 0; i < picks; i++) counts[candidates.indexOf(policy.select(candidates, context))]++;
  return counts.map((count) => count / picks);
}

Deno.test("RandomPolicy.select() follows weights 1:2:7 within 2 % over 100,000 picks", () => {
  const got = shares(new RandomPolicy({ random: mulberry32(2024) }), backends(1, 2, 7), 100_000);
  [0.1, 0.2, 0.7].forEach((expected, i) => {
    assert.ok(Math.abs(got[i] - expected) < 0.02, `backend ${i}: ${got[i]} vs ${expected}`);
  });
});

Deno.test("RandomPolicy.select() is uniform when weights are equal", () => {
  const got = shares(new RandomPolicy({ random: mulberry32(9) }), backends(4, 4, 4, 4), 100_000);
  for (const share of got) assert.ok(Math.abs(share - 0.25) < 0.02, `share ${share}`);
});

Deno.test("RandomPolicy.select() repeats the same picks for the same seed", () => {
  const candidates = backends(1, 2, 7);
  const run = () => {
    const policy: Policy = new RandomPolicy({ random: mulberry32(77) });
    return Array.from({ length: 50 }, () => policy.select(candidates, context));
  };
  assert.deepEqual(run(), run());
});

Deno.test("RandomPolicy.select() maps the draw onto cumulative weights at the boundaries", () => {
  const candidates = backends(1, 2, 7);
  let draw = 0;
  const policy: Policy = new RandomPolicy({ random: () => draw });
  // Cumulative weights 1, 3, 10 of 10: draws below 0.1 pick the first, below 0.3 the second.
  const expectations: [draw: number, index: number][] = [
    [0, 0],
    [0.0999, 0],
    [0.1, 1],
    [0.2999, 1],
    [0.3, 2],
    [0.9999, 2],
  ];
  for (const [value, index] of expectations) {
    draw = value;
    assert.equal(policy.select(candidates, context), candidates[index], `draw ${value}`);
  }
});

Deno.test("RandomPolicy.select() never picks a zero-weight candidate", () => {
  const got = shares(new RandomPolicy({ random: mulberry32(1) }), backends(0, 1, 0, 1), 10_000);
  assert.equal(got[0], 0);
  assert.equal(got[2], 0);
});

Deno.test("RandomPolicy.select() rebuilds its table when a different candidate array arrives", () => {
  const policy: Policy = new RandomPolicy({ random: mulberry32(5) });
  const [a, b, c] = backends(100, 1, 1);
  policy.select([a, b, c], context);
  // A retry's filtered array without the heavy backend must never yield it from the old table.
  const retry = [b, c];
  const picks = new Set(Array.from({ length: 200 }, () => policy.select(retry, context)));
  assert.deepEqual(picks, new Set([b, c]));
});
