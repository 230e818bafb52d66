/**
 * @module
 * The admin listener's handler: services, routes and backend status and control (JSON API),
 * Prometheus metrics, liveness/readiness for orchestrators, and the live dashboard page.
 *
 * Every backend belongs to a service (its own pool and policy), so changes name the service:
 * `"service"` in a POST body, `?service=` on a DELETE. With exactly one service it may be left
 * out, so clients written before services keep working.
 *
 * Reads are GET; every change is POST or DELETE, so a crawler, a prefetch or an <img> tag can
 * never drain a backend. With a token configured, everything but the dashboard page itself and
 * the health probes needs `Authorization: Bearer TOKEN`; the page asks for the token and sends it.
 * docs/admin_api.md is the reference.
 */

import { concatBytes } from "./body.ts";
import { constantTimeEqual } from "./constant_time.ts";
import type { Log } from "./log.ts";
import type { AdminState, Backend, Pool } from "./pool.ts";
import { parseBackend } from "./config.ts";
import { PROMETHEUS_CONTENT_TYPE } from "./metrics.ts";

/** One service as the admin API sees it: a named pool with its balancing policy. */
export interface AdminService {
  readonly name: string;
  /** Name of the balancing policy, shown in the status. */
  readonly policy: string;
  readonly pool: Pool;
}

/** A route as the API shows it (lib/routes.ts `describeRoute`). */
export interface RouteView {
  /** The route's name (the `route` label of `lb_route_requests_total`). */
  name: string;
  /** What it matches, e.g. `host api.example.com, path /v1/*`. */
  match: string;
  /** What it does, e.g. `service api`, `redirect 308 https://...`, `respond 404`. */
  action: string;
}

/** What the admin handler needs. */
export interface AdminOptions {
  /** The services now, in configuration order (read per request: a reload replaces them). */
  services: () => readonly AdminService[];
  /**
   * Whether the shutdown drain has begun: `/readyz` then fails, so that a load balancer in front
   * stops sending connections the main port no longer accepts. @default never
   */
  draining?: () => boolean;
  /** The routes now, in match order, described. */
  routes: () => readonly RouteView[];
  /** Renders Prometheus text. */
  metrics: () => string | Promise<string>;
  /**
   * Adds what other threads know to the backends' views (`--workers`: requests, in-flight and
   * latencies of every worker thread). Must return one view per view given, in the same order.
   * @default the views as they are
   */
  mergeBackends?: (own: BackendView[]) => Promise<BackendView[]>;
  /** Required bearer token; empty = none. A function is read per request (a reload). */
  token: string | (() => string);
  /** The dashboard page. */
  dashboardHtml: string;
  /** The page's Content-Security-Policy. */
  dashboardCsp: string;
  log: Log;
}

/** A backend as the API shows it. */
export interface BackendView {
  /** The service whose pool it is in; one URL may be in several services. */
  service: string;
  url: string;
  weight: number;
  status: string;
  inflight: number;
  requests: number;
  errors: number;
  latencyMs: { p50: number | null; p90: number | null; p99: number | null };
  lastCheck: { ok: boolean; at: string; detail: string } | null;
}

/** The API's view of one backend of `service`. */
export function backendView(backend: Backend, service: string): BackendView {
  return {
    service,
    url: backend.url,
    weight: backend.weight,
    status: backend.status,
    inflight: backend.inflight,
    requests: backend.requests,
    errors: backend.failures + backend.serverErrors,
    latencyMs: backend.latency.percentiles(),
    lastCheck: backend.lastCheck === undefined ? null : {
      ok: backend.lastCheck.ok,
      at: new Date(backend.lastCheck.at).toISOString(),
      detail: backend.lastCheck.detail,
    },
  };
}

/**
 * Largest request body the API reads: its JSON bodies are a few hundred bytes, and a body read
 * whole without a bound lets any client of the listener fill the process's memory.
 */
export const MAX_ADMIN_BODY_BYTES = 64 * 1024;

const ACTIONS: Record<string, AdminState> = {
  drain: "draining",
  enable: "enabled",
  disable: "disabled",
};

/** Where a change request named its service: the body's field or the query parameter. */
type ServiceParameter = '"service"' | "?service=";

