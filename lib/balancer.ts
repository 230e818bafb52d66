/**
 * @module
 * Wires the modules into a running balancer, in two steps: {@linkcode Balancer.build} turns a
 * configuration into services (pools, policies, health checks), routing state, metrics, access
 * log and alerts, with the reload that replaces them, and opens no socket; {@linkcode listen}
 * adds the listeners (main, HTTP redirect, admin) and shutdown. `main.ts` adds the command line,
 * file watchers and signals; tests start it in-process.
 */

import type { IncomingRequest } from "./incoming.ts";
import type { Config } from "./config.ts";
import type { Log } from "./log.ts";
import type { Pool, PoolOptions, StatusChangeListener } from "./pool.ts";
import type { Handler, ProxyObserver } from "./proxy.ts";
import type { Transport } from "./upstream.ts";
import { createNativeTransport, type NativeTransport } from "./upstream_native.ts";
import { type ConnectionStats, LoadBalancerMetrics, NO_BACKEND, NO_ROUTE } from "./metrics.ts";
import { type AccessLog, createAccessLog } from "./access_log.ts";
import { AlertWebhook } from "./alerts.ts";
import { type BackendView, createAdminHandler } from "./admin.ts";
import { DASHBOARD_CSP, DASHBOARD_HTML } from "./dashboard.ts";
import { WebSocketRelays } from "./websocket.ts";
import { type Cidr, parseCidr } from "./cidr.ts";
import {
  type CertifiedKey,
  coalesceBody,
  createBackendClient,
  formatCertificate,
  loadListenerCertificate,
  readBackendTls,
  readReplacement,
  redirectToHttps,
  reloadResetWarning,
} from "./tls.ts";
import {
  DEFAULT_SERVICE,
  DEFAULTS,
  effectiveRoutes,
  RESTART_ONLY,
  serviceConfigs,
} from "./setting_table.ts";
import { describeRoute, RouteTable } from "./routes.ts";
import { type PreparedChange, Service, type ServiceDeps } from "./service.ts";
import { createDispatcher, type RoutingState } from "./dispatch.ts";
import { type FrontendOptions, serveNative } from "./frontend_native.ts";
import { BodyPool } from "./body_pool.ts";
import { resolveWorkerCount } from "./setting_values.ts";
import { ResponseBodyError } from "./errors.ts";
import { admitted } from "./admission.ts";
import { compileGuards, type GuardResources } from "./protection.ts";
import { createRateLimitTable, DEFAULT_MAX_KEYS } from "./rate_limit.ts";
import { BasicAuthVerifier } from "./basic_auth.ts";

/** What a reload changed. */
export interface ReloadChange {
  /** Backends added, removed and reweighted (`service: URL` when there are several services). */
  added: string[];
  removed: string[];
  reweighted: string[];
  /** Services that appeared and disappeared. */
  servicesAdded: string[];
  servicesRemoved: string[];
  /** Settings that differ but need a restart to apply (logged by the caller). */
  restartNeeded: string[];
}

/** A running balancer. */
export interface RunningBalancer {
  /** The port actually bound (useful with port 0). */
  readonly port: number;
  /** The admin listener's port, when one runs. */
  readonly adminPort: number | undefined;
  /** The plain-HTTP redirect listener's port, when one runs (`redirectHttp`). */
  readonly redirectPort: number | undefined;
  /** The pool of the `default` service, else of the first service (one-service setups). */
  readonly pool: Pool;
  /** The services now, by name; a reload replaces the map. */
  readonly services: ReadonlyMap<string, Service>;
  readonly metrics: LoadBalancerMetrics;
  /** Sends a certificate alert (ACME) to the alert webhook, when one is set. */
  certificateAlert(message: string, expiresAt: Date | undefined): void;
  /** The rate limit tables of the routes now, by route name (for `--workers` threads). */
  rateLimitTables(): Record<string, SharedArrayBuffer>;
  /**
   * Applies a new configuration without a restart, atomically for new requests: routes,
   * services, backends, policies, health checks, timeouts, limits and header rules. Backends
   * kept by URL keep their state and counters; removed ones drain. Requests in flight finish
   * under the rules they started with.
   */
  reload(config: Config): Promise<ReloadChange>;
  /**
   * Stops accepting and lets in-flight requests finish for up to `drainMs`. Resolves to the
   * number of requests still open at the deadline (0 = clean); those get no answer, and their
   * connections close when the process (or worker thread) ends.
   */
  shutdown(drainMs: number): Promise<number>;
  /**
   * Re-reads the TLS certificate and key files. When they changed and are valid, new
   * connections get the new pair while open ones finish on the old listener; a pair that is
   * unreadable, mismatched, expired or not yet valid is refused (logged) and the current one
   * keeps serving. `"off"` without TLS.
   */
  /** Re-reads the TLS files, or serves `pair` (ACME's new certificate) when given. */
  reloadCertificate(pair?: CertifiedKey): "reloaded" | "unchanged" | "refused" | "off";
}

