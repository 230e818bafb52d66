/**
 * @module
 * Pool availability bookkeeping with a fake clock and a policy that takes the first candidate,
 * so every assertion is about what the pool offers, not about how a policy chooses.
 */
import assert from "node:assert/strict";
import {
  type Backend,
  type BackendSpec,
  type BackendStatus,
  type Policy,
  Pool,
  type PoolOptions,
  type SelectContext,
  SLOW_START_STEPS,
} from "../lib/pool.ts";

const context: SelectContext = { clientIp: "192.0.2.1", headers: new Headers(), path: "/" };

/** Takes the first accepted backend of the set last rebuilt; records every rebuild. */
function firstCandidate(): Policy & { rebuilds: (readonly Backend[])[] } {
  let backends: readonly Backend[] = [];
  const rebuilds: (readonly Backend[])[] = [];
  return {
    rebuilds,
    rebuild(offered) {
      backends = offered;
      rebuilds.push([...offered]);
    },
    select: (_context, accept) => backends.find((b) => accept?.(b) ?? true),
  };
}

/** A pool over `weights` (one backend per entry) with a controllable clock and an event log. */
function setup(weights: number[], options: Partial<PoolOptions> = {}) {
  const clock = { now: 10_000 };
  const events: string[] = [];
  const reasons: string[] = [];
  const specs: BackendSpec[] = weights.map((weight, i) => ({
    url: `http://10.0.0.${i + 1}:8080`,
    weight,
  }));
  const pool = new Pool(specs, {
    rise: 2,
    fall: 3,
    // First candidate: whatever the pool offers first wins, so offering is all that is tested.
    policy: firstCandidate(),
    onStatusChange: (backend, from: BackendStatus, to: BackendStatus, reason) => {
      events.push(`${name(pool, backend)}:${from}->${to}`);
      reasons.push(reason);
    },
    now: () => clock.now,
    ...options,
  });
  return { pool, clock, events, reasons, b: pool.backends };
}

/** "b0", "b1", ... by position, for readable event logs. */
function name(pool: Pool, backend: Backend): string {
  return `b${pool.backends.indexOf(backend)}`;
}

function fail(pool: Pool, backend: Backend, count: number): void {
  for (let i = 0; i < count; i++) pool.reportFailure(backend, "HTTP 500");
}

/** Every backend `pick` can return right now, found by excluding each answer in turn. */
function offered(pool: Pool): Backend[] {
  const tried = new Set<Backend>();
  for (let b = pool.pick(context, tried); b !== undefined; b = pool.pick(context, tried)) {
    tried.add(b);
  }
  return [...tried];
}

Deno.test("Pool.reportCheck() goes down only after `fall` failures in a row", () => {
  const { pool, events, b } = setup([1, 1]);
  pool.reportCheck(b[0], false, "HTTP 500");
  pool.reportCheck(b[0], false, "HTTP 500");
  pool.reportCheck(b[0], true, "HTTP 200"); // a pass breaks the streak
  pool.reportCheck(b[0], false, "HTTP 500");
  pool.reportCheck(b[0], false, "HTTP 500");
  assert.equal(b[0].state, "up");
  assert.deepEqual(events, []);
  pool.reportCheck(b[0], false, "HTTP 500");
  assert.equal(b[0].state, "down");
  assert.deepEqual(events, ["b0:up->down"]);
  assert.deepEqual(offered(pool), [b[1]]);
  assert.deepEqual(b[0].lastCheck && [b[0].lastCheck.ok, b[0].lastCheck.detail], [
    false,
    "HTTP 500",
  ]);
});

