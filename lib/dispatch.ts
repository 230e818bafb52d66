/**
 * @module
 * The front of the request path: read and validate the request, find its route, and answer it
 * with the route's service, a redirect, a fixed response, or a 404. The routing state is read
 * once per request, so a reload never changes the rules under a request in flight.
 */

import type { IncomingRequest } from "./incoming.ts";
import { HttpError, RefusedError } from "./errors.ts";
import { type ClientHeaders, readClientRequest } from "./headers.ts";
import { admits } from "./access_rules.ts";
import type { Cidr } from "./cidr.ts";
import { clientAddress } from "./client_address.ts";
import type { RouteGuards } from "./protection.ts";
import { challenge } from "./basic_auth.ts";
import { encodeResponse } from "./compress.ts";
import {
  balancerAnswer,
  type Handler,
  observable,
  type ProxyObserver,
  rawTarget,
  readRequest,
  type ServiceProxy,
  type Trace,
} from "./proxy.ts";
import { REQUEST_ID_HEADER, requestIdFor } from "./request_id.ts";
import {
  applyResponseHeaderRules,
  type CompiledRoute,
  fixedResponse,
  redirectLocation,
  redirectStatus,
  type RouteTable,
  upstreamPath,
} from "./routes.ts";
import type { Target } from "./target.ts";
import { arrivalTime } from "./admission.ts";

/** The routes and services in force; replaced whole by a reload. */
export interface RoutingState {
  readonly table: RouteTable;
  readonly services: ReadonlyMap<string, { readonly proxy: ServiceProxy }>;
  /** What each route enforces, by route index; undefined: nothing. */
  readonly guards: readonly (RouteGuards | undefined)[];
  /** Peers whose X-Forwarded-For names the client (for access rules and rate limits). */
  readonly trustedProxies: readonly Cidr[];
}

/** What the front needs. */
export interface DispatchOptions {
  /** The routing state now; read once per request. */
  state: () => RoutingState;
  /** Told how each request ended (metrics, access log). @default none */
  observer?: ProxyObserver;
  /** Told of each request a route's protection refused. @default none */
  onRefused?: (route: string, refusal: RefusedError) => void;
}

/** No route matched: the balancer's own 404, with the request id like every answer of its own. */
class NoRouteError extends HttpError {
  constructor() {
    super(404, "no route matches the request");
  }
}