/** What embedders (tests, the benchmark) can plug in beyond the configuration. */
export interface BalancerExtras {
  /** How attempts reach backends. @default the configured one (`transport`) */
  transport?: Transport;
  /**
   * Automatic HTTPS (main.ts, when ACME is on): the redirect listener answers challenges, and
   * until the first real certificate (`issued()`) the HTTPS listener serves `placeholder` and
   * plain HTTP serves the site. @default none
   */
  acme?: {
    challenge(path: string): Response | undefined;
    issued(): boolean;
    placeholder?: CertifiedKey;
  };
  /**
   * Rate limit tables by route name, made by the main thread of `--workers` (a worker thread
   * must share them). Read at every reload. @default this balancer makes its own
   */
  rateLimitTables?: Record<string, SharedArrayBuffer>;
  /**
   * Listen with SO_REUSEPORT, so that the worker threads of `--workers` can share the port.
   * @default false (a second balancer on the same port must fail, not silently share it)
   */
  reusePort?: boolean;
  /**
   * Set in a worker thread of `--workers` (lib/worker_thread.ts): it serves traffic only. No
   * health checks (the main thread's verdicts arrive as pool changes), no start-up lines, and
   * backend status changes go to this listener instead of the log, metrics and alerts.
   */
  worker?: {
    onStatusChange: (service: string) => StatusChangeListener;
    onHealthChange: (service: string) => NonNullable<PoolOptions["onHealthChange"]>;
  };
  /**
   * Set on the main thread of `--workers` (lib/workers.ts): told of every status change, and
   * asked to merge the worker threads' figures into what the admin API shows.
   */
  group?: {
    statusChanged(): void;
    /** A reload began: backend changes it makes are not worth syncing one by one. */
    reloadStarted(): void;
    /** A reload ended, with the settings now in force, or undefined when it failed. */
    reloaded(config: Config | undefined): void;
    mergeMetrics(own: string): Promise<string>;
    mergeBackends(own: BackendView[]): Promise<BackendView[]>;
  };
}

/** Starts the balancer described by `config` (its backends must be final): build, then listen. */
export async function startBalancer(
  config: Config,
  log: Log,
  version = "dev",
  extras: BalancerExtras = {},
): Promise<RunningBalancer> {
  const balancer = await Balancer.build(config, log, version, extras);
  try {
    return listen(balancer);
  } catch (error) {
    // A port in use must not leave health checks and watchers of the built services running.
    await balancer.stop();
    await balancer.close();
    throw error;
  }
}

/**
 * A balancer without its sockets: services, routing state, guard resources, observers and
 * outputs, built from a configuration, and the reload that replaces them. {@linkcode listen}
 * puts it on the network.
 */
export class Balancer {
  readonly log: Log;
  readonly extras: BalancerExtras;
  readonly metrics: LoadBalancerMetrics;
  /** Open WebSocket relays: closed by the balancer itself at shutdown. */
  readonly webSockets = new WebSocketRelays();
  /** The listener's certificate and key files; undefined without TLS. */
  readonly tlsFiles: { cert: string; key: string } | undefined;
  /** The certificate served now (ACME's placeholder until its first); undefined without TLS. */
  served: CertifiedKey | undefined;
  /** The handler every listener serves: routes each request by the routing state now. */
  readonly handler: Handler;
  /**
   * Buffers for response bodies the native transport fills and for the heads the native front
   * end encodes, given back once written; undefined with Deno.serve in front (nothing would
   * come back).
   */
  readonly bodyPool: BodyPool | undefined;
  /** The configuration in force (restart-only settings as they were at start). */
  config: Config;
  /** The services now, by name; a reload replaces the map. */
  services = new Map<string, Service>();
  /** The routes and services in force; a reload replaces it in one assignment. */
  routing!: RoutingState;
  /** Where events and requests are reported; a reload may replace each (the old one closes). */
  readonly outputs: { alerts: AlertWebhook | undefined; accessLog: AccessLog | undefined };
  /** What every service is built with; a reload updates the shared settings in place. */
  readonly #deps: ServiceDeps;
  /** Services a reload has started but not yet put in force. */
  #joining: ReadonlyMap<string, Service> = new Map();
  /** Backend clients replaced by a reload: closed at shutdown, once nothing uses them. */
  readonly #replacedClients: BackendClients[] = [];
  /** Mirrors of earlier configurations, closing: waited for at close(). */
  readonly #closingMirrors = new Set<Promise<void>>();
  /** Rate limit tables by route name: kept across reloads, shared with worker threads. */
  readonly #rateLimitTables = new Map<string, { table: SharedArrayBuffer; maxKeys: number }>();
  #verifier: BasicAuthVerifier | undefined;
  /** Reloads run one at a time: a second waits for the first to finish. */
  #reloading: Promise<unknown> = Promise.resolve();
  /** Set by stop(): a reload then would restart checks on clients being closed. */
  #stopping = false;

  /** Whether stop() was called: the shutdown drain has begun (`/readyz` fails from then on). */
  get stopping(): boolean {
    return this.#stopping;
  }

