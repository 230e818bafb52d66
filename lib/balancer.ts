/**
 * @module
 * Wires the modules into a running balancer: pool + policy, health checks, the proxy handler
 * and the listener. `main.ts` adds the command line and signals; tests start it in-process.
 */

import type { Config } from "./config.ts";
import type { Log } from "./log.ts";
import { Pool } from "./pool.ts";
import { createPolicy, latencyObserverOf } from "./policies/mod.ts";
import { generateSecret, StickyCookie } from "./policies/sticky.ts";
import { RetryBudget } from "./retry_budget.ts";
import { HealthChecker } from "./health.ts";
import { createProxyHandler } from "./proxy.ts";

/** A running balancer. */
export interface RunningBalancer {
  /** The port actually bound (useful with port 0). */
  readonly port: number;
  readonly pool: Pool;
  /**
   * Stops accepting and lets in-flight requests finish for up to `drainMs`. Resolves to the
   * number of requests still open at the deadline (0 = clean); those end when the process exits.
   */
  shutdown(drainMs: number): Promise<number>;
}

/** Starts the balancer described by `config` (its `backends` must be final). */
export async function startBalancer(config: Config, log: Log): Promise<RunningBalancer> {
  for (const backend of config.backends) log.info(`Configured server: ${backend.url}`);
  const policy = createPolicy(config.policy, { hash: { key: config.hashKey } });
  const pool = new Pool(config.backends, {
    rise: config.rise,
    fall: config.fall,
    policy,
    onStatusChange: (backend, _from, to, reason) => log.info(`${backend.url} [${to}] (${reason})`),
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
  let sticky: { cookie: StickyCookie; name: string } | undefined;
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
  }, log);
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
  }, log);

  let inflight = 0;
  return await new Promise((resolve, reject) => {
    let server: Deno.HttpServer<Deno.NetAddr>;
    try {
      server = Deno.serve({
        port: config.port,
        hostname: config.host,
        onListen: (addr) => {
          log.info(`Load balancer started at :${addr.port}`);
          health.start();
          resolve({ port: addr.port, pool, shutdown });
        },
        onError: (error) => {
          log.error(`Unhandled error: ${(error as Error)?.stack ?? error}`);
          return new Response("500 Internal Server Error\n", { status: 500 });
        },
      }, async (req, info) => {
        inflight++;
        try {
          return await handler(req, info);
        } finally {
          inflight--;
        }
      });
    } catch (error) {
      reject(error);
      return;
    }

    async function shutdown(drainMs: number): Promise<number> {
      await health.stop();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const deadline = new Promise<"timeout">((r) =>
        timer = setTimeout(() => r("timeout"), drainMs)
      );
      const outcome = await Promise.race([
        server.shutdown().then(() => "drained" as const),
        deadline,
      ]);
      clearTimeout(timer);
      client.close();
      // Past the deadline the listener is already closed; what is still open ends when the
      // caller exits the process (aborting Deno.serve mid-shutdown throws BadResource).
      return outcome === "drained" ? 0 : inflight;
    }
  });
}
