/**
 * @module
 * The request path, as named steps (the way Go's `ReverseProxy` and Caddy's reverse_proxy read):
 *
 * 1. **read**: {@linkcode readRequest} validates the target and the method.
 * 2. **route**: the front (lib/dispatch.ts; {@linkcode createProxyHandler} without routes) hands
 *    the request to its service's {@linkcode ReverseProxy.handle}.
 * 3. **headers**: {@linkcode ReverseProxy.upstreamHeaders}: hop-by-hop fields dropped,
 *    X-Forwarded-* added, the route's rules applied. A WebSocket upgrade leaves here for
 *    {@linkcode ReverseProxy.upgrade} (lib/websocket.ts), which picks the same way.
 * 4. **pick**: {@linkcode ReverseProxy.pick}: the sticky cookie's backend, else the policy's.
 * 5. **attempt**: {@linkcode ReverseProxy.attempt} sends to that backend through the transport;
 *    {@linkcode ReverseProxy.forward} repeats pick and attempt under the retry rules
 *    (lib/attempt_loop.ts) until a backend answers with headers.
 * 6. **relay**: {@linkcode relay}: the client's response from the backend's, hop-by-hop headers
 *    removed and a decoded body described truthfully.
 */

import type { IncomingRequest } from "./incoming.ts";
import {
  BadGatewayError,
  BadRequestError,
  ClientClosedError,
  errorResponse,
  errorText,
  GatewayTimeoutError,
  HttpError,
  NoBackendError,
} from "./errors.ts";
import {
  appendResponseHeaders,
  type ClientHeaders,
  fetchDecodedBody,
  type HeaderPairs,
  readClientRequest,
  upstreamRequestHeaders,
} from "./headers.ts";
import { applyRequestHeaderRules, type HeaderRules } from "./routes.ts";
import type { Mirror } from "./mirror.ts";
import type { Log } from "./log.ts";
import type { Backend, LatencyObserver, Pool, SelectContext } from "./pool.ts";
import {
  announcesBody,
  type BodyLimits,
  mayFailWhileSent,
  NO_BODY,
  prepareBody,
  type RequestBody,
} from "./body.ts";
import { parseTarget, type Target } from "./target.ts";
import { headerListOf } from "./response_fields.ts";
import { responseOver } from "./response_body.ts";
import {
  afterDelay,
  type AttemptOptions,
  type AttemptResult,
  fetchRewritesTarget,
  sendAttempt,
  type Transport,
  type UpstreamResponse,
} from "./upstream.ts";
import {
  type AttemptLoopOptions,
  type AttemptPlan,
  type LoopResult,
  runAttempts,
} from "./attempt_loop.ts";
import { cookieHeader, getCookie, type StickyCookie } from "./sticky_cookie.ts";
import { backoffDelay, type RetryBudget } from "./retry_budget.ts";
import { type Cidr, cidrContains } from "./cidr.ts";
import { clientAddress } from "./client_address.ts";
import { REQUEST_ID_HEADER, requestIdFor } from "./request_id.ts";
import {
  isWebSocketUpgrade,
  proxyWebSocket,
  type WebSocketProxyOptions,
  WebSocketRelays,
} from "./websocket.ts";

