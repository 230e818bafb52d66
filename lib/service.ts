/**
 * @module
 * One service: a pool of backends with its policy, health checks, DNS discovery and the proxy
 * that forwards to it, built from its resolved settings. A reload reconfigures a service in
 * place, so backends kept by URL keep their health, counters and connections.
 */

import type { ServiceConfig } from "./setting_table.ts";
import { parseDiscoveryTarget } from "./config.ts";
import type { Log } from "./log.ts";
import { type Backend, type BackendSpec, type Policy, Pool, type PoolOptions } from "./pool.ts";
import { createPolicy } from "./policies/mod.ts";
import { generateSecret, StickyCookie } from "./sticky_cookie.ts";
import { RetryBudget } from "./retry_budget.ts";
import { HealthChecker, type HealthOptions } from "./health.ts";
import { createServiceProxy, type ProxyObserver, type ServiceProxy } from "./proxy.ts";
import { sendAttempt, type Transport } from "./upstream.ts";
import type { NativeTransport } from "./upstream_native.ts";
import { createServiceMirrorTarget, InFlightLimit, type MirrorTarget } from "./mirror.ts";
import type { Cidr } from "./cidr.ts";
import type { WebSocketRelays } from "./websocket.ts";
import { applyDiscoveryChange, DnsDiscovery, mergeBackends } from "./discovery.ts";

/** What every service of one balancer shares. */
export interface ServiceDeps {
  log: Log;
  /** Keep-alive fetch client for backends (fetch transport, its health checks). */
  client: Deno.HttpClient;
  /** fetch client that never reuses a connection (non-idempotent requests on fetch). */
  freshClient: Deno.HttpClient;
  /** The balancer's own HTTP/1.1 transport, shared by every service (pooled per origin). */
  native: NativeTransport;
  /** Replaces the configured transport (tests, the benchmark). @default the configured one */
  transport?: Transport;
  observer: ProxyObserver;
  webSockets: WebSocketRelays;
  /**
   * `--backend-ca`'s certificates (PEM), for WebSocket tunnels and native health checks. Unset:
   * the system's roots.
   */
  backendCaCerts?: string[];
  /**
   * `--backend-cert`/`--backend-key` (PEM), presented by WebSocket tunnels and native health
   * checks. Unset: none.
   */
  backendClientCert?: { cert: string; key: string };
  proto: "http" | "https";
  trustedProxies: readonly Cidr[];
  forwarded: boolean;
  /** DNS discovery's lookup interval (ms) and name server. */
  discoverInterval: number;
  dnsServer: string | undefined;
  /** Whether health checks run here (not in a worker thread of `--workers`). */
  runsHealthChecks: boolean;
  /** Builds the pool's listeners for the service with this name. */
  listeners(service: string): Pick<
    PoolOptions,
    "onStatusChange" | "onHealthChange" | "onAdd" | "onRemove"
  >;
  /** Told every health check's result (metrics). */
  onHealthResult(service: string, url: string, ok: boolean): void;
}