  /** Builds everything but the sockets; services start (discovery, health checks). */
  static async build(
    config: Config,
    log: Log,
    version: string,
    extras: BalancerExtras,
  ): Promise<Balancer> {
    const serviceSettings = serviceConfigs(config);
    if (extras.worker === undefined) {
      for (const settings of serviceSettings.values()) {
        for (const backend of settings.backends) {
          log.info(`Configured server: ${backend.url}${named(settings.name)}`);
        }
      }
    }
    const balancer = new Balancer(config, log, version, extras);
    for (const settings of serviceSettings.values()) {
      balancer.services.set(settings.name, await Service.start(settings, balancer.#deps));
    }
    balancer.routing = {
      ...routingOf(config, balancer.#resources((name) => balancer.services.get(name))),
      services: balancer.services,
    };
    return balancer;
  }

  private constructor(config: Config, log: Log, version: string, extras: BalancerExtras) {
    this.config = config;
    this.log = log;
    this.extras = extras;
    const worker = extras.worker;
    this.bodyPool = config.frontend === "native" ? new BodyPool() : undefined;
    this.outputs = { alerts: createAlerts(config, log), accessLog: openAccessLog(config, log) };
    this.metrics = this.#createMetrics(version);
    this.tlsFiles = config.tlsCert === undefined || config.tlsKey === undefined
      ? undefined
      : { cert: config.tlsCert, key: config.tlsKey };
    // With ACME before its first certificate, the listener starts on a placeholder.
    this.served = this.tlsFiles === undefined
      ? undefined
      : extras.acme?.placeholder ?? loadListenerCertificate(this.tlsFiles, log);
    // Once per process: worker threads share the main thread's port.
    const resetWarning = this.served === undefined || worker !== undefined
      ? undefined
      : reloadResetWarning();
    if (resetWarning !== undefined) log.warn(resetWarning);
    this.#deps = {
      log,
      ...backendClients(config, this.bodyPool, log),
      transport: extras.transport,
      observer: createObserver(this.metrics, () => this.outputs.accessLog),
      webSockets: this.webSockets,
      proto: this.tlsFiles === undefined ? "http" : "https",
      ...edgeSettings(config),
      discoverInterval: config.discoverInterval ?? DEFAULTS.discoverInterval,
      dnsServer: config.dnsServer,
      runsHealthChecks: worker === undefined,
      listeners: (service) => this.#listeners(service),
      onHealthResult: (service, url, ok) => this.metrics.healthCheck(service, url, ok),
    };
    this.handler = createDispatcher({
      state: () => this.routing,
      observer: this.#deps.observer,
      onRefused: (route, refusal) => {
        this.metrics.refused(route, refusal.reason);
        if (refusal.logAs !== undefined) {
          log.info(`Rate limit: route ${route} refused ${refusal.logAs} (logged once a second)`);
        }
      },
    });
  }

  /** The metrics, reading the services and routes in force at each scrape. */
  #createMetrics(version: string): LoadBalancerMetrics {
    const services = () => this.services;
    const metrics = new LoadBalancerMetrics({
      version,
      backends: function* () {
        for (const service of services().values()) {
          for (const b of service.pool.backends) {
            yield {
              service: service.name,
              url: b.url,
              status: b.status,
              inflight: b.inflight,
              weight: b.weight,
            };
          }
        }
      },
      // A reload that changed backend TLS or connection caps replaced the transport: counts go on.
      connections: (url) => sumStats([...this.#replacedClients, this.#deps], url),
    });
    const routing = () => this.routing;
    metrics.registry.counterFunc(
      "lb_mirror_copies_total",
      "Requests copied to a mirror service, by route and outcome: sent (handed to the mirror), " +
        "failed (sent, no answer), full (dropped: too many copies in flight), too_large (dropped: " +
        "body over maxBody), incomplete (dropped: the client's body never finished). Per route " +
        "configuration: a reload starts it again.",
      function* () {
        const { guards, table } = routing();
        for (const [index, route] of guards.entries()) {
          if (route?.mirror === undefined) continue;
          const { sent, failed, dropped } = route.mirror.stats();
          const outcomes = {
            sent,
            failed,
            full: dropped.full,
            too_large: dropped.tooLarge,
            incomplete: dropped.incomplete,
          };
          for (const [outcome, value] of Object.entries(outcomes)) {
            yield { labels: { route: table.routes[index].name, outcome }, value };
          }
        }
      },
    );
    const limiters = function* () {
      const { guards, table } = routing();
      for (const [index, route] of guards.entries()) {
        if (route?.limiter !== undefined) {
          yield { route: table.routes[index].name, stats: route.limiter.stats() };
        }
      }
    };
    metrics.registry.gaugeFunc(
      "lb_rate_limit_keys",
      "Keys (clients) a route's rate limit holds a bucket for now, at most its maxKeys (shared " +
        "by every thread).",
      function* () {
        for (const { route, stats } of limiters()) yield { labels: { route }, value: stats.keys };
      },
    );
    metrics.registry.counterFunc(
      "lb_rate_limit_overflowed_total",
      "Takes of a route's rate limit that found its maxKeys full and shared the one overflow " +
        "bucket: a maxKeys too small for the traffic (a reload starts it again).",
      function* () {
        for (const { route, stats } of limiters()) {
          yield { labels: { route }, value: stats.overflowed };
        }
      },
    );
    return metrics;
  }

  /** The pool's listeners for `service`: log, metrics, alerts, or the worker thread's. */
  #listeners(service: string): ReturnType<ServiceDeps["listeners"]> {
    const { log, metrics, extras } = this;
    const worker = extras.worker;
    return {
      onStatusChange: worker?.onStatusChange(service) ?? ((backend, from, to, reason) => {
        log.info(`${backend.url} [${to}] (${reason})${named(service)}`);
        metrics.stateTransition(service, backend.url, from, to);
        this.outputs.alerts?.notify({
          backend: backend.url,
          service: service === DEFAULT_SERVICE ? undefined : service,
          from,
          to,
          reason,
          time: new Date(),
        });
        extras.group?.statusChanged();
      }),
      onHealthChange: worker?.onHealthChange(service),
      onAdd: (backend) => {
        if (worker === undefined) log.info(`Configured server: ${backend.url}${named(service)}`);
      },
      // Connections to an origin are shared by the services that name it: closed when none do.
      onRemove: (backend) => {
        if (
          !inAnyService(this.services, backend.url) && !inAnyService(this.#joining, backend.url)
        ) {
          this.#deps.native.retire(backend.url);
        }
      },
    };
  }

  /** What compiling a route's guards needs; `lookup` finds services, new ones included. */
  #resources(lookup: (name: string) => Service | undefined): GuardResources {
    const { extras, log } = this;
    const tables = this.#rateLimitTables;
    return {
      rateLimitTable(route, spec) {
        const maxKeys = spec.maxKeys ?? DEFAULT_MAX_KEYS;
        // A worker thread must use the main thread's tables: its own would double the limit.
        const given = extras.rateLimitTables?.[route];
        if (given !== undefined) return given;
        if (extras.worker !== undefined) throw new Error(`no rate limit table for route ${route}`);
        const kept = tables.get(route);
        if (kept !== undefined && kept.maxKeys === maxKeys) return kept.table;
        const table = createRateLimitTable(maxKeys);
        tables.set(route, { table, maxKeys });
        return table;
      },
      verifier: () => {
        this.#verifier ??= new BasicAuthVerifier({ log });
        this.#verifier.start();
        return this.#verifier;
      },
      mirrorTarget(name) {
        // Validated: a mirror names a service of the same configuration.
        const service = lookup(name)!;
        return { target: service.mirrorTarget, limit: service.mirrorLimit };
      },
    };
  }

  /** The pool of the `default` service, else of the first service (one-service setups). */
  get pool(): Pool {
    return (this.services.get(DEFAULT_SERVICE) ?? this.services.values().next().value!).pool;
  }

  /** See {@linkcode RunningBalancer.rateLimitTables}. */
  rateLimitTables(): Record<string, SharedArrayBuffer> {
    const names = new Set(this.routing.table.routes.map((route) => route.name));
    return Object.fromEntries(
      [...this.#rateLimitTables].filter(([name]) => names.has(name)).map((
        [name, t],
      ) => [name, t.table]),
    );
  }

  /** See {@linkcode RunningBalancer.reload}: one at a time, told to the `--workers` group. */
  reload(next: Config): Promise<ReloadChange> {
    const { group } = this.extras;
    const result = this.#reloading.then(() => {
      group?.reloadStarted();
      return this.#applyReload(next).catch((error) => {
        group?.reloaded(undefined);
        throw error;
      });
    });
    this.#reloading = result.catch(() => {});
    return result;
  }

  async #applyReload(next: Config): Promise<ReloadChange> {
    if (this.#stopping) throw new Error("shutting down");
    const { log, extras } = this;
    const current = this.config;
    const deps = this.#deps;
    const restartNeeded = RESTART_ONLY.filter((key) =>
      key === "workers"
        // "auto" and the count it stands for are the same setting.
        ? resolveWorkerCount(next.workers) !== resolveWorkerCount(current.workers)
        : JSON.stringify(next[key]) !== JSON.stringify(current[key])
    );
    const kept = { ...next, ...Object.fromEntries(restartNeeded.map((k) => [k, current[k]])) };
    const changed = (key: keyof Config) =>
      JSON.stringify(kept[key]) !== JSON.stringify(current[key]);
    const wanted = serviceConfigs(kept);
    // Phase one prepares everything that can fail or wait (files, DNS, keys) and changes
    // nothing requests see; phase two applies it all in one synchronous run.
    const before = { ...deps };
    const clients = [
        "backendCa",
        "backendCert",
        "backendKey",
        "maxBackendConnections",
        "maxIdleBackendConnections",
      ]
        .some((key) => changed(key as keyof Config))
      ? backendClients(kept, this.bodyPool, deps.log)
      : undefined;
    const started = new Map<string, Service>();
    this.#joining = started;
    const prepared = new Map<string, PreparedChange>();
    let accessLog: { next: AccessLog | undefined } | undefined;
    let routes!: Omit<RoutingState, "services">;
    let alerts: { next: AlertWebhook | undefined } | undefined;
    try {
      // Reopened by every reload, changed or not: logrotate renames the file, then sends SIGHUP.
      accessLog = kept.accessLog !== undefined || changed("accessLog")
        ? { next: openAccessLog(kept, log) }
        : undefined;
      alerts = changed("alertWebhook") ? { next: createAlerts(kept, log) } : undefined;
      // New services start on the new shared settings; kept ones see them at commit.
      Object.assign(deps, edgeSettings(kept), clients ?? {}, {
        discoverInterval: kept.discoverInterval ?? DEFAULTS.discoverInterval,
        dnsServer: kept.dnsServer,
      });
      const force = {
        restartDiscovery: changed("dnsServer") || changed("discoverInterval"),
        restartHealth: clients !== undefined,
      };
      for (const settings of wanted.values()) {
        const existing = this.services.get(settings.name);
        if (existing === undefined) {
          started.set(settings.name, await Service.start(settings, deps));
        } else {
          prepared.set(settings.name, await existing.prepare(settings, force));
        }
      }
      routes = routingOf(
        kept,
        this.#resources((name) => started.get(name) ?? this.services.get(name)),
      );
    } catch (error) {
      this.#joining = new Map();
      Object.assign(deps, before);
      await Promise.all([
        ...[...started.values()].map((service) => service.stop()),
        ...[...prepared.values()].map((change) => change.abort()),
        accessLog?.next?.close(),
        alerts?.next?.close(),
      ]);
      if (clients !== undefined) {
        clients.client.close();
        clients.freshClient.close();
        await clients.native.close();
      }
      throw error;
    }

    // Phase two: no await until the swap.
    const change: ReloadChange = {
      added: [],
      removed: [],
      reweighted: [],
      servicesAdded: [...started.keys()],
      servicesRemoved: [],
      restartNeeded,
    };
    const label = (service: string, url: string) =>
      wanted.size > 1 || this.services.size > 1 ? `${service}: ${url}` : url;
    const built = new Map<string, Service>();
    for (const settings of wanted.values()) {
      const fresh = started.get(settings.name);
      if (fresh !== undefined) {
        built.set(settings.name, fresh);
        change.added.push(...fresh.pool.backends.map((b) => label(settings.name, b.url)));
        continue;
      }
      const backends = prepared.get(settings.name)!.commit();
      for (const key of ["added", "removed", "reweighted"] as const) {
        change[key].push(...backends[key].map((url) => label(settings.name, url)));
      }
      built.set(settings.name, this.services.get(settings.name)!);
    }
    const retired = [...this.services.values()].filter((s) => !wanted.has(s.name));
    // One assignment: a request sees the old routes and services or the new ones, never a mix.
    const previous = this.services;
    this.services = built;
    const previousGuards = this.routing.guards;
    this.routing = { ...routes, services: built };
    this.#joining = new Map();
    this.config = kept;
    if (clients !== undefined) {
      this.#replacedClients.push({
        client: before.client,
        freshClient: before.freshClient,
        native: before.native,
      });
      // Idle connections made with the old certificates close now, busy ones after their request.
      for (const service of previous.values()) {
        for (const backend of service.pool.backends) before.native.retire(backend.url);
      }
    }
    const outputs = this.outputs;
    if (accessLog !== undefined) {
      const old = outputs.accessLog;
      outputs.accessLog = accessLog.next;
      old?.close().catch(() => {});
    }
    if (alerts !== undefined) {
      const old = outputs.alerts;
      outputs.alerts = alerts.next;
      old?.close().catch(() => {});
    }
    extras.group?.reloaded(kept);
    // A removed service's requests in flight finish on its pool as it was; its connections
    // close with their last request unless another service still names the backend.
    for (const service of retired) {
      change.servicesRemoved.push(service.name);
      change.removed.push(...service.pool.backends.map((b) => label(service.name, b.url)));
      for (const backend of service.pool.backends) {
        if (!inAnyService(this.services, backend.url)) deps.native.retire(backend.url);
      }
    }
    // Not awaited: a stalled mirror target must not hold the reload (and the worker threads'
    // changes queued behind it) for the 5 s its copies may take; close() waits for them.
    for (const guards of previousGuards) {
      const closing = guards?.mirror?.close();
      if (closing === undefined) continue;
      this.#closingMirrors.add(closing);
      closing.finally(() => this.#closingMirrors.delete(closing));
    }
    await Promise.all([
      ...[...prepared.values()].map((prepared) => prepared.cleanup()),
      ...retired.map((service) => service.stop()),
    ]);
    return change;
  }

  /** Refuses further reloads, waits for the one running, and stops every service. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await this.#reloading;
    await Promise.all([...this.services.values()].map((service) => service.stop()));
  }

  /** Closes backend clients and outputs, once the listeners have drained (after stop()). */
  async close(): Promise<void> {
    for (const { client, freshClient, native } of [...this.#replacedClients, this.#deps]) {
      client.close();
      freshClient.close();
      await native.close();
    }
    await Promise.all([
      this.outputs.alerts?.close(),
      this.outputs.accessLog?.close(),
      this.#verifier?.close(),
      ...this.routing.guards.map((guards) => guards?.mirror?.close()),
      ...this.#closingMirrors,
    ]);
  }
}