Deno.test("Pool.reportCheck() comes back up only after `rise` passes in a row", () => {
  const { pool, events, b } = setup([1, 1]);
  pool.reportConnectFailure(b[0], "connection refused");
  pool.reportCheck(b[0], true, "HTTP 200");
  pool.reportCheck(b[0], false, "connection refused"); // breaks the streak
  pool.reportCheck(b[0], true, "HTTP 200");
  assert.equal(b[0].state, "down");
  pool.reportCheck(b[0], true, "HTTP 200");
  assert.equal(b[0].state, "up");
  assert.deepEqual(events, ["b0:up->down", "b0:down->up"]);
  assert.deepEqual(offered(pool), [b[0], b[1]]);
});

Deno.test("Pool.reportConnectFailure() marks a backend down at once, without `fall` checks", () => {
  const { pool, events, reasons, b } = setup([1, 1]);
  pool.reportConnectFailure(b[0], "connection refused");
  assert.equal(b[0].state, "down");
  assert.equal(b[0].status, "down");
  assert.deepEqual(events, ["b0:up->down"]);
  assert.deepEqual(offered(pool), [b[1]]);
  // A second report while down announces nothing.
  pool.reportConnectFailure(b[0], "connection refused");
  assert.deepEqual(events, ["b0:up->down"]);
  assert.deepEqual(reasons, ["connection failed: connection refused"]);
});

Deno.test("Pool.attemptFailed() marks down on a refused connect, never on a connect timeout", () => {
  const { pool, events, b } = setup([1, 1]);
  pool.attemptFailed(b[0], {
    kind: "connect",
    detail: "connect timeout after 3000ms",
    timedOut: true,
  });
  assert.equal(b[0].state, "up");
  assert.equal(b[0].failures, 1);
  assert.deepEqual(events, []);
  pool.attemptFailed(b[0], { kind: "connect", detail: "connection refused" });
  assert.equal(b[0].state, "down");
  assert.deepEqual(events, ["b0:up->down"]);
});

Deno.test("Pool.attemptFailed() never ejects for connect timeouts, but does for other failures", () => {
  const { pool, b: [a, b] } = setup([1, 1], {
    outlier: { consecutiveFailures: 2, baseEjectionMs: 1000, maxEjectedPercent: 100 },
    panicThresholdPercent: 0,
  });
  const timeout = {
    kind: "connect" as const,
    detail: "connect timeout after 3000ms",
    timedOut: true,
  };
  for (let i = 0; i < 5; i++) pool.attemptFailed(a, timeout);
  assert.equal(a.status, "up");
  assert.equal(a.failures, 5);
  pool.attemptFailed(b, { kind: "maybe-sent", detail: "reset" });
  pool.attemptFailed(b, { kind: "maybe-sent", detail: "reset" });
  assert.equal(b.status, "ejected");
});

Deno.test("Pool tells onHealthChange of health flips the status hides (draining, disabled)", () => {
  const health: string[] = [];
  const { pool, events, b } = setup([1, 1], {
    onHealthChange: (backend, to, reason) => health.push(`${name(pool, backend)}:${to} ${reason}`),
  });
  pool.setAdmin(b[0], "draining", "test");
  events.length = 0;
  pool.reportConnectFailure(b[0], "connection refused");
  // The status stays "draining", so no status change; the health change is still told.
  assert.deepEqual(events, []);
  assert.deepEqual(health, ["b0:down connection failed: connection refused"]);
  pool.setHealth(b[0], "up", "main thread");
  assert.deepEqual(health.at(-1), "b0:up main thread");
});

Deno.test("Pool.reportFailure() ejects after `consecutiveFailures`, until the time passes", () => {
  const { pool, clock, events, b } = setup([1, 1, 1], {
    outlier: { consecutiveFailures: 3, baseEjectionMs: 1_000 },
  });
  fail(pool, b[0], 2);
  pool.reportSuccess(b[0]); // a success starts the count over
  fail(pool, b[0], 2);
  assert.equal(b[0].status, "up");
  fail(pool, b[0], 1);
  assert.equal(b[0].status, "ejected");
  assert.equal(b[0].state, "up", "ejection is not a health verdict");
  assert.deepEqual(events, ["b0:up->ejected"]);
  // b0 comes first, so a first-candidate policy would take it if it were offered.
  assert.deepEqual(offered(pool), [b[1], b[2]]);
  assert.deepEqual(pool.available, [b[1], b[2]]);

  clock.now += 999;
  assert.equal(pool.pick(context), b[1]);
  assert.equal(b[0].status, "ejected");
  clock.now += 1;
  // The pick itself notices the ejection ended: no timer is involved.
  assert.equal(pool.pick(context), b[0]);
  assert.equal(b[0].status, "up");
  assert.deepEqual(events, ["b0:up->ejected", "b0:ejected->up"]);
});