/**
 * What `/readyz` answers: ready while at least one service has an available backend (the
 * balancer can serve some of its traffic), naming the services that have none. With no
 * services at all every request is answered by a route itself, so it is ready. Never ready once
 * `draining` (the shutdown drain: the main port accepts nothing new).
 */
export function readiness(
  services: readonly AdminService[],
  draining = false,
): { status: number; body: string } {
  if (draining) return { status: 503, body: "draining\n" };
  const empty = services.filter((s) => s.pool.available.length === 0).map((s) => s.name);
  // One service keeps the body it had before services existed.
  const named = services.length === 1 ? "" : `: ${empty.join(", ")}`;
  if (empty.length === 0) return { status: 200, body: "ready\n" };
  if (empty.length === services.length) {
    return { status: 503, body: `no backend available${named}\n` };
  }
  return { status: 200, body: `ready\nno backend available${named}\n` };
}

/** Creates the admin handler. */
export function createAdminHandler(options: AdminOptions) {
  const { log } = options;
  const token = options.token;
  const tokenNow = typeof token === "string" ? () => token : token;

  function authorized(req: Request, info: Deno.ServeHandlerInfo, path: string): boolean {
    const current = tokenNow();
    if (current === "") return true;
    const expected = `bearer ${current}`;
    const given = req.headers.get("authorization") ?? "";
    // The scheme is case-insensitive (RFC 9110 section 11.1): clients may send `bearer`.
    const normalized = given.replace(/^bearer /i, "bearer ");
    if (constantTimeEqual(normalized, expected)) return true;
    const peer = (info.remoteAddr as Deno.NetAddr).hostname;
    log.warn(
      `Admin: rejected ${req.method} ${path} from ${peer} (${given === "" ? "no" : "wrong"} token)`,
    );
    return false;
  }

  return async function adminHandler(req: Request, info: Deno.ServeHandlerInfo) {
    let url: URL;
    try {
      url = new URL(req.url);
    } catch {
      // req.url is built from the client's Host; `Host: x:99999` makes it unparsable.
      return json({ error: "bad request" }, 400);
    }
    const path = url.pathname;
    if (path === "/healthz") return onlyGet(req) ?? text("ok\n");
    if (path === "/readyz") {
      const { status, body } = readiness(options.services(), options.draining?.() ?? false);
      return onlyGet(req) ?? text(body, status);
    }
    if (path === "/" || path === "/index.html") {
      return onlyGet(req) ?? new Response(options.dashboardHtml, {
        headers: {
          "content-type": "text/html; charset=utf-8",
          "cache-control": "no-store",
          // The page's own policy (script and style pinned by hash), and no framing.
          "content-security-policy": `${options.dashboardCsp}; frame-ancestors 'none'`,
        },
      });
    }
    if (!authorized(req, info, path)) {
      return json({ error: "unauthorized" }, 401, { "www-authenticate": 'Bearer realm="admin"' });
    }
    if (path === "/metrics") {
      return onlyGet(req) ??
        new Response(await options.metrics(), {
          headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
        });
    }
    if (path === "/api/services") return onlyGet(req) ?? json(await servicesStatus());
    if (path === "/api/backends") {
      // HEAD wherever GET (RFC 9110 section 9.3.2); Deno.serve leaves the body out.
      if (req.method === "GET" || req.method === "HEAD") {
        return await backendsStatus(url.searchParams.get("service"));
      }
      if (req.method === "POST") return await add(req);
      if (req.method === "DELETE") return await remove(url.searchParams);
      return methodNotAllowed("GET, HEAD, POST, DELETE");
    }
    const action = /^\/api\/backends\/(drain|enable|disable|weight)$/.exec(path)?.[1];
    if (action !== undefined) {
      if (req.method !== "POST") return methodNotAllowed("POST");
      return await change(action, req);
    }
    return json({ error: "not found" }, 404);
  };

  /**
   * Every backend of `services` as views, merged with the other threads' figures, and how many
   * each service has (counted before the merge awaits: the pools may change meanwhile).
   */
  async function viewsOf(
    services: readonly AdminService[],
  ): Promise<{ views: BackendView[]; counts: number[] }> {
    const perService = services.map((s) => s.pool.backends.map((b) => backendView(b, s.name)));
    const own = perService.flat();
    const views = options.mergeBackends === undefined ? own : await options.mergeBackends(own);
    return { views, counts: perService.map((list) => list.length) };
  }

  /** `backend`'s view with the other threads' figures, as `/api/backends` gives it. */
  async function mergedView(backend: Backend, service: string): Promise<BackendView> {
    const own = [backendView(backend, service)];
    return options.mergeBackends === undefined ? own[0] : (await options.mergeBackends(own))[0];
  }

  async function servicesStatus() {
    const services = options.services();
    const { views, counts } = await viewsOf(services);
    let next = 0;
    return {
      time: new Date().toISOString(),
      services: services.map((service, i) => {
        const backends = views.slice(next, next += counts[i]);
        return {
          name: service.name,
          policy: service.policy,
          available: service.pool.available.length,
          backends,
        };
      }),
      routes: options.routes(),
    };
  }

  async function backendsStatus(only: string | null): Promise<Response> {
    let services = options.services();
    if (only !== null) {
      const found = services.find((s) => s.name === only);
      if (found === undefined) return unknownService(only, services);
      services = [found];
    }
    const { views: backends } = await viewsOf(services);
    // `policy` only where it is one fact: old clients read it, and several services have several.
    const policy = services.length === 1 ? { policy: services[0].policy } : {};
    return json({ time: new Date().toISOString(), ...policy, backends });
  }

  /**
   * The service a change request names, or the answer when it names none or an unknown one.
   * With exactly one service, naming none means that one.
   */
  function serviceFor(name: unknown, where: ServiceParameter): AdminService | Response {
    const services = options.services();
    if (name === undefined || name === null) {
      if (services.length === 1) return services[0];
      if (services.length === 0) return json({ error: "no service is configured" }, 404);
      return json({ error: `name the service with ${where}: one of ${listOf(services)}` }, 400);
    }
    if (typeof name !== "string") {
      return json({ error: `${where} must be a service name: one of ${listOf(services)}` }, 400);
    }
    return services.find((s) => s.name === name) ?? unknownService(name, services);
  }

  /** The body a change request should send, with `service` when there are several. */
  function shape(fields: string): string {
    const service = options.services().length > 1 ? '"service": "name", ' : "";
    return `send {${service}${fields}}`;
  }

  async function add(req: Request): Promise<Response> {
    const body = await readJson(req);
    if (body instanceof Response) return body;
    if (body === undefined || typeof body.url !== "string") {
      return json({ error: shape('"url": "http://host:port", "weight": 1') }, 400);
    }
    const service = serviceFor(body.service, '"service"');
    if (service instanceof Response) return service;
    let spec;
    try {
      spec = parseBackend(body.url);
    } catch (error) {
      return json({ error: (error as Error).message.replace(/^--backends: /, "") }, 400);
    }
    if (body.weight !== undefined) {
      if (!isWeight(body.weight)) {
        return json({ error: "weight must be a whole number 0-1000000" }, 400);
      }
      spec.weight = body.weight;
    }
    const { pool, name } = service;
    const existing = pool.find(spec.url);
    if (existing !== undefined && !existing.removing) {
      return json({ error: `backend ${spec.url} is already in the pool of ${name}` }, 409);
    }
    // Still draining after a removal: revived with its in-flight requests, not created anew.
    const revived = existing !== undefined;
    const backend = pool.add(spec);
    const kept = revived ? `; was draining, ${backend.inflight} in flight kept` : "";
    log.info(`Admin: added backend ${backend.url} to ${name} (weight ${backend.weight}${kept})`);
    return json({ backend: await mergedView(backend, name) }, revived ? 200 : 201);
  }

  async function remove(query: URLSearchParams): Promise<Response> {
    const target = query.get("url");
    if (target === null) return json({ error: "no such backend" }, 404);
    const service = serviceFor(query.get("service"), "?service=");
    if (service instanceof Response) return service;
    const backend = findByUrl(service.pool, target);
    if (backend === undefined) return noSuchBackend(service);
    service.pool.remove(backend.url);
    log.info(
      `Admin: removing backend ${backend.url} from ${service.name} ` +
        `(draining ${backend.inflight} in flight)`,
    );
    return json({ backend: await mergedView(backend, service.name) }, 202);
  }

  async function change(action: string, req: Request): Promise<Response> {
    const body = await readJson(req);
    if (body instanceof Response) return body;
    // No URL at all is a malformed request, not a backend that does not exist.
    if (typeof body?.url !== "string") {
      const weight = action === "weight" ? ', "weight": 1' : "";
      return json({ error: shape(`"url": "http://host:port"${weight}`) }, 400);
    }
    const service = serviceFor(body.service, '"service"');
    if (service instanceof Response) return service;
    const { pool, name } = service;
    const backend = findByUrl(pool, body.url);
    if (backend === undefined) return noSuchBackend(service);
    if (action === "weight") {
      if (!isWeight(body?.weight)) {
        return json({ error: "weight must be a whole number 0-1000000" }, 400);
      }
      pool.setWeight(backend, body.weight);
      log.info(`Admin: weight of ${backend.url} in ${name} set to ${body.weight}`);
    } else {
      if (backend.removing) return json({ error: "backend is being removed" }, 409);
      pool.setAdmin(backend, ACTIONS[action], `admin ${action}`);
      log.info(`Admin: ${action} ${backend.url} in ${name}`);
    }
    return json({ backend: await mergedView(backend, name) });
  }
}

