import assert from "node:assert/strict";
import { Backend, type Policy } from "../lib/pool.ts";
import { LeastConnPolicy } from "../lib/policies/least_conn.ts";
import { mulberry32 } from "../lib/policies/random_source.ts";

const context = { clientIp: "192.0.2.1", headers: new Headers(), path: "/" };

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
  for (let i = 0; i < 100; i++) assert.equal(policy.select(candidates, context), candidates[1]);
});

Deno.test("LeastConnPolicy.select() divides load by weight, counting the new request", () => {
  const policy: Policy = new LeastConnPolicy({ random: mulberry32(1) });
  // (2 + 1) / 4 = 0.75 beats (0 + 1) / 1 = 1: the heavy backend takes more in flight.
  const busyButHeavy = backends([[4, 2], [1, 0]]);
  assert.equal(policy.select(busyButHeavy, context), busyButHeavy[0]);
  // (4 + 1) / 4 = 1.25 loses to 1 / 1 once the heavy backend has four in flight.
  const saturated = backends([[4, 4], [1, 0]]);
  assert.equal(policy.select(saturated, context), saturated[1]);
  // Both idle: 1 / 5 beats 1 / 1, so weight matters even with nothing in flight.
  const idle = backends([[1, 0], [5, 0]]);
  assert.equal(policy.select(idle, context), idle[1]);
});

Deno.test("LeastConnPolicy.select() spreads ties evenly and never picks a busier backend", () => {
  const policy: Policy = new LeastConnPolicy({ random: mulberry32(42) });
  const candidates = backends([[1, 0], [1, 0], [1, 5], [1, 0], [1, 0]]);
  const counts = new Map<Backend, number>(candidates.map((b) => [b, 0]));
  const picks = 40_000;
  for (let i = 0; i < picks; i++) {
    const chosen = policy.select(candidates, context);
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
  assert.equal(policy.select([only], context), only);
});
