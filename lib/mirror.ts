/**
 * @module
 * Request mirroring (issue 14): a share of a route's requests copied to another service, fire
 * and forget, as Envoy's `request_mirror_policies` and nginx's `mirror` do. The client's answer
 * never waits for a copy or depends on it: a copy is started in the background and its outcome
 * only counted ({@linkcode Mirror.stats}).
 *
 * What a copy is: the request as sent upstream (method, path after the route's rewrite,
 * headers with the balancer's X-Forwarded-* and X-Request-Id) plus `X-Mirrored-From: <route>`.
 * The Host is kept as sent: Envoy appends `-shadow` to it, which broke host-based routing in
 * the shadow and was made optional (envoyproxy/envoy#9094, envoyproxy/gateway#7227); a header
 * of its own marks a copy without changing how the shadow routes it. `Expect` is dropped (the
 * copy's body is complete already) and the framing is the transport's.
 *
 * What bounds it:
 * - at most `maxInFlight` copies in flight per target service (default 64, shared through one
 *   {@linkcode InFlightLimit}); beyond it a copy is dropped and counted `full`;
 * - bodies up to `maxBody` only: a body declared or found larger is not copied (`tooLarge`),
 *   and never held in memory beyond `maxBody`;
 * - a copy is one attempt, never retried (a shadow gets POSTs too: that is the point), with a
 *   deadline on the whole exchange ({@linkcode createServiceMirrorTarget}).
 *
 * The body: the primary's attempts consume the client's stream, so the copy is taken from what
 * they read. {@linkcode Mirror.tee} takes the request's lib/body.ts {@linkcode RequestBody}:
 * a buffered body (small, with Content-Length) is copied at once; a streamed one is wrapped so
 * that the bytes an attempt reads are kept, up to `maxBody`, and the copy is sent when one
 * attempt has read the body to its end.
 */

import { concatBytes, mayFailWhileSent, type RequestBody } from "./body.ts";
import type { HeaderPairs } from "./headers.ts";
import { childPath } from "./jsonc.ts";
import { sizeValue } from "./units.ts";
import type { Pool } from "./pool.ts";
import { type Problem, show } from "./problem.ts";
import {
  afterDelay,
  type AttemptOptions,
  fetchRewritesTarget,
  type Transport,
} from "./upstream.ts";

// ---------------------------------------------------------------------------------------------
// Configuration

/** A route's `mirror` key, checked, with defaults applied. */
export interface MirrorSpec {
  /** Service that receives the copies (the lead's lint checks it exists). */
  service: string;
  /** Share of the route's requests copied, 0-100; fractions allowed. @default 100 */
  percent: number;
  /** Largest request body copied (bytes); a larger one is not copied. @default 65536 (64 KiB) */
  maxBody: number;
}

/** Defaults of the optional keys of {@linkcode MirrorSpec}. */
export const MIRROR_DEFAULTS = { percent: 100, maxBody: 64 * 1024 } as const;

/** Largest `maxBody`: every copy in flight holds its body in memory (64 of them by default). */
export const MAX_MIRROR_BODY = 16 * 1024 * 1024;

const MIRROR_KEYS = ["service", "percent", "maxBody"] as const;

/** JSON Schema of the `mirror` key, for lb.schema.json. */
export const MIRROR_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["service"],
  description: "Copy a share of the route's requests to another service, fire and forget: " +
    "the client's answer never waits for the copy. See docs/protection.md.",
  properties: {
    service: { type: "string", minLength: 1, description: "Service that receives the copies." },
    percent: {
      type: "number",
      minimum: 0,
      maximum: 100,
      default: MIRROR_DEFAULTS.percent,
      description: "Share of the route's requests copied, 0-100 (fractions allowed).",
    },
    maxBody: {
      oneOf: [
        { type: "integer", minimum: 0, maximum: MAX_MIRROR_BODY },
        { type: "string", pattern: "^\\s*\\d+(\\.\\d+)?\\s*([bB]|[kKmMgG]([iI]?[bB])?)?$" },
      ],
      default: "64KiB",
      description: "Largest request body copied (bytes, or a size like 64KiB; at most 16MiB); " +
        "requests with larger bodies are not copied.",
    },
  },
} as const;

/**
 * Checks a `mirror` value, pushing one problem per mistake at paths under `path` (e.g.
 * `routes[2].mirror.percent`). Returns the spec with defaults, or undefined on any problem.
 */