/** Finds a backend by its URL as given, or as the origin it normalises to. */
function findByUrl(pool: Pool, text: string): Backend | undefined {
  const direct = pool.find(text);
  if (direct !== undefined) return direct;
  try {
    return pool.find(parseBackend(text).url);
  } catch {
    return undefined;
  }
}

function listOf(services: readonly AdminService[]): string {
  return services.map((s) => s.name).join(", ");
}

function unknownService(name: string, services: readonly AdminService[]): Response {
  const known = services.length === 0 ? "none is configured" : `services: ${listOf(services)}`;
  return json({ error: `no such service ${JSON.stringify(name)} (${known})` }, 404);
}

function noSuchBackend(service: AdminService): Response {
  return json({ error: `no such backend in ${service.name}` }, 404);
}

function isWeight(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 1_000_000;
}

/**
 * The body as a JSON object; undefined when it is not one; a 413 answer when it is larger than
 * {@linkcode MAX_ADMIN_BODY_BYTES} (said by Content-Length before reading, or counted while
 * reading a body without one).
 */
async function readJson(req: Request): Promise<Record<string, unknown> | Response | undefined> {
  const declared = Number(req.headers.get("content-length") ?? 0);
  if (declared > MAX_ADMIN_BODY_BYTES) {
    await req.body?.cancel();
    return bodyTooLarge();
  }
  try {
    const bytes = await readAtMost(req.body, MAX_ADMIN_BODY_BYTES);
    if (bytes === undefined) return bodyTooLarge();
    const value = JSON.parse(new TextDecoder().decode(bytes));
    return value !== null && typeof value === "object" ? value : undefined;
  } catch {
    return undefined; // not JSON, or the client broke the body off
  }
}

