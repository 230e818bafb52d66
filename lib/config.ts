/**
 * @module
 * The balancer's settings ({@linkcode Config}), their defaults, the primitives both the command
 * line and the config file use (durations, backend URLs), and the command line itself.
 *
 * Flags are not validated here: {@linkcode parseFlags} turns the words the user typed into the
 * config file's shape (`--health-interval 2s` becomes `healthInterval: "2s"`), and the file's
 * validator (lib/config_file.ts) checks both, so one rule set serves flags and file and a
 * check lists every problem at once. lib/settings.ts layers defaults, file and flags.
 *
 * Go-style single-dash long flags (`-backends=URL -port=3030`, as the original tool took them)
 * are accepted alongside `--backends URL --port 3030`.
 */

import { parseArgs } from "node:util";
import { ConfigError } from "./errors.ts";
import type { BackendSpec } from "./pool.ts";
import { POLICY_NAMES, type PolicyName } from "./policies/mod.ts";
import type { HashKeySpec } from "./policies/hash.ts";

/** Log levels, most verbose first. */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = typeof LOG_LEVELS[number];

/** Where the admin listener binds. */
export interface AdminAddress {
  host: string;
  port: number;
}

/** Everything the balancer needs to start. Durations are in milliseconds. */
export interface Config {
  /** Backends with weights; at least one unless `demo`. */
  backends: BackendSpec[];
  /** Listening port. @default 3030 */
  port: number;
  /** Bind address. @default "0.0.0.0" */
  host: string;
  /** Time between active health checks. @default 5000 */
  healthInterval: number;
  /** Time limit for one health check. @default 2000 */
  healthTimeout: number;
  /** Path requested by health checks; 2xx and 3xx mean healthy. @default "/" */
  healthPath: string;
  /** Passing checks in a row that bring a down backend back. @default 2 */
  rise: number;
  /** Failing checks in a row that take an up backend down. @default 3 */
  fall: number;
  /** Extra attempts after the first, each on a different backend. @default 2 */
  retries: number;
  /** Time allowed to establish a backend connection. @default 3000 */
  connectTimeout: number;
  /** Time allowed from sending a request to receiving response headers. @default 30000 */
  timeout: number;
  /** Time in-flight requests get to finish on SIGINT/SIGTERM. @default 10000 */
  drainTimeout: number;
  /** Lowest level logged. @default "info" */
  logLevel: LogLevel;
  /** Start three demo backends in-process and balance across them. @default false */
  demo: boolean;
  /** Balancing algorithm. @default "round-robin" */
  policy: PolicyName;
  /** What the hash policy hashes. @default { kind: "ip" } */
  hashKey: HashKeySpec;
  /** Cookie name that pins a client to a backend; empty disables stickiness. @default "" */
  stickyCookie: string;
  /** Secret for sticky cookie values; empty means a random one per process. @default "" */
  stickySecret: string;
  /** Ramp time of a backend that comes back or is added (ms); 0 is off. @default 0 */
  slowStart: number;
  /** Concurrent requests per backend; 0 is unlimited. @default 0 */
  maxConns: number;
  /** Consecutive failures that eject a backend; 0 disables ejection. @default 5 */
  ejectAfter: number;
  /** Base ejection time (ms), multiplied by how often the backend was ejected. @default 30000 */
  ejectTime: number;
  /** Longest ejection (ms). @default 300000 */
  ejectMaxTime: number;
  /** Most backends (percent) that may be ejected at once. @default 50 */
  ejectMaxPercent: number;
  /** Whether 5xx answers count as failures for ejection. @default false */
  ejectOn5xx: boolean;
  /** Below this share (percent) of healthy backends left by ejections, ignore ejections. @default 50 */
  panicThreshold: number;
  /** Retries may add at most this share (percent) of requests. @default 20 */
  retryBudget: number;
  /** Retries per second always allowed, whatever the budget. @default 10 */
  retryBudgetMin: number;
  /** Admin listener (API, metrics, dashboard); undefined = off. @default undefined */
  admin?: AdminAddress;
  /** Bearer token the admin listener requires; empty = none (loopback only). @default "" */
  adminToken?: string;
  /** Access log target: "stdout" or a file path; empty = off. @default "" */
  accessLog?: string;
  /** Access log line format. @default "combined" */
  accessLogFormat?: "combined" | "json";
  /** URL that receives a JSON POST on every backend state change; empty = off. @default "" */
  alertWebhook?: string;
  /** Process log format. @default "text" */
  logFormat?: "text" | "json";
  /** PEM certificate file for TLS termination (with `tlsKey`). @default undefined */
  tlsCert?: string;
  /** PEM private key file for TLS termination (with `tlsCert`). @default undefined */
  tlsKey?: string;
  /** Plain-HTTP port that redirects to HTTPS (needs TLS). @default undefined */
  redirectHttp?: number;
  /** PEM CA bundle trusted for HTTPS backends, besides the system roots. @default undefined */
  backendCa?: string;
  /** PEM client certificate for mTLS to backends (with `backendKey`). @default undefined */
  backendCert?: string;
  /** PEM client key for mTLS to backends (with `backendCert`). @default undefined */
  backendKey?: string;
  /** Peers (CIDR) whose X-Forwarded-* headers are trusted and extended. @default [] */
  trustedProxies?: string[];
  /** Also send an RFC 7239 `Forwarded` header upstream. @default false */
  forwarded?: boolean;
  /** Largest request body accepted (bytes); larger gets 413. @default 10485760 (10 MiB) */
  maxBody?: number;
  /** Longest wait between two reads of a request body (ms); slower gets 408. @default 30000 */
  bodyTimeout?: number;
  /** DNS discovery targets: `dns+srv://NAME` or `dns+a://NAME:PORT`. @default [] */
  discover?: string[];
  /** Time between DNS discovery lookups (ms). @default 10000 */
  discoverInterval?: number;
  /** DNS server for discovery, `HOST:PORT`; default: the system resolver. @default undefined */
  dnsServer?: string;
  /** Worker processes sharing the port; "auto" = one per core. @default 1 */
  workers?: number | "auto";
  /**
   * How requests reach backends: `native` (the balancer's own HTTP/1.1 client) or `fetch`
   * (Deno's, for backends that need HTTP/2). @default "native"
   */
  transport?: "native" | "fetch";
  /** Longest pause between two reads of a response body (ms); native transport only. @default 60000 */
  readTimeout?: number;
}