export function checkMirror(
  value: unknown,
  path: string,
  problems: Problem[],
): MirrorSpec | undefined {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    problems.push({ path, message: `${show(value)} is not an object with a "service"` });
    return undefined;
  }
  const object = value as Record<string, unknown>;
  const before = problems.length;
  const fail = (key: string, message: string) =>
    problems.push({ path: childPath(path, key), message });
  for (const key of Object.keys(object)) {
    if (!(MIRROR_KEYS as readonly string[]).includes(key)) {
      fail(key, `unknown key (a mirror takes ${MIRROR_KEYS.join(", ")})`);
    }
  }
  let service: string | undefined;
  if (!Object.hasOwn(object, "service")) {
    fail("service", "missing: the service that receives the copies");
  } else if (typeof object.service !== "string" || object.service === "") {
    fail("service", `${show(object.service)} is not a service name`);
  } else service = object.service;
  let percent: number = MIRROR_DEFAULTS.percent;
  if (Object.hasOwn(object, "percent")) {
    const p = object.percent;
    if (typeof p !== "number" || !Number.isFinite(p)) fail("percent", `${show(p)} is not a number`);
    else if (p < 0 || p > 100) fail("percent", `${p} is out of range (0 to 100)`);
    else percent = p;
  }
  let maxBody: number = MIRROR_DEFAULTS.maxBody;
  if (Object.hasOwn(object, "maxBody")) {
    const m = object.maxBody;
    const bytes = sizeValue(m);
    if (bytes === undefined) {
      fail("maxBody", `${show(m)} is not a size (use e.g. 65536 or 64KiB)`);
    } else if (bytes > MAX_MIRROR_BODY) {
      fail("maxBody", `${show(m)} is more than 16MiB (each copy in flight holds its body)`);
    } else maxBody = bytes;
  }
  if (problems.length > before || service === undefined) return undefined;
  return { service, percent, maxBody };
}

// ---------------------------------------------------------------------------------------------
// Runtime

/** A copy to send. */
export interface MirroredRequest {
  method: string;
  /** Path and query as sent upstream (after the route's rewrite). */
  path: string;
  /** Headers as sent upstream, names in lower case (lib/headers.ts `upstreamRequestHeaders`). */
  headers: HeaderPairs;
  /** The whole body, or null for none. */
  body: Uint8Array<ArrayBuffer> | null;
  /** The client's address, for a mirror service whose policy hashes on it. @default "" */
  clientIp?: string;
}

/** A request about to be copied whose body is still to be read: {@linkcode Mirror.tee}. */
export type MirrorHead = Omit<MirroredRequest, "body">;

/** Where copies go: one service. */
export interface MirrorTarget {
  /** Sends one copy, once; resolves to the status, rejects on failure (counted as failed). */
  send(request: MirroredRequest): Promise<number>;
}

/**
 * A count of copies in flight with a ceiling: one per target service, shared by every route
 * that mirrors to it, so the limit holds per target whatever the number of routes.
 */
export class InFlightLimit {
  /** Copies in flight now. */
  inFlight = 0;

  /** At most `max` copies in flight. @default 64 */
  constructor(readonly max: number = DEFAULT_MAX_IN_FLIGHT) {
    if (!Number.isInteger(max) || max < 1) {
      throw new RangeError(`maxInFlight: expected a whole number >= 1, got ${max}`);
    }
  }

  /** Takes a place; false when all are taken. */
  tryAcquire(): boolean {
    if (this.inFlight >= this.max) return false;
    this.inFlight++;
    return true;
  }

  /** Gives back a place taken by {@linkcode tryAcquire}. */
  release(): void {
    this.inFlight--;
  }
}

const DEFAULT_MAX_IN_FLIGHT = 64;

/** Options of a {@linkcode Mirror}. */
export interface MirrorOptions {
  /** Route name sent as `X-Mirrored-From`. @default none: the header is not added */
  route?: string;
  /** Copies in flight at once, when no `limit` is given. @default 64 */
  maxInFlight?: number;
  /** A limit shared with other mirrors to the same service. @default one of this mirror's own */
  limit?: InFlightLimit;
  /** Uniform numbers in [0, 1) that decide which requests are copied. @default Math.random */
  random?: () => number;
  /** Told why a copy failed (its count is in stats either way); must not throw. @default none */
  onFailure?: (error: unknown) => void;
}

