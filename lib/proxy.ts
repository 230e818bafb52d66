/**
 * @module
 * The request path: validate the target, build upstream headers, then try backends chosen by
 * the pool until one answers with headers or the retry rules say stop. The response streams
 * back with hop-by-hop headers removed and decoded bodies described truthfully.
 */

import {
  BadGatewayError,
  BadRequestError,
  errorResponse,
  GatewayTimeoutError,
  NoBackendError,
} from "./errors.ts";
import { downstreamResponseHeaders, fetchDecodedBody, upstreamRequestHeaders } from "./headers.ts";
import type { Log } from "./log.ts";
import type { Backend, Pool, SelectContext } from "./pool.ts";
import { type Failure, mayRetry } from "./retry.ts";
import { prepareBody, type RequestBody } from "./body.ts";
import { parseTarget, type Target } from "./target.ts";
import { sendAttempt } from "./upstream.ts";

/** How the proxy forwards (durations in ms). */
export interface ProxyOptions {
  /** Extra attempts after the first, each on a backend not yet tried. @default 2 */
  retries: number;
  /** Time to response headers per attempt. @default 30000 */
  timeout: number;
  /** Time to establish a backend connection. @default 3000 */
  connectTimeout: number;
  /** Seconds a 503 tells clients to wait (Retry-After). @default 1 */
  retryAfterSeconds: number;
  /** Scheme the client used to reach the balancer, sent as X-Forwarded-Proto. @default "http" */
  proto: "http" | "https";
  /** Keep-alive client for backends, created with `allowHost: true`. */
  client: Deno.HttpClient;
}

/** A `Deno.serve` handler. */
export type Handler = (req: Request, info: Deno.ServeHandlerInfo) => Promise<Response>;

/** Creates the proxy handler over `pool`. */
export function createProxyHandler(pool: Pool, options: ProxyOptions, log: Log): Handler {
  const attemptOptions = {
    client: options.client,
    timeout: options.timeout,
    connectTimeout: options.connectTimeout,
  };

  async function forward(
    req: Request,
    target: Target,
    headers: Headers,
    body: RequestBody,
    context: SelectContext,
  ): Promise<Response> {
    const tried = new Set<Backend>();
    let failure: Failure | undefined;
    for (let attempt = 0; attempt <= options.retries; attempt++) {
      const backend = pool.pick(context, tried);
      if (backend === undefined) break;
      tried.add(backend);
      if (log.debugEnabled) log.debug(`Selected backend: ${backend.url}`);
      backend.requests++;
      backend.inflight++;
      const result = await sendAttempt(
        backend.url,
        backend.url + target.pathAndQuery,
        { method: req.method, headers, body: body.forAttempt() },
        req.signal,
        attemptOptions,
      );
      backend.inflight--;
      if (result.ok) return relay(result.response, headers);
      failure = result.failure;
      if (failure.kind === "client-gone") break;
      backend.failures++;
      if (failure.kind === "connect") pool.reportConnectFailure(backend, failure.detail);
      const retrying = attempt < options.retries &&
        mayRetry(failure.kind, req.method, body.replayable);
      log.warn(
        `${backend.url} failed: ${failure.detail} (${req.method}, attempt ${attempt + 1}` +
          `${retrying ? ", retrying" : ""})`,
      );
      if (!retrying) break;
    }
    await body.discard();
    if (failure === undefined) throw new NoBackendError(options.retryAfterSeconds);
    if (failure.kind === "timeout") throw new GatewayTimeoutError();
    throw new BadGatewayError();
  }

  return async function proxyHandler(req, info) {
    try {
      const target = parseTarget(req);
      const clientIp = (info.remoteAddr as Deno.NetAddr).hostname;
      const headers = upstreamRequestHeaders(req.headers, {
        clientIp,
        proto: options.proto,
        host: target.host,
      });
      if (req.method === "GET" || req.method === "HEAD") {
        // fetch cannot send a body with these methods; say so rather than drop it silently.
        if (req.body !== null) {
          throw new BadRequestError("a GET or HEAD request cannot carry a body");
        }
      }
      const body = await prepareBody(req);
      return await forward(req, target, headers, body, { clientIp, request: req });
    } catch (error) {
      return errorResponse(error);
    }
  };
}

/** Turns the backend's response into the client's: same status and body, cleaned headers. */
function relay(upstream: Response, requestHeaders: Headers): Response {
  if (upstream.status < 200) {
    // fetch surfaces only 101 among 1xx; protocol switching is not relayed (Upgrade was stripped).
    upstream.body?.cancel();
    throw new BadGatewayError("unexpected 1xx response");
  }
  const decoded = fetchDecodedBody(requestHeaders, upstream.headers);
  return new Response(upstream.body, {
    status: upstream.status,
    statusText: upstream.statusText,
    headers: downstreamResponseHeaders(upstream.headers, decoded),
  });
}
