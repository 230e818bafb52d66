/**
 * @module
 * Active health checks: every interval, a GET of the health path on each backend; 2xx and 3xx
 * pass unless other statuses are expected, and a check may also send a Host header of its own
 * and require a text in the body (read up to 64 KiB, within the check's timeout). Results go to
 * the pool, which applies rise/fall hysteresis and announces state flips. One checker runs per
 * service; checkers share nothing.
 * Checks go over the native transport (lib/upstream_native.ts) by default, so they reach every
 * port requests reach: fetch refuses the WHATWG "bad ports" (10080, 6000, 6665-6669, 5060, ...)
 * and would keep such a backend down for good. With `--transport fetch` checks use fetch, as
 * requests do, and a refused port is said in one warning.
 * Per-round lines (`Starting health check...`, `URL [up]`, `Health check completed`) are the
 * original tool's, logged at debug; the pool's flips are logged at info by whoever listens.
 */

import type { Log } from "./log.ts";
import type { Backend, Pool } from "./pool.ts";
import type { AttemptOptions, UpstreamResponse } from "./upstream.ts";
import {
  createNativeTransport,
  type NativeTlsOptions,
  type NativeTransport,
} from "./upstream_native.ts";

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
  /**
   * How checks reach backends: `"native"`, a connection of the checker's own per check over
   * `Deno.connect`/`Deno.connectTls` (lib/upstream_native.ts), which reaches any port; `"fetch"`,
   * fetch with `client`, which refuses the ports on the WHATWG "bad ports" list (the checker then
   * warns once per backend). Follows `--transport`. @default "native"
   */
  transport?: "native" | "fetch";
  /**
   * TLS for `https:` backends on the native path: `--backend-ca`, and the client certificate
   * shown to backends that ask. @default the default roots, no client certificate
   */
  tls?: NativeTlsOptions;
  /** Client used for checks on the fetch path. @default fetch's default client */
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
  /** The native path's transport: made at the first check, closed by stop(). */
  #native: NativeTransport | undefined;
  /** Backends already warned about (fetch refuses their port), so the warning is said once. */
  readonly #warnedBackends = new Set<string>();

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
    const native = this.#native;
    this.#native = undefined;
    await native?.close();
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
    const { timeout, expectStatus, bodyContains } = this.options;
    // A timer of our own rather than AbortSignal.timeout: it is cleared when the check ends, so
    // a stopped checker leaves no timer behind.
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(new DOMException("", "TimeoutError")), timeout);
    const signal = AbortSignal.any([this.#abort.signal, deadline.signal]);
    const timedOut = { ok: false, detail: `timeout ${timeout}ms` };
    let body: CheckBody = null;
    try {
      const answer = this.options.transport === "fetch"
        ? await this.#getWithFetch(backend, signal)
        : await this.#getNative(backend, signal);
      if (typeof answer === "string") {
        return deadline.signal.aborted ? timedOut : { ok: false, detail: answer.slice(0, 160) };
      }
      body = answer.body;
      const { status } = answer;
      const statusOk = expectStatus === undefined
        ? status >= 200 && status < 400
        : expectStatus.includes(status);
      if (!statusOk) {
        const expected = expectStatus === undefined ? "" : ` (expected ${expectStatus.join(", ")})`;
        return { ok: false, detail: `HTTP ${status}${expected}` };
      }
      if (bodyContains !== undefined) {
        const found = await searchBody(body, bodyContains, HEALTH_BODY_LIMIT, signal);
        body = null; // searchBody released it
        // The deadline cancels the read, which then looks like the body's end.
        if (deadline.signal.aborted) return timedOut;
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
      if (name === "TimeoutError" || deadline.signal.aborted) return timedOut;
      const cause = (error as { cause?: Error })?.cause?.message ?? String(error);
      const detail = cause.includes("Connection refused") ? "connection refused" : cause;
      return { ok: false, detail: detail.slice(0, 160) };
    } finally {
      clearTimeout(timer);
      // An unread body holds the connection (and a resource) until cancelled.
      if (body instanceof ReadableStream) await body.cancel().catch(() => {});
    }
  }

  /**
   * The check's GET on the native transport: the answer, or why there is none. The transport's
   * own timeouts are the check's; `signal` (the check's deadline, stop()) ends it sooner.
   */
  async #getNative(backend: Backend, signal: AbortSignal): Promise<CheckAnswer | string> {
    const { timeout, tls } = this.options;
    // No idle connections: nothing stays open between rounds, and each check dials afresh.
    this.#native ??= createNativeTransport({ tls, maxIdlePerOrigin: 0 });
    const options: AttemptOptions = {
      timeout,
      connectTimeout: timeout,
      readTimeout: timeout,
    };
    const headers = Object.entries(this.#headers());
    const request = { method: "GET", headers, body: null };
    const url = backend.url + this.options.path;
    const result = await this.#native.send(backend.url, url, request, signal, options);
    if (!result.ok) {
      const { kind, detail, timedOut } = result.failure;
      return kind === "timeout" || timedOut ? `timeout ${timeout}ms` : detail;
    }
    return result.value;
  }

  /** The check's GET with fetch (`--transport fetch`); throws what fetch throws. */
  async #getWithFetch(backend: Backend, signal: AbortSignal): Promise<CheckAnswer | string> {
    try {
      return await fetch(backend.url + this.options.path, {
        redirect: "manual",
        signal,
        client: this.options.client,
        headers: this.#headers(),
      });
    } catch (error) {
      const port = /Requests to port (\d+) are blocked/.exec(String(error))?.[1];
      if (port === undefined) throw error;
      this.#warnBlockedPort(backend, port);
      return `fetch blocks port ${port} (--transport fetch)`;
    }
  }

  /** Says once per backend why it can never pass: waiting for it to come up would be in vain. */
  #warnBlockedPort(backend: Backend, port: string): void {
    if (this.#warnedBackends.has(backend.url)) return;
    this.#warnedBackends.add(backend.url);
    this.log.warn(
      `${backend.url}: fetch refuses port ${port} (a WHATWG "bad port"), so with --transport ` +
        "fetch its health checks and requests always fail; use --transport native or another port",
    );
  }

  #headers(): Record<string, string> {
    const headers: Record<string, string> = {
      "user-agent": HEALTH_CHECK_USER_AGENT,
      "accept-encoding": "identity",
    };
    if (this.options.host !== undefined) headers.host = this.options.host;
    return headers;
  }
}

