/**
 * @module
 * The admin handler on its own, for the admin and dashboard tests: real services (a Pool each,
 * over real backends on 127.0.0.1 port 0), the metrics wired as the balancer wires them, health
 * checks when asked, and `createAdminHandler` served by `Deno.serve` on port 0. A request "sent
 * through a route" picks a backend from the service's pool and fetches it, with the pool's and
 * the metrics' bookkeeping, so the API and the dashboard see real traffic without the proxy.
 *
 * It imports nothing from lib/balancer.ts, so these tests do not depend on its wiring.
 */
import {
  type AdminOptions,
  type AdminService,
  createAdminHandler,
  type RouteView,
} from "../lib/admin.ts";
import { HealthChecker } from "../lib/health.ts";
import { captureLog } from "./helpers.ts";
import { LoadBalancerMetrics, NO_BACKEND, NO_ROUTE } from "../lib/metrics.ts";
import { createPolicy, type PolicyName } from "../lib/policies/mod.ts";
import { Pool } from "../lib/pool.ts";
import { DASHBOARD_CSP, DASHBOARD_HTML } from "../lib/dashboard.ts";

/** A backend started by a test; disposing (or `close`) shuts it down. */
export interface HarnessBackend extends AsyncDisposable {
  url: string;
  /** Requests it received (health checks included). */
  readonly count: { requests: number };
  close(): Promise<void>;
}

/** Starts a backend on 127.0.0.1 port 0 answering with `handler`. */
export function startBackend(
  handler: (req: Request) => Response | Promise<Response> = () => new Response("ok"),
): HarnessBackend {
  const count = { requests: 0 };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    count.requests++;
    return handler(req);
  });
  let closed: Promise<void> | undefined;
  const close = () => closed ??= server.shutdown();
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    count,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** One service of the harness. */
export interface ServiceSpec {
  name: string;
  backends: string[];
  /** @default "round-robin" */
  policy?: PolicyName;
}

/** What {@linkcode startAdmin} takes. */
export interface HarnessOptions {
  services: ServiceSpec[];
  /** @default [] */
  routes?: RouteView[];
  /** @default "" */
  token?: string;
  /** Run health checks every this many ms (fall 1, rise 1); 0 runs none. @default 0 */
  healthIntervalMs?: number;
}

/** A running admin listener over real services. */
export interface AdminHarness extends AsyncDisposable {
  /** `http://127.0.0.1:PORT` of the admin listener. */
  readonly url: string;
  readonly port: number;
  readonly metrics: LoadBalancerMetrics;
  readonly log: ReturnType<typeof captureLog>;
  /** The services the handler reads; replace entries to act as a reload. */
  services: AdminService[];
  /** The routes the handler reads. */
  routes: RouteView[];
  /** The service named `name`; throws when there is none. */
  service(name: string): AdminService;
  /** Builds a service (pool, listeners, metrics) without adding it to `services`. */
  createService(spec: ServiceSpec): AdminService;
  /**
   * One client request matched by route `route`: to `service` through its pool, or answered by
   * the route itself with `status` when `service` is undefined. Returns the status sent.
   */
  send(route: string, service: string | undefined, path?: string, status?: number): Promise<number>;
  /** One request that no route matched (404). */
  unmatched(): void;
}

/** Starts the admin handler over `options.services`, as the balancer wires it. */
export function startAdmin(options: HarnessOptions): AdminHarness {
  const log = captureLog();
  const checkers: HealthChecker[] = [];
  const interval = options.healthIntervalMs ?? 0;
  const metrics = new LoadBalancerMetrics({
    version: "test",
    backends: () =>
      harness.services.flatMap((s) =>
        s.pool.backends.map((b) => ({
          service: s.name,
          url: b.url,
          status: b.status,
          inflight: b.inflight,
          weight: b.weight,
        }))
      ),
  });

  function createService(spec: ServiceSpec): AdminService {
    const policy = spec.policy ?? "round-robin";
    const pool = new Pool(spec.backends.map((url) => ({ url, weight: 1 })), {
      rise: 1,
      fall: 1,
      policy: createPolicy(policy),
      onStatusChange: (backend, from, to) =>
        metrics.stateTransition(spec.name, backend.url, from, to),
    });
    if (interval > 0) {
      const checker = new HealthChecker(pool, {
        interval,
        timeout: 1000,
        path: "/",
        onResult: (backend, ok) => metrics.healthCheck(spec.name, backend.url, ok),
      }, log);
      checker.start();
      checkers.push(checker);
    }
    return { name: spec.name, policy, pool };
  }

  const services = options.services.map(createService);
  const harnessOptions: AdminOptions = {
    services: () => harness.services,
    routes: () => harness.routes,
    metrics: () => metrics.render(),
    token: options.token ?? "",
    dashboardHtml: DASHBOARD_HTML,
    dashboardCsp: DASHBOARD_CSP,
    log,
  };
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    createAdminHandler(harnessOptions),
  );

  async function send(route: string, name: string | undefined, path = "/", status = 200) {
    const started = performance.now();
    const routeMetrics = metrics.route(route);
    if (name === undefined) {
      routeMetrics.record(status);
      return status;
    }
    const { pool } = harness.service(name);
    const backend = pool.pick({ clientIp: "127.0.0.1", headers: new Headers(), path });
    const seconds = () => (performance.now() - started) / 1000;
    if (backend === undefined) {
      metrics.backend(name, NO_BACKEND).record(503, seconds());
      routeMetrics.record(503);
      return 503;
    }
    pool.acquire(backend);
    let answered: number | undefined;
    try {
      const response = await fetch(`${backend.url}${path}`);
      await response.body?.cancel();
      answered = response.status;
      pool.attemptAnswered(backend, answered, performance.now() - started, false);
    } catch (error) {
      pool.attemptFailed(backend, { kind: "connect", detail: String(error) });
    } finally {
      pool.release(backend);
    }
    metrics.backend(name, backend.url).record(answered, seconds());
    routeMetrics.record(answered ?? 502);
    return answered ?? 502;
  }

  const harness: AdminHarness = {
    url: `http://127.0.0.1:${server.addr.port}`,
    port: server.addr.port,
    metrics,
    log,
    services,
    routes: options.routes ?? [],
    service(name) {
      const found = harness.services.find((s) => s.name === name);
      if (found === undefined) throw new Error(`no service ${name}`);
      return found;
    },
    createService,
    send,
    unmatched: () => metrics.route(NO_ROUTE).record(404),
    async [Symbol.asyncDispose]() {
      await Promise.all(checkers.map((c) => c.stop()));
      await server.shutdown();
    },
  };
  return harness;
}