/** How the proxy forwards (durations in ms). */
export interface ProxyOptions {
  /** Extra attempts after the first, each on a backend not yet tried. @default 2 */
  retries: number;
  /** Time to response headers per attempt. @default 30000 */
  timeout: number;
  /** Time to establish a backend connection. @default 3000 */
  connectTimeout: number;
  /** Longest pause between two reads of a response body (native transport). @default 60000 */
  readTimeout?: number;
  /** Seconds a 503 tells clients to wait (Retry-After). @default 1 */
  retryAfterSeconds: number;
  /** Scheme the client used to reach the balancer, sent as X-Forwarded-Proto. @default "http" */
  proto: "http" | "https";
  /** Keep-alive client for backends, created with `allowHost: true`. */
  client: Deno.HttpClient;
  /** The same without reuse, for non-idempotent requests (see `AttemptOptions`). */
  freshClient?: Deno.HttpClient;
  /** Whether a 5xx answer counts as a failure for outlier ejection. @default false */
  ejectOn5xx?: boolean;
  /** Caps retries to a share of traffic; undefined = no cap. @default undefined */
  retryBudget?: RetryBudget;
  /** Told every attempt's latency to headers (p2c-ewma learns from it). @default undefined */
  latencyObserver?: LatencyObserver;
  /** Pins clients to backends with a cookie; undefined = no stickiness. @default undefined */
  sticky?: { cookie: StickyCookie; name: string };
  /** Jittered wait before retry number n (ms). @default backoffDelay (25 ms base, 250 ms cap) */
  backoff?: (retry: number) => number;
  /** Told how each request ended, and about retries (metrics, access log). @default none */
  observer?: ProxyObserver;
  /** Peers whose X-Forwarded-* and Forwarded headers are kept and extended. @default [] */
  trustedProxies?: readonly Cidr[];
  /** Also send an RFC 7239 `Forwarded` header upstream. @default false */
  forwarded?: boolean;
  /** Where open WebSocket relays are registered, for shutdown. @default one of this handler's own */
  webSockets?: WebSocketRelays;
  /** CA certificates (PEM) for WebSocket tunnels to `wss` backends. @default the system's roots */
  caCerts?: string[];
  /** Client certificate WebSocket tunnels present to `wss` backends (mTLS). @default none */
  clientCert?: { cert: string; key: string };
  /** Largest request body (bytes); larger gets 413. @default Infinity */
  maxBody?: number;
  /** Longest wait for a client's next body bytes (ms); longer gets 408. @default Infinity */
  bodyTimeout?: number;
  /** How attempts reach backends. @default sendAttempt (fetch) */
  transport?: Transport;
  /**
   * How attempts reach backends when fetch would rewrite the request target (`/a/../b`,
   * `%2e%2e`, `\`: see `fetchRewritesTarget`), so that the backend gets the path as the client
   * sent it; the native transport when the balancer runs on fetch. @default undefined: such
   * requests take `transport` too, and backends see the path as fetch rewrote it.
   */
  exactTransport?: Transport;
}

/** How one client request ended, as far as the proxy is concerned. */
export interface RequestOutcome {
  /** Status sent to the client (the backend's, or the balancer's own 4xx/5xx). */
  status: number;
  /** Whether the status came from a backend (false: the balancer answered itself). */
  fromBackend: boolean;
  /** The last backend tried, if any. */
  backend: Backend | undefined;
  /** The service the request was routed to; undefined when no service route matched. */
  service: string | undefined;
  /** The name of the route that matched, or undefined when none did. */
  route: string | undefined;
  /** Attempts made (0 when no backend was tried). */
  attempts: number;
  /** `performance.now()` when the request arrived. */
  startedAt: number;
  /** The validated path and query, or the raw target when it was refused. */
  path: string;
  /**
   * The response's Content-Length, when it has one; set to undefined if its body breaks off by
   * the backend's doing after this was told (read it when the response is delivered).
   */
  contentLength: number | undefined;
  /** The X-Request-Id sent upstream and returned to the client. */
  requestId?: string;
}

/** Hooks for whoever measures the proxy; each must be cheap and must not throw. */
export interface ProxyObserver {
  /** Called once per request, when its response headers are ready. */
  outcome(req: IncomingRequest, info: Deno.ServeHandlerInfo, outcome: RequestOutcome): void;
  /** A retry is about to be made. */
  retry(): void;
  /** A retry was refused by the retry budget. */
  budgetExhausted(): void;
}

/** Per-request record of what a service did, read after it returns or throws. */
export interface Trace {
  backend: Backend | undefined;
  attempts: number;
  /** The response's Content-Length, for the outcome; undefined when it has none. */
  contentLength: number | undefined;
  /** The outcome told to the observer, whose length a body breaking off later clears. */
  outcome?: RequestOutcome;
}

/** What the front of the request path read and decided before a service sees the request. */
export interface RoutedRequest {
  /** The client's headers, read once. */
  readonly client: ClientHeaders;
  /** The validated target as the client sent it. */
  readonly target: Target;
  /** Path and query sent to backends: the client's, or as the route rewrote it. */
  readonly upstreamPath: string;
  /** The X-Request-Id sent upstream and returned to the client. */
  readonly requestId: string;
  /** The route's changes to the upstream request's headers. @default none */
  readonly requestHeaders?: HeaderRules;
  /** Where a share of the route's requests is copied. @default none */
  readonly mirror?: Mirror;
}