/** Defaults for every optional setting (durations in ms). */
export const DEFAULTS = {
  port: 3030,
  host: "0.0.0.0",
  healthInterval: 5000,
  healthTimeout: 2000,
  healthPath: "/",
  rise: 2,
  fall: 3,
  retries: 2,
  connectTimeout: 3000,
  timeout: 30000,
  drainTimeout: 10000,
  logLevel: "info",
  policy: "round-robin",
  hashKey: { kind: "ip" },
  stickyCookie: "",
  stickySecret: "",
  slowStart: 0,
  maxConns: 0,
  ejectAfter: 5,
  ejectTime: 30_000,
  ejectMaxTime: 300_000,
  ejectMaxPercent: 50,
  ejectOn5xx: false,
  panicThreshold: 50,
  retryBudget: 20,
  retryBudgetMin: 10,
} as const satisfies Partial<Config>;

/** Help text printed by `--help`. */
export const USAGE = `Usage: load-balancer -backends=URL[,URL...] [options]
       load-balancer --config lb.jsonc [options]

Options (one or two leading dashes; --flag=value or --flag value):
  --backends URL,...       backend origins, e.g. http://localhost:8081,http://localhost:8082;
                           a weight follows as URL*N (e.g. 'http://a:8081*3'); repeatable
  --config FILE            read settings from a JSONC file (flags override it)
  --check                  validate flags and config file, print every problem, and exit
  --port N                 listening port (default ${DEFAULTS.port})
  --host ADDR              bind address (default ${DEFAULTS.host})
  --health-interval DUR    time between health checks (default 5s)
  --health-timeout DUR     time limit of one health check (default 2s)
  --health-path PATH       GET path for health checks; 2xx/3xx is healthy (default /)
  --rise N                 passing checks that bring a backend back (default ${DEFAULTS.rise})
  --fall N                 failing checks that take a backend down (default ${DEFAULTS.fall})
  --retries N              extra attempts, each on another backend (default ${DEFAULTS.retries})
  --connect-timeout DUR    time to connect to a backend (default 3s)
  --timeout DUR            time to receive response headers (default 30s)
  --read-timeout DUR       longest pause between two reads of a response body (default 60s)
  --drain-timeout DUR      time in-flight requests get on shutdown (default 10s)
  --log-level LEVEL        debug, info, warn or error (default ${DEFAULTS.logLevel})
  --log-format FORMAT      text or json (default text)
  --policy NAME            ${POLICY_NAMES.join(", ")} (default round-robin)
  --hash-key KEY           for --policy=hash: ip, path, header:NAME or cookie:NAME (default ip)
  --sticky-cookie NAME     pin clients to a backend with this cookie (any policy; default off)
  --sticky-secret TEXT     key for sticky cookie values, 16+ bytes (default: random per process)
  --slow-start DUR         ramp a returning or new backend's share over DUR (default off)
  --max-conns N            concurrent requests per backend, 0 = unlimited (default 0)
  --eject-after N          consecutive failures that eject a backend, 0 = never (default 5)
  --eject-time DUR         first ejection time, multiplied on repeats (default 30s)
  --eject-max-time DUR     longest ejection (default 5m)
  --eject-max-percent N    most backends ejected at once, percent (default 50)
  --eject-on-5xx           count 5xx answers as failures for ejection
  --panic-threshold N      ignore ejections when fewer than N% of healthy backends remain (default 50)
  --retry-budget N         retries may add at most N% of requests (default 20)
  --retry-budget-min N     retries per second always allowed (default 10)
  --admin HOST:PORT        admin listener: API, /metrics, dashboard (default off)
  --admin-token TOKEN      bearer token for the admin listener (or env LB_ADMIN_TOKEN)
  --access-log TARGET      stdout or a file path (default off)
  --access-log-format F    combined or json (default combined)
  --alert-webhook URL      POST a JSON event on every backend state change (default off)
  --tls-cert FILE          PEM certificate: terminate TLS (HTTP/2 and HTTP/1.1 by ALPN)
  --tls-key FILE           PEM private key for --tls-cert
  --redirect-http PORT     plain-HTTP listener that redirects to HTTPS (with TLS)
  --backend-ca FILE        PEM CA bundle trusted for HTTPS backends (besides system roots)
  --backend-cert FILE      PEM client certificate for mTLS to backends
  --backend-key FILE       PEM client key for --backend-cert
  --trusted-proxies CIDRS  peers whose X-Forwarded-* are kept and extended (default none)
  --forwarded              also send an RFC 7239 Forwarded header upstream
  --max-body SIZE          largest request body, e.g. 1048576 or 10MiB (default 10MiB)
  --body-timeout DUR       longest wait between two reads of a request body (default 30s)
  --discover URL           backends from DNS: dns+srv://NAME or dns+a://NAME:PORT; repeatable
  --discover-interval DUR  time between DNS lookups (default 10s)
  --dns-server HOST:PORT   DNS server for discovery (default: the system resolver)
  --workers N              threads serving the port (SO_REUSEPORT); auto = one per core
  --transport NAME         native (HTTP/1.1, default) or fetch (Deno's client, HTTP/2 backends)
  --demo                   start three demo backends in-process and balance across them
  --help                   print this help
  --version                print the version

Durations: a number with a unit: 500ms, 2s, 1m, 1h.`;

