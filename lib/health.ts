/**
 * @module
 * Active health checks: every interval, a GET of the health path on each backend; 2xx and 3xx
 * pass unless other statuses are expected, and a check may also send a Host header of its own
 * and require a text in the body (read up to 64 KiB, within the check's timeout). Results go to
 * the pool, which applies rise/fall hysteresis and announces state flips. One checker runs per
 * service; checkers share nothing.
 * Per-round lines (`Starting health check...`, `URL [up]`, `Health check completed`) are the
 * original tool's, logged at debug; the pool's flips are logged at info by whoever listens.
 */

import type { Log } from "./log.ts";
import type { Backend, Pool } from "./pool.ts";

/** User-Agent of health check requests, so backends (and their logs) can tell them apart. */
export const HEALTH_CHECK_USER_AGENT = "load-balancer-health-check";

/** At most this much of a response body is searched for `bodyContains`. */
export const HEALTH_BODY_LIMIT = 64 * 1024;

/**
 * Health check settings (durations in ms). One checker runs per service, each with its own;
 * values are validated by the settings (lib/setting_values.ts), not here.
 */
export interface HealthOptions {
  /** Time between the end of one round and the start of the next. @default 5000 */
  interval: number;
  /** Time limit for one check, the body read included. @default 2000 */
  timeout: number;
  /** Path requested with GET. @default "/" */
  path: string;
  /** Statuses that pass. @default undefined (any 2xx or 3xx passes) */
  expectStatus?: readonly number[];
  /**
   * Host header sent with the check, `hostname[:port]` (virtual-hosted backends). Needs a
   * `client` created with `allowHost: true`: fetch's default client replaces it with the URL's
   * authority. @default undefined (the backend's own host and port)
   */
  host?: string;
  /**
   * The check passes only if the response body contains this text; only the first
   * {@linkcode HEALTH_BODY_LIMIT} bytes are read. @default undefined (the body is not read)
   */
  bodyContains?: string;
  /** Client used for checks. @default fetch's default client */
  client?: Deno.HttpClient;
  /** Told every check's result (metrics). @default none */
  onResult?: (backend: Backend, ok: boolean) => void;
}

/** Runs health check rounds on a timer until stopped. No state is shared between checkers. */
export class HealthChecker {
  #timer: ReturnType<typeof setTimeout> | undefined;
  #round: Promise<void> | undefined;
  /** Set by stop(); runRound() also works without start() (tests, one-off checks). */
  #stopped = false;
  #abort = new AbortController();

  constructor(
    private readonly pool: Pool,
    private readonly options: HealthOptions,
    private readonly log: Log,
  ) {}

  /** Starts checking: a first round at once, then one every interval after the previous ends. */
  start(): void {
    this.#stopped = false;
    // A checker stopped before may start again: stop() aborted the previous controller.
    if (this.#abort.signal.aborted) this.#abort = new AbortController();
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

  /**
   * One check of one backend: passes on an expected status (by default 2xx or 3xx) and, when
   * `bodyContains` is set, a body containing it, all within the timeout.
   */
  async check(backend: Backend): Promise<{ ok: boolean; detail: string }> {
    const { timeout, expectStatus, host, bodyContains } = this.options;
    // A timer of our own rather than AbortSignal.timeout: it is cleared when the check ends, so
    // a stopped checker leaves no timer behind.
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(new DOMException("", "TimeoutError")), timeout);
    const signal = AbortSignal.any([this.#abort.signal, deadline.signal]);
    let body: ReadableStream<Uint8Array> | null = null;
    try {
      const headers: Record<string, string> = {
        "user-agent": HEALTH_CHECK_USER_AGENT,
        "accept-encoding": "identity",
      };
      if (host !== undefined) headers.host = host;
      const response = await fetch(backend.url + this.options.path, {
        redirect: "manual",
        signal,
        client: this.options.client,
        headers,
      });
      body = response.body;
      const { status } = response;
      const statusOk = expectStatus === undefined
        ? status >= 200 && status < 400
        : expectStatus.includes(status);
      if (!statusOk) {
        const expected = expectStatus === undefined ? "" : ` (expected ${expectStatus.join(", ")})`;
        return { ok: false, detail: `HTTP ${status}${expected}` };
      }
      if (bodyContains !== undefined) {
        const found = await searchBody(body, bodyContains, HEALTH_BODY_LIMIT);
        body = null; // searchBody released it
        if (found !== "found") {
          const where = found === "cut" ? ` in its first ${HEALTH_BODY_LIMIT} bytes` : "";
          return {
            ok: false,
            detail: `body does not contain ${JSON.stringify(bodyContains)}${where}`,
          };
        }
      }
      return { ok: true, detail: `HTTP ${status}` };
    } catch (error) {
      const name = (error as Error)?.name;
      if (name === "TimeoutError" || deadline.signal.aborted) {
        return { ok: false, detail: `timeout ${timeout}ms` };
      }
      const cause = (error as { cause?: Error })?.cause?.message ?? String(error);
      const detail = cause.includes("Connection refused") ? "connection refused" : cause;
      return { ok: false, detail: detail.slice(0, 160) };
    } finally {
      clearTimeout(timer);
      // An unread body holds the connection (and a resource) until cancelled.
      await body?.cancel().catch(() => {});
    }
  }
}

/**
 * Reads `body` until `needle` shows up, the body ends, or `limit` bytes were read (an endless
 * or huge body must not be buffered); always releases the body.
 */
async function searchBody(
  body: ReadableStream<Uint8Array> | null,
  needle: string,
  limit: number,
): Promise<"found" | "absent" | "cut"> {
  if (body === null) return needle === "" ? "found" : "absent";
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let read = 0;
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) {
        text += decoder.decode();
        return text.includes(needle) ? "found" : "absent";
      }
      const chunk = read + value.byteLength > limit ? value.subarray(0, limit - read) : value;
      read += chunk.byteLength;
      // Only the new text and the needle's length before it can hold a new match.
      const from = Math.max(0, text.length - needle.length + 1);
      text += decoder.decode(chunk, { stream: true });
      if (text.includes(needle, from)) return "found";
      if (read >= limit) return "cut";
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}