/** Forwards routed requests to one service's backends. */
export interface ServiceProxy {
  /**
   * Answers `req` from a backend (or a WebSocket relay), filling `trace`. Throws an
   * {@linkcode HttpError} for the balancer's own answers (502, 503, 504, 4xx on the body).
   */
  handle(
    req: IncomingRequest,
    info: Deno.ServeHandlerInfo,
    routed: RoutedRequest,
    trace: Trace,
  ): Promise<Response>;
}

/** A `Deno.serve` handler. */
export type Handler = (req: IncomingRequest, info: Deno.ServeHandlerInfo) => Promise<Response>;

/**
 * Reads and validates what every request needs whatever its route: the target, the method, a
 * body on GET/HEAD, the request id. Throws an {@linkcode HttpError} for a request to refuse.
 */
export function readRequest(
  req: IncomingRequest,
  client: ClientHeaders,
): Target {
  const target = parseTarget(req, client.host);
  const method = req.method;
  refuseUnsendableMethod(method);
  // Deno.serve hands GET/HEAD a null body even when bytes follow (it discards them), and
  // fetch could not send them anyway: refuse rather than drop data silently.
  if (
    (method === "GET" || method === "HEAD") &&
    announcesBody(client.transferEncoding, client.contentLength)
  ) {
    throw new BadRequestError("a GET or HEAD request cannot carry a body");
  }
  return target;
}

/**
 * A handler that sends every request to one pool: the balancer's request path without routes
 * (tests and embedders that wire a pool themselves).
 */
export function createProxyHandler(pool: Pool, options: ProxyOptions, log: Log): Handler {
  const service = createServiceProxy(pool, options, log);
  const observer = options.observer;
  return async function proxyHandler(req, info) {
    const trace: Trace = {
      backend: undefined,
      attempts: 0,
      contentLength: undefined,
      outcome: undefined,
    };
    const startedAt = performance.now();
    const client = readClientRequest(req);
    const requestId = requestIdFor(client.requestId);
    let response: Response;
    let fromBackend = false;
    let path: string | undefined;
    const observed = observer === undefined ? undefined : observable(req, info, client);
    try {
      const target = readRequest(req, client);
      path = target.pathAndQuery;
      response = await service.handle(req, info, {
        client,
        target,
        upstreamPath: path,
        requestId,
      }, trace);
      fromBackend = true;
    } catch (error) {
      response = balancerAnswer(error, requestId, trace);
    }
    if (observer === undefined) return response;
    observer.outcome(
      observed!.req,
      observed!.info,
      trace.outcome = {
        status: response.status,
        path: path ?? rawTarget(req.url),
        contentLength: trace.contentLength,
        fromBackend,
        backend: trace.backend,
        service: "default",
        route: undefined,
        attempts: trace.attempts,
        startedAt,
        requestId,
      },
    );
    return response;
  };
}

/**
 * The request and info the observer may read after the response: the originals, or for a
 * WebSocket upgrade copies taken now (once upgraded, their headers and remoteAddr throw
 * "Request closed").
 */
export function observable(
  req: IncomingRequest,
  info: Deno.ServeHandlerInfo,
  client: ClientHeaders,
): { req: IncomingRequest; info: Deno.ServeHandlerInfo } {
  if (client.upgrade === null || !isWebSocketUpgrade(req)) return { req, info };
  return {
    req: new Request(req.url, { method: req.method, headers: req.headers }),
    info: { remoteAddr: info.remoteAddr, completed: info.completed },
  };
}

/** The balancer's own answer for `error`, with the request id (what users quote in reports). */
export function balancerAnswer(error: unknown, requestId: string, trace: Trace): Response {
  const response = errorResponse(error);
  response.headers.set(REQUEST_ID_HEADER, requestId);
  // The body is short ASCII text ("502 Bad Gateway\n"): its length is its byte count.
  trace.contentLength = errorText(error).length;
  return response;
}

/** Creates the proxy of one service, over its `pool`. */
export function createServiceProxy(pool: Pool, options: ProxyOptions, log: Log): ServiceProxy {
  return new ReverseProxy(pool, options, log);
}

/**
 * One service's proxy: {@linkcode ReverseProxy.handle} runs the steps of the module's list for
 * each request. Built once per service (and per reload), so the fields cost nothing per request.
 */
