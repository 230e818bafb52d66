/**
 * @module
 * Unit tests of lib/attempt_loop.ts: `runAttempts()` over a real pool, with attempts scripted
 * per backend (and one over real sockets): which failures are retried, the retry budget, what
 * the pool and the latency observer are told, and the end with no backend at all.
 */

import assert from "node:assert/strict";
import {
  type AttemptLoopOptions,
  type AttemptOutcome,
  type AttemptPlan,
  runAttempts,
} from "../lib/attempt_loop.ts";
import { type Backend, Pool } from "../lib/pool.ts";
import { createPolicy } from "../lib/policies/mod.ts";
import { classifyFetchError, type Failure, type FailureKind } from "../lib/retry.ts";
import { RetryBudget } from "../lib/retry_budget.ts";
import { quietLog } from "../lib/log.ts";
import { captureLog, refusingUrl, startTestBackend } from "./helpers.ts";

const URLS = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"];

/** A round-robin pool over `urls` that ejects a backend at its first failure. */
function pool(urls: readonly string[] = URLS): Pool {
  return new Pool(urls.map((url) => ({ url, weight: 1 })), {
    rise: 1,
    fall: 1,
    policy: createPolicy("round-robin"),
    outlier: { consecutiveFailures: 1, baseEjectionMs: 60_000, maxEjectedPercent: 100 },
    panicThresholdPercent: 0,
  });
}

/**
 * A plan whose attempt on each backend is scripted by URL (unscripted: 200 "ok"); `sent`
 * lists the backends attempted, in order.
 */
function plan(
  target: Pool,
  script: Record<string, Failure | number>,
  overrides: Partial<AttemptPlan<string>> = {},
): AttemptPlan<string> & { sent: string[] } {
  const sent: string[] = [];
  return {
    sent,
    method: "GET",
    label: "",
    pick: (tried) =>
      target.pick({ clientIp: "127.0.0.1", headers: new Headers(), path: "/" }, tried),
    send: (backend): Promise<AttemptOutcome<string>> => {
      sent.push(backend.url);
      const step = script[backend.url] ?? 200;
      return Promise.resolve(
        typeof step === "number"
          ? { ok: true, value: `answer of ${backend.url}`, status: step }
          : { ok: false, failure: step },
      );
    },
    replayable: () => true,
    clientFailed: () => false,
    trace: { backend: undefined, attempts: 0 },
    ...overrides,
  };
}

function options(target: Pool, extra: Partial<AttemptLoopOptions> = {}): AttemptLoopOptions {
  return { pool: target, retries: 2, backoff: () => 0, log: quietLog, ...extra };
}

const fail = (kind: FailureKind): Failure => ({ kind, detail: `${kind} failure` });

Deno.test("runAttempts() retries a maybe-sent GET on another backend; a POST only once sent", async () => {
  const target = pool();
  const get = plan(target, { [URLS[0]]: fail("maybe-sent") });
  const result = await runAttempts(get, options(target));
  assert.ok(result.ok);
  assert.equal(result.value, `answer of ${URLS[1]}`);
  assert.deepEqual(get.sent, [URLS[0], URLS[1]]);
  assert.equal(get.trace.attempts, 2);
  assert.equal(get.trace.backend?.url, URLS[1]);

  const again = pool();
  const post = plan(again, { [URLS[0]]: fail("maybe-sent") }, { method: "POST" });
  const refused = await runAttempts(post, options(again));
  assert.equal(refused.ok, false);
  assert.deepEqual(post.sent, [URLS[0]], "a POST that may have been sent is never repeated");
  assert.equal(!refused.ok && refused.failure?.kind, "maybe-sent");
});

