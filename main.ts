/**
 * @module
 * The load balancer's entry point: command line (and config file) -> running balancer ->
 * signals: SIGINT/SIGTERM drain and exit, SIGHUP (or a change of the config file) reloads;
 * SIGHUP or a change of the TLS certificate or key file reloads the certificate.
 *
 *     deno run --allow-net main.ts -backends=http://localhost:8081,http://localhost:8082 -port=3030
 */

import denoJson from "./deno.json" with { type: "json" };
import { type AdminAddress, type Config, USAGE } from "./lib/config.ts";
import { parseCommandLine, reloadSettings } from "./lib/settings.ts";
import { ConfigError } from "./lib/errors.ts";
import { createLog, type Log, switchableLog } from "./lib/log.ts";
import { type RunningBalancer, startBalancer } from "./lib/balancer.ts";
import type { BackendSpec } from "./lib/pool.ts";
import { startBackend } from "./backend.ts";
import { type FileWatcher, watchFile, watchFiles } from "./lib/file_watch.ts";
import { usersFilesOf } from "./lib/setting_table.ts";
import { acmeEnabled } from "./lib/config_file.ts";
import type { AcmeSetup } from "./lib/acme_setup.ts";
import type { CertifiedKey } from "./lib/tls.ts";
import {
  resolveWorkerCount,
  shareRandomSettings,
  WorkerGroup,
  workerPermissionProblem,
} from "./lib/workers.ts";

const DEMO_BACKENDS = 3;

/** Runs the balancer until SIGINT/SIGTERM; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  let config: Config;
  let configPath: string | undefined;
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
    ({ config, configPath } = invocation);
    // Warnings (a service no route uses) never stop start-up, but are said once.
    for (const warning of invocation.warnings) console.error(`load-balancer: ${warning}`);
    if (invocation.kind === "check") {
      console.log(`load-balancer: ${configPath ?? "command line"}: ok`);
      return 0;
    }
    const cannotStartWorkers = resolveWorkerCount(config.workers) > 1
      ? workerPermissionProblem()
      : undefined;
    if (cannotStartWorkers !== undefined) throw new ConfigError(cannotStartWorkers);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    for (const line of error.message.split("\n")) console.error(`load-balancer: ${line}`);
    return 2;
  }

  const log = switchableLog(createLog(config.logLevel, undefined, config.logFormat));
  /** The settings in force: a reload replaces them. */
  let running = config;
  // A failing backend or a bug in one request must never take the process down.
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    log.error(`Unhandled rejection: ${event.reason?.stack ?? event.reason}`);
  });

  // Signals are taken over before anything listens: a SIGTERM or SIGHUP that arrives while
  // starting must not fall through to the default action, which kills the process.
  let balancer: RunningBalancer | undefined;
  let acme: AcmeSetup | undefined;
  const workerCount = resolveWorkerCount(config.workers);
  const workers = workerCount > 1 ? new WorkerGroup(workerCount - 1, log) : undefined;
  let demoSpecs: BackendSpec[] = [];
  const stopRequested = new Promise<void>((resolve) => {
    for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, resolve);
  });
  /** A change seen while starting: reloaded once the balancer runs. */
  let changedWhileStarting = false;
  /** Set once a stop is requested: from then on nothing reloads. */
  let stopping = false;
  // Watched before anything starts: an edit made while it starts is reloaded once it runs.
  const watcher = configPath === undefined ? undefined : watchFile(configPath, () => reload(), log);
  let usersWatch: { files: string; watcher: FileWatcher } | undefined;
  /** Configs read by reloads not yet applied: their users files are watched too. */
  const inFlight = new Set<Config>();
  /**
   * The users files of basic auth: a change reloads (a removed user loses access at once).
   * Called before the files are read, so that the watch's baseline is never newer than they.
   */
  const watchUsersFiles = () => {
    const files = [...new Set([running, ...inFlight].flatMap(usersFilesOf))];
    const key = files.join("\n");
    if (usersWatch?.files === key) return;
    usersWatch?.watcher.close();
    usersWatch = files.length === 0
      ? undefined
      : { files: key, watcher: watchFiles(files, reload, { log }) };
  };
  const reload = () => {
    if (stopping) return;
    if (balancer === undefined) {
      changedWhileStarting = true;
      return;
    }
    // The watches compare later content with what this reload reads, not with what they last
    // reported: else a file put back after a SIGHUP's edit would go unseen, and that edit rerun.
    watcher?.markLoaded();
    usersWatch?.watcher.markLoaded();
    reloadConfig(args, config.admin, balancer, demoSpecs, log, (next) => {
      if (workers !== undefined) shareRandomSettings(next, running);
      // Not in the flags or file: without them the reload would see TLS "changed".
      acme?.applyTo(next);
      // The balancer reads them while applying `next`: watched from before.
      inFlight.add(next);
      watchUsersFiles();
    }, (next) => {
      if (next.logLevel !== running.logLevel || next.logFormat !== running.logFormat) {
        log.replace(createLog(next.logLevel, undefined, next.logFormat));
      }
      running = next;
    }, (next) => inFlight.delete(next));
  };
  /** Re-reads the TLS files, or serves `pair` (ACME's new certificate) when given. */
  const reloadCertificate = (pair?: CertifiedKey) => {
    if (stopping) return;
    balancer?.reloadCertificate(pair);
    workers?.reloadCertificate(pair);
  };
  Deno.addSignalListener("SIGHUP", () => {
    reload();
    // With ACME the manager swaps certificates in itself: its files may lag what it serves.
    if (acme === undefined) reloadCertificate();
  });

  watchUsersFiles();
  const demo = config.demo ? await startDemoBackends(log) : { servers: [], specs: [] };
  demoSpecs = demo.specs;
  addDemoBackends(config, demo.specs);
  if (workers !== undefined) shareRandomSettings(config);
  try {
    if (acmeEnabled(config)) {
      // Loaded only when on: the ACME library costs memory and reads the whole environment.
      const { setUpAcme } = await import("./lib/acme_setup.ts");
      acme = await setUpAcme(config, configPath, log, (message, expiresAt) => {
        balancer?.certificateAlert(message, expiresAt);
      });
    }
    balancer = await startBalancer(config, log, denoJson.version, {
      ...workers?.extras,
      acme: acme?.extras,
    });
    await workers?.start(config, balancer, denoJson.version).catch(async (error) => {
      await balancer!.shutdown(0);
      throw error;
    });
  } catch (error) {
    watcher?.close();
    usersWatch?.watcher.close();
    // With --log-format json every stderr line must be a JSON object: log shippers parse each.
    if (config.logFormat === "json") log.error((error as Error).message);
    else console.error(`load-balancer: ${(error as Error).message}`);
    return 1;
  }
  if (changedWhileStarting) reload();
  if (acme !== undefined) {
    const { manager } = acme;
    balancer.metrics.registry.gaugeFunc(
      "lb_acme_certificate_expiry_timestamp_seconds",
      "When the ACME certificate being served expires (Unix time).",
      function* () {
        const notAfter = manager.status().notAfter;
        if (notAfter !== undefined) yield { labels: {}, value: notAfter.getTime() / 1000 };
      },
    );
    acme.run(reloadCertificate);
  }
  // With ACME the manager swaps certificates in itself.
  if (acme === undefined && config.tlsCert !== undefined && config.tlsKey !== undefined) {
    watchFiles([config.tlsCert, config.tlsKey], reloadCertificate, { log });
  }

  await stopRequested;
  stopping = true;
  log.info("Shutting down: draining in-flight requests...");
  // The file watchers are left to the process's exit, not closed: Deno.FsWatcher.close() blocks
  // for as long as Deno's watch thread is stuck opening a FIFO made in a watched directory.
  // Not awaited: an order waiting between two polls (acme-client's backoff, which nothing can
  // interrupt) must not hold the drain; the process exits after it whether the order ended.
  acme?.manager.stop().catch(() => {});
  const [left, workersLeft] = await Promise.all([
    balancer.shutdown(running.drainTimeout),
    workers?.shutdown(running.drainTimeout) ?? 0,
  ]);
  if (left + workersLeft > 0) {
    log.warn(`Drain timeout: ${left + workersLeft} request(s) were cut off`);
  }
  await Promise.all(demo.servers.map((server) => server.shutdown()));
  log.info("Load balancer stopped");
  return 0;
}