export class ReverseProxy implements ServiceProxy {
  /** The service's backends: picks, in-flight counts and attempt outcomes go through it. */
  readonly pool: Pool;
  readonly log: Log;
  /** Sends attempts; `sendAttempt` (fetch) when {@linkcode ProxyOptions.transport} is unset. */
  readonly transport: Transport;
  /** Sends attempts whose target fetch would rewrite; undefined: `transport` sends them too. */
  readonly exactTransport: Transport | undefined;
  /** Told of retries and budget refusals (the front tells it outcomes); undefined: not counted. */
  readonly observer: ProxyObserver | undefined;
  /** Told every attempt's latency and failure; undefined: no policy learns from them. */
  readonly latencyObserver: LatencyObserver | undefined;
  /** Pins clients to backends with a cookie; undefined: the policy alone picks. */
  readonly sticky: ProxyOptions["sticky"];
  /** The attempt loop's settings, with the hooks above (one object for every request). */
  readonly loop: AttemptLoopOptions;
  /** Every attempt's client and timeouts. */
  readonly attemptOptions: AttemptOptions;
  /** What WebSocket relays need; their attempts run in the same loop. */
  readonly webSocket: WebSocketProxyOptions;
  /** Largest request body, and longest wait for its next bytes. */
  readonly bodyLimits: BodyLimits;
  /** The scheme clients reached the balancer with (X-Forwarded-Proto, Secure cookies). */
  readonly proto: "http" | "https";
  /** Whether an RFC 7239 `Forwarded` header goes upstream too. */
  readonly forwarded: boolean | undefined;
  /** Peers whose X-Forwarded-* headers are extended rather than replaced. */
  readonly trustedProxies: readonly Cidr[];
  /** What a 503 tells clients to wait. */
  readonly retryAfterSeconds: number;

  constructor(pool: Pool, options: ProxyOptions, log: Log) {
    this.pool = pool;
    this.log = log;
    this.transport = options.transport ?? sendAttempt;
    this.exactTransport = options.exactTransport;
    this.observer = options.observer;
    this.latencyObserver = options.latencyObserver;
    this.sticky = options.sticky;
    this.loop = {
      pool,
      retries: options.retries,
      backoff: options.backoff ?? ((retry: number) => backoffDelay(retry)),
      retryBudget: options.retryBudget,
      latencyObserver: options.latencyObserver,
      ejectOn5xx: options.ejectOn5xx,
      observer: options.observer,
      log,
    };
    this.attemptOptions = {
      client: options.client,
      freshClient: options.freshClient,
      timeout: options.timeout,
      connectTimeout: options.connectTimeout,
      readTimeout: options.readTimeout,
    };
    this.webSocket = {
      relays: options.webSockets ?? new WebSocketRelays(),
      connectTimeout: options.connectTimeout,
      client: options.client,
      caCerts: options.caCerts,
      clientCert: options.clientCert,
      retryAfterSeconds: options.retryAfterSeconds,
      loop: this.loop,
    };
    this.bodyLimits = {
      maxBody: options.maxBody ?? Infinity,
      bodyTimeout: options.bodyTimeout ?? Infinity,
    };
    this.proto = options.proto;
    this.forwarded = options.forwarded;
    this.trustedProxies = options.trustedProxies ?? [];
    this.retryAfterSeconds = options.retryAfterSeconds;
  }

  /** Headers, (upgrade), body, forward (pick + attempt), relay: see the module's list. */
  async handle(
    req: IncomingRequest,
    info: Deno.ServeHandlerInfo,
    routed: RoutedRequest,
    trace: Trace,
  ): Promise<Response> {
    const method = req.method;
    const clientIp = (info.remoteAddr as Deno.NetAddr).hostname;
    const headers = this.upstreamHeaders(routed, clientIp);
    const context = new RequestContext(
      clientIp,
      req,
      routed.upstreamPath,
      routed.client.forwardedFor,
      this.trustedProxies,
    );
    if (routed.client.upgrade !== null && isWebSocketUpgrade(req)) {
      return this.upgrade(req, headers, context, routed.requestId, trace);
    }
    // Most requests have no body: no promise for them.
    let body = req.body === null ? NO_BODY : await prepareBody(req, this.bodyLimits);
    // After the WebSocket branch: upgrades are never copied.
    if (routed.mirror !== undefined) {
      body = routed.mirror.tee(
        { method, path: routed.upstreamPath, headers, clientIp },
        body,
        info.completed,
      );
    }
    const answer = await this.forward(req, info, headers, body, context, trace);
    const setCookie = this.stickyCookieFor(context, answer.backend);
    return relay(answer.value, headers, method, setCookie, routed.requestId, trace);
  }

