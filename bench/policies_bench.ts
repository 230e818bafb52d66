/**
 * @module
 * Cost of one `select` per balancing policy with 3, 30 and 300 backends (weights 1-3, nothing in
 * flight). Run with `deno bench bench/policies_bench.ts`. Hash benchmarks rotate through client
 * IPs so that the lookup is not always the same warm table slot.
 *
 * Round-robin also runs two slower paths: "filtered" passes an `accept` filter on every pick,
 * as the pool does on retries and whenever max-conns is set; "over cap" uses weights whose cycle
 * is too long to precompute. Least-conn runs its "filtered" path (the O(n) scan) too.
 *
 * The "under load" group goes through a real {@linkcode Pool}: each iteration is one
 * `pick`, one `acquire` of the pick and one `release` of the pick made `n` iterations earlier, so
 * about one request per backend is in flight and loads keep changing, as they do under traffic.
 * It measures what a request costs the policy, including `loadChanged`, and not `select` alone.
 */

import { type Accept, Backend, type Policy, Pool, type SelectContext } from "../lib/pool.ts";
import { createPolicy, POLICY_NAMES } from "../lib/policies/mod.ts";
import { mulberry32 } from "../lib/policies/random_source.ts";
import { LeastConnPolicy } from "../lib/policies/least_conn.ts";
import { RoundRobinPolicy } from "../lib/policies/round_robin.ts";

const SIZES = [3, 30, 300];

function makeBackends(count: number, weightOf = (i: number) => 1 + (i % 3)): Backend[] {
  return Array.from({ length: count }, (_, i) =>
    new Backend({
      url: `http://10.${(i >> 8) & 255}.${i & 255}.1:8080`,
      weight: weightOf(i),
    }));
}

const contexts: SelectContext[] = Array.from({ length: 1024 }, (_, i) => ({
  clientIp: `192.0.${i >> 8}.${i & 255}`,
  headers: new Headers(),
  path: "/",
}));

for (const size of SIZES) {
  for (const name of POLICY_NAMES) {
    const candidates = makeBackends(size);
    let clock = 0;
    const policy: Policy = createPolicy(name, { random: mulberry32(1), now: () => clock++ });
    // Give p2c-ewma an estimate for every backend, as it would have under traffic.
    candidates.forEach((backend, i) => policy.latencyObserver?.observe(backend, 5 + (i % 7)));
    // Build any per-set table outside the measured loop, as a running balancer would have.
    policy.rebuild(candidates);
    let turn = 0;
    Deno.bench({
      name: `${name} n=${size}`,
      group: `n=${size}`,
      baseline: name === "round-robin",
      fn() {
        policy.select(contexts[turn++ & 1023]);
      },
    });
  }

  for (const name of POLICY_NAMES) {
    const policy = createPolicy(name, { random: mulberry32(1), now: () => 0 });
    const specs = Array.from({ length: size }, (_, i) => ({
      url: `http://10.${(i >> 8) & 255}.${i & 255}.1:8080`,
      weight: 1 + (i % 3),
    }));
    const pool = new Pool(specs, { rise: 1, fall: 1, policy, now: () => 0 });
    pool.backends.forEach((backend, i) => policy.latencyObserver?.observe(backend, 5 + (i % 7)));
    // A ring of the last `size` picks, still in flight; each step releases the oldest.
    const outstanding: (Backend | undefined)[] = new Array(size);
    let turn = 0;
    const step = () => {
      const backend = pool.pick(contexts[turn & 1023])!;
      pool.acquire(backend);
      const slot = turn++ % size;
      const oldest = outstanding[slot];
      if (oldest !== undefined) pool.release(oldest);
      outstanding[slot] = backend;
    };
    for (let i = 0; i < 2 * size + 2; i++) step();
    Deno.bench({
      name: `${name} under load n=${size}`,
      group: `n=${size} under load`,
      baseline: name === "round-robin",
      fn: step,
    });
  }

  // As the pool's filter with max-conns set and nothing full: every backend is accepted.
  const backends = makeBackends(size);
  const accept: Accept = (backend) => backend.inflight < 1_000;
  const filteredPolicies: Record<string, Policy> = {
    "round-robin": new RoundRobinPolicy(),
    "least-conn": new LeastConnPolicy({ random: mulberry32(1) }),
  };
  for (const [name, filteredPolicy] of Object.entries(filteredPolicies)) {
    filteredPolicy.rebuild(backends);
    Deno.bench({
      name: `${name} filtered n=${size}`,
      group: `n=${size}`,
      fn() {
        filteredPolicy.select(contexts[0], accept);
      },
    });
  }

  // Coprime weights in the thousands: the cycle is far longer than the schedule cap.
  const heavy = makeBackends(size, (i) => 1000 * (1 + (i % 3)) + 1);
  const heavyPolicy: Policy = new RoundRobinPolicy();
  heavyPolicy.rebuild(heavy);
  Deno.bench({
    name: `round-robin over cap n=${size}`,
    group: `n=${size}`,
    fn() {
      heavyPolicy.select(contexts[0]);
    },
  });
}
