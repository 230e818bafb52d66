import assert from "node:assert/strict";
import { mulberry32 } from "../lib/policies/random_source.ts";

Deno.test("mulberry32() repeats its sequence for a seed and differs between seeds", () => {
  const take = (seed: number) => {
    const random = mulberry32(seed);
    return Array.from({ length: 20 }, () => random());
  };
  assert.deepEqual(take(1), take(1));
  assert.notDeepEqual(take(1), take(2));
});

Deno.test("mulberry32() stays in [0, 1) and fills it evenly", () => {
  const random = mulberry32(123);
  const deciles = new Array(10).fill(0);
  const draws = 100_000;
  for (let i = 0; i < draws; i++) {
    const value = random();
    assert.ok(value >= 0 && value < 1, `${value}`);
    deciles[Math.floor(value * 10)]++;
  }
  for (const count of deciles) assert.ok(Math.abs(count / draws - 0.1) < 0.005, `${count}`);
});