/** Puts a built balancer on the network: the main listener, then the redirect and admin ones. */
export function listen(balancer: Balancer): RunningBalancer {
  const { config, log, extras } = balancer;
  const admission = admitted(balancer.handler);
  const handler = admission.handler;
  balancer.metrics.registry.gaugeFunc(
    "lb_admission_queued",
    "Requests (native front end: connections) waiting to be worked on while the thread is saturated (lib/admission.ts).",
    () => [{ value: admission.gate.queued }],
  );
  // The native front end admits each request before reading it (fairer under saturation, see
  // FrontendOptions.admission), so its handler is not gated a second time.
  const nativeAdmission = {
    enter: () => {
      admission.start();
      return admission.gate.enter();
    },
    leave: (ticket: number) => admission.gate.leave(ticket),
  };
  const server = config.frontend === "native"
    ? serveNatively(
      config,
      () => balancer.routing.trustedProxies,
      balancer.handler,
      nativeAdmission,
      balancer.bodyPool,
      log,
      balancer.served,
      extras.reusePort,
      extras.worker !== undefined,
    )
    : serve(
      config.port,
      config.host,
      handler,
      log,
      balancer.served,
      extras.reusePort,
      extras.worker !== undefined,
      config.backlog ?? DEFAULTS.backlog,
    );
  const redirect = config.redirectHttp === undefined || balancer.served === undefined
    ? undefined
    : serve(
      config.redirectHttp,
      config.host,
      redirectHandler(handler, server.http.addr.port, extras.acme),
      log,
    );
  const admin = config.admin === undefined
    ? undefined
    : serve(config.admin.port, config.admin.host, adminHandler(balancer), log);
  if (extras.worker === undefined) {
    const tls = balancer.served ? " (TLS)" : "";
    log.info(`Load balancer started at :${server.http.addr.port}${tls}`);
  }
  if (redirect !== undefined) {
    log.info(`HTTP redirect listener started at :${redirect.http.addr.port}`);
  }
  if (admin !== undefined) {
    log.info(`Admin listener started at ${config.admin!.host}:${admin.http.addr.port}`);
  }
  return {
    port: server.http.addr.port,
    adminPort: admin?.http.addr.port,
    redirectPort: redirect?.http.addr.port,
    get pool() {
      return balancer.pool;
    },
    get services() {
      return balancer.services;
    },
    metrics: balancer.metrics,
    certificateAlert(message, expiresAt) {
      balancer.outputs.alerts?.notifyCertificate(message, expiresAt);
    },
    rateLimitTables: () => balancer.rateLimitTables(),
    reload: (next) => balancer.reload(next),
    reloadCertificate(pair) {
      const { tlsFiles, served } = balancer;
      if (tlsFiles === undefined || served === undefined) return "off";
      try {
        const next = readReplacement(tlsFiles, served, new Date(), pair);
        if (next === undefined) return "unchanged";
        server.replaceCertificate(next);
        balancer.served = next;
        log.info(`TLS certificate reloaded: ${formatCertificate(next.info)}`);
        return "reloaded";
      } catch (error) {
        log.error(
          `TLS certificate reload failed, keeping the current certificate: ${
            (error as Error).message
          }`,
        );
        return "refused";
      }
    },
    async shutdown(drainMs: number): Promise<number> {
      const deadline = performance.now() + drainMs;
      admission.stop();
      await balancer.stop();
      // Deno.serve's shutdown() closes every upgraded WebSocket at once (denoland/deno#35105):
      // the balancer closes them first, 1001 to clients and a clean close to backends.
      await balancer.webSockets.closeAll(Math.min(1000, Math.max(0, deadline - performance.now())));
      const left = await server.drain(deadline);
      await redirect?.drain(performance.now());
      await admin?.drain(performance.now());
      await balancer.close();
      return left;
    },
  };
}