/** What a {@linkcode Mirror} did since it was created. */
export interface MirrorStats {
  /** Copies handed to the target. */
  sent: number;
  /** Copies not sent. */
  dropped: {
    /** The target had `maxInFlight` copies in flight. */
    full: number;
    /** The body was larger than `maxBody` (declared, or found while read). */
    tooLarge: number;
    /**
     * A streamed body no attempt read to its end before the request was over (the backend
     * answered before reading it all, every attempt failed, or the client broke off).
     */
    incomplete: number;
  };
  /** Copies that got no answer (refused, reset, timed out, no backend). */
  failed: number;
  /** Answers by status, e.g. `{ "200": 9, "503": 1 }`. */
  statuses: Record<string, number>;
}

/** The header that marks a copy; its value is the route's name. */
export const MIRRORED_FROM_HEADER = "x-mirrored-from";

/** The longest {@linkcode Mirror.close} waits for copies in flight (ms). */
const CLOSE_WAIT_MS = 5_000;

/** Copies a share of one route's requests to one target. */
export class Mirror {
  readonly spec: MirrorSpec;
  readonly #target: MirrorTarget;
  readonly #limit: InFlightLimit;
  readonly #random: () => number;
  readonly #route: string | undefined;
  readonly #onFailure: ((error: unknown) => void) | undefined;
  readonly #inFlight = new Set<Promise<void>>();
  #closed = false;
  #sent = 0;
  #full = 0;
  #tooLarge = 0;
  #incomplete = 0;
  #failed = 0;
  readonly #statuses: Record<string, number> = {};

  constructor(spec: MirrorSpec, target: MirrorTarget, options: MirrorOptions = {}) {
    this.spec = spec;
    this.#target = target;
    this.#limit = options.limit ?? new InFlightLimit(options.maxInFlight);
    this.#random = options.random ?? Math.random;
    this.#route = options.route;
    this.#onFailure = options.onFailure;
  }

  /**
   * Decides (percent) and sends a copy of `request`, whose body is complete, in the
   * background; never throws, never waits.
   */
  copy(request: MirroredRequest): void {
    if (this.#sampled()) this.#send(request);
  }

  /**
   * The proxy's entry point: decides (percent) whether to copy a request whose body is `body`
   * (lib/body.ts), and returns the body its attempts should read instead: `body` itself, unless
   * it streams and is copied. A buffered body (or none) is copied at once. A streamed body is
   * wrapped: the chunks an attempt reads are kept (up to `maxBody`, else dropped as too
   * large), and the first attempt that reads it to its end sends the copy. When `completed`
   * settles (the request is over: `info.completed`) before that, the copy is counted
   * `incomplete` and the kept chunks let go. Never throws.
   */
  tee(head: MirrorHead, body: RequestBody, completed: Promise<unknown>): RequestBody {
    if (!this.#sampled()) return body;
    if (!mayFailWhileSent(body)) {
      // NO_BODY or bytes read whole: forAttempt() only returns them.
      const bytes = body.forAttempt();
      this.#send({
        ...head,
        body: bytes instanceof Uint8Array ? bytes as Uint8Array<ArrayBuffer> : null,
      });
      return body;
    }
    const declared = declaredLength(head.headers);
    if (declared !== undefined && declared > this.spec.maxBody) {
      this.#tooLarge++;
      return body;
    }
    const teed = new TeedBody(body, this.spec.maxBody, (outcome) => {
      if (outcome === "too-large") this.#tooLarge++;
      else if (outcome === "incomplete") this.#incomplete++;
      else this.#send({ ...head, body: outcome });
    });
    const finish = () => teed.finish();
    completed.then(finish, finish);
    return teed;
  }