/** A running service. */
export class Service {
  readonly name: string;
  readonly pool: Pool;
  #config: ServiceConfig;
  #proxy: ServiceProxy;
  #health: HealthChecker;
  #discovery: DnsDiscovery | undefined;
  #sticky: Sticky | undefined;
  /** Copies mirrored to this service in flight at once, over every route that mirrors here. */
  readonly mirrorLimit = new InFlightLimit();
  /** Where routes send copies: the service's pool and transport as they are now. */
  readonly mirrorTarget: MirrorTarget = { send: (request) => this.#mirrorTarget.send(request) };
  #mirrorTarget!: MirrorTarget;
  /** Kept across reloads that leave its settings alone: a reload is no fresh burst of retries. */
  #retryBudget: RetryBudget;
  /** Backends the configuration names: discovery never removes these. */
  #staticUrls: Set<string>;
  readonly #deps: ServiceDeps;

  private constructor(
    config: ServiceConfig,
    deps: ServiceDeps,
    pool: Pool,
    discovery: DnsDiscovery | undefined,
  ) {
    this.name = config.name;
    this.#config = config;
    this.#deps = deps;
    this.pool = pool;
    this.#discovery = discovery;
    this.#staticUrls = new Set(config.backends.map((b) => b.url));
    this.#retryBudget = createRetryBudget(config);
    this.#health = this.#createHealth();
    this.#proxy = this.#createProxy();
  }

  /** Builds and starts a service: first DNS lookup, sticky keys, health checks. */
  static async start(config: ServiceConfig, deps: ServiceDeps): Promise<Service> {
    const listeners = deps.listeners(config.name);
    // The pool's listeners and discovery need the service, which needs the pool.
    const built: { service?: Service } = {};
    const discovery = createDiscovery(config, deps, () => built.service);
    // The first lookup is awaited so a DNS-only service has backends when traffic comes; they
    // are in the pool from the start (full share), later changes come through onChange.
    const found = await discovery?.initialLookup() ?? [];
    const pool = new Pool(mergeBackends(config.backends, found), {
      ...poolSettings(config, undefined),
      ...listeners,
      onAdd: (backend) => {
        listeners.onAdd?.(backend);
        built.service?.prepareStickyFor(backend);
      },
    });
    const service = new Service(config, deps, pool, discovery);
    built.service = service;
    discovery?.start();
    service.#sticky = await createSticky(config, pool.backends);
    service.#proxy = service.#createProxy();
    if (deps.runsHealthChecks) service.#health.start();
    return service;
  }

  /** Makes sticky cookie values for a backend that joined. */
  prepareStickyFor(backend: Backend): void {
    this.#sticky?.cookie.prepare([backend]).catch(() => {});
  }

  /** Applies a DNS change to the pool; static backends are never removed by it. */
  applyDiscovery(before: readonly BackendSpec[], after: readonly BackendSpec[]): void {
    applyDiscoveryChange(this.pool, this.#staticUrls, before, after);
  }

  /** Resolved settings in force. */
  get config(): ServiceConfig {
    return this.#config;
  }

  /** The name of the balancing policy, as configured. */
  get policyName(): string {
    return this.#config.policy;
  }

  /** The proxy in force; a request keeps the one it started with. */
  get proxy(): ServiceProxy {
    return this.#proxy;
  }

  /**
   * Prepares new settings without applying any (everything that waits: DNS lookups, sticky
   * keys). The returned `commit` applies them synchronously: backends by URL (kept ones keep
   * their state), pool, proxy, health checks, discovery. `cleanup` then stops what was replaced;
   * `abort` instead drops what was prepared.
   */
  async prepare(
    next: ServiceConfig,
    /** Restart discovery or health checks although their settings are the same (shared deps changed). */
    force: { restartDiscovery?: boolean; restartHealth?: boolean } = {},
  ): Promise<PreparedChange> {
    const before = this.#config;
    const same = (key: keyof ServiceConfig) =>
      JSON.stringify(before[key]) === JSON.stringify(next[key]);
    const newDiscovery = !same("discover") || force.restartDiscovery;
    const discovery = newDiscovery ? createDiscovery(next, this.#deps, () => this) : undefined;
    try {
      await discovery?.initialLookup();
      const sticky = same("stickyCookie") && same("stickySecret")
        ? this.#sticky
        : await createSticky(next, this.pool.backends);
      const samePolicy = same("policy") && (next.policy !== "hash" || same("hashKey"));
      const policy = samePolicy ? this.pool.policy : undefined;
      const newHealth = (!same("healthCheck") || force.restartHealth) &&
        this.#deps.runsHealthChecks;
      const sameBudget = same("retryBudget") && same("retryBudgetMin");
      const replaced: { stop(): Promise<void> }[] = [];
      return {
        commit: () => {
          this.#config = next;
          this.#staticUrls = new Set(next.backends.map((b) => b.url));
          if (newDiscovery) {
            if (this.#discovery !== undefined) replaced.push(this.#discovery);
            this.#discovery = discovery;
            discovery?.start();
          }
          this.#sticky = sticky;
          const change = this.pool.update(
            mergeBackends(next.backends, this.#discovery?.backends ?? []),
          );
          this.pool.reconfigure(poolSettings(next, policy));
          if (newHealth) {
            replaced.push(this.#health);
            this.#health = this.#createHealth();
            this.#health.start();
          }
          if (!sameBudget) this.#retryBudget = createRetryBudget(next);
          this.#proxy = this.#createProxy();
          return change;
        },
        cleanup: async () => {
          await Promise.all(replaced.map((old) => old.stop()));
        },
        abort: async () => {
          await discovery?.stop();
        },
      };
    } catch (error) {
      await discovery?.stop();
      throw error;
    }
  }

  /** Stops health checks and discovery. */
  async stop(): Promise<void> {
    await this.#discovery?.stop();
    await this.#health.stop();
  }

  #createHealth(): HealthChecker {
    const check = this.#config.healthCheck;
    const options: HealthOptions = {
      interval: check.interval,
      timeout: check.timeout,
      path: check.path,
      expectStatus: check.expectStatus,
      host: check.host,
      bodyContains: check.bodyContains,
      // As requests go: the native transport reaches ports fetch refuses (10080, 6000, ...).
      transport: this.#config.transport === "fetch" ? "fetch" : "native",
      tls: {
        ca: this.#deps.backendCaCerts?.join("\n"),
        cert: this.#deps.backendClientCert?.cert,
        key: this.#deps.backendClientCert?.key,
      },
      client: this.#deps.client,
      onResult: (backend, ok) => this.#deps.onHealthResult(this.name, backend.url, ok),
    };
    return new HealthChecker(this.pool, options, this.#deps.log);
  }

  #createProxy(): ServiceProxy {
    const config = this.#config;
    const deps = this.#deps;
    const onFetch = config.transport === "fetch";
    const transport = deps.transport ?? (onFetch ? sendAttempt : deps.native.send);
    // Paths fetch would rewrite (`/a/../b`) go through the native transport, byte for byte.
    const exactTransport = onFetch ? deps.native.send : undefined;
    const attempt = {
      client: deps.client,
      freshClient: deps.freshClient,
      timeout: config.timeout,
      connectTimeout: config.connectTimeout,
      readTimeout: config.readTimeout,
    };
    this.#mirrorTarget = createServiceMirrorTarget({
      pool: this.pool,
      transport,
      exactTransport,
      attempt,
    });
    return createServiceProxy(this.pool, {
      retries: config.retries,
      timeout: config.timeout,
      connectTimeout: config.connectTimeout,
      readTimeout: config.readTimeout,
      retryAfterSeconds: Math.max(1, Math.ceil(config.healthCheck.interval / 1000)),
      proto: deps.proto,
      client: deps.client,
      freshClient: deps.freshClient,
      ejectOn5xx: config.ejectOn5xx,
      retryBudget: this.#retryBudget,
      latencyObserver: this.pool.policy.latencyObserver,
      sticky: this.#sticky,
      observer: deps.observer,
      trustedProxies: deps.trustedProxies,
      forwarded: deps.forwarded,
      webSockets: deps.webSockets,
      caCerts: deps.backendCaCerts,
      clientCert: deps.backendClientCert,
      maxBody: config.maxBody,
      bodyTimeout: config.bodyTimeout,
      transport,
      exactTransport,
    }, deps.log);
  }
}

/** What {@linkcode Service.prepare} made ready. */
export interface PreparedChange {
  /** Applies the new settings at once; returns the backend changes. */
  commit(): { added: string[]; removed: string[]; reweighted: string[] };
  /** After commit: stops the health checker and discovery that were replaced. */
  cleanup(): Promise<void>;
  /** Instead of commit: drops what was prepared. */
  abort(): Promise<void>;
}

/** A sticky cookie and its name. */
type Sticky = { cookie: StickyCookie; name: string };

/** The sticky cookie a service's settings ask for, its values made for `backends`. */
async function createSticky(
  config: ServiceConfig,
  backends: readonly Backend[],
): Promise<Sticky | undefined> {
  if (config.stickyCookie === "") return undefined;
  const cookie = new StickyCookie(config.stickySecret || generateSecret());
  await cookie.prepare(backends);
  return { cookie, name: config.stickyCookie };
}

function createRetryBudget(config: ServiceConfig): RetryBudget {
  return new RetryBudget({ ratio: config.retryBudget / 100, minPerSecond: config.retryBudgetMin });
}

/** DNS discovery for a service that names targets; changes go to the service once it exists. */
function createDiscovery(
  config: ServiceConfig,
  deps: ServiceDeps,
  service: () => Service | undefined,
): DnsDiscovery | undefined {
  const targets = config.discover ?? [];
  if (targets.length === 0) return undefined;
  return new DnsDiscovery({
    targets: targets.map((text) => parseDiscoveryTarget(text)!),
    intervalMs: deps.discoverInterval,
    dnsServer: deps.dnsServer,
    onChange: (before, after) => service()?.applyDiscovery(before, after),
  }, deps.log);
}

/** The pool settings a service's configuration gives; `policy` keeps a running one. */
function poolSettings(config: ServiceConfig, policy: Policy | undefined) {
  return {
    rise: config.healthCheck.rise,
    fall: config.healthCheck.fall,
    policy: policy ?? createPolicy(config.policy, { hash: { key: config.hashKey } }),
    slowStartMs: config.slowStart,
    maxConns: config.maxConns === 0 ? Infinity : config.maxConns,
    outlier: config.ejectAfter === 0 ? undefined : {
      consecutiveFailures: config.ejectAfter,
      baseEjectionMs: config.ejectTime,
      maxEjectionMs: config.ejectMaxTime,
      maxEjectedPercent: config.ejectMaxPercent,
    },
    panicThresholdPercent: config.panicThreshold,
  };
}
