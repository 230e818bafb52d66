/**
 * @module
 * Rate limits (lib/rate_limit.ts): the `rateLimit` check, the token bucket under an injected
 * clock (burst, refill, Retry-After, independent keys, header keys), memory bounds (idle
 * buckets dropped, the cap's overflow bucket), the table against a plain model, and the table
 * shared by two worker threads (tests/fixtures/rate_limit_worker.ts) taking from the same keys
 * at once: together they are admitted exactly what one thread would be, where two tables
 * would admit twice that.
 */

import assert from "node:assert/strict";
import type { Problem } from "../lib/problem.ts";
import {
  checkRateLimit,
  createRateLimitTable,
  RATE_LIMIT_SCHEMA,
  RateLimiter,
  type RateLimitSpec,
} from "../lib/rate_limit.ts";
import type { FromRateLimitWorker, ToRateLimitWorker } from "./fixtures/rate_limit_worker.ts";

/** A clock the test moves by hand (ms). */
function manualClock(start = 1_000_000) {
  const clock = { t: start, now: () => clock.t };
  return clock;
}

function limiter(spec: Partial<RateLimitSpec> & { requestsPerSecond: number }, maxKeys = 1000) {
  const clock = manualClock();
  const full: RateLimitSpec = { burst: 1, key: "ip", ...spec };
  const limit = new RateLimiter(full, createRateLimitTable(maxKeys), { now: clock.now });
  return { clock, limit };
}

/** How many of `count` takes of `key` are admitted. */
function admitted(limit: RateLimiter, key: string, count: number): number {
  let ok = 0;
  for (let i = 0; i < count; i++) if (limit.take(key).ok) ok++;
  return ok;
}

// ---------------------------------------------------------------------------------------------
// checkRateLimit

Deno.test("checkRateLimit() fills in burst 1, key ip and maxKeys 100000", () => {
  const problems: Problem[] = [];
  const spec = checkRateLimit({ requestsPerSecond: 0.5 }, "rateLimit", problems);
  assert.deepEqual(problems, []);
  assert.deepEqual(spec, { requestsPerSecond: 0.5, burst: 1, key: "ip", maxKeys: 100_000 });
  const header = checkRateLimit(
    { requestsPerSecond: 20, burst: 40, key: "header:X-Api-Key", maxKeys: 10 },
    "rateLimit",
    problems,
  );
  assert.deepEqual(problems, []);
  assert.deepEqual(header, {
    requestsPerSecond: 20,
    burst: 40,
    key: "header:X-Api-Key",
    maxKeys: 10,
  });
});

Deno.test("checkRateLimit() reports each mistake at its path", () => {
  const problems: Problem[] = [];
  const spec = checkRateLimit(
    { requestsPerSecond: 0, burst: 1.5, key: "header:", maxKeys: 0, brust: 3 },
    "routes[2].rateLimit",
    problems,
  );
  assert.equal(spec, undefined);
  assert.deepEqual(problems, [
    { path: "routes[2].rateLimit.brust", message: "unknown key" },
    { path: "routes[2].rateLimit.requestsPerSecond", message: "0 is not a number above 0" },
    { path: "routes[2].rateLimit.burst", message: "1.5 is not a whole number" },
    {
      path: "routes[2].rateLimit.key",
      message: '"header:" is not "ip" or "header:NAME" (e.g. "header:X-Api-Key")',
    },
    { path: "routes[2].rateLimit.maxKeys", message: "0 is out of range (1 to 1000000)" },
  ]);
});