  /** The fields backends get: the client's end-to-end ones, X-Forwarded-*, the route's rules. */
  upstreamHeaders(routed: RoutedRequest, clientIp: string): HeaderPairs {
    const trusted = this.trustedProxies;
    const headers = upstreamRequestHeaders(routed.client, {
      clientIp,
      proto: this.proto,
      host: routed.target.host,
      trustedPeer: trusted.length > 0 && trusted.some((range) => cidrContains(range, clientIp)),
      forwarded: this.forwarded,
      requestId: routed.requestId,
    });
    return routed.requestHeaders === undefined
      ? headers
      : applyRequestHeaderRules(routed.requestHeaders, headers);
  }

  /** Relays a WebSocket upgrade to a backend picked like any request's; see lib/websocket.ts. */
  async upgrade(
    req: IncomingRequest,
    headers: HeaderPairs,
    context: SelectContext,
    requestId: string,
    trace: Trace,
  ): Promise<Response> {
    const pick = (tried: ReadonlySet<Backend>, attempt: number) =>
      this.pick(context, tried, attempt);
    const response = await proxyWebSocket(
      req,
      new Headers(headers),
      context.path,
      pick,
      trace,
      this.webSocket,
    );
    const setCookie = this.stickyCookieFor(context, trace.backend!);
    if (setCookie !== undefined) response.headers.append("set-cookie", setCookie);
    response.headers.set(REQUEST_ID_HEADER, requestId);
    return response;
  }

  /**
   * Tries backends until one answers with headers: the answer, its backend left in flight until
   * the client has the body. Throws the balancer's own answer (502, 503, 504, or the body's 4xx).
   */
  async forward(
    req: IncomingRequest,
    info: Deno.ServeHandlerInfo,
    headers: HeaderPairs,
    body: RequestBody,
    context: SelectContext,
    trace: Trace,
  ): Promise<Answer> {
    const clientGone = new AbortController();
    // One clock read for the watch and the attempt loop (each read is an op).
    const now = performance.now();
    const watch = afterDelay(CLIENT_WATCH_DELAY_MS, () => watchClient(req, clientGone), now);
    // A client failing to send its body (too large, too slow, malformed) cancels the attempt.
    const signal = mayFailWhileSent(body)
      ? AbortSignal.any([clientGone.signal, body.signal])
      : clientGone.signal;
    const transport = this.transportFor(context.path);
    const plan = new Forwarding(this, req.method, headers, body, context, transport, signal, trace);
    try {
      const result = await runAttempts(plan, this.loop, now);
      if (result.ok) {
        const { pool } = this;
        const { backend } = result;
        // In flight until the body has been delivered, not just the headers: least-conn and
        // max-conns must see streaming responses as load.
        // then(f, f): one promise instead of finally()'s three plus a catch().
        const release = () => pool.release(backend);
        info.completed.then(release, release);
        return result;
      }
      await body.discard();
      if (body.clientError !== undefined) throw body.clientError;
      if (result.failure === undefined) throw new NoBackendError(this.retryAfterSeconds);
      if (result.failure.kind === "client-gone") throw new ClientClosedError();
      if (result.failure.kind === "timeout") throw new GatewayTimeoutError();
      throw new BadGatewayError();
    } finally {
      watch.cancel();
    }
  }

  /**
   * The backend for attempt number `attempt` among those not `tried`, for HTTP and WebSocket
   * requests alike: on the first attempt the sticky cookie's when it is still a candidate,
   * otherwise the policy's. Undefined when none is left.
   */
  pick(context: SelectContext, tried: ReadonlySet<Backend>, attempt: number): Backend | undefined {
    const sticky = this.sticky;
    const pinned = sticky === undefined || attempt > 0
      ? undefined
      : (candidates: readonly Backend[]) =>
        sticky.cookie.decode(getCookie(context.headers, sticky.name), candidates);
    return this.pool.pick(context, tried, pinned);
  }

