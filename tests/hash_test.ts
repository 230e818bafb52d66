import assert from "node:assert/strict";
import { Backend, type SelectContext } from "../lib/pool.ts";
import {
  hashKeyFor,
  type HashKeySpec,
  HashPolicy,
  hashString,
  parseHashKey,
} from "../lib/policies/hash.ts";

function backends(...weights: number[]): Backend[] {
  return weights.map((weight, i) => new Backend({ url: `http://10.0.1.${i + 1}:8080`, weight }));
}

function contextWith(headers: HeadersInit = {}, url = "http://lb.test/"): SelectContext {
  const parsed = new URL(url);
  return {
    clientIp: "198.51.100.7",
    headers: new Headers(headers),
    path: parsed.pathname + parsed.search,
  };
}

const KEYS = Array.from({ length: 10_000 }, (_, i) => `client-${i}`);

/** Maps every key through the table, told `candidates` as the pool tells it. */
function mapAll(policy: HashPolicy, candidates: readonly Backend[]): Backend[] {
  policy.rebuild(candidates);
  return KEYS.map((key) => policy.selectByKey(key)!);
}

Deno.test("parseHashKey() accepts ip, path, header:NAME and cookie:NAME", () => {
  assert.deepEqual(parseHashKey("ip"), { kind: "ip" });
  assert.deepEqual(parseHashKey("path"), { kind: "path" });
  assert.deepEqual(parseHashKey("header:X-User-Id"), { kind: "header", name: "x-user-id" });
  assert.deepEqual(parseHashKey("cookie:Session"), { kind: "cookie", name: "Session" });
});

Deno.test("parseHashKey() throws a one-line message naming the bad text", () => {
  for (const bad of ["", "IP", "url", "header", "header:", "cookie:a b", "header:x\ny", "x:y"]) {
    assert.throws(
      () => parseHashKey(bad),
      (error: Error) =>
        error.message.includes(JSON.stringify(bad)) && !error.message.includes("\n"),
      `input ${JSON.stringify(bad)}`,
    );
  }
});

Deno.test("hashKeyFor() reads the configured part and falls back to the client IP", () => {
  const header: HashKeySpec = { kind: "header", name: "x-user" };
  const cookie: HashKeySpec = { kind: "cookie", name: "sid" };
  assert.equal(hashKeyFor({ kind: "ip" }, contextWith()), "198.51.100.7");
  assert.equal(hashKeyFor(header, contextWith({ "X-User": "alice" })), "alice");
  assert.equal(hashKeyFor(header, contextWith()), "198.51.100.7");
  assert.equal(hashKeyFor(header, contextWith({ "X-User": "" })), "198.51.100.7");
  assert.equal(hashKeyFor(cookie, contextWith({ cookie: "a=1; sid=xyz; b=2" })), "xyz");
  assert.equal(hashKeyFor(cookie, contextWith({ cookie: "a=1" })), "198.51.100.7");
  const path = { kind: "path" } as const;
  assert.equal(hashKeyFor(path, contextWith({}, "http://lb.test/cart/42?x=1#f")), "/cart/42");
  assert.equal(hashKeyFor(path, contextWith({}, "http://lb.test")), "/");
});

Deno.test("hashString() gives fixed values, so every process and version maps keys alike", () => {
  assert.equal(hashString(""), 2872998923);
  assert.equal(hashString("a"), 444641715);
  assert.equal(hashString("192.0.2.1"), 1941296713);
});

Deno.test("HashPolicy.select() sends the same key to the same backend every time", () => {
  const policy = new HashPolicy({ key: "header:x-user" });
  const candidates = backends(1, 1, 1, 1, 1);
  const context = contextWith({ "x-user": "alice" });
  policy.rebuild(candidates);
  const first = policy.select(context);
  for (let i = 0; i < 100; i++) {
    assert.equal(policy.select(context), first);
    // Interleaved retries skipping a backend must not disturb the answer for the full set.
    const retry = policy.select(context, (b) => b !== candidates[i % 5]);
    assert.equal(retry === first, first !== candidates[i % 5]);
  }
});

Deno.test("HashPolicy.select() maps identically in two instances, whatever the backend order", () => {
  const ours = backends(1, 2, 3, 1, 1, 2);
  const theirs = backends(1, 2, 3, 1, 1, 2).reverse();
  const a = mapAll(new HashPolicy(), ours).map((b) => b.url);
  const b = mapAll(new HashPolicy(), theirs).map((b) => b.url);
  assert.deepEqual(a, b);
});

Deno.test("HashPolicy.select() spreads keys in proportion to weight", () => {
  const candidates = backends(1, 2, 7);
  const mapped = mapAll(new HashPolicy(), candidates);
  [0.1, 0.2, 0.7].forEach((expected, i) => {
    const share = mapped.filter((b) => b === candidates[i]).length / KEYS.length;
    assert.ok(Math.abs(share - expected) < 0.03, `backend ${i}: ${share} vs ${expected}`);
  });
});

