/**
 * @module
 * Webhook alerts for backend state changes. {@linkcode AlertWebhook.notify} only queues: one
 * background sender loop POSTs events in order, retrying failed deliveries with exponential
 * backoff and jitter, so a slow or dead alert receiver can never delay a client request or a
 * health check.
 *
 * The body is one JSON object:
 *
 * ```json
 * {"event":"backend_state_change","backend":"http://10.0.0.1:8080","from":"up","to":"down",
 *  "reason":"3 failed health checks","time":"2026-11-25T13:20:59.000Z"}
 * ```
 *
 * Log lines never contain the webhook URL: services such as Slack put the secret in it.
 */

/** A backend changed status. */
export interface BackendStateEvent {
  /** The backend's URL. */
  backend: string;
  /** The service the backend belongs to. @default omitted from the body */
  service?: string;
  /** Status before, e.g. `up`. */
  from: string;
  /** Status after, e.g. `down`. */
  to: string;
  /** Human-readable cause, e.g. `3 failed health checks`. */
  reason: string;
  /** When the change happened. */
  time: Date;
}

/** Where the webhook reports failures; the project's `Log` fits. */
export interface AlertLog {
  warn(message: string): void;
  info(message: string): void;
}

/** Options for {@linkcode AlertWebhook}. */
export interface AlertWebhookOptions {
  /** Absolute http(s) URL events are POSTed to. */
  url: string;
  /** Receives delivery failures and give-ups. @default nothing is logged */
  log?: AlertLog;
  /** Tries per event, the first included, before giving up on it. @default 5 */
  maxAttempts?: number;
  /** Delay scale of the first retry, in ms; it doubles per retry. @default 500 */
  baseDelayMs?: number;
  /** Longest delay between two tries, in ms. @default 30000 */
  maxDelayMs?: number;
  /** Time limit of one try, from sending to the response headers, in ms. @default 5000 */
  timeoutMs?: number;
  /** Events waiting to be sent beyond which the oldest is dropped. @default 1000 */
  maxQueue?: number;
  /** How long {@linkcode AlertWebhook.close} waits for a try in flight, in ms. @default 1000 */
  closeTimeoutMs?: number;
  /** The fetch to send with; tests inject one. @default globalThis.fetch */
  fetch?: typeof fetch;
  /** Source of jitter, uniform in [0, 1). @default Math.random */
  random?: () => number;
}

/** The exact JSON body sent for `event`. */
export function alertBody(event: BackendStateEvent): string {
  return JSON.stringify({
    event: "backend_state_change",
    backend: event.backend,
    ...(event.service === undefined ? {} : { service: event.service }),
    from: event.from,
    to: event.to,
    reason: event.reason,
    // An invalid Date would make toISOString() throw inside notify(), which must not throw.
    time: Number.isNaN(event.time.getTime()) ? null : event.time.toISOString(),
  });
}

/**
 * Delay before retry number `retry` (1 for the first): "equal jitter", uniform in
 * `[cap/2, cap)` with `cap = min(maxMs, baseMs × 2^(retry-1))`. Half the exponential delay is
 * kept so a receiver that is down is not hammered; the other half is random so many balancers
 * alerting about the same outage do not retry in step.
 */
export function alertBackoff(
  retry: number,
  baseMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const cap = Math.min(maxMs, baseMs * 2 ** (retry - 1));
  return Math.round(cap / 2 + random() * (cap / 2));
}

interface Queued {
  body: string;
  /** `http://a up -> down`, for log lines. */
  summary: string;
}

/** Returns a description of what was wrong with one try, or undefined when it worked. */
type TryResult = string | undefined;

const noop = (_message: string): void => {};

/**
 * Sends backend state changes to a webhook, in order, from one background loop. Create one per
 * process and call {@linkcode AlertWebhook.close} on shutdown.
 */
export class AlertWebhook {
  readonly #url: string;
  readonly #log: AlertLog;
  readonly #maxAttempts: number;
  readonly #baseDelayMs: number;
  readonly #maxDelayMs: number;
  readonly #timeoutMs: number;
  readonly #maxQueue: number;
  readonly #closeTimeoutMs: number;
  readonly #fetch: typeof fetch;
  readonly #random: () => number;
  #queue: Queued[] = [];
  #loop: Promise<void> | undefined;
  #closed = false;
  #dropped = 0;
  /** Set while dropping, so a long outage logs one line, not one per dropped event. */
  #overflowing = false;
  /** Aborts the try in flight (close deadline). */
  #inflight: AbortController | undefined;
  /** Ends the backoff sleep early (close). */
  #wake: (() => void) | undefined;

  /** Validates the options; throws an Error naming a value that is out of range. */
  constructor(options: AlertWebhookOptions) {
    this.#url = checkUrl(options.url);
    this.#maxAttempts = checkInt("maxAttempts", options.maxAttempts ?? 5, 1);
    this.#baseDelayMs = checkInt("baseDelayMs", options.baseDelayMs ?? 500, 0);
    this.#maxDelayMs = checkInt("maxDelayMs", options.maxDelayMs ?? 30_000, this.#baseDelayMs);
    this.#timeoutMs = checkInt("timeoutMs", options.timeoutMs ?? 5_000, 1);
    this.#maxQueue = checkInt("maxQueue", options.maxQueue ?? 1_000, 1);
    this.#closeTimeoutMs = checkInt("closeTimeoutMs", options.closeTimeoutMs ?? 1_000, 0);
    this.#log = options.log ?? { warn: noop, info: noop };
    const send = options.fetch ?? fetch;
    // Called through a closure so a host fetch never sees this class as its `this`.
    this.#fetch = (input, init) => send(input, init);
    this.#random = options.random ?? Math.random;
  }