Deno.test("Pool.reportFailure() says how long an ejection lasts, also under a second", () => {
  const { pool, clock, reasons, b } = setup([1, 1, 1], {
    outlier: { consecutiveFailures: 1, baseEjectionMs: 300 },
  });
  fail(pool, b[0], 1);
  clock.now += 300;
  pool.pick(context);
  fail(pool, b[0], 1);
  assert.deepEqual(reasons, [
    "outlier: HTTP 500; ejected for 0.3s",
    "ejection ended",
    "outlier: HTTP 500; ejected for 0.6s",
  ]);
});

Deno.test("Pool.reportFailure() makes a second ejection in a row last twice as long", () => {
  const { pool, clock, events, b } = setup([1, 1, 1], {
    outlier: { consecutiveFailures: 3, baseEjectionMs: 1_000 },
  });
  fail(pool, b[0], 3);
  clock.now += 1_000;
  assert.equal(pool.pick(context), b[0]);
  fail(pool, b[0], 3); // fails again the moment it is back
  assert.equal(b[0].status, "ejected");
  assert.equal(b[0].ejectedUntil, clock.now + 2_000);
  clock.now += 1_999;
  assert.equal(pool.pick(context), b[1]);
  clock.now += 1;
  assert.equal(pool.pick(context), b[0]);
  assert.deepEqual(events, [
    "b0:up->ejected",
    "b0:ejected->up",
    "b0:up->ejected",
    "b0:ejected->up",
  ]);
});

Deno.test("Pool.reportFailure() ejects no more than `maxEjectedPercent` of the backends", () => {
  const { pool, clock, b } = setup([1, 1, 1, 1], {
    outlier: { consecutiveFailures: 2, baseEjectionMs: 1_000, maxEjectedPercent: 50 },
    panicThresholdPercent: 0,
  });
  fail(pool, b[0], 2);
  fail(pool, b[1], 2);
  fail(pool, b[2], 5); // 3 of 4 would be 75 %: refused, however often it fails
  assert.deepEqual(b.map((x) => x.status), ["ejected", "ejected", "up", "up"]);
  assert.deepEqual(offered(pool), [b[2], b[3]]);
  // Once room frees up, b2's kept streak ejects it on its next failure.
  clock.now += 1_000;
  pool.pick(context);
  fail(pool, b[2], 1);
  assert.deepEqual(b.map((x) => x.status), ["up", "up", "ejected", "up"]);
});

Deno.test("Pool offers ejected backends again when too few healthy ones are left (panic)", () => {
  const { pool, b } = setup([1, 1, 1], {
    outlier: { consecutiveFailures: 1, maxEjectedPercent: 100 },
    panicThresholdPercent: 50,
  });
  fail(pool, b[0], 1);
  // 2 of 3 left is above 50 %: the ejection holds.
  assert.deepEqual(offered(pool), [b[1], b[2]]);
  fail(pool, b[1], 1);
  // 1 of 3 is below 50 %: ejections are ignored, statuses still tell the truth.
  assert.deepEqual(offered(pool), [b[0], b[1], b[2]]);
  assert.deepEqual(b.map((x) => x.status), ["ejected", "ejected", "up"]);
});

