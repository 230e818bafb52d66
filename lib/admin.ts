/**
 * @module
 * The admin listener's handler: backend status and control (JSON API), Prometheus metrics,
 * liveness/readiness for orchestrators, and the live dashboard page.
 *
 * Reads are GET; every change is POST or DELETE, so a crawler, a prefetch or an <img> tag can
 * never drain a backend. With a token configured, everything but the dashboard page itself and
 * the health probes needs `Authorization: Bearer TOKEN`; the page asks for the token and sends it.
 */

import type { Log } from "./log.ts";
import type { AdminState, Backend, Pool } from "./pool.ts";
import { parseBackend } from "./config.ts";
import { PROMETHEUS_CONTENT_TYPE } from "./metrics.ts";

/** What the admin handler needs. */
export interface AdminOptions {
  pool: Pool;
  /** Name of the balancing policy, shown in the status. */
  policy: string;
  /** Renders Prometheus text. */
  metrics: () => string | Promise<string>;
  /**
   * Adds what other threads know to the backends' views (`--workers`: requests, in-flight and
   * latencies of every worker thread). @default the views as they are
   */
  mergeBackends?: (own: BackendView[]) => Promise<BackendView[]>;
  /** Required bearer token; empty = none. @default "" */
  token: string;
  /** The dashboard page. */
  dashboardHtml: string;
  /** The page's Content-Security-Policy. */
  dashboardCsp: string;
  log: Log;
}

/** A backend as the API shows it. */
export interface BackendView {
  url: string;
  weight: number;
  status: string;
  inflight: number;
  requests: number;
  errors: number;
  latencyMs: { p50: number | null; p90: number | null; p99: number | null };
  lastCheck: { ok: boolean; at: string; detail: string } | null;
}

/** The API's view of one backend. */
export function backendView(backend: Backend): BackendView {
  return {
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

const ACTIONS: Record<string, AdminState> = {
  drain: "draining",
  enable: "enabled",
  disable: "disabled",
};

/** Creates the admin handler. */
export function createAdminHandler(options: AdminOptions) {
  const { pool, log } = options;
  const expected = options.token === "" ? undefined : `bearer ${options.token}`;

  function authorized(req: Request, info: Deno.ServeHandlerInfo, path: string): boolean {
    if (expected === undefined) return true;
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
      return onlyGet(req) ??
        (pool.available.length > 0 ? text("ready\n") : text("no backend available\n", 503));
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
    if (path === "/api/backends") {
      // HEAD wherever GET (RFC 9110 section 9.3.2); Deno.serve leaves the body out.
      if (req.method === "GET" || req.method === "HEAD") return json(await status());
      if (req.method === "POST") return await add(req);
      if (req.method === "DELETE") return remove(url.searchParams.get("url"));
      return methodNotAllowed("GET, HEAD, POST, DELETE");
    }
    const action = /^\/api\/backends\/(drain|enable|disable|weight)$/.exec(path)?.[1];
    if (action !== undefined) {
      if (req.method !== "POST") return methodNotAllowed("POST");
      return await change(action, req);
    }
    return json({ error: "not found" }, 404);
  };

  async function status() {
    const own = pool.backends.map(backendView);
    return {
      time: new Date().toISOString(),
      policy: options.policy,
      backends: options.mergeBackends === undefined ? own : await options.mergeBackends(own),
    };
  }

  async function add(req: Request): Promise<Response> {
    const body = await readJson(req);
    if (body === undefined || typeof body.url !== "string") {
      return json({ error: 'send {"url": "http://host:port", "weight": 1}' }, 400);
    }
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
    const existing = pool.find(spec.url);
    if (existing !== undefined && !existing.removing) {
      return json({ error: `backend ${spec.url} is already in the pool` }, 409);
    }
    const backend = pool.add(spec);
    log.info(`Admin: added backend ${backend.url} (weight ${backend.weight})`);
    return json({ backend: backendView(backend) }, 201);
  }

  function remove(target: string | null): Response {
    const backend = target === null ? undefined : findByUrl(target);
    if (backend === undefined) return json({ error: "no such backend" }, 404);
    pool.remove(backend.url);
    log.info(`Admin: removing backend ${backend.url} (draining ${backend.inflight} in flight)`);
    return json({ backend: backendView(backend) }, 202);
  }

  async function change(action: string, req: Request): Promise<Response> {
    const body = await readJson(req);
    // No URL at all is a malformed request, not a backend that does not exist.
    if (typeof body?.url !== "string") {
      return json({
        error: `send {"url": "http://host:port"${action === "weight" ? ', "weight": 1' : ""}}`,
      }, 400);
    }
    const backend = findByUrl(body.url);
    if (backend === undefined) return json({ error: "no such backend" }, 404);
    if (action === "weight") {
      if (!isWeight(body?.weight)) {
        return json({ error: "weight must be a whole number 0-1000000" }, 400);
      }
      pool.setWeight(backend, body.weight);
      log.info(`Admin: weight of ${backend.url} set to ${body.weight}`);
    } else {
      if (backend.removing) return json({ error: "backend is being removed" }, 409);
      pool.setAdmin(backend, ACTIONS[action], `admin ${action}`);
      log.info(`Admin: ${action} ${backend.url}`);
    }
    return json({ backend: backendView(backend) });
  }

  /** Finds a backend by its URL as given, or as the origin it normalises to. */
  function findByUrl(text: string): Backend | undefined {
    const direct = pool.find(text);
    if (direct !== undefined) return direct;
    try {
      return pool.find(parseBackend(text).url);
    } catch {
      return undefined;
    }
  }
}

function isWeight(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 1_000_000;
}

async function readJson(req: Request): Promise<Record<string, unknown> | undefined> {
  try {
    const value = await req.json();
    return value !== null && typeof value === "object" ? value : undefined;
  } catch {
    return undefined;
  }
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

/** Compares without stopping at the first difference, so timing does not leak the token. */
function constantTimeEqual(a: string, b: string): boolean {
  let difference = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) difference |= (a.charCodeAt(i) || 0) ^ b.charCodeAt(i);
  return difference === 0;
}