/**
 * The plain-HTTP listener's handler: a redirect to HTTPS; with ACME, challenges first, and the
 * site itself until the first real certificate serves.
 */
function redirectHandler(
  handler: Handler,
  httpsPort: number,
  acme: BalancerExtras["acme"],
): (req: IncomingRequest, info: Deno.ServeHandlerInfo) => Response | Promise<Response> {
  const toHttps = redirectToHttps(httpsPort);
  if (acme === undefined) return toHttps;
  return (req, info) => {
    let path = "";
    try {
      path = new URL(req.url).pathname;
    } catch { /* a Host that makes no URL: the site or the redirect answers 400 */ }
    const answer = acme.challenge(path);
    if (answer !== undefined) return answer;
    return acme.issued() ? toHttps(req) : handler(req, info);
  };
}

/** The admin API over the services, routes and metrics in force (merged with `--workers`'). */
function adminHandler(balancer: Balancer) {
  const { metrics, extras } = balancer;
  return createAdminHandler({
    services: () =>
      [...balancer.services.values()].map((s) => ({
        name: s.name,
        policy: s.policyName,
        pool: s.pool,
      })),
    draining: () => balancer.stopping,
    routes: () => balancer.routing.table.routes.map(describeRoute),
    metrics: () => extras.group?.mergeMetrics(metrics.render()) ?? metrics.render(),
    mergeBackends: extras.group?.mergeBackends,
    token: () => balancer.config.adminToken ?? "",
    dashboardHtml: DASHBOARD_HTML,
    dashboardCsp: DASHBOARD_CSP,
    log: balancer.log,
  });
}

