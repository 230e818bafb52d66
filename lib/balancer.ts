/**
 * @module
 * Wires the modules into a running balancer: pool + policy, health checks, the proxy handler,
 * metrics, access log, alerts, the admin listener, and reload. `main.ts` adds the command line
 * and signals; tests start it in-process.
 */

import type { Config } from "./config.ts";
import type { Log } from "./log.ts";
import { type Backend, type BackendSpec, Pool } from "./pool.ts";
import { createPolicy, latencyObserverOf } from "./policies/mod.ts";
import { generateSecret, StickyCookie } from "./policies/sticky.ts";
import { RetryBudget } from "./retry_budget.ts";
import { HealthChecker } from "./health.ts";
import { createProxyHandler, type ProxyObserver } from "./proxy.ts";
import { LoadBalancerMetrics, NO_BACKEND } from "./metrics.ts";
import { type AccessLog, createAccessLog } from "./access_log.ts";
import { AlertWebhook } from "./alerts.ts";
import { createAdminHandler } from "./admin.ts";
import { DASHBOARD_CSP, DASHBOARD_HTML } from "./dashboard.ts";

/** A running balancer. */
export interface RunningBalancer {
  /** The port actually bound (useful with port 0). */
  readonly port: number;
  /** The admin listener's port, when one runs. */
  readonly adminPort: number | undefined;
  readonly pool: Pool;
  readonly metrics: LoadBalancerMetrics;
  /**
   * Applies a new configuration's backends without a restart: unchanged backends keep their
   * state and counters, new ones join, removed ones drain. Returns the settings that differ but
   * need a restart to apply (logged by the caller).
   */
  reload(
    config: Config,
  ): { added: string[]; removed: string[]; reweighted: string[]; restartNeeded: string[] };
  /**
   * Stops accepting and lets in-flight requests finish for up to `drainMs`. Resolves to the
   * number of requests still open at the deadline (0 = clean); those end when the process exits.
   */
  shutdown(drainMs: number): Promise<number>;
}

/** Settings that take effect only at start-up; a reload that changes them says so. */
const RESTART_ONLY: (keyof Config)[] = [
  "port",
  "host",
  "policy",
  "hashKey",
  "stickyCookie",
  "stickySecret",
  "admin",
  "adminToken",
  "accessLog",
  "accessLogFormat",
  "alertWebhook",
  "logFormat",
  "logLevel",
  "healthInterval",
  "healthTimeout",
  "healthPath",
  "rise",
  "fall",
  "retries",
  "connectTimeout",
  "timeout",
  // main.ts reads it once, at start-up; without this a changed value was silently ignored.
  "drainTimeout",
  "slowStart",
  "maxConns",
  "ejectAfter",
  "ejectTime",
  "ejectMaxTime",
  "ejectMaxPercent",
  "ejectOn5xx",
  "panicThreshold",
  "retryBudget",
  "retryBudgetMin",
];

/** Starts the balancer described by `config` (its `backends` must be final). */
export async function startBalancer(
  config: Config,
  log: Log,
  version = "dev",
): Promise<RunningBalancer> {
  for (const backend of config.backends) log.info(`Configured server: ${backend.url}`);
  const policy = createPolicy(config.policy, { hash: { key: config.hashKey } });
  const alerts = config.alertWebhook
    ? new AlertWebhook({ url: config.alertWebhook, log })
    : undefined;
  // deno-lint-ignore prefer-const -- assigned once the pool exists; the gauges read it lazily
  let pool: Pool;
  const metrics = new LoadBalancerMetrics({
    version,
    backends: () =>
      pool.backends.map((b) => ({
        url: b.url,
        status: b.status,
        inflight: b.inflight,
        weight: b.weight,
      })),
  });
  let sticky: { cookie: StickyCookie; name: string } | undefined;
  pool = new Pool(config.backends, {
    rise: config.rise,
    fall: config.fall,
    policy,
    onStatusChange: (backend, from, to, reason) => {
      log.info(`${backend.url} [${to}] (${reason})`);
      metrics.stateTransition(backend.url, from, to);
      alerts?.notify({ backend: backend.url, from, to, reason, time: new Date() });
    },
    onAdd: (backend) => {
      log.info(`Configured server: ${backend.url}`);
      sticky?.cookie.prepare([backend]).catch(() => {});
    },
    slowStartMs: config.slowStart,
    maxConns: config.maxConns === 0 ? Infinity : config.maxConns,
    outlier: config.ejectAfter === 0 ? undefined : {
      consecutiveFailures: config.ejectAfter,
      baseEjectionMs: config.ejectTime,
      maxEjectionMs: config.ejectMaxTime,
      maxEjectedPercent: config.ejectMaxPercent,
    },
    panicThresholdPercent: config.panicThreshold,
  });
  if (config.stickyCookie !== "") {
    const cookie = new StickyCookie(config.stickySecret || generateSecret());
    await cookie.prepare(pool.backends);
    sticky = { cookie, name: config.stickyCookie };
  }
  const client = Deno.createHttpClient({ allowHost: true });
  const health = new HealthChecker(pool, {
    interval: config.healthInterval,
    timeout: config.healthTimeout,
    path: config.healthPath,
    client,
    onResult: (backend, ok) => metrics.healthCheck(backend.url, ok),
  }, log);
  const accessLog = config.accessLog
    ? createAccessLog(config.accessLog, config.accessLogFormat ?? "combined", { log })
    : undefined;
  const handler = createProxyHandler(pool, {
    retries: config.retries,
    timeout: config.timeout,
    connectTimeout: config.connectTimeout,
    retryAfterSeconds: Math.max(1, Math.ceil(config.healthInterval / 1000)),
    proto: "http",
    client,
    ejectOn5xx: config.ejectOn5xx,
    retryBudget: new RetryBudget({
      ratio: config.retryBudget / 100,
      minPerSecond: config.retryBudgetMin,
    }),
    latencyObserver: latencyObserverOf(policy),
    sticky,
    observer: createObserver(metrics, accessLog),
  }, log);

  const server = serve(config.port, config.host, handler, log);
  const admin = config.admin === undefined ? undefined : serve(
    config.admin.port,
    config.admin.host,
    createAdminHandler({
      pool,
      policy: config.policy,
      metrics: () => metrics.render(),
      token: config.adminToken ?? "",
      dashboardHtml: DASHBOARD_HTML,
      dashboardCsp: DASHBOARD_CSP,
      log,
    }),
    log,
  );
  log.info(`Load balancer started at :${server.http.addr.port}`);
  if (admin !== undefined) {
    log.info(`Admin listener started at ${config.admin!.host}:${admin.http.addr.port}`);
  }
  health.start();
  let current = config;

  return {
    port: server.http.addr.port,
    adminPort: admin?.http.addr.port,
    pool,
    metrics,
    reload(next: Config) {
      const change = pool.update(next.backends);
      const restartNeeded = RESTART_ONLY.filter((key) =>
        JSON.stringify(next[key]) !== JSON.stringify(current[key])
      );
      current = { ...next, ...Object.fromEntries(restartNeeded.map((k) => [k, current[k]])) };
      return { ...change, restartNeeded };
    },
    async shutdown(drainMs: number): Promise<number> {
      const deadline = performance.now() + drainMs;
      await health.stop();
      const left = await server.drain(deadline);
      await admin?.drain(performance.now());
      client.close();
      await Promise.all([alerts?.close(), accessLog?.close()]);
      return left;
    },
  };
}