  /** One attempt of `plan`'s request on `backend`; never throws (see `Transport`). */
  attempt(backend: Backend, plan: Forwarding): Promise<AttemptResult> {
    const method = plan.method;
    return plan.transport(
      backend.url,
      backend.url + plan.context.path,
      {
        method,
        headers: plan.headers,
        body: plan.body.forAttempt(),
        onBodyFailure: (detail) => {
          // The announced length was not delivered: the access log says "-", not a false count.
          const trace = plan.trace;
          trace.contentLength = undefined;
          if (trace.outcome !== undefined) trace.outcome.contentLength = undefined;
          this.bodyFailed(backend, method, detail);
        },
      },
      plan.signal,
      this.attemptOptions,
    );
  }

  /**
   * The transport for `path`: {@linkcode ProxyOptions.exactTransport} when fetch would rewrite
   * it, else {@linkcode ProxyOptions.transport}. An ordinary path costs one regular-expression
   * test; only a suspicious one is parsed.
   */
  transportFor(path: string): Transport {
    const exact = this.exactTransport;
    return exact !== undefined && fetchRewritesTarget(path) ? exact : this.transport;
  }

  /**
   * A response body broke off after its headers by the backend's doing (read timeout, reset,
   * bad framing): the client's connection was aborted, and the backend is blamed.
   */
  bodyFailed(backend: Backend, method: string, detail: string): void {
    this.log.warn(`${backend.url} failed: ${detail} (${method}, response body)`);
    this.pool.attemptFailed(backend, { kind: "maybe-sent", detail });
  }

  /** The Set-Cookie value that (re)pins the client to `backend`, when stickiness is on. */
  stickyCookieFor(context: SelectContext, backend: Backend): string | undefined {
    const sticky = this.sticky;
    if (sticky === undefined) return undefined;
    const value = sticky.cookie.encode(backend);
    if (value === undefined || getCookie(context.headers, sticky.name) === value) return undefined;
    return cookieHeader(sticky.name, value, { secure: this.proto === "https" });
  }
}

/**
 * A request's {@linkcode SelectContext}: its headers are read only when a policy or the sticky
 * cookie asks (the native front end builds them on first use).
 */
class RequestContext implements SelectContext {
  #client: string | undefined;

  constructor(
    readonly peer: string,
    readonly request: IncomingRequest,
    readonly path: string,
    readonly forwardedFor: string | null,
    readonly trusted: readonly Cidr[],
  ) {}

  /**
   * The client as rate limits and access rules see it (X-Forwarded-For walked through the
   * trusted proxies), found only when a policy hashes on it.
   */
  get clientIp(): string {
    return this.#client ??= clientAddress(this.peer, this.forwardedFor, this.trusted);
  }

  get headers(): Headers {
    return this.request.headers;
  }
}

/** What {@linkcode ReverseProxy.forward} ends with when a backend answered. */
type Answer = Extract<LoopResult<UpstreamResponse>, { ok: true }>;

/**
 * One request's plan for the attempt loop (lib/attempt_loop.ts): one object per request, whose
 * methods replace the closures a literal plan would need.
 */
export class Forwarding implements AttemptPlan<UpstreamResponse> {
  readonly label = "";

  constructor(
    readonly proxy: ReverseProxy,
    readonly method: string,
    readonly headers: HeaderPairs,
    readonly body: RequestBody,
    readonly context: SelectContext,
    readonly transport: Transport,
    readonly signal: AbortSignal,
    readonly trace: Trace,
  ) {}

  pick(tried: ReadonlySet<Backend>, attempt: number): Backend | undefined {
    return this.proxy.pick(this.context, tried, attempt);
  }

  send(backend: Backend): Promise<AttemptResult> {
    return this.proxy.attempt(backend, this);
  }

  replayable(): boolean {
    return this.body.replayable;
  }

  clientFailed(): boolean {
    return this.body.clientError !== undefined;
  }
}

/**
 * The client's response from the backend's: same status and body, the backend's end-to-end
 * headers, and the balancer's X-Request-Id (replacing any the backend sent) and Set-Cookie.
 * Built once, with the fields appended (see `appendResponseHeaders`), or pushed to its header list
 * when the transport's parser already checked them.
 */