/** The stream's bytes, or undefined (the rest left unread) as soon as more than `limit` came. */
async function readAtMost(
  body: ReadableStream<Uint8Array> | null,
  limit: number,
): Promise<Uint8Array | undefined> {
  if (body === null) return new Uint8Array();
  const chunks: Uint8Array[] = [];
  let length = 0;
  const reader = body.getReader();
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
    length += chunk.value.length;
    if (length > limit) {
      await reader.cancel();
      return undefined;
    }
    chunks.push(chunk.value);
  }
  return concatBytes(chunks);
}

/** 413, closing the connection: the rest of the body is never read (RFC 9110 section 15.5.14). */
function bodyTooLarge(): Response {
  const error = `request body larger than ${MAX_ADMIN_BODY_BYTES} bytes`;
  return json({ error }, 413, { connection: "close" });
}

function onlyGet(req: Request): Response | undefined {
  return req.method === "GET" || req.method === "HEAD" ? undefined : methodNotAllowed("GET, HEAD");
}

function methodNotAllowed(allow: string): Response {
  return json({ error: "method not allowed" }, 405, { allow });
}

function json(value: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(value, null, 2) + "\n", {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store", ...headers },
  });
}

function text(body: string, status = 200): Response {
  return new Response(body, { status, headers: { "content-type": "text/plain; charset=utf-8" } });
}