/** How log lines name a service: nothing for the default one. */
function named(service: string): string {
  return service === DEFAULT_SERVICE ? "" : ` (service ${service})`;
}

/** The routes of `config`, with what each route enforces. */
function routingOf(config: Config, resources: GuardResources): Omit<RoutingState, "services"> {
  const table = new RouteTable(effectiveRoutes(config));
  return {
    table,
    guards: table.routes.map((route) => compileGuards(route.spec, route.name, config, resources)),
    // Validated by the settings: every entry parses.
    trustedProxies: (config.trustedProxies ?? []).map((text) => parseCidr(text)!),
  };
}

/** The clients every service reaches backends with. */
interface BackendClients {
  /** Keep-alive fetch client (fetch transport, health checks). */
  client: Deno.HttpClient;
  /**
   * fetch client that never reuses a connection, for requests that must not be sent twice:
   * Deno's fetch resends a request whose kept-alive connection closes before the answer.
   */
  freshClient: Deno.HttpClient;
  /** The balancer's own HTTP/1.1 transport. */
  native: NativeTransport;
  /** `--backend-ca`'s certificates, for WebSocket tunnels to `wss` backends. */
  backendCaCerts?: string[];
  /** `--backend-cert`/`--backend-key`, presented by WebSocket tunnels (mTLS). */
  backendClientCert?: { cert: string; key: string };
}

/**
 * One set of certificates for every client that talks to backends: requests (native or fetch)
 * and health checks (fetch) trust and present the same ones. Throws on unreadable files.
 */
function backendClients(
  config: Config,
  bodyPool: BodyPool | undefined,
  log: Log,
): BackendClients {
  const files = { ca: config.backendCa, cert: config.backendCert, key: config.backendKey };
  const tls = readBackendTls(files);
  return {
    client: createBackendClient(files, { allowHost: true }, tls),
    freshClient: createBackendClient(files, { allowHost: true, poolMaxIdlePerHost: 0 }, tls),
    native: createNativeTransport({
      tls,
      maxConnsPerOrigin: config.maxBackendConnections || Infinity,
      maxIdlePerOrigin: config.maxIdleBackendConnections || Infinity,
      bodyPool,
      onExtraBytes: (origin, count) =>
        log.warn(`${origin} sent ${count} bytes after a complete response; connection closed`),
    }),
    backendCaCerts: tls.ca === undefined ? undefined : [tls.ca],
    backendClientCert: tls.cert === undefined || tls.key === undefined
      ? undefined
      : { cert: tls.cert, key: tls.key },
  };
}

