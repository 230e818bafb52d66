/**
 * @module
 * `--workers N`: the main thread's balancer plus N-1 worker threads (lib/worker_thread.ts), all
 * listening on one port with SO_REUSEPORT, so the kernel spreads connections over N event
 * loops on N cores.
 *
 * Threads rather than processes: each Deno worker is an OS thread with its own V8 isolate and
 * event loop, which is what uses a core, and it inherits the process's permissions, so neither
 * `--allow-run` nor re-reading the command line is needed, a compiled binary works unchanged,
 * and signals, logs and the PID stay those of one process (HAProxy moved from processes to
 * threads for the same coherence). The cost: a fatal V8 error in one thread ends the process.
 *
 * The main thread owns the backend list (config reloads, admin API, DNS discovery), the health
 * checks and alerts; it sends the list with each backend's verdicts to the workers whenever it
 * changes, so a backend down for one thread is down for all. A worker that finds a backend
 * refusing connections reports it, and the main thread marks it down for everyone.
 */

import type { Config } from "./config.ts";
import type { BackendView } from "./admin.ts";
import type { BalancerExtras, RunningBalancer } from "./balancer.ts";
import type { Log } from "./log.ts";
import type { CertifiedKey } from "./tls.ts";
import { percentilesOf } from "./stats.ts";
import { effectiveRoutes, serviceConfigs } from "./setting_table.ts";
import {
  type BackendCounters,
  countersOnly,
  type FromWorker,
  mergeExpositions,
  type SyncedBackend,
  type ToWorker,
} from "./worker_protocol.ts";

/** How often the main thread compares its backend list with what it last sent (ms). */
const SYNC_CHECK_MS = 100;
/** How long the admin API waits for a worker's figures before showing the others (ms). */
const STATS_TIMEOUT_MS = 2000;
/** How long a worker may take to start listening (ms). */
const START_TIMEOUT_MS = 30_000;
/** Wait before a crashed worker thread is replaced (ms), so a crash loop cannot spin. */
const RESPAWN_DELAY_MS = 1000;

export { resolveWorkerCount } from "./setting_values.ts";

/**
 * Settings that must be equal in every thread but would otherwise be drawn at random in each:
 * the sticky cookie's signing key (a cookie set by one thread must be honoured by all). On a
 * reload, pass the `running` settings: the key drawn at start-up stays (a new one would be a
 * restart-only change, and would unpin every client).
 */