  /** Events waiting to be sent (not counting one being sent). */
  get pending(): number {
    return this.#queue.length;
  }

  /** Events dropped because the queue was full or the webhook was closed. */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * Queues `event` and returns at once; never waits on the network and never throws. When
   * `maxQueue` events are already waiting, the oldest is dropped: the newest state is the one
   * an operator needs.
   */
  notify(event: BackendStateEvent): void {
    if (this.#closed) {
      this.#dropped++;
      return;
    }
    if (this.#queue.length >= this.#maxQueue) this.#dropOldest();
    this.#queue.push({ body: alertBody(event), summary: summarize(event) });
    this.#loop ??= this.#run();
  }

  /**
   * Queues a certificate alert (an ACME order or renewal failed; `expiresAt` is when the
   * certificate being served runs out), like {@linkcode AlertWebhook.notify}.
   */
  notifyCertificate(message: string, expiresAt: Date | undefined, time = new Date()): void {
    if (this.#closed) {
      this.#dropped++;
      return;
    }
    if (this.#queue.length >= this.#maxQueue) this.#dropOldest();
    const body = JSON.stringify({
      event: "certificate_renewal_failed",
      message,
      expires: expiresAt === undefined ? null : expiresAt.toISOString(),
      time: time.toISOString(),
    });
    this.#queue.push({ body, summary: `certificate alert (${message.slice(0, 80)})` });
    this.#loop ??= this.#run();
  }

  /**
   * Stops sending: a backoff wait ends at once, a try in flight gets `closeTimeoutMs` to finish
   * and is then aborted; queued events are dropped (and logged). Leaves no timers behind.
   */
  async close(): Promise<void> {
    if (this.#closed) return await this.#loop;
    this.#closed = true;
    this.#wake?.();
    const loop = this.#loop;
    if (loop === undefined) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, this.#closeTimeoutMs);
    });
    await Promise.race([loop, deadline]);
    clearTimeout(timer);
    this.#inflight?.abort(new Error("alert webhook closed"));
    await loop;
  }

  #dropOldest(): void {
    const oldest = this.#queue.shift()!;
    this.#dropped++;
    if (!this.#overflowing) {
      this.#log.warn(`alert webhook: queue full (${this.#maxQueue}), dropping ${oldest.summary}`);
    }
    this.#overflowing = true;
  }

  /** The one sender loop: events go out in order, each retried before the next is sent. */
  async #run(): Promise<void> {
    // Start on a later microtask so notify() itself costs only a push, even for the first event.
    await Promise.resolve();
    while (this.#queue.length > 0 && !this.#closed) {
      const next = this.#queue.shift()!;
      this.#overflowing = false;
      await this.#deliver(next);
    }
    if (this.#closed && this.#queue.length > 0) {
      this.#log.warn(`alert webhook: closing with ${this.#queue.length} undelivered alert(s)`);
      this.#dropped += this.#queue.length;
      this.#queue = [];
    }
    this.#loop = undefined;
  }

  async #deliver(item: Queued): Promise<void> {
    for (let attempt = 1;; attempt++) {
      const failure = await this.#try(item.body);
      if (failure === undefined) {
        if (attempt > 1) {
          this.#log.info(`alert webhook: delivered ${item.summary} on try ${attempt}`);
        }
        return;
      }
      const last = attempt >= this.#maxAttempts || this.#closed;
      const delay = last ? 0 : this.#backoff(attempt);
      this.#log.warn(
        `alert webhook: try ${attempt}/${this.#maxAttempts} for ${item.summary} failed: ` +
          `${failure}${last ? "" : `; retrying in ${delay}ms`}`,
      );
      if (!last) await this.#sleep(delay);
      if (last || this.#closed) {
        this.#log.warn(`alert webhook: giving up on ${item.summary} after ${attempt} tries`);
        return;
      }
    }
  }

  /** One POST. Any 2xx is success; other statuses (3xx included) and errors are failures. */
  async #try(body: string): Promise<TryResult> {
    const controller = new AbortController();
    this.#inflight = controller;
    const timer = setTimeout(
      () => controller.abort(new Error(`no response within ${this.#timeoutMs}ms`)),
      this.#timeoutMs,
    );
    try {
      const response = await this.#fetch(this.#url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
        redirect: "manual",
        signal: controller.signal,
      });
      // The body is not needed, and an unread body would hold the connection.
      await response.body?.cancel().catch(() => {});
      return response.ok ? undefined : `HTTP ${response.status}`;
    } catch (error) {
      return describe(controller.signal.aborted ? controller.signal.reason : error);
    } finally {
      clearTimeout(timer);
      this.#inflight = undefined;
    }
  }

  #backoff(attempt: number): number {
    return alertBackoff(attempt, this.#baseDelayMs, this.#maxDelayMs, this.#random);
  }

  /** Waits `ms`, or less if {@linkcode AlertWebhook.close} wakes it. */
  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
    });
  }
}

function summarize(event: BackendStateEvent): string {
  return `${event.backend} ${event.from} -> ${event.to}`;
}

function describe(error: unknown): string {
  const cause = (error as { cause?: unknown })?.cause;
  const text = error instanceof Error ? error.message : String(error);
  return cause instanceof Error ? `${text}: ${cause.message}` : text;
}

function checkUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`alert webhook: url must be an absolute http(s) URL, got "${url}"`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    // Only the scheme is echoed: the rest of a webhook URL is often a secret.
    throw new Error(`alert webhook: url must be http or https, got "${parsed.protocol}"`);
  }
  return parsed.href;
}

function checkInt(name: string, value: number, min: number): number {
  if (!Number.isInteger(value) || value < min) {
    throw new Error(`alert webhook: ${name} must be a whole number >= ${min}, got ${value}`);
  }
  return value;
}
