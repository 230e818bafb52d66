import assert from "node:assert/strict";
import { type Accept, Backend, type Policy } from "../lib/pool.ts";
import { RandomPolicy } from "../lib/policies/random.ts";
import { mulberry32 } from "../lib/policies/random_source.ts";

const context = { clientIp: "192.0.2.1", headers: new Headers(), path: "/" };

function backends(...weights: number[]): Backend[] {
  return weights.map((weight, i) => new Backend({ url: `http://10.0.0.${i + 1}:8080`, weight }));
}

/** Each candidate's share of `picks` picks, the policy told `candidates` first. */
function shares(policy: Policy, candidates: Backend[], picks: number, accept?: Accept): number[] {
  policy.rebuild(candidates);
  const counts = candidates.map(() => 0);
  for (let i = 0; i < picks; i++) {
    counts[candidates.indexOf(policy.select(context, accept)!)]++;
  }
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
    policy.rebuild(candidates);
    return Array.from({ length: 50 }, () => policy.select(context));
  };
  assert.deepEqual(run(), run());
});

Deno.test("RandomPolicy.select() maps the draw onto cumulative weights at the boundaries", () => {
  const candidates = backends(1, 2, 7);
  let draw = 0;
  const policy: Policy = new RandomPolicy({ random: () => draw });
  policy.rebuild(candidates);
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
    assert.equal(policy.select(context), candidates[index], `draw ${value}`);
    // Filtered through `accept`, the same draws take the other path to the same answers.
    assert.equal(policy.select(context, () => true), candidates[index], `draw ${value}`);
  }
});

Deno.test("RandomPolicy.select() never picks a zero-weight candidate", () => {
  const got = shares(new RandomPolicy({ random: mulberry32(1) }), backends(0, 1, 0, 1), 10_000);
  assert.equal(got[0], 0);
  assert.equal(got[2], 0);
});

Deno.test("RandomPolicy.select() skips what `accept` refuses, by weight among the rest", () => {
  const candidates = backends(100, 1, 3);
  const [a, b, c] = candidates;
  // A retry that tried the heavy backend must never get it, and shares the rest 1:3.
  const got = shares(
    new RandomPolicy({ random: mulberry32(5) }),
    candidates,
    40_000,
    (x) => x !== a,
  );
  assert.equal(got[0], 0);
  assert.ok(Math.abs(got[1] - 0.25) < 0.02, `b: ${got[1]}`);
  assert.ok(Math.abs(got[2] - 0.75) < 0.02, `c: ${got[2]}`);
  // Equal weights: the draw is a position among the accepted.
  const four = backends(2, 2, 2, 2);
  const equal = shares(
    new RandomPolicy({ random: mulberry32(6) }),
    four,
    30_000,
    (x) => x !== four[1],
  );
  assert.equal(equal[1], 0);
  for (const i of [0, 2, 3]) assert.ok(Math.abs(equal[i] - 1 / 3) < 0.02, `${equal}`);
  const policy = new RandomPolicy({ random: mulberry32(7) });
  policy.rebuild(candidates);
  assert.equal(policy.select(context, (x) => x === b), b);
  assert.equal(policy.select(context, (x) => x === c), c);
  assert.equal(policy.select(context, () => false), undefined);
});
