/**
 * @module
 * Errors that know how to answer a client, and the one place that turns them into responses.
 *
 * Bodies are short text and never name a backend: an error page is seen by anyone on the
 * internet, and backend addresses are internal topology.
 */

/** Base error: carries the HTTP status the client should get and optional extra headers. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** 400: the request is malformed in a way the balancer refuses to forward. */
export class BadRequestError extends HttpError {
  constructor(message: string) {
    super(400, message);
  }
}

/**
 * 413: the request body is larger than the balancer accepts (RFC 9110 §15.5.14). It carries
 * no `Connection: close`: Deno.serve keeps serving a connection whatever a handler says
 * (denoland/deno#9411), and RFC 9112 §9.6 forbids reading another request after sending `close`.
 */
export class ContentTooLargeError extends HttpError {
  constructor(limit: number) {
    super(413, `request body larger than ${limit} bytes`);
  }
}

/**
 * 408: the client paused mid-body for longer than the body timeout (RFC 9110 §15.5.9; no
 * `Connection: close`, for the reason given at {@linkcode ContentTooLargeError}).
 */
export class RequestTimeoutError extends HttpError {
  constructor(timeoutMs: number) {
    super(408, `no request body bytes for ${timeoutMs}ms`);
  }
}

/** 503: no backend can take the request right now (all down or excluded). */
export class NoBackendError extends HttpError {
  constructor(retryAfterSeconds: number) {
    super(503, "no backend available", { "retry-after": String(retryAfterSeconds) });
  }
}

/**
 * 499 (nginx's "client closed request"): the client left before an answer; it never sees this
 * status, which the access log and metrics show so the backend is not blamed for it.
 */
export class ClientClosedError extends HttpError {
  constructor() {
    super(499, "the client closed the request");
  }
}

/** 502: every attempt failed before response headers arrived. */
export class BadGatewayError extends HttpError {
  constructor(message = "upstream request failed") {
    super(502, message);
  }
}

/** 504: the backend accepted the request but sent no response headers within the timeout. */
export class GatewayTimeoutError extends HttpError {
  constructor() {
    super(504, "upstream response timed out");
  }
}

/**
 * A backend's response body that broke off after its headers went to the client (cut short, read
 * timeout, bad chunk): the client's connection is aborted and the proxy has logged it already.
 */
export class ResponseBodyError extends Error {
  override name = "ResponseBodyError";
}

/** A route's protection answered the request itself (403, 429, 401); counted by `reason`. */
export class RefusedError extends HttpError {
  constructor(
    status: number,
    readonly reason: "access" | "rate-limit" | "auth" | "auth-busy",
    headers: Record<string, string> = {},
    /** The client to name in the log, when this refusal is worth a line (at most one a second). */
    readonly logAs?: string,
  ) {
    super(status, `refused: ${reason}`, headers);
  }
}

/** A configuration problem: start-up stops with this one-line message and exit code 2. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Reason phrases of the statuses the balancer itself sends (error pages, status lines). */
export const REASONS: Record<number, string> = {
  100: "Continue",
  101: "Switching Protocols",
  200: "OK",
  201: "Created",
  202: "Accepted",
  204: "No Content",
  206: "Partial Content",
  301: "Moved Permanently",
  302: "Found",
  303: "See Other",
  304: "Not Modified",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  413: "Content Too Large",
  417: "Expectation Failed",
  421: "Misdirected Request",
  426: "Upgrade Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  499: "Client Closed Request",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
};

/**
 * The single mapping from errors to responses. Unknown errors become 502: whatever went wrong,
 * it went wrong between us and the backend, and the client must not see internals.
 */
export function errorResponse(error: unknown): Response {
  const status = error instanceof HttpError ? error.status : 502;
  const headers = new Headers(error instanceof HttpError ? error.headers : {});
  headers.set("content-type", "text/plain; charset=utf-8");
  headers.set("cache-control", "no-store");
  return new Response(errorText(error), { status, headers });
}

/** The body of {@linkcode errorResponse}'s answer to `error` (ASCII). */
export function errorText(error: unknown): string {
  const status = error instanceof HttpError ? error.status : 502;
  return `${status} ${REASONS[status] ?? "Error"}\n`;
}