  /** Counts since creation (a snapshot). */
  stats(): MirrorStats {
    return {
      sent: this.#sent,
      dropped: { full: this.#full, tooLarge: this.#tooLarge, incomplete: this.#incomplete },
      failed: this.#failed,
      statuses: { ...this.#statuses },
    };
  }

  /**
   * Stops copying: later requests are not copied or counted, while one chosen before whose body
   * is still arriving (a reload in the middle of an upload) is copied when it completes. Waits
   * for the copies in flight, at most 5 s (the target's own deadline ends them anyway).
   */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#inFlight.size === 0) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const waited = new Promise<void>((resolve) => timer = setTimeout(resolve, CLOSE_WAIT_MS));
    try {
      await Promise.race([Promise.allSettled(this.#inFlight), waited]);
    } finally {
      clearTimeout(timer);
    }
  }

  #sampled(): boolean {
    const percent = this.spec.percent;
    if (this.#closed || percent <= 0) return false;
    return percent >= 100 || this.#random() * 100 < percent;
  }

  #send(request: MirroredRequest): void {
    if (request.body !== null && request.body.length > this.spec.maxBody) {
      this.#tooLarge++;
      return;
    }
    if (!this.#limit.tryAcquire()) {
      this.#full++;
      return;
    }
    this.#sent++;
    const copy = { ...request, headers: this.#headersOf(request.headers) };
    const done = this.#run(copy).finally(() => {
      this.#limit.release();
      this.#inFlight.delete(done);
    });
    this.#inFlight.add(done);
  }

  async #run(request: MirroredRequest): Promise<void> {
    try {
      const status = await this.#target.send(request);
      this.#statuses[status] = (this.#statuses[status] ?? 0) + 1;
    } catch (error) {
      this.#failed++;
      try {
        this.#onFailure?.(error);
      } catch { /* a hook must not turn a copy's failure into the balancer's */ }
    }
  }

  /** The copy's headers: the upstream ones without Expect and framing, plus X-Mirrored-From. */
  #headersOf(pairs: HeaderPairs): HeaderPairs {
    const out: HeaderPairs = [];
    for (const pair of pairs) {
      const name = pair[0];
      // The body is complete (no 100-continue to wait for); the transport frames it.
      if (name === "expect" || name === "content-length" || name === MIRRORED_FROM_HEADER) {
        continue;
      }
      out.push(pair);
    }
    if (this.#route !== undefined) out.push([MIRRORED_FROM_HEADER, this.#route]);
    return out;
  }
}

/** The Content-Length among upstream header pairs, or undefined. */
function declaredLength(pairs: HeaderPairs): number | undefined {
  for (const [name, value] of pairs) {
    if (name !== "content-length") continue;
    const length = Number(value.split(",")[0].trim());
    return Number.isSafeInteger(length) && length >= 0 ? length : undefined;
  }
  return undefined;
}

/** How a teed body ended for the copy: its bytes, or why there are none. */
type TeeOutcome = Uint8Array<ArrayBuffer> | "too-large" | "incomplete";

/**
 * A streamed {@linkcode RequestBody} that keeps what the current attempt reads, up to `max`
 * bytes, and reports once: the bytes when an attempt has read the body to its end, `too-large`
 * the moment it grows past `max`, or `incomplete` when {@linkcode finish} comes first. Each new
 * attempt reads from the start (lib/body.ts replays), so it keeps from the start too.
 */
class TeedBody implements RequestBody {
  readonly #body: RequestBody;
  readonly #max: number;
  readonly #report: (outcome: TeeOutcome) => void;
  #chunks: Uint8Array[] = [];
  #bytes = 0;
  #attempt = 0;
  #reported = false;

  constructor(body: RequestBody, max: number, report: (outcome: TeeOutcome) => void) {
    this.#body = body;
    this.#max = max;
    this.#report = report;
  }

  get replayable(): boolean {
    return this.#body.replayable;
  }

  get signal(): AbortSignal {
    return this.#body.signal;
  }

  get clientError(): RequestBody["clientError"] {
    return this.#body.clientError;
  }

  forAttempt(): BodyInit | null {
    const inner = this.#body.forAttempt();
    if (this.#reported || !(inner instanceof ReadableStream)) return inner;
    const attempt = ++this.#attempt;
    this.#chunks = [];
    this.#bytes = 0;
    const reader = (inner as ReadableStream<Uint8Array>).getReader();
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        const result = await reader.read();
        const current = attempt === this.#attempt;
        if (result.done) {
          if (current) this.#end();
          controller.close();
          return;
        }
        if (current) this.#keep(result.value);
        controller.enqueue(result.value);
      },
      cancel: (reason) => reader.cancel(reason),
    }, { highWaterMark: 0 });
  }

  discard(): Promise<void> {
    this.finish();
    return this.#body.discard();
  }

  /** The request is over: a copy not sent by now never will be. */
  finish(): void {
    this.#settle("incomplete");
  }

  #keep(chunk: Uint8Array): void {
    if (this.#reported) return;
    this.#bytes += chunk.length;
    if (this.#bytes > this.#max) return this.#settle("too-large");
    this.#chunks.push(chunk);
  }

  #end(): void {
    if (this.#reported) return;
    this.#settle(concatBytes(this.#chunks));
  }

  #settle(outcome: TeeOutcome): void {
    if (this.#reported) return;
    this.#reported = true;
    this.#chunks = [];
    this.#report(outcome);
  }
}