function createAlerts(config: Config, log: Log): AlertWebhook | undefined {
  return config.alertWebhook ? new AlertWebhook({ url: config.alertWebhook, log }) : undefined;
}

function openAccessLog(config: Config, log: Log): AccessLog | undefined {
  return config.accessLog
    ? createAccessLog(config.accessLog, config.accessLogFormat ?? "combined", { log })
    : undefined;
}

/** The edge settings every service's proxy reads; a reload applies them to new requests. */
function edgeSettings(config: Config) {
  return {
    // Validated by the settings: every entry parses.
    trustedProxies: (config.trustedProxies ?? []).map((text) => parseCidr(text)!),
    forwarded: config.forwarded ?? false,
  };
}

/** The connection figures of `url` over every transport the balancer has had. */
function sumStats(clients: readonly { native: NativeTransport }[], url: string): ConnectionStats {
  const sum = { open: 0, idle: 0, connects: 0, reuses: 0 };
  for (const { native } of clients) {
    const stats = native.stats(url);
    sum.open += stats.open;
    sum.idle += stats.idle;
    sum.connects += stats.connects;
    sum.reuses += stats.reuses;
  }
  return sum;
}

/** Whether any service's pool still holds a backend with this URL (not being removed). */
function inAnyService(services: ReadonlyMap<string, Service>, url: string): boolean {
  for (const service of services.values()) {
    const backend = service.pool.find(url);
    if (backend !== undefined && !backend.removing) return true;
  }
  return false;
}

/**
 * Throws when another socket holds `hostname:port`. SO_REUSEPORT (TLS, --workers) would let a
 * bind succeed next to another process already on the port, silently sharing its connections (an
 * old instance left running, or anyone running as the same user): a plain bind must succeed first,
 * as it would without it. Port 0 is always free.
 */
function refuseTakenPort(hostname: string, port: number): void {
  if (port !== 0) Deno.listen({ hostname, port }).close();
}

/**
 * The main listener on the balancer's own HTTP/1.1 front end (`--frontend native`), with the
 * same face as {@linkcode serve}'s.
 */
function serveNatively(
  config: Config,
  /** The PROXY protocol's trusted peers now (a reload changes them). */
  trustedProxies: () => readonly Cidr[],
  handler: (req: IncomingRequest, info: Deno.ServeHandlerInfo) => Response | Promise<Response>,
  admission: FrontendOptions["admission"],
  bodyPool: BodyPool | undefined,
  log: Log,
  tls: CertifiedKey | undefined,
  reusePort = false,
  joiningOwnProcess = false,
) {
  let server: ReturnType<typeof serveNative>;
  try {
    if ((tls !== undefined || reusePort) && !joiningOwnProcess) {
      refuseTakenPort(config.host, config.port);
    }
    server = serveNative({
      hostname: config.host,
      port: config.port,
      reusePort,
      tls: tls && { cert: tls.cert, key: tls.key },
      headerTimeoutMs: config.headerTimeout ?? DEFAULTS.headerTimeout,
      idleTimeoutMs: config.idleTimeout ?? DEFAULTS.idleTimeout,
      maxConnections: config.maxConnections || undefined,
      backlog: config.backlog ?? DEFAULTS.backlog,
      proxyProtocol: config.proxyProtocol ? { trusted: trustedProxies } : undefined,
      admission,
      bodyPool,
      onError: (error) => {
        log.error(`Unhandled error: ${(error as Error)?.stack ?? error}`);
        return new Response("500 Internal Server Error\n", { status: 500 });
      },
    }, (req, info) =>
      // On TLS a body must leave with its headers (see coalesceBody), as on Deno.serve.
      tls === undefined || req.method === "HEAD"
        ? handler(req, info)
        : Promise.resolve(handler(req, info)).then((response) => coalesceBody(response)));
  } catch (error) {
    const message = (error as Error).message;
    // serveNative names the address itself.
    throw new Error(
      message.startsWith("cannot listen on ")
        ? message
        : `cannot listen on ${config.host}:${config.port}: ${message}`,
    );
  }
  return {
    http: {
      get addr() {
        return server.addr;
      },
    },
    replaceCertificate: (next: CertifiedKey) =>
      server.replaceCertificate({ cert: next.cert, key: next.key }),
    drain: (deadline: number) => server.drain(deadline),
  };
}

/**
 * The answer of a request cut off at the drain deadline: none. Deno.serve cannot close a
 * connection without answering, so it stays silent until the thread ends, which closes it.
 */
const UNANSWERED = new Promise<Response>(() => {});

/**
 * A listener that counts its open requests until their responses are fully delivered. With
 * `tls` it serves HTTPS (h2 and http/1.1 by ALPN) and can replace its certificate.
 */
