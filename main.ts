/**
 * @module
 * The load balancer's entry point: command line -> config -> running balancer -> signals.
 *
 *     deno run --allow-net main.ts -backends=http://localhost:8081,http://localhost:8082 -port=3030
 */

import denoJson from "./deno.json" with { type: "json" };
import { type Config, parseCommandLine, USAGE } from "./lib/config.ts";
import { ConfigError } from "./lib/errors.ts";
import { createLog, type Log } from "./lib/log.ts";
import { startBalancer } from "./lib/balancer.ts";
import { startBackend } from "./backend.ts";

const DEMO_BACKENDS = 3;

/** Runs the balancer until SIGINT/SIGTERM; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  let config: Config;
  try {
    const invocation = parseCommandLine(args);
    if (invocation.kind === "help") {
      console.log(USAGE);
      return 0;
    }
    if (invocation.kind === "version") {
      console.log(`load-balancer ${denoJson.version}`);
      return 0;
    }
    config = invocation.config;
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`load-balancer: ${error.message}`);
    return 2;
  }

  const log = createLog(config.logLevel);
  // A failing backend or a bug in one request must never take the process down.
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    log.error(`Unhandled rejection: ${event.reason?.stack ?? event.reason}`);
  });

  const demoServers = config.demo ? await startDemoBackends(config, log) : [];
  let balancer;
  try {
    balancer = await startBalancer(config, log);
  } catch (error) {
    console.error(
      `load-balancer: cannot listen on ${config.host}:${config.port}: ${(error as Error).message}`,
    );
    return 1;
  }

  await new Promise<void>((resolve) => {
    for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, resolve);
  });
  log.info("Shutting down: draining in-flight requests...");
  const left = await balancer.shutdown(config.drainTimeout);
  if (left > 0) log.warn(`Drain timeout: ${left} request(s) were cut off`);
  await Promise.all(demoServers.map((server) => server.shutdown()));
  log.info("Load balancer stopped");
  return 0;
}

/** `--demo`: three demo backends on ports the OS picks, added to the configured ones. */
async function startDemoBackends(config: Config, log: Log): Promise<Deno.HttpServer[]> {
  const servers: Deno.HttpServer[] = [];
  for (let i = 0; i < DEMO_BACKENDS; i++) {
    const port = await new Promise<number>((resolve) => {
      servers.push(startBackend({ port: 0, onListen: resolve }));
    });
    log.info(`Demo backend started at :${port}`);
    config.backends.push({ url: `http://127.0.0.1:${port}`, weight: 1 });
  }
  return servers;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