// ---------------------------------------------------------------------------------------------
// A target over a service

/** Options of {@linkcode createServiceMirrorTarget}. */
export interface ServiceMirrorTargetOptions {
  /**
   * The mirror service's pool: each copy goes to the backend its policy picks, and counts as
   * in flight there while it runs (least-conn sees it). Copies never report to health or
   * outlier detection: a shadow is judged by its health checks, not by the copies.
   */
  pool: Pool;
  /** How copies are sent: the service's transport (the native `send`, or `sendAttempt`). */
  transport: Transport;
  /**
   * How copies are sent whose path fetch would rewrite (`/a/../b`), as the proxy's
   * `exactTransport`. @default undefined: `transport` sends them too
   */
  exactTransport?: Transport;
  /** The service's attempt options (client, connectTimeout, readTimeout); `timeout` is replaced. */
  attempt: AttemptOptions;
  /**
   * Longest a copy may take from its start to the end of the answer's body (ms); then it is
   * abandoned (counted failed) and its place freed. @default 10000
   */
  timeout?: number;
  /** Bytes of an answer's body read (and thrown away) before the rest is cancelled. @default 65536 */
  drainLimit?: number;
}

/** Error of a copy that got no answer. */
export class MirrorError extends Error {
  override name = "MirrorError";
}

/**
 * A {@linkcode MirrorTarget} over one service: one attempt on a backend its pool picks,
 * through its transport, under a deadline. The answer's body is read and thrown away up to
 * `drainLimit` (so that a small one leaves the connection reusable), then cancelled.
 */
export function createServiceMirrorTarget(options: ServiceMirrorTargetOptions): MirrorTarget {
  const { pool, transport, exactTransport } = options;
  const timeout = options.timeout ?? 10_000;
  const drainLimit = options.drainLimit ?? 64 * 1024;
  const attempt: AttemptOptions = {
    ...options.attempt,
    timeout,
    connectTimeout: Math.min(options.attempt.connectTimeout, timeout),
  };
  return {
    async send(request) {
      const backend = pool.pick({
        clientIp: request.clientIp ?? "",
        headers: new Headers(request.headers),
        path: request.path,
      });
      if (backend === undefined) throw new MirrorError("no backend available");
      const expired = new AbortController();
      const deadline = afterDelay(timeout, () => expired.abort());
      pool.acquire(backend);
      try {
        const via = exactTransport !== undefined && fetchRewritesTarget(request.path)
          ? exactTransport
          : transport;
        const result = await via(
          backend.url,
          backend.url + request.path,
          {
            method: request.method,
            headers: request.headers,
            body: request.body,
          },
          expired.signal,
          attempt,
        );
        if (!result.ok) {
          const detail = expired.signal.aborted
            ? `no answer within ${timeout}ms`
            : result.failure.detail;
          throw new MirrorError(`${backend.url}: ${detail}`);
        }
        const body = result.value.body;
        if (body instanceof ReadableStream) await drain(body, drainLimit, expired.signal);
        return result.status;
      } finally {
        deadline.cancel();
        pool.release(backend);
      }
    },
  };
}

/** Reads and discards `body` up to `limit` bytes, then cancels what is left; never throws. */
async function drain(
  body: ReadableStream<Uint8Array>,
  limit: number,
  signal: AbortSignal,
): Promise<void> {
  const reader = body.getReader();
  // A pending read settles (done) when the stream is cancelled.
  const stop = () => reader.cancel().catch(() => {});
  signal.addEventListener("abort", stop);
  try {
    let bytes = 0;
    while (!signal.aborted) {
      const result = await reader.read();
      if (result.done) return;
      bytes += result.value.length;
      if (bytes > limit) break;
    }
    await reader.cancel();
  } catch {
    // A body that fails mid-way still got its status counted.
  } finally {
    signal.removeEventListener("abort", stop);
  }
}