/**
 * Re-reads flags and config file; applies the backends when everything is valid, and keeps the
 * running configuration (logging why) when anything is not.
 */
function reloadConfig(
  args: string[],
  /** Where the admin listener was bound at start-up: a reload never moves it. */
  boundAdmin: AdminAddress | undefined,
  balancer: RunningBalancer,
  demoSpecs: BackendSpec[],
  log: Log,
  /** Carries over what the running process drew at start-up (`--workers`' sticky key). */
  carryOver: (next: Config) => void,
  /** Told once the main thread has applied `next` (the worker threads follow). */
  onApplied: (next: Config) => void,
  /** Told once `next` is applied (after `onApplied`) or refused. */
  onSettled: (next: Config) => void,
): void {
  let next: Config;
  try {
    next = reloadSettings(args, boundAdmin);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    log.error(
      `Reload failed, keeping the running configuration:\n  ${message.split("\n").join("\n  ")}`,
    );
    return;
  }
  if (next.demo) addDemoBackends(next, demoSpecs);
  carryOver(next);
  balancer.reload(next).then((change) => {
    onApplied(next);
    onSettled(next);
    const services = change.servicesAdded.length + change.servicesRemoved.length === 0
      ? ""
      : `; services ${change.servicesAdded.length} added, ${change.servicesRemoved.length} removed`;
    log.info(
      `Reloaded: ${change.added.length} added, ${change.removed.length} removed, ` +
        `${change.reweighted.length} reweighted${services}`,
    );
    if (change.restartNeeded.length > 0) {
      log.warn(`Reload ignored settings that need a restart: ${change.restartNeeded.join(", ")}`);
    }
  }, (error) => {
    onSettled(next);
    log.error(`Reload failed, keeping the running configuration: ${(error as Error).message}`);
  });
}

/**
 * `--demo`: the demo backends join the configuration. Without services of its own, the demo
 * shows routing: `/api` goes to an `api` service on the last demo backend, the rest to `web`.
 */
function addDemoBackends(config: Config, specs: BackendSpec[]): void {
  const hasOwnRouting = config.services !== undefined || config.routes !== undefined ||
    config.backends.length > 0 || (config.discover ?? []).length > 0;
  if (hasOwnRouting || specs.length < 2) {
    config.backends.push(...specs);
    return;
  }
  config.services = {
    web: { backends: specs.slice(0, -1) },
    api: { backends: specs.slice(-1) },
  };
  config.routes = [
    { name: "api", pathPrefix: "/api", service: "api" },
    { name: "web", service: "web" },
  ];
}

/** `--demo`: three demo backends on ports the OS picks. */
async function startDemoBackends(log: Log) {
  const servers: Deno.HttpServer[] = [];
  const specs: BackendSpec[] = [];
  for (let i = 0; i < DEMO_BACKENDS; i++) {
    const port = await new Promise<number>((resolve) => {
      servers.push(startBackend({ port: 0, onListen: resolve }));
    });
    log.info(`Demo backend started at :${port}`);
    specs.push({ url: `http://127.0.0.1:${port}`, weight: 1 });
  }
  return { servers, specs };
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