Deno.test("runAttempts() retries any method after a refused connect, unless the body is spent", async () => {
  const target = pool();
  const post = plan(target, { [URLS[0]]: fail("connect") }, { method: "POST" });
  assert.ok((await runAttempts(post, options(target))).ok);
  assert.deepEqual(post.sent, [URLS[0], URLS[1]]);

  const again = pool();
  const spent = plan(again, { [URLS[0]]: fail("connect") }, {
    method: "POST",
    replayable: () => false,
  });
  assert.equal((await runAttempts(spent, options(again))).ok, false);
  assert.deepEqual(spent.sent, [URLS[0]], "a body partly sent cannot be sent again");
});

Deno.test("runAttempts() waits out the backoff of each retry, numbered from 1", async () => {
  const target = pool();
  const get = plan(target, { [URLS[0]]: fail("connect"), [URLS[1]]: fail("connect") });
  const asked: number[] = [];
  const result = await runAttempts(
    get,
    options(target, { backoff: (retry) => (asked.push(retry), 0) }),
  );
  assert.ok(result.ok);
  assert.deepEqual(get.sent, URLS);
  assert.deepEqual(asked, [1, 2], "one backoff per retry, none before the first attempt");
});

Deno.test("runAttempts() never retries a timeout, even of a GET", async () => {
  const target = pool();
  const get = plan(target, { [URLS[0]]: fail("timeout") });
  const result = await runAttempts(get, options(target));
  assert.equal(!result.ok && result.failure?.kind, "timeout");
  assert.deepEqual(get.sent, [URLS[0]]);
});

Deno.test("runAttempts() blames no backend and retries nothing when the client is gone or failed", async () => {
  for (
    const [name, script, clientFailed] of [
      ["client-gone", { [URLS[0]]: fail("client-gone") }, false],
      ["client body failed", { [URLS[0]]: fail("maybe-sent") }, true],
    ] as const
  ) {
    const target = pool();
    const failures: string[] = [];
    const get = plan(target, script, { clientFailed: () => clientFailed });
    const result = await runAttempts(
      get,
      options(target, {
        latencyObserver: { observe: () => {}, observeFailure: (b) => failures.push(b.url) },
      }),
    );
    assert.equal(result.ok, false, name);
    assert.deepEqual(get.sent, [URLS[0]], name);
    const [first] = target.backends;
    assert.equal(first.failures, 0, `${name}: not counted against the backend`);
    assert.equal(first.status, "up", `${name}: not ejected`);
    assert.equal(first.inflight, 0, `${name}: released`);
    assert.deepEqual(failures, [], `${name}: not told to the latency observer`);
  }
});

Deno.test("runAttempts() tells the pool each outcome once; the answering backend stays in flight", async () => {
  const target = pool();
  const observed: string[] = [];
  const get = plan(target, { [URLS[0]]: fail("maybe-sent") });
  const result = await runAttempts(
    get,
    options(target, {
      latencyObserver: {
        observe: (b) => observed.push(`answer ${b.url}`),
        observeFailure: (b) => observed.push(`failure ${b.url}`),
      },
    }),
  );
  assert.ok(result.ok);
  const [first, second, third] = target.backends;
  assert.deepEqual(
    [first, second, third].map((b) => [b.requests, b.inflight, b.failures]),
    [[1, 0, 1], [1, 1, 0], [0, 0, 0]],
  );
  assert.equal(result.backend, second, "the caller releases it when the response is done");
  assert.equal(first.status, "ejected", "the failure reached outlier detection");
  assert.equal(second.latency.samples().length, 1, "the answer's latency is recorded once");
  assert.deepEqual(observed, [`failure ${URLS[0]}`, `answer ${URLS[1]}`]);
});

Deno.test("runAttempts() counts a 5xx answer as a failure only with ejectOn5xx", async () => {
  for (const ejectOn5xx of [false, true]) {
    const target = pool();
    const get = plan(target, { [URLS[0]]: 503 });
    const result = await runAttempts(get, options(target, { ejectOn5xx }));
    assert.ok(result.ok, "a 5xx is an answer: relayed, not retried");
    assert.deepEqual(get.sent, [URLS[0]]);
    assert.equal(target.backends[0].serverErrors, 1);
    assert.equal(target.backends[0].status, ejectOn5xx ? "ejected" : "up");
  }
});

