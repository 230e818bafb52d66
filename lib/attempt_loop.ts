/**
 * @module
 * The one attempt loop, for HTTP requests and WebSocket upgrades alike (Caddy's
 * `proxyLoopIteration`): it picks a backend per attempt, counts the attempt in flight, tells the
 * pool each outcome once, and alone decides whether to try another backend (retry rules, retry
 * budget, backoff), logging every failure. What an attempt is (a native or fetch request, a
 * WebSocket handshake) is the caller's.
 */

import type { Log } from "./log.ts";
import type { Backend, LatencyObserver, Pool } from "./pool.ts";
import { type Failure, mayRetry } from "./retry.ts";
import type { RetryBudget } from "./retry_budget.ts";

/** What one attempt against one backend ended with. */
export type AttemptOutcome<T> =
  /** The backend answered with `status` (for a WebSocket, the handshake's). */
  | { ok: true; value: T; status: number }
  | { ok: false; failure: Failure };

/** What the loop needs that is the same for every request. */
export interface AttemptLoopOptions {
  pool: Pool;
  /** Extra attempts after the first, each on a backend not yet tried. */
  retries: number;
  /** Jittered wait before retry number n (ms). */
  backoff: (retry: number) => number;
  /** Caps retries to a share of traffic; undefined = no cap. @default undefined */
  retryBudget?: RetryBudget;
  /** Told every attempt's latency to an answer, and every failure (p2c-ewma). @default none */
  latencyObserver?: LatencyObserver;
  /** Whether a 5xx answer counts as a failure for outlier ejection. @default false */
  ejectOn5xx?: boolean;
  /** Told about retries and refusals by the budget (metrics). @default none */
  observer?: { retry(): void; budgetExhausted(): void };
  log: Log;
}

/** One request's part: how to choose, how to attempt, and what may be repeated. */
export interface AttemptPlan<T> {
  /** The method, for the retry rules (a WebSocket handshake is a GET). */
  method: string;
  /** Put before failure details in log lines ("WebSocket " or ""). */
  label: string;
  /** The backend for attempt number `attempt` among those not `tried`; undefined: none left. */
  pick(tried: ReadonlySet<Backend>, attempt: number): Backend | undefined;
  /** One attempt; must not throw. The backend is in flight (`pool.acquire`) while it runs. */
  send(backend: Backend): Promise<AttemptOutcome<T>>;
  /** Whether another attempt could still send the whole request (its body). */
  replayable(): boolean;
  /** Whether the client has failed (its body): then no backend is blamed and nothing retried. */
  clientFailed(): boolean;
  /** Updated as attempts are made, for the request's outcome (metrics, access log). */
  trace: { backend: Backend | undefined; attempts: number };
}

/**
 * How the loop ended: an answer (its backend stays in flight: the caller releases it when the
 * response is done), or the last failure (undefined when no backend could be tried).
 */
export type LoopResult<T> =
  | { ok: true; value: T; backend: Backend }
  | { ok: false; failure: Failure | undefined };

/**
 * Tries backends for one request until one answers or the rules say stop. `now` is a
 * `performance.now()` the caller read in the same synchronous run, to save a clock read.
 */
export async function runAttempts<T>(
  plan: AttemptPlan<T>,
  options: AttemptLoopOptions,
  now: number = performance.now(),
): Promise<LoopResult<T>> {
  const { pool, log, retryBudget } = options;
  // Made on the first failure: most requests never need one.
  let tried: Set<Backend> | undefined;
  // One clock read serves the budget and the first attempt's latency (reads cost an op each).
  let started = now;
  retryBudget?.recordRequest(started);
  let failure: Failure | undefined;
  for (let attempt = 0; attempt <= options.retries; attempt++) {
    const backend = plan.pick(tried ?? NOTHING_TRIED, attempt);
    if (backend === undefined) break;
    plan.trace.backend = backend;
    plan.trace.attempts++;
    if (log.debugEnabled) log.debug(`Selected backend: ${backend.url}`);
    pool.acquire(backend);
    if (attempt > 0) started = performance.now();
    const outcome = await plan.send(backend);
    if (outcome.ok) {
      const latency = performance.now() - started;
      options.latencyObserver?.observe(backend, latency);
      pool.attemptAnswered(backend, outcome.status, latency, options.ejectOn5xx ?? false);
      return { ok: true, value: outcome.value, backend };
    }
    pool.release(backend);
    (tried ??= new Set()).add(backend);
    failure = outcome.failure;
    // The client's doing (a body it failed to send, a hang-up): no backend is blamed, no retry.
    if (plan.clientFailed() || failure.kind === "client-gone") break;
    options.latencyObserver?.observeFailure(backend);
    pool.attemptFailed(backend, failure);
    const retrying = attempt < options.retries &&
      mayRetry(failure.kind, plan.method, plan.replayable()) &&
      // Before the budget: a retry with no untried backend left would take budget that another
      // request could have used, and wait out a backoff, for nothing.
      pool.hasCandidate(tried) &&
      withinBudget(options);
    log.warn(
      `${backend.url} failed: ${plan.label}${failure.detail} (${plan.method}, attempt ` +
        `${attempt + 1}${retrying ? ", retrying" : ""})`,
    );
    if (!retrying) break;
    options.observer?.retry();
    await delay(options.backoff(attempt + 1));
  }
  return { ok: false, failure };
}

const NOTHING_TRIED: ReadonlySet<Backend> = new Set();

function withinBudget(options: AttemptLoopOptions): boolean {
  const budget = options.retryBudget;
  if (budget === undefined || budget.tryAcquireRetry(performance.now())) return true;
  options.log.debug("Retry budget exhausted: not retrying");
  options.observer?.budgetExhausted();
  return false;
}

function delay(ms: number): Promise<void> {
  return ms <= 0 ? Promise.resolve() : new Promise((resolve) => setTimeout(resolve, ms));
}
