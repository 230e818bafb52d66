/**
 * @module
 * Experiment (issue 6): the real balancer (same flags as `main.ts`, same `startBalancer`) with
 * its attempts sent through {@linkcode createRawTransport} (Deno.connect, HTTP/1.1 keep-alive)
 * instead of fetch. For the benchmark's `deno-raw` target only; not a supported way to run the
 * balancer (no TLS backends, no reload, no `--demo`).
 *
 *     deno run --allow-net bench/raw_balancer.ts -backends=http://127.0.0.1:8081 -port=3030
 *
 * `--raw-decode=none` (before the balancer's flags) passes gzip/br bodies through undecoded
 * instead of decoding them like fetch; with today's lib/proxy.ts that corrupts them (it drops
 * Content-Encoding, assuming fetch decoded), so it is only for showing that.
 */

import denoJson from "../deno.json" with { type: "json" };
import { USAGE } from "../lib/config.ts";
import { parseCommandLine } from "../lib/settings.ts";
import { ConfigError } from "../lib/errors.ts";
import { createLog } from "../lib/log.ts";
import { startBalancer } from "../lib/balancer.ts";
import { createRawTransport } from "./raw_transport.ts";

/** Runs until SIGINT/SIGTERM; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const decode = argv.includes("--raw-decode=none") ? "none" : "fetch";
  const args = argv.filter((a) => !a.startsWith("--raw-decode="));
  let invocation;
  try {
    invocation = parseCommandLine(args);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    for (const line of error.message.split("\n")) console.error(`raw-balancer: ${line}`);
    return 2;
  }
  if (invocation.kind === "help") {
    console.log(USAGE);
    return 0;
  }
  if (invocation.kind !== "run") {
    console.error(`raw-balancer: only runs the balancer (got ${invocation.kind})`);
    return 2;
  }
  const config = invocation.config;
  if (config.demo) {
    console.error("raw-balancer: --demo is not supported here");
    return 2;
  }
  const log = createLog(config.logLevel, undefined, config.logFormat);
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    log.error(`Unhandled rejection: ${event.reason?.stack ?? event.reason}`);
  });
  const stopRequested = new Promise<void>((resolve) => {
    for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, resolve);
  });
  const transport = createRawTransport({ decode });
  const balancer = await startBalancer(config, log, `${denoJson.version}+raw`, {
    transport: transport.send,
  });
  log.warn(
    `Upstream transport: Deno.connect (bench/raw_transport.ts, experiment, decode ${decode})`,
  );
  await stopRequested;
  log.info("Shutting down: draining in-flight requests...");
  const left = await balancer.shutdown(config.drainTimeout);
  if (left > 0) log.warn(`Drain timeout: ${left} request(s) were cut off`);
  await transport.close();
  log.info("Load balancer stopped");
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