Deno.test("runAttempts() stops at `retries` extra attempts, each on a backend not tried", async () => {
  const target = pool();
  const script = Object.fromEntries(URLS.map((url) => [url, fail("connect")]));
  const log = captureLog();
  const get = plan(target, script);
  const result = await runAttempts(get, options(target, { retries: 1, log }));
  assert.equal(result.ok, false);
  assert.deepEqual(get.sent, [URLS[0], URLS[1]]);
  assert.deepEqual(log.lines, [
    `WARN ${URLS[0]} failed: connect failure (GET, attempt 1, retrying)`,
    `WARN ${URLS[1]} failed: connect failure (GET, attempt 2)`,
  ]);
});

Deno.test("runAttempts() with no backend to pick makes no attempt and reports no failure", async () => {
  const target = pool([]);
  const get = plan(target, {});
  const result = await runAttempts(get, options(target));
  assert.deepEqual(result, { ok: false, failure: undefined }, "the caller answers 503");
  assert.deepEqual(get.sent, []);
  assert.equal(get.trace.attempts, 0);
});

Deno.test("runAttempts() stops retrying when the retry budget is spent, and says so once", async () => {
  const target = pool();
  const events: string[] = [];
  const get = plan(target, { [URLS[0]]: fail("connect") });
  const result = await runAttempts(
    get,
    options(target, {
      retryBudget: new RetryBudget({ ratio: 0, minPerSecond: 0 }),
      observer: { retry: () => events.push("retry"), budgetExhausted: () => events.push("spent") },
    }),
  );
  assert.equal(result.ok, false);
  assert.deepEqual(get.sent, [URLS[0]]);
  assert.deepEqual(events, ["spent"]);
});

Deno.test("runAttempts() spends no retry budget when no untried backend is left", async () => {
  const target = pool([URLS[0]]);
  const budget = new RetryBudget({ ratio: 0, minPerSecond: 1 });
  const events: string[] = [];
  const get = plan(target, { [URLS[0]]: fail("connect") });
  await runAttempts(
    get,
    options(target, {
      retries: 3,
      retryBudget: budget,
      observer: { retry: () => events.push("retry"), budgetExhausted: () => events.push("spent") },
    }),
  );
  assert.deepEqual(get.sent, [URLS[0]]);
  assert.deepEqual(events, []);
  assert.ok(budget.tryAcquireRetry(performance.now()), "the one retry of this second is left");
});

Deno.test("runAttempts() over real sockets: a refused connect is retried on the live backend", async () => {
  await using backend = await startTestBackend((req) => new Response(`got ${req.method}`));
  const refusing = refusingUrl();
  const target = pool([refusing, backend.url]);
  const events: string[] = [];
  const post: AttemptPlan<Response> = {
    method: "POST",
    label: "",
    pick: (tried) =>
      target.pick({ clientIp: "127.0.0.1", headers: new Headers(), path: "/" }, tried),
    send: async (chosen: Backend): Promise<AttemptOutcome<Response>> => {
      try {
        const response = await fetch(`${chosen.url}/`, { method: "POST", body: "x" });
        return { ok: true, value: response, status: response.status };
      } catch (error) {
        return { ok: false, failure: classifyFetchError(error) };
      }
    },
    replayable: () => true,
    clientFailed: () => false,
    trace: { backend: undefined, attempts: 0 },
  };
  const result = await runAttempts(post, {
    ...options(target),
    observer: { retry: () => events.push("retry"), budgetExhausted: () => events.push("spent") },
  });
  assert.ok(result.ok);
  assert.equal(await result.value.text(), "got POST");
  assert.equal(result.backend.url, backend.url);
  assert.deepEqual(events, ["retry"]);
  assert.equal(target.backends[0].state, "down", "a refused connect marks the backend down");
  assert.equal(backend.received.length, 1, "the live backend saw the POST once");
});
