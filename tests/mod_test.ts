import assert from "node:assert/strict";
import { Backend } from "../lib/pool.ts";
import {
  createPolicy,
  HashPolicy,
  LeastConnPolicy,
  P2cEwmaPolicy,
  POLICY_NAMES,
  type PolicyName,
  RandomPolicy,
  RoundRobinPolicy,
} from "../lib/policies/mod.ts";
import { mulberry32 } from "../lib/policies/random_source.ts";

const context = { clientIp: "192.0.2.1", headers: new Headers(), path: "/" };

Deno.test("POLICY_NAMES lists the five policies, round-robin first", () => {
  assert.deepEqual(POLICY_NAMES, ["round-robin", "least-conn", "p2c-ewma", "random", "hash"]);
});

Deno.test("createPolicy() builds the class each name stands for", () => {
  const expected = {
    "round-robin": RoundRobinPolicy,
    "least-conn": LeastConnPolicy,
    "p2c-ewma": P2cEwmaPolicy,
    "random": RandomPolicy,
    "hash": HashPolicy,
  };
  for (const name of POLICY_NAMES) assert.ok(createPolicy(name) instanceof expected[name], name);
});

/** Three weighted backends (never contacted), and each policy rebuilt over them. */
function everyPolicyOverThree() {
  const candidates = [1, 2, 3].map((weight, i) =>
    new Backend({ url: `http://10.0.0.${i + 1}:80`, weight })
  );
  return POLICY_NAMES.map((name) => {
    const policy = createPolicy(name, { random: mulberry32(1), now: () => 0 });
    policy.rebuild(candidates);
    return { name, policy, candidates };
  });
}

Deno.test("createPolicy() policies each return one of the candidates", () => {
  for (const { name, policy, candidates } of everyPolicyOverThree()) {
    for (let i = 0; i < 20; i++) {
      assert.ok(candidates.includes(policy.select(context)!), name);
    }
  }
});

Deno.test("createPolicy() passes hash options through", () => {
  assert.throws(() => createPolicy("hash", { hash: { key: "bogus" } }), /hash key "bogus"/);
});

Deno.test("createPolicy() throws, listing the names, for an unknown name", () => {
  assert.throws(
    () => createPolicy("fastest" as PolicyName),
    /policy "fastest" is not one of: round-robin, least-conn, p2c-ewma, random, hash/,
  );
});

Deno.test("createPolicy() policies each skip what `accept` refuses, and find none in an empty set", () => {
  for (const { name, policy, candidates } of everyPolicyOverThree()) {
    for (let i = 0; i < 20; i++) {
      assert.equal(policy.select(context, (b) => b === candidates[1]), candidates[1], name);
      assert.notEqual(policy.select(context, (b) => b !== candidates[i % 3]), candidates[i % 3]);
    }
    assert.equal(policy.select(context, () => false), undefined, name);
    policy.rebuild([]);
    assert.equal(policy.select(context), undefined, name);
  }
});

Deno.test("createPolicy() policies offer a latency observer only for p2c-ewma", () => {
  for (const name of POLICY_NAMES) {
    const policy = createPolicy(name);
    assert.equal(policy.latencyObserver !== undefined, name === "p2c-ewma", name);
  }
});