Deno.test("Pool with panicThresholdPercent 0 never ignores ejections", () => {
  const { pool, b } = setup([1, 1, 1], {
    outlier: { consecutiveFailures: 1, maxEjectedPercent: 100 },
    panicThresholdPercent: 0,
  });
  fail(pool, b[0], 1);
  fail(pool, b[1], 1);
  fail(pool, b[2], 1);
  assert.deepEqual(offered(pool), []);
  assert.equal(pool.pick(context), undefined);
});

Deno.test("Pool never offers a health-down backend, even in panic", () => {
  const { pool, b } = setup([1, 1, 1], {
    outlier: { consecutiveFailures: 1, maxEjectedPercent: 100 },
    panicThresholdPercent: 50,
  });
  pool.reportConnectFailure(b[0], "connection refused");
  fail(pool, b[1], 1);
  fail(pool, b[2], 1);
  // No unejected healthy backend is left: panic offers the ejected ones, never the down one.
  assert.deepEqual(offered(pool), [b[1], b[2]]);
  pool.reportConnectFailure(b[1], "connection refused");
  pool.reportConnectFailure(b[2], "connection refused");
  assert.equal(pool.pick(context), undefined);
  assert.deepEqual(pool.available, []);
});

Deno.test("Pool slow start ramps effectiveWeight from weight×1 to weight×STEPS", () => {
  const slowStartMs = 1_000;
  const { pool, clock, b } = setup([3, 1], { slowStartMs });
  // Backends present at start-up are not ramped.
  assert.deepEqual(b.map((x) => x.effectiveWeight), [3 * SLOW_START_STEPS, SLOW_START_STEPS]);

  pool.reportConnectFailure(b[0], "connection refused");
  pool.reportCheck(b[0], true, "HTTP 200");
  pool.reportCheck(b[0], true, "HTTP 200");
  const since = clock.now;
  assert.equal(b[0].effectiveWeight, 3, "one step at once, so it can prove itself");

  const weights: number[] = [];
  for (let ms = 0; ms <= slowStartMs + 100; ms += 50) {
    clock.now = since + ms;
    pool.pick(context);
    weights.push(b[0].effectiveWeight);
  }
  // Step k (of 10) starts k×100 ms after the backend came back; step 1 covers the first 200 ms.
  assert.deepEqual(weights, [
    3,
    3,
    3,
    3, // 0-150 ms
    6,
    6,
    9,
    9,
    12,
    12,
    15,
    15,
    18,
    18,
    21,
    21,
    24,
    24,
    27,
    27, // 200-950 ms
    30,
    30,
    30, // 1000-1100 ms: full weight
  ]);
  assert.equal(b[1].effectiveWeight, SLOW_START_STEPS, "the other backend is not affected");
});

Deno.test("Pool slow start rebuilds the available array at steps only, not per pick", () => {
  // An odd ramp length: step times are not whole milliseconds, where rounding bites.
  const slowStartMs = 1_234.5;
  const { pool, clock, b } = setup([1, 1], { slowStartMs });
  clock.now = 96_400.50347993306;
  pool.reportConnectFailure(b[0], "connection refused");
  pool.reportCheck(b[0], true, "HTTP 200");
  pool.reportCheck(b[0], true, "HTTP 200");
  const since = clock.now;

  const instances = new Set<readonly Backend[]>([pool.available]);
  const before = pool.available;
  for (let i = 0; i < 5; i++) pool.pick(context);
  assert.equal(pool.available, before, "picks within a step reuse the array");

  for (let step = 2; step <= SLOW_START_STEPS; step++) {
    // Exactly the moment the step is due, as the pool computes it, then twice more.
    clock.now = since + (step * slowStartMs) / SLOW_START_STEPS;
    pool.pick(context);
    const atStep = pool.available;
    assert.equal(b[0].effectiveWeight, step, `step ${step} taken when due`);
    pool.pick(context);
    pool.pick(context);
    assert.equal(pool.available, atStep, `step ${step}: further picks reuse the array`);
    instances.add(atStep);
  }
  // One array for step 1 and one per later step: nothing else rebuilt it.
  assert.equal(instances.size, SLOW_START_STEPS);
  clock.now += 60_000;
  pool.pick(context);
  assert.equal(pool.available, [...instances].at(-1), "no rebuilds once the ramp is over");
});