Deno.test("checkRateLimit() refuses a missing rate, a non-object and bad key kinds", () => {
  const problems: Problem[] = [];
  assert.equal(checkRateLimit({ burst: 2 }, "rateLimit", problems), undefined);
  assert.equal(checkRateLimit([1], "rateLimit", problems), undefined);
  assert.equal(checkRateLimit({ requestsPerSecond: "5" }, "rateLimit", problems), undefined);
  assert.equal(
    checkRateLimit({ requestsPerSecond: 1, burst: 0, key: "cookie:x" }, "rateLimit", problems),
    undefined,
  );
  assert.equal(
    checkRateLimit({ requestsPerSecond: 1, key: "header:X Y", MaxKeys: 5 }, "", problems),
    undefined,
  );
  assert.deepEqual(problems.map((p) => `${p.path}: ${p.message}`), [
    'rateLimit: needs "requestsPerSecond"',
    'rateLimit: a list is not an object like {"requestsPerSecond": 20, "burst": 40}',
    'rateLimit.requestsPerSecond: "5" is not a number above 0',
    "rateLimit.burst: 0 is out of range (1 to 1000000000)",
    'rateLimit.key: "cookie:x" is not "ip" or "header:NAME" (e.g. "header:X-Api-Key")',
    'MaxKeys: unknown key (did you mean "maxKeys"?)',
    'key: "header:X Y" is not "ip" or "header:NAME" (e.g. "header:X-Api-Key")',
  ]);
});

Deno.test("RATE_LIMIT_SCHEMA names the same keys the check accepts", () => {
  const properties = RATE_LIMIT_SCHEMA.properties as Record<string, unknown>;
  assert.deepEqual(Object.keys(properties), ["requestsPerSecond", "burst", "key", "maxKeys"]);
  assert.equal(RATE_LIMIT_SCHEMA.additionalProperties, false);
  const pattern = new RegExp((properties.key as { pattern: string }).pattern);
  assert.ok(pattern.test("header:X-Api-Key") && pattern.test("ip"));
  assert.ok(!pattern.test("header:") && !pattern.test("cookie:x"));
});

// ---------------------------------------------------------------------------------------------
// The bucket

Deno.test("take() admits exactly burst at once, then the rate over time", () => {
  const { clock, limit } = limiter({ requestsPerSecond: 20, burst: 40 });
  assert.equal(admitted(limit, "a", 100), 40);
  clock.t += 1000;
  assert.equal(admitted(limit, "a", 100), 20);
  clock.t += 50;
  assert.equal(admitted(limit, "a", 100), 1);
  clock.t += 49;
  assert.equal(admitted(limit, "a", 100), 0);
  // A long quiet spell refills to burst, never beyond.
  clock.t += 60_000;
  assert.equal(admitted(limit, "a", 100), 40);
});

Deno.test("take() admits a fractional rate over time: 0.5/s is one every 2 s", () => {
  const { clock, limit } = limiter({ requestsPerSecond: 0.5, burst: 2 });
  assert.equal(admitted(limit, "a", 10), 2);
  let total = 0;
  for (let second = 0; second < 20; second++) {
    clock.t += 1000;
    total += admitted(limit, "a", 10);
  }
  assert.equal(total, 10);
});

Deno.test("take() over many small steps admits no more than rate x time + burst", () => {
  // 0.1 ms steps with 3/s: fractional refills (0.0003 tokens) must add up without drifting.
  const { clock, limit } = limiter({ requestsPerSecond: 3, burst: 5 });
  let total = 0;
  for (let step = 0; step < 100_100; step++) {
    clock.t += 0.1;
    if (limit.take("a").ok) total++;
  }
  // 10.01 s: 5 at once plus 30 refilled.
  assert.equal(total, 35);
});

Deno.test("take() refuses with Retry-After: the whole seconds until a token, at least 1", () => {
  const slow = limiter({ requestsPerSecond: 0.5 });
  assert.deepEqual(slow.limit.take("a"), { ok: true });
  assert.deepEqual(slow.limit.take("a"), { ok: false, retryAfterSeconds: 2, log: true });
  slow.clock.t += 500;
  assert.equal(retryAfter(slow.limit.take("a")), 2);
  slow.clock.t += 500;
  assert.equal(retryAfter(slow.limit.take("a")), 1);
  slow.clock.t += 999;
  assert.equal(retryAfter(slow.limit.take("a")), 1);
  slow.clock.t += 1;
  assert.deepEqual(slow.limit.take("a"), { ok: true });

  const fast = limiter({ requestsPerSecond: 100, burst: 3 });
  admitted(fast.limit, "a", 3);
  assert.equal(retryAfter(fast.limit.take("a")), 1);

  const rare = limiter({ requestsPerSecond: 0.1 });
  rare.limit.take("a");
  assert.equal(retryAfter(rare.limit.take("a")), 10);
  rare.clock.t += 2500;
  assert.equal(retryAfter(rare.limit.take("a")), 8);
});