export function shareRandomSettings(config: Config, running?: Config): void {
  if (config.stickySecret) return;
  // Stickiness may be on for the top level or for any service without a secret of its own.
  const drawsKey = [...serviceConfigs(config).values()].some((service) =>
    service.stickyCookie !== "" && service.stickySecret === ""
  );
  if (!drawsKey) return;
  if (running?.stickySecret) {
    config.stickySecret = running.stickySecret;
    return;
  }
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  config.stickySecret = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The module every worker thread runs. */
export const WORKER_MODULE = new URL("./worker_thread.ts", import.meta.url);

/**
 * Why worker threads cannot start in this process, if they cannot: Deno checks read access to
 * a worker's module and every local module it imports when it loads them (`deno run
 * --allow-net` alone is not enough), and the worker's modules are all in lib/.
 */
export function workerPermissionProblem(moduleUrl: URL = WORKER_MODULE): string | undefined {
  if (moduleUrl.protocol !== "file:") return undefined;
  const dir = decodeURIComponent(new URL(".", moduleUrl).pathname).replace(/\/$/, "");
  if (Deno.permissions.querySync({ name: "read", path: dir }).state === "granted") return undefined;
  return `--workers: starting worker threads needs read access to ${dir} ` +
    `(run with --allow-read or --allow-read=${dir})`;
}

/** One worker thread as the main thread tracks it. */
interface WorkerHandle {
  index: number;
  worker: Worker;
  /** Answers to stats requests, by request id. */
  pending: Map<number, (answer: Extract<FromWorker, { type: "stats" }>) => void>;
  /** Settles when the thread reports its drain result. */
  stopped?: (left: number) => void;
  /** Sends the start message once the thread can receive it. */
  loaded?: () => void;
  /** Settles when the thread listens, or failed to. */
  started?: (failure: string | undefined) => void;
  /** Whether its module has been evaluated: before, messages to it are lost. */
  evaluated: boolean;
  /** Whether it listens: only then does it answer requests for its figures. */
  listening: boolean;
  /** The metrics it reported last, carried when it does not answer (or is gone). */
  lastMetrics?: string;
  /** Its backend figures reported last, carried the same way. */
  lastBackends?: BackendCounters[];
  /** Which settings it was given (see `WorkerGroup.#configVersion`). */
  configVersion: number;
}

/** The worker threads of one balancer, driven from the main thread. */
export class WorkerGroup {
  readonly #count: number;
  readonly #log: Log;
  readonly #moduleUrl: URL;
  #handles: WorkerHandle[] = [];
  #balancer: RunningBalancer | undefined;
  #workerConfig: Config | undefined;
  #version = "dev";
  #lastSent = "";
  #syncTimer: ReturnType<typeof setInterval> | undefined;
  #syncQueued = false;
  #nextStatsId = 1;
  #stopping = false;
  /** Set while the main thread applies a reload (see `#sync`). */
  #reloading = false;
  /** Bumped by every reload: which settings `#workerConfig` holds. */
  #configVersion = 0;
  /** Counters of threads that were replaced, so that merged counters never go backwards. */
  #retiredCounters = "";
  /** Request and error counts of replaced threads, by {@linkcode backendKey}. */
  readonly #retiredBackends = new Map<string, { requests: number; errors: number }>();
  readonly #respawns = new Set<ReturnType<typeof setTimeout>>();

  /**
   * @param count Worker threads besides the main thread.
   * @param moduleUrl The worker's module (tests substitute one). @default lib/worker_thread.ts
   */
  constructor(count: number, log: Log, moduleUrl = WORKER_MODULE) {
    this.#count = count;
    this.#log = log;
    this.#moduleUrl = moduleUrl;
  }

  /** What the main thread's `startBalancer` needs so that the workers stay coherent with it. */
  get extras(): BalancerExtras {
    return {
      reusePort: true,
      group: {
        statusChanged: () => this.#queueSync(),
        reloadStarted: () => {
          this.#reloading = true;
        },
        reloaded: (config) => {
          this.#reloading = false;
          if (config === undefined) this.#queueSync();
          else this.#reload(config);
        },
        mergeMetrics: (own) => this.#mergeMetrics(own),
        mergeBackends: (own) => this.#mergeBackends(own),
      },
    };
  }

  /**
   * Starts the worker threads on `balancer`'s port and waits until all listen. Throws (after
   * stopping those that started) when one cannot start.
   */
  async start(config: Config, balancer: RunningBalancer, version: string): Promise<void> {
    this.#balancer = balancer;
    this.#version = version;
    // Workers serve traffic only: the main thread keeps admin, alerts, discovery and the
    // redirect listener, and tells them the backends.
    this.#workerConfig = workerConfigOf(config, balancer.port);
    const failures = await Promise.all(
      Array.from({ length: this.#count }, (_, i) => this.#spawn(i + 1)),
    );
    const failure = failures.find((f) => f !== undefined);
    if (failure !== undefined) {
      await this.shutdown(0);
      throw new Error(`a worker thread could not start: ${failure}`);
    }
    const timer = setInterval(() => this.#sync(), SYNC_CHECK_MS);
    Deno.unrefTimer(timer);
    this.#syncTimer = timer;
    this.#log.info(
      `Started ${this.#count + 1} workers (the main thread and ${this.#count} worker ` +
        `thread${this.#count === 1 ? "" : "s"}) sharing :${balancer.port}`,
    );
  }

  /**
   * Tells every worker to re-read the TLS certificate files, or to serve `pair` when given (the
   * main thread does its own).
   */
  reloadCertificate(pair?: CertifiedKey): void {
    for (const handle of this.#handles) this.#post(handle, { type: "reloadCertificate", pair });
  }

  /**
   * Drains every worker for up to `drainMs` and ends the threads. Resolves to the number of
   * requests the workers still had open at the deadline.
   */
  async shutdown(drainMs: number): Promise<number> {
    this.#stopping = true;
    clearInterval(this.#syncTimer);
    for (const timer of this.#respawns) clearTimeout(timer);
    const lefts = await Promise.all(this.#handles.map((handle) =>
      new Promise<number>((resolve) => {
        // One still loading would lose the message (see "loaded"): it serves nothing yet.
        if (!handle.evaluated) return resolve(0);
        // A thread that does not answer is ended at the deadline all the same.
        const timer = setTimeout(() => resolve(0), drainMs + 2000);
        handle.stopped = (left) => {
          clearTimeout(timer);
          resolve(left);
        };
        this.#post(handle, { type: "shutdown", drainMs });
      })
    ));
    for (const handle of this.#handles) handle.worker.terminate();
    this.#handles = [];
    return lefts.reduce((a, b) => a + b, 0);
  }

  #spawn(index: number): Promise<string | undefined> {
    const worker = new Worker(this.#moduleUrl, { type: "module", name: `worker ${index}` });
    const handle: WorkerHandle = {
      index,
      worker,
      pending: new Map(),
      evaluated: false,
      listening: false,
      configVersion: this.#configVersion,
    };
    this.#handles.push(handle);
    worker.onmessage = (event: MessageEvent<FromWorker>) => this.#receive(handle, event.data);
    worker.onerror = (event) => {
      // Handled here, or the error would end the whole process.
      event.preventDefault();
      this.#log.error(`Worker thread ${index} failed: ${event.message}`);
      this.#replace(handle);
    };
    const started = new Promise<string | undefined>((resolve) => {
      const timer = setTimeout(() => resolve("did not start listening in time"), START_TIMEOUT_MS);
      handle.started = (failure) => {
        clearTimeout(timer);
        handle.started = undefined;
        resolve(failure);
      };
    });
    handle.loaded = () => {
      handle.evaluated = true;
      // Shutting down meanwhile (a respawn that finished loading late): it must not start.
      if (this.#stopping) return handle.started?.("shutting down");
      this.#post(handle, {
        type: "start",
        index,
        config: this.#workerConfig!,
        version: this.#version,
        backends: this.#snapshot(),
        rateLimitTables: this.#balancer!.rateLimitTables(),
      });
    };
    return started;
  }

  /** Ends a failed thread and, unless shutting down, starts another in its place. */
  #replace(handle: WorkerHandle): void {
    handle.worker.terminate();
    this.#handles = this.#handles.filter((h) => h !== handle);
    if (handle.lastMetrics !== undefined) {
      this.#retiredCounters = mergeExpositions([
        this.#retiredCounters,
        countersOnly(handle.lastMetrics),
      ]);
    }
    // Its request and error counts stay in the backend views, as in /metrics: never backwards.
    for (const counters of handle.lastBackends ?? []) {
      const id = backendKey(counters.service, counters.url);
      const kept = this.#retiredBackends.get(id) ?? { requests: 0, errors: 0 };
      kept.requests += counters.requests;
      kept.errors += counters.errors;
      this.#retiredBackends.set(id, kept);
    }
    handle.started?.(`worker thread ${handle.index} failed`);
    handle.stopped?.(0);
    if (this.#stopping) return;
    const timer = setTimeout(async () => {
      this.#respawns.delete(timer);
      if (this.#stopping) return;
      const failure = await this.#spawn(handle.index);
      if (failure === undefined) {
        this.#log.info(`Worker thread ${handle.index} restarted`);
        return;
      }
      if (this.#stopping) return;
      // Not listening: end it and try again, rather than run a thread short without a word.
      this.#log.error(`Worker thread ${handle.index} could not restart: ${failure}`);
      const stuck = this.#handles.find((h) => h.index === handle.index && !h.listening);
      if (stuck !== undefined) this.#replace(stuck);
    }, RESPAWN_DELAY_MS);
    this.#respawns.add(timer);
  }

  #receive(handle: WorkerHandle, message: FromWorker): void {
    switch (message.type) {
      case "loaded":
        handle.loaded?.();
        return;
      case "listening":
        handle.listening = true;
        // Started with settings a reload has since replaced: it gets the new ones.
        if (handle.configVersion !== this.#configVersion) {
          this.#sendReload(handle, this.#snapshot());
          handle.started?.(undefined);
          return;
        }
        // The list as it is now: changes made while the thread started may have reached it
        // before it could apply them, and #sync sends only changes.
        this.#post(handle, { type: "sync", backends: this.#snapshot() });
        handle.started?.(undefined);
        return;
      case "failed":
        handle.started?.(message.message);
        return;
      case "down": {
        const pool = this.#balancer?.services.get(message.service)?.pool;
        const backend = pool?.find(message.url);
        if (backend !== undefined) {
          pool!.reportConnectFailure(
            backend,
            `${message.reason} (seen by worker thread ${handle.index})`,
          );
        }
        return;
      }
      case "stats":
        handle.lastMetrics = message.metrics;
        handle.lastBackends = message.backends;
        handle.pending.get(message.id)?.(message);
        handle.pending.delete(message.id);
        return;
      case "stopped":
        handle.stopped?.(message.left);
        return;
    }
  }

  #post(handle: WorkerHandle, message: ToWorker): void {
    try {
      handle.worker.postMessage(message);
    } catch (error) {
      // Say why (a value that cannot be copied to a thread, say) rather than time out later.
      this.#log.error(
        `Could not send "${message.type}" to worker thread ${handle.index}: ${
          (error as Error).message
        }`,
      );
    }
  }

  /**
   * A reload was applied on the main thread: the worker threads apply the same routes and
   * services, with the backends as the main thread has them now.
   */
  #reload(config: Config): void {
    if (this.#balancer === undefined) return;
    this.#workerConfig = workerConfigOf(config, this.#balancer.port);
    this.#configVersion++;
    const backends = this.#snapshot();
    this.#lastSent = JSON.stringify(backends);
    for (const handle of this.#handles) {
      if (handle.listening) this.#sendReload(handle, backends);
    }
  }

  #sendReload(handle: WorkerHandle, backends: SyncedBackend[]): void {
    handle.configVersion = this.#configVersion;
    this.#post(handle, {
      type: "reload",
      config: this.#workerConfig!,
      backends,
      rateLimitTables: this.#balancer!.rateLimitTables(),
    });
  }

  /** The main thread's backends as the workers must see them (removed ones are left out). */
  #snapshot(): SyncedBackend[] {
    const services = this.#balancer?.services.values() ?? [];
    return [...services].flatMap(({ name, pool }) =>
      pool.backends
        .filter((backend) => !backend.removing)
        .map(({ url, weight, admin, state }) => ({ service: name, url, weight, admin, state }))
    );
  }

  /** A status change: sync at the end of the current task rather than at the next check. */
  #queueSync(): void {
    if (this.#syncQueued) return;
    this.#syncQueued = true;
    queueMicrotask(() => {
      this.#syncQueued = false;
      this.#sync();
    });
  }

  /** Sends the backend list to every worker when it differs from what was sent last. */
  #sync(): void {
    // During a reload the lists change under routes the threads do not have yet: the reload
    // message carries the list once the new routes are in force.
    if (this.#balancer === undefined || this.#stopping || this.#reloading) return;
    const backends = this.#snapshot();
    const text = JSON.stringify(backends);
    if (text === this.#lastSent) return;
    this.#lastSent = text;
    for (const handle of this.#handles) this.#post(handle, { type: "sync", backends });
  }

  /** Every worker's figures; a thread that does not answer in time is left out. */
  async #gather(): Promise<
    { handle: WorkerHandle; stats: Extract<FromWorker, { type: "stats" }> }[]
  > {
    const listening = this.#handles.filter((handle) => handle.listening);
    const answers = await Promise.all(
      listening.map((handle) =>
        new Promise<
          { handle: WorkerHandle; stats: Extract<FromWorker, { type: "stats" }> } | undefined
        >((resolve) => {
          const id = this.#nextStatsId++;
          const timer = setTimeout(() => {
            handle.pending.delete(id);
            this.#log.warn(`Worker thread ${handle.index} did not report its figures in time`);
            resolve(undefined);
          }, STATS_TIMEOUT_MS);
          handle.pending.set(id, (answer) => {
            clearTimeout(timer);
            resolve({ handle, stats: answer });
          });
          this.#post(handle, { type: "stats", id });
        })
      ),
    );
    return answers.filter((a) => a !== undefined);
  }

  async #mergeMetrics(own: string): Promise<string> {
    const answers = await this.#gather();
    const answered = new Set(answers.map((a) => a.handle));
    const silent = this.#handles.filter((h) => !answered.has(h) && h.lastMetrics !== undefined);
    return mergeExpositions([
      own,
      ...answers.map((a) => a.stats.metrics),
      ...silent.map((h) => countersOnly(h.lastMetrics!)),
      this.#retiredCounters,
    ]);
  }

  /**
   * Adds the workers' in-flight, request and error counts and latencies to each view, matched
   * by service and URL (one URL in two services is two pools, counted apart).
   */
  async #mergeBackends(own: BackendView[]): Promise<BackendView[]> {
    const answers = await this.#gather();
    const byBackend = new Map<string, BackendCounters[]>();
    for (const answer of answers) {
      for (const counters of answer.stats.backends) {
        const id = backendKey(counters.service, counters.url);
        const list = byBackend.get(id) ?? [];
        list.push(counters);
        byBackend.set(id, list);
      }
    }
    return own.map((view) => {
      const id = backendKey(view.service, view.url);
      const others = byBackend.get(id) ?? [];
      const retired = this.#retiredBackends.get(id);
      const pool = this.#balancer?.services.get(view.service)?.pool;
      const mine = pool?.find(view.url)?.latency.samples() ?? [];
      return {
        ...view,
        inflight: others.reduce((n, c) => n + c.inflight, view.inflight),
        requests: others.reduce((n, c) => n + c.requests, view.requests + (retired?.requests ?? 0)),
        errors: others.reduce((n, c) => n + c.errors, view.errors + (retired?.errors ?? 0)),
        latencyMs: percentilesOf(
          Float64Array.from([...mine, ...others.flatMap((c) => c.latencies)]),
        ),
      };
    });
  }
}

/** One backend of one service (a URL in two services is two pools, counted apart). */
function backendKey(service: string, url: string): string {
  return `${service} ${url}`;
}

/**
 * The settings of a worker thread: traffic only (the main thread keeps admin, alerts, discovery
 * and the redirect listener, and tells the threads the backends), every service named
 * explicitly with no backends of its own so that the main thread's list fills each.
 */
function workerConfigOf(config: Config, port: number): Config {
  const services: NonNullable<Config["services"]> = {};
  for (const settings of serviceConfigs(config).values()) {
    const own = config.services?.[settings.name] ?? {};
    services[settings.name] = { ...own, backends: [], discover: [] };
  }
  return {
    ...config,
    port,
    backends: [],
    services,
    routes: effectiveRoutes(config),
    admin: undefined,
    alertWebhook: undefined,
    redirectHttp: undefined,
    discover: [],
    demo: false,
    workers: 1,
  };
}