Deno.test("Pool.pick() skips backends at maxConns and finds none when all are full", () => {
  const { pool, b } = setup([1, 1], { maxConns: 2 });
  b[0].inflight = 2;
  assert.equal(pool.pick(context), b[1]);
  b[1].inflight = 2;
  assert.equal(pool.pick(context), undefined);
  b[0].inflight = 1;
  assert.equal(pool.pick(context), b[0]);
});

Deno.test("Pool tells the policy the set when it changes, and only then", () => {
  const policy = firstCandidate();
  const { pool, clock, b } = setup([1, 1, 1], {
    policy,
    outlier: { consecutiveFailures: 1, maxEjectedPercent: 100, baseEjectionMs: 1_000 },
  });
  assert.deepEqual(policy.rebuilds, [[b[0], b[1], b[2]]], "at start-up");
  for (let i = 0; i < 5; i++) pool.pick(context, new Set([b[0]]));
  pool.reportCheck(b[2], true, "HTTP 200");
  assert.equal(policy.rebuilds.length, 1, "picks and checks that flip nothing rebuild nothing");
  fail(pool, b[0], 1);
  assert.deepEqual(policy.rebuilds.at(-1), [b[1], b[2]], "an ejection");
  clock.now += 1_000;
  pool.pick(context);
  assert.deepEqual(policy.rebuilds.at(-1), [b[0], b[1], b[2]], "the ejection ended");
  pool.setWeight(b[1], 3);
  assert.equal(policy.rebuilds.length, 4, "a weight change, same members");
  pool.setAdmin(b[2], "disabled", "test");
  assert.deepEqual(policy.rebuilds.at(-1), [b[0], b[1]], "disabled");
  const replacement = firstCandidate();
  pool.reconfigure({ rise: 2, fall: 3, policy: replacement });
  assert.deepEqual(replacement.rebuilds, [[b[0], b[1]]], "a new policy learns the set at once");
});

Deno.test("Pool.update() and Pool.batch() rebuild the policy once, not once per backend", () => {
  const policy = firstCandidate();
  const { pool, b } = setup([1, 1], { policy });
  const added = Array.from({ length: 5 }, (_, i) => ({ url: `http://10.0.1.${i}:80`, weight: 1 }));
  pool.update([{ url: b[0].url, weight: 4 }, ...added]);
  assert.equal(policy.rebuilds.length, 2, "start-up, then one for the whole reload");
  pool.batch(() => {
    pool.setWeight(pool.backends[0], 2);
    pool.remove(added[0].url);
  });
  assert.equal(policy.rebuilds.length, 3);
  assert.deepEqual(
    policy.rebuilds.at(-1)!.map((backend) => backend.url),
    [b[0].url, ...added.slice(1).map((spec) => spec.url)],
    "b1 left with the reload, the first newcomer with the batch",
  );
});

Deno.test("Pool does not rebuild the policy for a weight change it cannot see", () => {
  const policy = firstCandidate();
  const { pool, b } = setup([1, 1], { policy });
  pool.setAdmin(b[1], "disabled", "test");
  const before = policy.rebuilds.length;
  pool.setWeight(b[1], 5);
  assert.equal(policy.rebuilds.length, before, "b1 is not offered, its weight changes nothing");
  pool.setAdmin(b[1], "enabled", "test");
  assert.deepEqual(policy.rebuilds.at(-1), [b[0], b[1]]);
});

