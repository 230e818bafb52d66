/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * @module
 * A worker thread of `--workers N`: a balancer that serves traffic on the main thread's port
 * (SO_REUSEPORT: the kernel spreads new connections over the threads' listeners) and mirrors
 * the main thread's backend list, health verdicts and admin switches (lib/workers.ts). Its own
 * passive signals stay local (outlier ejection), except a refused connection, which it reports
 * so that the main thread marks the backend down for every thread.
 */

import { type RunningBalancer, startBalancer } from "./balancer.ts";
import { createLog, type Log } from "./log.ts";
import type { Backend, BackendStatus, HealthState } from "./pool.ts";
import type { FromWorker, SyncedBackend, ToWorker } from "./worker_protocol.ts";
import type { Config } from "./config.ts";

let balancer: RunningBalancer | undefined;
let log: Log | undefined;
/** True while the main thread's verdicts are applied: those changes are not this thread's news. */
let applying = false;
/** Set while a reload from the main thread applies. */
let reloading = false;
/** What the main thread said last, per URL: only its changes are applied (see `apply`). */
let lastSynced = new Map<string, SyncedBackend>();
/** The newest list that arrived while the balancer was starting or reloading, applied after. */
let syncedWhileStarting: SyncedBackend[] | undefined;

function post(message: FromWorker): void {
  self.postMessage(message);
}

self.addEventListener("unhandledrejection", (event) => {
  // As on the main thread: one request's failure must never end the thread.
  event.preventDefault();
  log?.error(`Unhandled rejection: ${event.reason?.stack ?? event.reason}`);
});

self.onmessage = async (event: MessageEvent<ToWorker>) => {
  const message = event.data;
  switch (message.type) {
    case "start":
      await start(message);
      return;
    case "sync":
      if (balancer === undefined || reloading) syncedWhileStarting = message.backends;
      else apply(message.backends);
      return;
    case "stats":
      if (balancer !== undefined) post(stats(balancer, message.id));
      return;
    case "reload":
      if (balancer === undefined) return;
      // Lists that come while the reload applies are for the new routes: applied after it.
      reloading = true;
      syncedWhileStarting = message.backends;
      try {
        fillBackends(message.config, message.backends);
        replaceTables(message.rateLimitTables);
        await balancer.reload(message.config);
      } catch (error) {
        log?.error(`Reload failed: ${(error as Error).message}`);
      } finally {
        reloading = false;
        apply(syncedWhileStarting ?? message.backends);
        syncedWhileStarting = undefined;
      }
      return;
    case "reloadCertificate":
      balancer?.reloadCertificate(message.pair);
      return;
    case "shutdown": {
      const left = balancer === undefined ? 0 : await balancer.shutdown(message.drainMs);
      post({ type: "stopped", left });
      return;
    }
  }
};

async function start(message: Extract<ToWorker, { type: "start" }>): Promise<void> {
  const { config, index } = message;
  log = prefixed(createLog(config.logLevel, undefined, config.logFormat), `[worker ${index}] `);
  fillBackends(config, message.backends);
  try {
    replaceTables(message.rateLimitTables);
    balancer = await startBalancer(config, log, message.version, {
      reusePort: true,
      rateLimitTables,
      worker: { onStatusChange, onHealthChange },
    });
  } catch (error) {
    post({ type: "failed", message: (error as Error).message });
    return;
  }
  // Before any request can be handled (requests are later tasks): down backends stay unused.
  // Starting may have awaited (the sticky cookie's keys): a newer list may have come meanwhile.
  apply(message.backends);
  if (syncedWhileStarting !== undefined) apply(syncedWhileStarting);
  syncedWhileStarting = undefined;
  post({ type: "listening" });
}

/**
 * Makes the pool match the main thread's list. Health and admin state are applied when the main
 * thread's value changed since its last message, not whenever they differ: a backend this
 * thread just found refusing connections stays down until the main thread has heard of it and
 * later says it is up again, instead of flapping back up with a message sent meanwhile.
 */
function apply(backends: SyncedBackend[]): void {
  if (balancer === undefined) return;
  applying = true;
  try {
    for (const { name, pool } of balancer.services.values()) {
      const mine = backends.filter((synced) => synced.service === name);
      pool.update(mine.map(({ url, weight }) => ({ url, weight })));
      for (const synced of mine) {
        const backend = pool.find(synced.url);
        if (backend === undefined || backend.removing) continue;
        const last = lastSynced.get(syncKey(synced));
        if (last?.admin !== synced.admin && backend.admin !== synced.admin) {
          pool.setAdmin(backend, synced.admin, "main thread");
        }
        if (last?.state !== synced.state) pool.setHealth(backend, synced.state, "main thread");
      }
    }
    lastSynced = new Map(backends.map((synced) => [syncKey(synced), synced]));
  } finally {
    applying = false;
  }
}

/** The main thread's rate limit tables, read by this thread's balancer at each (re)load. */
const rateLimitTables: Record<string, SharedArrayBuffer> = {};

function replaceTables(tables: Record<string, SharedArrayBuffer>): void {
  for (const name of Object.keys(rateLimitTables)) delete rateLimitTables[name];
  Object.assign(rateLimitTables, tables);
}

/** What identifies a synced backend: the same URL may serve two services. */
function syncKey(synced: SyncedBackend): string {
  return `${synced.service} ${synced.url}`;
}

/** Gives each service of a worker's `config` its backends from the main thread's list. */
function fillBackends(config: Config, backends: readonly SyncedBackend[]): void {
  for (const [name, service] of Object.entries(config.services ?? {})) {
    service.backends = backends
      .filter((synced) => synced.service === name)
      .map(({ url, weight }) => ({ url, weight }));
  }
}

/**
 * This thread's own health verdicts: only a refused connection (no health checks run here) makes
 * one, and it goes to the main thread, which decides for every thread. Told also while the
 * backend is draining or disabled, when its status does not change.
 */
function onHealthChange(service: string) {
  return (backend: Backend, to: HealthState, reason: string) => {
    if (applying || to !== "down") return;
    const why = reason.replace(/^connection failed: /, "");
    post({ type: "down", service, url: backend.url, reason: why });
  };
}

/** This thread's own status changes in `service`: its ejections are logged and counted here. */
function onStatusChange(service: string) {
  return (backend: Backend, from: BackendStatus, to: BackendStatus, reason: string) => {
    if (applying) return;
    if (to === "ejected" || from === "ejected") {
      log?.info(`${backend.url} [${to}] (${reason})`);
      balancer?.metrics.stateTransition(service, backend.url, from, to);
    }
  };
}

function stats(running: RunningBalancer, id: number): FromWorker {
  return {
    type: "stats",
    id,
    metrics: running.metrics.render(),
    backends: [...running.services.values()].flatMap(({ name, pool }) =>
      pool.backends.map((backend) => ({
        service: name,
        url: backend.url,
        inflight: backend.inflight,
        requests: backend.requests,
        errors: backend.failures + backend.serverErrors,
        latencies: backend.latency.samples(),
      }))
    ),
  };
}

/** `log` with `prefix` before every message, so a line tells which thread wrote it. */
function prefixed(base: Log, prefix: string): Log {
  const wrap = (write: (m: string) => void) => (message: string) => write(prefix + message);
  return {
    debug: base.debugEnabled ? wrap(base.debug) : base.debug,
    info: wrap(base.info),
    warn: wrap(base.warn),
    error: wrap(base.error),
    debugEnabled: base.debugEnabled,
  };
}

// Messages that arrive before the module has been evaluated are lost (Deno dispatches them to
// a scope with no handler yet): the main thread waits for this before sending "start".
post({ type: "loaded" });