function retryAfter(result: ReturnType<RateLimiter["take"]>): number | undefined {
  return result.ok ? undefined : result.retryAfterSeconds;
}

Deno.test("take() keeps a bucket per key", () => {
  const { limit } = limiter({ requestsPerSecond: 1, burst: 3 });
  assert.equal(admitted(limit, "a", 10), 3);
  assert.equal(admitted(limit, "b", 10), 3);
  assert.equal(admitted(limit, "a", 10), 0);
  assert.equal(limit.stats().keys, 2);
  assert.equal(limit.stats().refused, 7 + 7 + 10);
});

Deno.test("take() says to log the first refusal of a key in each second only", () => {
  const { clock, limit } = limiter({ requestsPerSecond: 1 });
  limit.take("a");
  limit.take("b");
  const logged = () => {
    const result = limit.take("a");
    return !result.ok && result.log;
  };
  assert.equal(logged(), true);
  assert.equal(logged(), false);
  clock.t += 999;
  limit.take("a");
  assert.equal(logged(), false);
  // b has its own second.
  const b = limit.take("b");
  assert.ok(!b.ok && b.log);
  clock.t += 1001;
  limit.take("a");
  assert.equal(logged(), true);
});

Deno.test("take() neither locks out nor floods when the wall clock steps back", () => {
  const { clock, limit } = limiter({ requestsPerSecond: 1, burst: 2 });
  assert.equal(admitted(limit, "a", 5), 2);
  // Threads read the clock a moment apart: a small step back counts as no time.
  clock.t -= 5;
  assert.equal(admitted(limit, "a", 5), 0);
  // A step back of an hour: counting restarts from the new time.
  clock.t -= 3_600_000;
  assert.equal(admitted(limit, "a", 5), 0);
  clock.t += 1000;
  assert.equal(admitted(limit, "a", 5), 1);
});

Deno.test("keyOf() uses the header's value, or the address when the header is missing", () => {
  const table = createRateLimitTable(10);
  const byHeader = new RateLimiter(
    { requestsPerSecond: 1, burst: 1, key: "header:X-Api-Key" },
    table,
  );
  const withKey = new Headers({ "x-api-key": "k1" });
  assert.equal(byHeader.keyOf("10.0.0.1", withKey), byHeader.keyOf("10.0.0.2", withKey));
  assert.notEqual(byHeader.keyOf("10.0.0.1", withKey), byHeader.keyOf("10.0.0.1", new Headers()));
  assert.equal(
    byHeader.keyOf("10.0.0.1", new Headers()),
    byHeader.keyOf("10.0.0.1", new Headers()),
  );
  // A header naming an address is not that address's bucket.
  const spoof = new Headers({ "x-api-key": "10.0.0.1" });
  assert.notEqual(byHeader.keyOf("10.0.0.9", spoof), byHeader.keyOf("10.0.0.1", new Headers()));

  const byIp = new RateLimiter({ requestsPerSecond: 1, burst: 1, key: "ip" }, table);
  assert.equal(byIp.keyOf("::1", withKey), byIp.keyOf("::1", new Headers()));
  assert.notEqual(byIp.keyOf("::1", withKey), byIp.keyOf("::2", withKey));

  // Through take(): a client without the header is limited by its address.
  const missing = byHeader.keyOf("10.0.0.1", new Headers());
  assert.ok(byHeader.take(missing).ok);
  assert.ok(!byHeader.take(missing).ok);
  assert.ok(byHeader.take(byHeader.keyOf("10.0.0.1", withKey)).ok);
});

Deno.test("RateLimiter refuses a buffer that is not a table", () => {
  assert.throws(
    () =>
      new RateLimiter(
        { requestsPerSecond: 1, burst: 1, key: "ip" },
        new SharedArrayBuffer(4096),
      ),
    /not a rate limit table/,
  );
  assert.throws(() => createRateLimitTable(0), /maxKeys 0 is out of range/);
});

