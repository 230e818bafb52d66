/**
 * @module
 * Cost of one `select` per balancing policy with 3, 30 and 300 backends (weights 1-3, nothing in
 * flight). Run with `deno bench bench/policies_bench.ts`. Hash benchmarks rotate through client
 * IPs so that the lookup is not always the same warm table slot.
 */

import { Backend, type Policy, type SelectContext } from "../lib/pool.ts";
import { createPolicy, POLICY_NAMES } from "../lib/policies/mod.ts";
import { mulberry32 } from "../lib/policies/random_source.ts";

const SIZES = [3, 30, 300];

function makeBackends(count: number): Backend[] {
  return Array.from({ length: count }, (_, i) =>
    new Backend({
      url: `http://10.${(i >> 8) & 255}.${i & 255}.1:8080`,
      weight: 1 + (i % 3),
    }));
}

const contexts: SelectContext[] = Array.from({ length: 1024 }, (_, i) => ({
  clientIp: `192.0.${i >> 8}.${i & 255}`,
  request: new Request("http://lb.test/"),
}));

for (const size of SIZES) {
  for (const name of POLICY_NAMES) {
    const candidates = makeBackends(size);
    let clock = 0;
    const policy: Policy = createPolicy(name, { random: mulberry32(1), now: () => clock++ });
    const observer = policy as Partial<{ observe(backend: Backend, ms: number): void }>;
    // Give p2c-ewma an estimate for every backend, as it would have under traffic.
    candidates.forEach((backend, i) => observer.observe?.(backend, 5 + (i % 7)));
    // Build any per-set table outside the measured loop, as a running balancer would have.
    policy.select(candidates, contexts[0]);
    policy.select(candidates, contexts[0]);
    let turn = 0;
    Deno.bench({
      name: `${name} n=${size}`,
      group: `n=${size}`,
      baseline: name === "round-robin",
      fn() {
        policy.select(candidates, contexts[turn++ & 1023]);
      },
    });
  }
}