/** A listener that counts its open requests until their responses are fully delivered. */
function serve(
  port: number,
  hostname: string,
  handler: (req: Request, info: Deno.ServeHandlerInfo) => Promise<Response>,
  log: Log,
) {
  let open = 0;
  let http: Deno.HttpServer<Deno.NetAddr>;
  try {
    http = listen();
  } catch (error) {
    throw new Error(`cannot listen on ${hostname}:${port}: ${(error as Error).message}`);
  }
  function listen() {
    return Deno.serve({
      port,
      hostname,
      onListen: () => {},
      onError: (error) => {
        log.error(`Unhandled error: ${(error as Error)?.stack ?? error}`);
        return new Response("500 Internal Server Error\n", { status: 500 });
      },
    }, (req, info) => {
      open++;
      // Counted until the body is delivered: the handler returns at response headers, and a
      // streamed body cut off by shutdown would reach the client truncated.
      info.completed.finally(() => open--).catch(() => {});
      return handler(req, info);
    });
  }
  return {
    http,
    /**
     * Stops accepting and waits for open requests until `deadline` (performance.now() ms).
     * Returns how many were still open then.
     */
    async drain(deadline: number): Promise<number> {
      const shutdown = http.shutdown().catch(() => {});
      for (let i = 0; i < 100_000 && open > 0 && performance.now() < deadline; i++) {
        await new Promise((r) =>
          setTimeout(r, Math.min(20, Math.max(1, deadline - performance.now())))
        );
      }
      // With nothing open, shutdown only has idle connections left to close.
      if (open === 0) await shutdown;
      return open;
    },
  };
}

/** Feeds each request's outcome to the metrics and the access log. */
function createObserver(
  metrics: LoadBalancerMetrics,
  accessLog: AccessLog | undefined,
): ProxyObserver {
  return {
    outcome(req, info, outcome) {
      const seconds = (performance.now() - outcome.startedAt) / 1000;
      const backendUrl = outcome.backend?.url ?? NO_BACKEND;
      metrics.backend(backendUrl).record(
        outcome.fromBackend || outcome.backend === undefined ? outcome.status : undefined,
        seconds,
      );
      if (accessLog === undefined) return;
      // Logged when the body has been delivered, so the duration covers the whole exchange.
      const time = new Date(Date.now() - (performance.now() - outcome.startedAt));
      // Everything read from the request is read now: once the response is delivered, Deno
      // closes the request and `info.remoteAddr` throws "Request closed", which lost every line.
      const clientIp = (info.remoteAddr as Deno.NetAddr).hostname;
      const method = req.method;
      const userAgent = req.headers.get("user-agent") ?? undefined;
      const referer = req.headers.get("referer") ?? undefined;
      const record = () =>
        accessLog.write({
          time,
          clientIp,
          method,
          path: outcome.path,
          protocol: "HTTP/1.1",
          status: outcome.status,
          bytes: outcome.contentLength,
          durationMs: performance.now() - outcome.startedAt,
          backend: outcome.backend?.url,
          attempts: outcome.attempts,
          userAgent,
          referer,
        });
      info.completed.then(record, record);
    },
    retry: () => metrics.retries.inc(),
    budgetExhausted: () => metrics.retryBudgetExhausted.inc(),
  };
}

export type { Backend, BackendSpec };