// ---------------------------------------------------------------------------------------------
// Memory bounds

Deno.test("take() drops idle buckets: the table does not fill with keys gone quiet", () => {
  const { clock, limit } = limiter({ requestsPerSecond: 10, burst: 5 }, 1000);
  for (let i = 0; i < 100; i++) limit.take(`old-${i}`);
  assert.equal(limit.stats().keys, 100);
  // Full again after 0.1 s: the same as no bucket.
  clock.t += 100;
  // Each new key sweeps 8 of the 2000 slots: 300 new keys sweep all of them.
  for (let i = 0; i < 300; i++) assert.ok(limit.take(`new-${i}`).ok);
  assert.deepEqual(limit.stats(), { keys: 300, overflowed: 0, refused: 0, expired: 100 });
});

Deno.test("take() at the cap drops idle buckets before it overflows", () => {
  const { clock, limit } = limiter({ requestsPerSecond: 10, burst: 5 }, 10);
  for (let i = 0; i < 10; i++) limit.take(`old-${i}`);
  clock.t += 100;
  for (let i = 0; i < 10; i++) assert.ok(limit.take(`new-${i}`).ok);
  const stats = limit.stats();
  assert.equal(stats.overflowed, 0);
  assert.equal(stats.keys, 10);
  assert.equal(stats.expired, 10);
});

Deno.test("take() past the cap shares one overflow bucket, counted, and keeps held keys", () => {
  const { clock, limit } = limiter({ requestsPerSecond: 1, burst: 3 }, 4);
  for (let i = 0; i < 4; i++) assert.ok(limit.take(`held-${i}`).ok);
  // 20 keys that find no room: 3 admitted from the overflow bucket, together.
  let ok = 0;
  for (let i = 0; i < 20; i++) if (limit.take(`flood-${i}`).ok) ok++;
  assert.equal(ok, 3);
  assert.deepEqual(limit.stats(), { keys: 4, overflowed: 20, refused: 17, expired: 0 });
  const refused = limit.take("flood-99");
  assert.ok(!refused.ok && refused.retryAfterSeconds === 1);
  // The keys the table holds keep their own buckets through the flood.
  assert.equal(admitted(limit, "held-0", 5), 2);
  // Once the held keys go quiet, new keys get buckets of their own again.
  clock.t += 3000;
  assert.equal(admitted(limit, "later", 5), 3);
  assert.equal(limit.stats().overflowed, 21);
});

Deno.test("take() at the cap of 100,000 keys stays at 100,000 under a flood of new ones", () => {
  const { limit } = limiter({ requestsPerSecond: 1, burst: 2 }, 100_000);
  for (let i = 0; i < 150_000; i++) limit.take(`10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`);
  const stats = limit.stats();
  assert.equal(stats.keys, 100_000);
  // Keys whose probe run was longer than 64 slots overflowed before the cap: only a few.
  assert.ok(stats.overflowed >= 50_000 && stats.overflowed < 50_100, String(stats.overflowed));
});

Deno.test("take() matches a map of token buckets over random keys, times and sweeps", () => {
  // 2^-7 tokens per ms and whole-ms steps keep every sum exact, so results must match exactly.
  const spec: RateLimitSpec = { requestsPerSecond: 7.8125, burst: 3, key: "ip" };
  const clock = manualClock();
  const limit = new RateLimiter(spec, createRateLimitTable(200), { now: clock.now });
  const model = new Map<string, { tokens: number; at: number }>();
  const rate = spec.requestsPerSecond / 1000;
  let seed = 42;
  const random = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  let refusals = 0;
  for (let step = 0; step < 50_000; step++) {
    clock.t += random(4) === 0 ? random(30) : 0;
    // Half the takes on 20 busy keys, half on 2,000 that mostly go idle and are dropped.
    const key = random(2) === 0 ? `busy-${random(20)}` : `rare-${random(2000)}`;
    const bucket = model.get(key) ?? { tokens: spec.burst, at: clock.t };
    bucket.tokens = Math.min(spec.burst, bucket.tokens + (clock.t - bucket.at) * rate);
    bucket.at = clock.t;
    const expected = bucket.tokens >= 1;
    if (expected) bucket.tokens -= 1;
    else refusals++;
    model.set(key, bucket);
    assert.equal(limit.take(key).ok, expected, `step ${step}, ${key}`);
  }
  const stats = limit.stats();
  assert.equal(stats.overflowed, 0);
  assert.equal(stats.refused, refusals);
  assert.ok(refusals > 1000 && stats.expired > 10_000, `${refusals} ${stats.expired}`);
});