/** Creates the `Deno.serve` handler that routes every request. */
export function createDispatcher(options: DispatchOptions): Handler {
  const { observer } = options;

  /** The answer of `route` to a validated request; `trace` says whether a backend gave it. */
  function answer(
    route: CompiledRoute,
    state: RoutingState,
    req: IncomingRequest,
    info: Deno.ServeHandlerInfo,
    client: ClientHeaders,
    target: Target,
    requestId: string,
    trace: Trace & { fromBackend: boolean },
  ): Promise<Response> | Response {
    const spec = route.spec;
    if (route.action === "service") {
      // Validated at load: every service route names a service of the same state.
      const service = state.services.get(spec.service!)!;
      trace.fromBackend = true;
      return service.proxy.handle(req, info, {
        client,
        target,
        upstreamPath: upstreamPath(route, target.pathAndQuery),
        requestId,
        requestHeaders: spec.requestHeaders,
        mirror: state.guards[route.index]?.mirror,
      }, trace);
    }
    if (route.action === "redirect") {
      return new Response(null, {
        status: redirectStatus(route),
        headers: {
          location: redirectLocation(route, target.host, target.pathAndQuery),
          [REQUEST_ID_HEADER]: requestId,
        },
      });
    }
    const fixed = fixedResponse(route);
    trace.contentLength = new TextEncoder().encode(fixed.body).length;
    return new Response(fixed.body, {
      status: fixed.status,
      headers: { "content-type": fixed.contentType, [REQUEST_ID_HEADER]: requestId },
    });
  }

  return async function dispatch(req, info) {
    const trace = {
      backend: undefined,
      attempts: 0,
      contentLength: undefined,
      outcome: undefined,
      fromBackend: false,
    } as Trace & { fromBackend: boolean };
    const startedAt = arrivalTime(req);
    const state = options.state();
    const client = readClientRequest(req);
    const requestId = requestIdFor(client.requestId);
    const observed = observer === undefined ? undefined : observable(req, info, client);
    let route: CompiledRoute | undefined;
    let path: string | undefined;
    let response: Response;
    try {
      const target = readRequest(req, client);
      path = target.pathAndQuery;
      route = state.table.match(target.host, path, req.method, req);
      if (route === undefined) throw new NoRouteError();
      const guards = state.guards[route.index];
      if (guards !== undefined) await enforce(guards, req, info, client, state.trustedProxies);
      response = await answer(route, state, req, info, client, target, requestId, trace);
    } catch (error) {
      if (error instanceof RefusedError) options.onRefused?.(route!.name, error);
      trace.fromBackend = false;
      response = balancerAnswer(error, requestId, trace);
    }
    const rules = route?.spec.responseHeaders;
    if (rules !== undefined) addResponseHeaders(rules, response);
    // After the header rules: a Cache-Control: no-transform or Vary they set is respected.
    const compress = route === undefined ? undefined : state.guards[route.index]?.compress;
    if (compress !== undefined) {
      response = await encodeResponse(compress, req.method, req.headers, response, req.signal);
    }
    if (observer === undefined) return response;
    observer.outcome(
      observed!.req,
      observed!.info,
      trace.outcome = {
        status: response.status,
        path: path ?? rawTarget(req.url),
        contentLength: trace.contentLength,
        fromBackend: trace.fromBackend,
        backend: trace.backend,
        service: route?.spec.service,
        route: route?.name,
        attempts: trace.attempts,
        startedAt,
        requestId,
      },
    );
    return response;
  };
}

/**
 * Throws a {@linkcode RefusedError} when `guards` refuse the request: access rules first (a
 * refused client spends no tokens), then the rate limit (password guessing is limited before
 * bcrypt runs), then basic auth.
 */
async function enforce(
  guards: RouteGuards,
  req: IncomingRequest,
  info: Deno.ServeHandlerInfo,
  client: ClientHeaders,
  trustedProxies: readonly Cidr[],
): Promise<void> {
  if (guards.access !== undefined || guards.limiter !== undefined) {
    const peer = (info.remoteAddr as Deno.NetAddr).hostname;
    const address = clientAddress(peer, client.forwardedFor, trustedProxies);
    if (guards.access !== undefined && !admits(guards.access, address)) {
      throw new RefusedError(403, "access");
    }
    if (guards.limiter !== undefined) {
      const taken = guards.limiter.take(guards.limiter.keyOf(address, req.headers));
      if (!taken.ok) {
        throw new RefusedError(429, "rate-limit", {
          "retry-after": String(taken.retryAfterSeconds),
        }, taken.log ? address : undefined);
      }
    }
  }
  if (guards.auth !== undefined) {
    const { realm, users, verifier } = guards.auth;
    const outcome = await verifier.verify(users, req.headers.get("authorization"));
    if (outcome === "denied") {
      throw new RefusedError(401, "auth", { "www-authenticate": challenge(realm) });
    }
    // The queue of password checks is shared by every client: not this client's fault (429).
    if (outcome === "busy") throw new RefusedError(503, "auth-busy", { "retry-after": "1" });
  }
}

/** Applies a route's response header rules; a response with immutable headers keeps its own. */
function addResponseHeaders(
  rules: NonNullable<CompiledRoute["spec"]["responseHeaders"]>,
  response: Response,
): void {
  try {
    applyResponseHeaderRules(rules, response.headers);
  } catch {
    // A WebSocket upgrade's 101 comes with headers Deno will not let change.
  }
}