export function relay(
  upstream: UpstreamResponse,
  requestHeaders: HeaderPairs,
  method: string,
  setCookie: string | undefined,
  requestId: string,
  trace: Trace,
): Response {
  let body = upstream.body;
  if (upstream.status < 200) {
    // fetch surfaces only 101 among 1xx; protocol switching is not relayed (Upgrade was stripped).
    if (body instanceof ReadableStream) body.cancel().catch(() => {});
    throw new BadGatewayError("unexpected 1xx response");
  }
  // Only fetch leaves `decoded` out, and it gives its own Headers.
  const decoded = upstream.decoded ??
    (upstream.headers instanceof Headers && fetchDecodedBody(requestHeaders, upstream.headers));
  if (
    body === null && method === "HEAD" && upstream.status !== 204 && upstream.status !== 304 &&
    (decoded || !hasContentLength(upstream.headers))
  ) {
    // A null body makes Deno.serve write `content-length: 0`, a lie about the GET (chunked, or
    // decoded by fetch); an empty stream makes it send no length at all.
    body = new ReadableStream({ start: (controller) => controller.close() });
  }
  try {
    const response = body instanceof Uint8Array
      ? responseOver(body, upstream.status, upstream.statusText)
      : new Response(body, { status: upstream.status, statusText: upstream.statusText });
    const headers = response.headers;
    // Fields the transport's parser checked skip append's WebIDL conversion and checks.
    const list = upstream.fieldsChecked === true ? headerListOf(response) : undefined;
    const length = appendResponseHeaders(
      upstream.headers,
      headers,
      decoded,
      REQUEST_ID_HEADER,
      list,
    );
    trace.contentLength = length === null ? undefined : Number(length);
    // The id is well formed or a UUID (lib/request_id.ts).
    if (list === undefined) headers.append(REQUEST_ID_HEADER, requestId);
    else list.push([REQUEST_ID_HEADER, requestId]);
    if (setCookie !== undefined) headers.append("set-cookie", setCookie);
    return response;
  } catch (error) {
    // The transports return only what a Response can hold; should one not, the client gets a
    // 502 rather than the balancer's own 500.
    if (body instanceof ReadableStream) body.cancel().catch(() => {});
    throw new BadGatewayError(`unusable response: ${(error as Error).message}`);
  }
}

/** Whether the backend's answer carries a Content-Length field. */
function hasContentLength(headers: HeaderPairs | Headers): boolean {
  if (headers instanceof Headers) return headers.has("content-length");
  for (let i = 0; i < headers.length; i++) {
    if (headers[i][0].length === 14 && headers[i][0].toLowerCase() === "content-length") {
      return true;
    }
  }
  return false;
}

/** Watching for a hang-up costs an op per request: only slow ones get it (earlier hang-ups too). */
const CLIENT_WATCH_DELAY_MS = 100;

/** Aborts `clientGone` when `req`'s client disconnects (at once if it already has). */
function watchClient(req: IncomingRequest, clientGone: AbortController): void {
  const signal = req.signal;
  if (signal.aborted) clientGone.abort();
  else signal.addEventListener("abort", () => clientGone.abort(), { once: true });
}

/** Methods fetch refuses to send (the Fetch standard's forbidden methods), in upper case. */
const FETCH_FORBIDDEN = new Set(["CONNECT", "TRACE", "TRACK"]);
/** Methods fetch upper-cases whatever case they come in (the Fetch standard's normalisation). */
const FETCH_NORMALISED = new Set(["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"]);

/**
 * Answers 501 for a method fetch would not send as given: a forbidden one (fetch throws
 * before sending, which used to count against the backend, so a client could get healthy
 * backends ejected), or a spelling like `get` that fetch would turn into another method
 * (methods are case-sensitive, RFC 9110 §9.1).
 */
function refuseUnsendableMethod(method: string): void {
  // Most requests: no case conversion for them.
  if (method === "GET") return;
  const upper = method.toUpperCase();
  if (FETCH_FORBIDDEN.has(upper) || (upper !== method && FETCH_NORMALISED.has(upper))) {
    throw new HttpError(501, "method cannot be forwarded");
  }
}

/** What follows the scheme and authority of `url`; only for logging refused requests. */
export function rawTarget(url: string): string {
  const start = url.indexOf("/", url.indexOf("://") + 3);
  return start === -1 ? "/" : url.slice(start);
}