// ---------------------------------------------------------------------------------------------
// Threads

/** Worker threads running tests/fixtures/rate_limit_worker.ts, released together per round. */
class Threads implements AsyncDisposable {
  readonly #workers: Worker[] = [];
  readonly #gate = new SharedArrayBuffer(12);
  #round = 0;

  static async start(
    count: number,
    setups: Omit<ToRateLimitWorker & { type: "setup" }, "type" | "gate">[],
  ) {
    const threads = new Threads();
    for (let i = 0; i < count; i++) {
      const worker = new Worker(new URL("./fixtures/rate_limit_worker.ts", import.meta.url), {
        type: "module",
      });
      threads.#workers.push(worker);
      const reply = threads.#next(worker);
      worker.postMessage({ type: "setup", ...setups[i], gate: threads.#gate });
      await reply;
    }
    return threads;
  }

  /** Each thread takes from `keys[i]`; resolves with what each was admitted per key. */
  async run(keys: string[][], passes: number, more: { forMs?: number; lockstep?: boolean } = {}) {
    const round = ++this.#round;
    const gate = new Int32Array(this.#gate);
    Atomics.store(gate, 2, 0);
    const lockstep = more.lockstep ? this.#workers.length : undefined;
    const replies = this.#workers.map((worker, i) => {
      const reply = this.#next(worker);
      const message: ToRateLimitWorker = {
        type: "run",
        round,
        keys: keys[i],
        passes,
        forMs: more.forMs,
        lockstep,
      };
      worker.postMessage(message);
      return reply;
    });
    // Release the threads together once all wait at the gate.
    const deadline = Date.now() + 10_000;
    while (Atomics.load(gate, 0) < this.#workers.length * round && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const started = Date.now();
    Atomics.store(gate, 1, round);
    Atomics.notify(gate, 1);
    const done = await Promise.all(replies);
    const elapsedMs = Date.now() - started;
    return { done: done as Extract<FromRateLimitWorker, { type: "done" }>[], elapsedMs };
  }

  #next(worker: Worker): Promise<FromRateLimitWorker> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("worker did not answer in 20 s")), 20_000);
      worker.onmessage = (event) => {
        clearTimeout(timer);
        resolve(event.data);
      };
      worker.onerror = (event) => {
        clearTimeout(timer);
        event.preventDefault();
        reject(new Error(`worker failed: ${event.message}`));
      };
    });
  }

  [Symbol.asyncDispose](): Promise<void> {
    for (const worker of this.#workers) worker.terminate();
    return Promise.resolve();
  }
}

function sharedClock(start: number) {
  const buffer = new SharedArrayBuffer(8);
  const view = new Float64Array(buffer);
  view[0] = start;
  return { buffer, view };
}

/** Two threads taking from one shared table of `size` keys, on a shared clock at 1,000,000. */
async function twoSharing(spec: RateLimitSpec, size: number) {
  const table = createRateLimitTable(size);
  const clock = sharedClock(1_000_000);
  const threads = await Threads.start(2, [
    { spec, table, clock: clock.buffer },
    { spec, table, clock: clock.buffer },
  ]);
  return Object.assign(threads, { clock });
}

const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);

Deno.test("two threads sharing a table are admitted exactly burst + rate x time together", async () => {
  // A burst far larger than one thread's share of takes: both take from it the whole time.
  const spec: RateLimitSpec = { requestsPerSecond: 400, burst: 200_000, key: "ip" };
  await using threads = await twoSharing(spec, 16);
  const clock = threads.clock;
  const first = await threads.run([["one"], ["one"]], 150_000);
  assert.ok(first.done.every((d) => d.admitted[0] > 0), JSON.stringify(first.done));
  assert.equal(sum(first.done.map((d) => d.admitted[0])), 200_000);
  clock.view[0] += 2500;
  const second = await threads.run([["one"], ["one"]], 2_000, { lockstep: true });
  assert.equal(sum(second.done.map((d) => d.admitted[0])), 1000);
});