/** Flags that take a value, by config key: the key is the flag name in camelCase. */
const VALUE_FLAGS = [
  "port",
  "host",
  "health-interval",
  "health-timeout",
  "health-path",
  "rise",
  "fall",
  "retries",
  "connect-timeout",
  "timeout",
  "read-timeout",
  "drain-timeout",
  "log-level",
  "log-format",
  "policy",
  "hash-key",
  "sticky-cookie",
  "sticky-secret",
  "slow-start",
  "max-conns",
  "eject-after",
  "eject-time",
  "eject-max-time",
  "eject-max-percent",
  "panic-threshold",
  "retry-budget",
  "retry-budget-min",
  "admin",
  "admin-token",
  "access-log",
  "access-log-format",
  "alert-webhook",
  "tls-cert",
  "tls-key",
  "redirect-http",
  "backend-ca",
  "backend-cert",
  "backend-key",
  "max-body",
  "body-timeout",
  "discover-interval",
  "dns-server",
  "workers",
  "transport",
] as const;

/** Settings the file holds as JSON numbers; their flag text is converted when it is digits. */
const NUMERIC_KEYS = new Set([
  "port",
  "rise",
  "fall",
  "retries",
  "maxConns",
  "ejectAfter",
  "ejectMaxPercent",
  "panicThreshold",
  "retryBudget",
  "retryBudgetMin",
  "redirectHttp",
  "maxBody",
  "workers",
]);