function serve(
  port: number,
  hostname: string,
  handler: (req: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>,
  log: Log,
  tls?: CertifiedKey,
  reusePort = false,
  joiningOwnProcess = false,
  backlog?: number,
) {
  let open = 0;
  const closed = () => open--;
  /** Set at the drain deadline with requests still open: whatever they answer later is withheld. */
  let cut = false;
  // Made once per listener, not per request (a closure per request costs memory under load).
  const send = (response: Response) => cut ? UNANSWERED : response;
  const sendCoalesced = (response: Response) => cut ? UNANSWERED : coalesceBody(response);
  let http: Deno.HttpServer<Deno.NetAddr>;
  /** Shutdowns of listeners replaced by a certificate reload, still finishing their requests. */
  const retiring: Promise<void>[] = [];
  try {
    // A worker thread joins the main thread's listener, which is the point.
    if ((tls !== undefined || reusePort) && !joiningOwnProcess) refuseTakenPort(hostname, port);
    http = bind(port, tls);
  } catch (error) {
    throw new Error(`cannot listen on ${hostname}:${port}: ${(error as Error).message}`);
  }
  function bind(port: number, tls: CertifiedKey | undefined) {
    return Deno.serve({
      port,
      hostname,
      // Deno.serve cannot change its certificate: a reload binds a second listener to the same
      // port (SO_REUSEPORT, --unstable-net) and then shuts the first one down.
      ...(tls === undefined ? { reusePort } : { cert: tls.cert, key: tls.key, reusePort: true }),
      tcpBacklog: backlog,
      onListen: () => {},
      onError: (error) => {
        // Deno.serve also reports a response body that failed once its headers were sent; the
        // proxy has logged that one already (its answer here goes nowhere).
        if (error instanceof ResponseBodyError) return new Response(null, { status: 502 });
        log.error(`Unhandled error: ${(error as Error)?.stack ?? error}`);
        return new Response("500 Internal Server Error\n", { status: 500 });
      },
    }, (req, info) => {
      open++;
      // Counted until the body is delivered: the handler returns at response headers, and a
      // streamed body cut off by shutdown would reach the client truncated.
      info.completed.then(closed, closed);
      // On TLS a body must leave with its headers, or it waits ~40 ms (see coalesceBody). HEAD
      // keeps its body as given: as bytes, an empty one would announce a false Content-Length.
      const coalesce = tls !== undefined && req.method !== "HEAD";
      return Promise.resolve(handler(req, info)).then(coalesce ? sendCoalesced : send);
    });
  }
  return {
    get http() {
      return http;
    },
    /**
     * Serves new connections with `next`: a new listener on the same port, then the old one
     * is shut down gracefully (it stops accepting; its open requests finish). Throws, keeping
     * the old listener, when `next` cannot be served.
     */
    replaceCertificate(next: CertifiedKey): void {
      const old = http;
      http = bind(old.addr.port, next);
      retiring.push(old.shutdown().catch(() => {}));
    },
    /**
     * Stops accepting and waits for open requests until `deadline` (performance.now() ms).
     * Returns how many were still open then: those are cut off, their answers withheld.
     */
    async drain(deadline: number): Promise<number> {
      const shutdown = Promise.all([http.shutdown().catch(() => {}), ...retiring]);
      for (let i = 0; i < 100_000 && open > 0 && performance.now() < deadline; i++) {
        await new Promise((r) =>
          setTimeout(r, Math.min(20, Math.max(1, deadline - performance.now())))
        );
      }
      // With nothing open, shutdown only has idle connections left to close, and connections
      // whose client never finished a body the balancer refused (413, 408): Deno.serve
      // waits for those as long as the client keeps them open, so never past the deadline.
      if (open === 0) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise((
          r,
        ) => (timer = setTimeout(r, Math.max(0, deadline - performance.now()))));
        await Promise.race([shutdown, late]);
        clearTimeout(timer);
      }
      // Closing the backend clients next fails these requests as 499 or 502: an answer that would
      // blame the client or the backend for the deadline (nginx and HAProxy close instead).
      if (open > 0) cut = true;
      return open;
    },
  };
}

/** Feeds each request's outcome to the metrics and the access log. */
function createObserver(
  metrics: LoadBalancerMetrics,
  accessLogNow: () => AccessLog | undefined,
): ProxyObserver {
  return {
    outcome(req, info, outcome) {
      const seconds = (performance.now() - outcome.startedAt) / 1000;
      metrics.route(outcome.route ?? NO_ROUTE).record(outcome.status);
      if (outcome.service !== undefined) {
        // A 4xx of the balancer's own (a body too large or stalled, a client that left) is the
        // client's doing: counted as such, not as an "error" of the backend it was sent to.
        const clientFault = outcome.status >= 400 && outcome.status < 500;
        metrics.backend(outcome.service, outcome.backend?.url ?? NO_BACKEND).record(
          outcome.fromBackend || outcome.backend === undefined || clientFault
            ? outcome.status
            : undefined,
          seconds,
        );
      }
      if (accessLogNow() === undefined) return;
      // Logged when the body has been delivered, so the duration covers the whole exchange.
      const time = new Date(Date.now() - (performance.now() - outcome.startedAt));
      // Everything read from the request is read now: once the response is delivered, Deno
      // closes the request and `info.remoteAddr` throws "Request closed", which lost every line.
      const clientIp = (info.remoteAddr as Deno.NetAddr).hostname;
      const method = req.method;
      const protocol = req.protocol ?? "HTTP/1.1";
      // No body goes out with these, whatever length the headers announce.
      const status = outcome.status;
      const bodiless = method === "HEAD" || status === 204 || status === 205 || status === 304;
      const userAgent = req.headers.get("user-agent") ?? undefined;
      const referer = req.headers.get("referer") ?? undefined;
      // The log in force when the exchange ends: a reload may have replaced (and closed) it.
      const record = () =>
        accessLogNow()?.write({
          time,
          clientIp,
          method,
          path: outcome.path,
          protocol,
          status: outcome.status,
          bytes: bodiless ? 0 : outcome.contentLength,
          durationMs: performance.now() - outcome.startedAt,
          backend: outcome.backend?.url,
          attempts: outcome.attempts,
          userAgent,
          requestId: outcome.requestId,
          referer,
        });
      info.completed.then(record, record);
    },
    retry: () => metrics.retries.inc(),
    budgetExhausted: () => metrics.retryBudgetExhausted.inc(),
  };
}