Deno.test("two threads with a table each would be admitted twice the burst", async () => {
  const spec: RateLimitSpec = { requestsPerSecond: 400, burst: 200_000, key: "ip" };
  const clock = sharedClock(1_000_000);
  await using threads = await Threads.start(2, [
    { spec, table: createRateLimitTable(16), clock: clock.buffer },
    { spec, table: createRateLimitTable(16), clock: clock.buffer },
  ]);
  const { done } = await threads.run([["one"], ["one"]], 150_000);
  assert.equal(sum(done.map((d) => d.admitted[0])), 300_000);
});

Deno.test("two threads adding and dropping keys at once never give a key two buckets", async () => {
  // Frozen clock, burst 3: over both threads every key is admitted exactly 3 times. The threads
  // take each new key at the same moment, while idle keys of the first round are dropped and
  // keys move under the other thread's lookups.
  const spec: RateLimitSpec = { requestsPerSecond: 10, burst: 3, key: "ip" };
  await using threads = await twoSharing(spec, 4096);
  const clock = threads.clock;
  const old = Array.from({ length: 2000 }, (_, i) => `old-${i}`);
  await threads.run([old.slice(0, 1000), old.slice(1000)], 1);
  clock.view[0] += 1000;
  const keys = Array.from({ length: 2000 }, (_, i) => `new-${i}`);
  const { done } = await threads.run([keys, keys], 3, { lockstep: true });
  const wrong = keys.flatMap((key, i) => {
    const n = done[0].admitted[i] + done[1].admitted[i];
    return n === 3 ? [] : [`${key}: ${n}`];
  });
  assert.deepEqual(wrong, []);
  assert.deepEqual(done.map((d) => d.overflowed), [0, 0]);
});

Deno.test("two threads on the real clock are admitted at most burst + rate x elapsed", async () => {
  const spec: RateLimitSpec = { requestsPerSecond: 1000, burst: 50, key: "ip" };
  const table = createRateLimitTable(16);
  await using threads = await Threads.start(2, [{ spec, table }, { spec, table }]);
  const { done, elapsedMs } = await threads.run([["one"], ["one"]], 1_000_000, { forMs: 300 });
  const total = sum(done.map((d) => d.admitted[0]));
  assert.ok(total >= 50, `${total}`);
  assert.ok(total <= 50 + elapsedMs + 1, `${total} admitted in ${elapsedMs} ms`);
});

// ---------------------------------------------------------------------------------------------
// The wire

Deno.test("a server answering by take() sends 429 with Retry-After per header key", async () => {
  const limit = new RateLimiter(
    { requestsPerSecond: 0.2, burst: 2, key: "header:X-Api-Key" },
    createRateLimitTable(100),
  );
  await using server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (
    req,
    info,
  ) => {
    const result = limit.take(limit.keyOf(info.remoteAddr.hostname, req.headers));
    if (result.ok) return new Response("ok");
    return new Response("rate limit exceeded\n", {
      status: 429,
      headers: { "retry-after": String(result.retryAfterSeconds) },
    });
  });
  const client = Deno.createHttpClient({});
  try {
    const get = async (apiKey?: string) => {
      const response = await fetch(`http://127.0.0.1:${server.addr.port}/`, {
        client,
        headers: apiKey ? { "x-api-key": apiKey } : {},
      });
      await response.body?.cancel();
      return `${response.status} ${response.headers.get("retry-after")}`;
    };
    assert.deepEqual(
      [await get("a"), await get("a"), await get("a"), await get("b"), await get(), await get()],
      ["200 null", "200 null", "429 5", "200 null", "200 null", "200 null"],
    );
    assert.equal(await get(), "429 5");
  } finally {
    client.close();
  }
});
