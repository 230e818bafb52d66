/**
 * @module
 * Active health checks: every interval, a GET of the health path on each backend; 2xx and 3xx
 * pass. Results go to the pool, which applies rise/fall hysteresis and announces state flips.
 * Per-round lines (`Starting health check...`, `URL [up]`, `Health check completed`) are the
 * original tool's, logged at debug; the pool's flips are logged at info by whoever listens.
 */

import type { Log } from "./log.ts";
import type { Backend, Pool } from "./pool.ts";

/** User-Agent of health check requests, so backends (and their logs) can tell them apart. */
export const HEALTH_CHECK_USER_AGENT = "load-balancer-health-check";

/** Health check settings (durations in ms). */
export interface HealthOptions {
  /** Time between the end of one round and the start of the next. @default 5000 */
  interval: number;
  /** Time limit for one check. @default 2000 */
  timeout: number;
  /** Path requested with GET. @default "/" */
  path: string;
  /** Client used for checks. @default fetch's default client */
  client?: Deno.HttpClient;
  /** Told every check's result (metrics). @default none */
  onResult?: (backend: Backend, ok: boolean) => void;
}

/** Runs health check rounds on a timer until stopped. */
export class HealthChecker {
  #timer: ReturnType<typeof setTimeout> | undefined;
  #round: Promise<void> | undefined;
  #stopped = true;
  readonly #abort = new AbortController();

  constructor(
    private readonly pool: Pool,
    private readonly options: HealthOptions,
    private readonly log: Log,
  ) {}

  /** Starts checking: a first round at once, then one every interval after the previous ends. */
  start(): void {
    this.#stopped = false;
    this.#schedule(0);
  }

  /** Stops the timer and cancels checks in progress; resolves when the current round ended. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#abort.abort();
    await this.#round;
  }

  #schedule(delay: number): void {
    this.#timer = setTimeout(() => {
      this.#round = this.runRound().finally(() => {
        if (!this.#stopped) this.#schedule(this.options.interval);
      });
    }, delay);
  }

  /** Checks every backend once, concurrently, and reports the results to the pool. */
  async runRound(): Promise<void> {
    this.log.debug("Starting health check...");
    await Promise.all(this.pool.backends.map((backend) => this.#checkAndReport(backend)));
    this.log.debug("Health check completed");
  }

  async #checkAndReport(backend: Backend): Promise<void> {
    const { ok, detail } = await this.check(backend);
    if (this.#stopped) return;
    this.log.debug(`${backend.url} [${ok ? "up" : "down"}]`);
    this.options.onResult?.(backend, ok);
    this.pool.reportCheck(backend, ok, detail);
  }

  /** One check of one backend: passes on a 2xx or 3xx answer within the timeout. */
  async check(backend: Backend): Promise<{ ok: boolean; detail: string }> {
    const signal = AbortSignal.any([
      this.#abort.signal,
      AbortSignal.timeout(this.options.timeout),
    ]);
    try {
      const response = await fetch(backend.url + this.options.path, {
        redirect: "manual",
        signal,
        client: this.options.client,
        headers: { "user-agent": HEALTH_CHECK_USER_AGENT, "accept-encoding": "identity" },
      });
      await response.body?.cancel();
      const ok = response.status >= 200 && response.status < 400;
      return { ok, detail: `HTTP ${response.status}` };
    } catch (error) {
      const name = (error as Error)?.name;
      if (name === "TimeoutError") {
        return { ok: false, detail: `timeout ${this.options.timeout}ms` };
      }
      const cause = (error as { cause?: Error })?.cause?.message ?? String(error);
      const detail = cause.includes("Connection refused") ? "connection refused" : cause;
      return { ok: false, detail: detail.slice(0, 160) };
    }
  }
}