/** A check's answer, from fetch or the native transport. */
type CheckAnswer = Pick<UpstreamResponse, "status" | "body">;

/** A body as either path gives it: read whole (native, small), streaming, or none. */
type CheckBody = UpstreamResponse["body"];

/**
 * Reads `body` until `needle` shows up, the body ends, or `limit` bytes were read (an endless
 * or huge body must not be buffered); always releases the body. `signal` cancels the read
 * (a streamed native body does not listen to the check's signal itself).
 */
async function searchBody(
  body: CheckBody,
  needle: string,
  limit: number,
  signal: AbortSignal,
): Promise<"found" | "absent" | "cut"> {
  if (body === null) return needle === "" ? "found" : "absent";
  if (body instanceof Uint8Array) {
    const text = new TextDecoder().decode(body.subarray(0, limit));
    if (text.includes(needle)) return "found";
    return body.byteLength > limit ? "cut" : "absent";
  }
  const reader = body.getReader();
  const cancel = () => reader.cancel().catch(() => {});
  signal.addEventListener("abort", cancel);
  const decoder = new TextDecoder();
  let text = "";
  let read = 0;
  try {
    while (!signal.aborted) {
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
    return "absent";
  } finally {
    signal.removeEventListener("abort", cancel);
    await reader.cancel().catch(() => {});
  }
}