const FLAG_OPTIONS = {
  ...Object.fromEntries(VALUE_FLAGS.map((name) => [name, { type: "string" as const }])),
  backends: { type: "string", multiple: true },
  discover: { type: "string", multiple: true },
  "trusted-proxies": { type: "string", multiple: true },
  forwarded: { type: "boolean" },
  config: { type: "string" },
  check: { type: "boolean" },
  "eject-on-5xx": { type: "boolean" },
  demo: { type: "boolean" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "v" },
} as const;

/** What the command line asked for, before validation. */
export type FlagInvocation =
  | { kind: "help" }
  | { kind: "version" }
  | {
    kind: "run" | "check";
    /** The settings typed, in the config file's shape (`healthInterval: "2s"`); unvalidated. */
    given: Record<string, unknown>;
    /** `--config FILE`, if given. */
    configPath?: string;
    demo: boolean;
  };

/**
 * Turns Go-style `-name` / `-name=value` into `--name` / `--name=value` so that `parseArgs`
 * accepts them. Only words that look like a long flag are touched (a dash and two or more
 * letters), and nothing after a `--` terminator.
 */
export function normalizeSingleDashFlags(argv: readonly string[]): string[] {
  const out: string[] = [];
  let terminated = false;
  for (const arg of argv) {
    if (arg === "--") terminated = true;
    out.push(!terminated && /^-[a-zA-Z][a-zA-Z0-9-]+(=|$)/.test(arg) ? `-${arg}` : arg);
  }
  return out;
}

/** `health-interval` -> `healthInterval`. */
export function flagToKey(flag: string): string {
  return flag.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** `healthInterval` -> `--health-interval` (for messages about flags). */
export function keyToFlag(key: string): string {
  return `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`).replace(/(\d+)/g, "-$1")}`;
}

/**
 * Reads the command line. Only malformed words (unknown flag, missing value, stray argument)
 * are errors here; values are checked by the config validator.
 */
export function parseFlags(argv: readonly string[]): FlagInvocation {
  let values;
  try {
    ({ values } = parseArgs({
      args: normalizeSingleDashFlags(argv),
      options: FLAG_OPTIONS,
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new ConfigError(describeParseError(error));
  }
  if (values.help) return { kind: "help" };
  if (values.version) return { kind: "version" };
  const given: Record<string, unknown> = {};
  for (const flag of VALUE_FLAGS) {
    const text = (values as Record<string, unknown>)[flag] as string | undefined;
    if (text === undefined) continue;
    const key = flagToKey(flag);
    given[key] = NUMERIC_KEYS.has(key) && /^\d{1,15}$/.test(text.trim()) ? Number(text) : text;
  }
  if (typeof given.logLevel === "string") given.logLevel = given.logLevel.toLowerCase();
  if (values["eject-on-5xx"]) given.ejectOn5xx = true;
  if (values.forwarded) given.forwarded = true;
  if (values.discover !== undefined) given.discover = splitList(values.discover);
  if (values["trusted-proxies"] !== undefined) {
    given.trustedProxies = splitList(values["trusted-proxies"]);
  }
  if (values.backends !== undefined) {
    const list = splitList(values.backends);
    // An empty list is "no backends given", which the merged check reports clearly.
    if (list.length > 0) given.backends = list;
  }
  return {
    kind: values.check ? "check" : "run",
    given,
    configPath: values.config,
    demo: values.demo ?? false,
  };
}

/** Values of a repeatable, comma-separated flag, trimmed, empty items dropped. */
function splitList(values: readonly string[]): string[] {
  return values.flatMap((v) => v.split(",")).map((v) => v.trim()).filter((v) => v !== "");
}

function describeParseError(error: unknown): string {
  const code = (error as { code?: string }).code;
  const message = error instanceof Error ? error.message : String(error);
  const flag = /'(-[^']*)'/.exec(message)?.[1];
  switch (code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown flag ${flag ?? message} (see --help)`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return `flag ${flag ?? ""} needs a value`.replace("  ", " ");
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return `unexpected argument ${/'([^']*)'/.exec(message)?.[1] ?? message} (see --help)`;
    default:
      return message.split("\n")[0];
  }
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * Parses a duration such as `500ms`, `2s`, `1.5m` or `1h` into milliseconds.
 * Returns undefined when the text is not a duration (a unit is required: `5` is ambiguous).
 */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim());
  if (!match) return undefined;
  const ms = Number(match[1]) * DURATION_UNITS[match[2]];
  return Number.isFinite(ms) ? Math.round(ms) : undefined;
}

