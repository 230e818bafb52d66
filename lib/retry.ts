/**
 * @module
 * Pure retry rules: what kind of failure an attempt had, and whether another backend may be
 * tried. The rule that matters: a retry must never make a request happen twice unless the
 * method says that is harmless (RFC 9110 §9.2.2).
 */

/**
 * How an attempt failed:
 * - `connect`: no connection was made (refused, unreachable, connect timeout): nothing was sent.
 * - `maybe-sent`: the connection broke after the request may have been sent (reset, closed).
 * - `timeout`: the backend took the request but sent no headers within the timeout.
 * - `client-gone`: the client disconnected; not the backend's fault.
 */
export type FailureKind = "connect" | "maybe-sent" | "timeout" | "client-gone";

/** A failed attempt: its kind and a short description for logs (never sent to clients). */
export interface Failure {
  kind: FailureKind;
  detail: string;
  /**
   * A `connect` failure that is a timeout: the backend may be slow or the balancer's own loop
   * busy, so unlike a refused connect it does not mark the backend down at once. @default false
   */
  timedOut?: boolean;
}

const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);

/** Whether repeating `method` has the same effect as sending it once (RFC 9110 §9.2.2). */
export function isIdempotent(method: string): boolean {
  return IDEMPOTENT.has(method);
}

/**
 * Whether a request that failed this way may be sent to another backend.
 * `bodyReplayable` is false once part of a streamed body was consumed by the failed attempt.
 */
export function mayRetry(kind: FailureKind, method: string, bodyReplayable: boolean): boolean {
  if (!bodyReplayable) return false;
  switch (kind) {
    case "connect":
      return true;
    case "maybe-sent":
      return isIdempotent(method);
    case "timeout":
    case "client-gone":
      // A timed-out request may still be running on the backend; repeating it multiplies load
      // exactly when a backend is struggling. A gone client needs no answer.
      return false;
  }
}

/**
 * Classifies an error thrown by `fetch`. Deno reports a refused or failed connect as
 * `TypeError` whose cause mentions `client error (Connect)`: the only proof nothing was sent.
 */
export function classifyFetchError(error: unknown): Failure {
  const cause = (error as { cause?: unknown })?.cause;
  const message = [error, cause]
    .map((e) => (e instanceof Error ? e.message : e === undefined ? "" : String(e)))
    .join(" ");
  if (message.includes("client error (Connect)")) {
    return { kind: "connect", detail: describeConnectError(message) };
  }
  return { kind: "maybe-sent", detail: shorten(message) };
}

function describeConnectError(message: string): string {
  if (message.includes("Connection refused")) return "connection refused";
  return shorten(message.replace(/^.*client error \(Connect\):?\s*/, ""));
}

function shorten(text: string): string {
  const single = text.replace(/\s+/g, " ").trim();
  return single.length > 160 ? `${single.slice(0, 157)}...` : single;
}