Deno.test("Pool never offers a weight-0 backend, even in panic", () => {
  const { pool, b } = setup([0, 1, 1], {
    outlier: { consecutiveFailures: 1, maxEjectedPercent: 100 },
  });
  assert.deepEqual(offered(pool), [b[1], b[2]]);
  fail(pool, b[1], 1);
  fail(pool, b[2], 1);
  assert.deepEqual(offered(pool), [b[1], b[2]]);
  const only = setup([0]);
  assert.equal(only.pool.pick(context), undefined);
});

Deno.test("Pool.hasCandidate() tells whether pick() would find an untried backend", () => {
  const { pool, b } = setup([1, 1], { maxConns: 1 });
  assert.equal(pool.hasCandidate(), true);
  assert.equal(pool.hasCandidate(new Set([b[0]])), true);
  assert.equal(pool.hasCandidate(new Set([b[0], b[1]])), false);
  b[1].inflight = 1;
  assert.equal(pool.hasCandidate(new Set([b[0]])), false, "the untried one is full");
  assert.equal(pool.pick(context, new Set([b[0]])), undefined);
});

Deno.test("Pool.pick() returns `preferred`'s choice when it is a candidate", () => {
  const { pool, b } = setup([1, 1, 1], { maxConns: 1 });
  const seen: (readonly Backend[])[] = [];
  const prefer = (target: Backend) => (available: readonly Backend[]) => {
    seen.push(available);
    return available.find((x) => x === target);
  };
  assert.equal(pool.pick(context, undefined, prefer(b[2])), b[2]);
  assert.deepEqual(seen.at(-1), [b[0], b[1], b[2]], "it is shown the available backends");
  // Already tried: not a candidate, so the policy decides among the rest.
  assert.equal(pool.pick(context, new Set([b[2]]), prefer(b[2])), b[0]);
  // Full: likewise.
  b[1].inflight = 1;
  assert.equal(pool.pick(context, undefined, prefer(b[1])), b[0]);
  b[1].inflight = 0;
  // Down: not even shown.
  pool.reportConnectFailure(b[1], "connection refused");
  assert.equal(pool.pick(context, new Set([b[0]]), prefer(b[1])), b[2]);
  assert.deepEqual(seen.at(-1), [b[0], b[2]]);
});

Deno.test("Pool.add() and Pool.update() revive a backend still draining after its removal", () => {
  const removed: string[] = [];
  const { pool, b, events, reasons } = setup([1, 1], {
    maxConns: 2,
    onRemove: (backend) => removed.push(backend.url),
  });
  const kept = b[1];
  pool.acquire(kept);
  pool.acquire(kept);
  assert.equal(pool.pick(context, new Set([b[0]])), undefined, "b1 is full");
  pool.remove(kept.url);
  const revived = pool.add({ url: kept.url, weight: 3 });
  assert.equal(revived, kept, "the same backend, not a fresh one");
  assert.deepEqual([revived.inflight, revived.requests, revived.weight], [2, 2, 3]);
  assert.deepEqual([revived.status, revived.removing], ["up", false]);
  assert.equal(pool.backends.length, 2, "listed once");
  assert.equal(pool.pick(context, new Set([b[0]])), undefined, "still full: max-conns holds");
  assert.deepEqual(events.slice(-2), ["b1:up->draining", "b1:draining->up"]);
  assert.equal(reasons.at(-1), "added again");

  // A reload that drops it and one that names it again: the same.
  pool.update([{ url: b[0].url, weight: 1 }]);
  assert.equal(pool.find(kept.url)?.removing, true);
  pool.update([{ url: b[0].url, weight: 1 }, { url: kept.url, weight: 1 }]);
  assert.equal(pool.find(kept.url), kept);
  assert.equal(kept.inflight, 2);
  pool.release(kept);
  pool.release(kept);
  assert.equal(kept.inflight, 0, "its requests were counted where they were made");
  assert.equal(pool.pick(context, new Set([b[0]])), kept, "free again");
  assert.deepEqual(removed, [], "it never left the pool");
});