for (const n of [5, 10]) {
  Deno.test(`HashPolicy.select() moves only the leaving backend's keys, of ${n} backends`, () => {
    const policy = new HashPolicy();
    const all = backends(...Array.from({ length: n }, () => 1));
    const leaving = all[2];
    const before = mapAll(policy, all);
    const remaining = all.filter((b) => b !== leaving);
    // A retry that skips the leaving backend is answered without the table; the same instance
    // then updates its table in place; a fresh one builds from scratch. All three must agree.
    const onTheFly = KEYS.map((key) => policy.selectByKey(key, (b) => b !== leaving)!);
    const after = mapAll(policy, remaining);
    const fresh = mapAll(new HashPolicy(), remaining);
    assert.deepEqual(after, fresh);
    assert.deepEqual(after, onTheFly);
    let moved = 0;
    let movedWhileStaying = 0;
    for (let i = 0; i < KEYS.length; i++) {
      if (after[i] === before[i]) continue;
      moved++;
      if (before[i] !== leaving) movedWhileStaying++;
    }
    assert.equal(movedWhileStaying, 0);
    assert.ok(moved / KEYS.length <= 1 / n + 0.05, `${moved} of ${KEYS.length} keys moved`);
    assert.ok(moved > 0, "the leaving backend owned no keys");
    // When it comes back, exactly the old mapping returns.
    assert.deepEqual(mapAll(policy, all), before);
  });
}

Deno.test("HashPolicy.select() gives a joining backend only keys it takes from others", () => {
  const policy = new HashPolicy();
  const all = backends(1, 1, 1, 1, 1, 1);
  const joining = all[5];
  const before = mapAll(policy, all.slice(0, 5));
  const after = mapAll(policy, all);
  for (let i = 0; i < KEYS.length; i++) {
    if (after[i] !== before[i]) assert.equal(after[i], joining, `key ${KEYS[i]} moved elsewhere`);
  }
  const joined = after.filter((b) => b === joining).length / KEYS.length;
  assert.ok(Math.abs(joined - 1 / 6) < 0.03, `joining backend took ${joined}`);
});

Deno.test("HashPolicy.select() stays consistent through many joins and leaves at once", () => {
  const policy = new HashPolicy({ tableSize: 4096 });
  const pool = backends(...Array.from({ length: 20 }, (_, i) => 1 + (i % 4)));
  // Covers the first build, refills (more than a few joining), leaves only, and a few joining
  // while others leave.
  const sets = [
    pool.slice(0, 12),
    pool.slice(5, 20),
    pool.slice(0, 3),
    pool,
    pool.slice(10),
    pool.slice(8, 18),
  ];
  for (const set of sets) {
    assert.deepEqual(mapAll(policy, set), mapAll(new HashPolicy({ tableSize: 4096 }), set));
  }
});

Deno.test("HashPolicy.rebuild() after a weight change maps as a fresh table would", () => {
  const policy = new HashPolicy({ tableSize: 4096 });
  const set = backends(1, 1, 1, 1);
  const before = mapAll(policy, set);
  set[0].weight = 5;
  const after = mapAll(policy, set);
  assert.deepEqual(after, mapAll(new HashPolicy({ tableSize: 4096 }), set));
  // Only the heavier backend gains keys: no key moves between the others.
  for (let i = 0; i < KEYS.length; i++) {
    if (after[i] !== before[i]) assert.equal(after[i], set[0], `key ${KEYS[i]}`);
  }
});

Deno.test("HashPolicy.select() with `accept` gives the owner when accepted, else the runner-up", () => {
  const policy = new HashPolicy();
  const set = backends(1, 2, 3, 1, 2);
  const owners = mapAll(policy, set);
  for (let i = 0; i < 500; i++) {
    assert.equal(policy.selectByKey(KEYS[i], () => true), owners[i]);
    const skipping = set.filter((b) => b !== owners[i]);
    const fresh = new HashPolicy();
    fresh.rebuild(skipping);
    assert.equal(policy.selectByKey(KEYS[i], (b) => b !== owners[i]), fresh.selectByKey(KEYS[i]));
  }
  assert.equal(policy.selectByKey("k", () => false), undefined);
});

Deno.test("new HashPolicy() rejects a bad key or table size with the value in the message", () => {
  assert.throws(() => new HashPolicy({ key: "header:" }), /hash key "header:"/);
  assert.throws(() => new HashPolicy({ tableSize: 0 }), /tableSize .* got 0/);
  assert.throws(() => new HashPolicy({ tableSize: 1.5 }), /got 1.5/);
});