const SIZE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
};

/**
 * Parses a size: plain bytes (`1048576`) or a number with a unit (`512KiB`, `10MiB`, `1GB`;
 * `k`/`m`/`g` are binary, as in nginx). Returns undefined when it is not a size.
 */
export function parseSize(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(text.trim());
  if (!match) return undefined;
  const unit = SIZE_UNITS[match[2].toLowerCase()];
  if (unit === undefined) return undefined;
  const bytes = Math.round(Number(match[1]) * unit);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** A DNS discovery target. */
export type DiscoveryTarget =
  | { kind: "srv"; name: string }
  | { kind: "a"; name: string; port: number };

/**
 * Parses `dns+srv://_http._tcp.service.example` (SRV records give host, port and weight) or
 * `dns+a://service.example:8080` (every A/AAAA address on that port).
 */
export function parseDiscoveryTarget(text: string): DiscoveryTarget | undefined {
  const srv = /^dns\+srv:\/\/([A-Za-z0-9_.-]+?)\.?$/.exec(text);
  if (srv) return { kind: "srv", name: srv[1] };
  const a = /^dns\+a:\/\/([A-Za-z0-9_.-]+?)\.?:(\d{1,5})$/.exec(text);
  if (a && Number(a[2]) >= 1 && Number(a[2]) <= 65535) {
    return { kind: "a", name: a[1], port: Number(a[2]) };
  }
  return undefined;
}

/** Parses one `URL` or `URL*WEIGHT` item into a spec with a normalised origin. */
export function parseBackend(text: string): BackendSpec {
  const star = text.lastIndexOf("*");
  const urlText = star === -1 ? text : text.slice(0, star);
  let weight = 1;
  if (star !== -1) {
    const weightText = text.slice(star + 1);
    if (!/^\d+$/.test(weightText) || Number(weightText) > 1_000_000) {
      throw new ConfigError(
        `--backends: weight "${weightText}" of ${urlText} is not a whole number 0-1000000`,
      );
    }
    weight = Number(weightText);
  }
  let url: URL;
  try {
    url = new URL(urlText);
  } catch {
    throw new ConfigError(`--backends: "${urlText}" is not an absolute http(s) URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ConfigError(`--backends: "${urlText}" is not an absolute http(s) URL`);
  }
  if (url.username || url.password) {
    throw new ConfigError(`--backends: "${urlText}" must not contain credentials`);
  }
  if ((url.pathname !== "/" && url.pathname !== "") || url.search || url.hash) {
    throw new ConfigError(
      `--backends: "${urlText}" must be an origin only (scheme://host:port), without path or query`,
    );
  }
  return { url: url.origin, weight };
}
