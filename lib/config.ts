/**
 * @module
 * The balancer's settings ({@linkcode Config}) and the command line.
 *
 * Every setting is declared once, in lib/setting_table.ts (flag, check, default, help, scope,
 * reloadability); `--help`, the flag parser, the validator, the defaults, `lb.schema.json` and
 * docs/configuration.md all come from that table. This module keeps the hand-written `Config`
 * type (the table is typed against it, so neither can gain a key the other lacks).
 *
 * Flags are not validated here: {@linkcode parseFlags} turns the words the user typed into the
 * config file's shape (`--health-interval 2s` becomes `healthInterval: "2s"`), and the file's
 * validator (lib/config_file.ts) checks both, so one rule set serves flags and file and a
 * check lists every problem at once. lib/settings.ts layers defaults, file and flags.
 *
 * Go-style single-dash long flags (`-backends=URL -port=3030`, as the original tool took them)
 * are accepted alongside `--backends URL --port 3030`.
 */

import type { RateLimitSpec } from "./rate_limit.ts";
import type { BasicAuthSpec } from "./basic_auth.ts";
import type { CompressSpec } from "./compress.ts";
import type { MirrorSpec } from "./mirror.ts";
import { parseArgs } from "node:util";
import { ConfigError } from "./errors.ts";
import type { BackendSpec } from "./pool.ts";
import type { PolicyName } from "./policies/mod.ts";
import type { HashKeySpec } from "./policies/hash.ts";
import type { RouteSpec } from "./routes.ts";
import { type AdminAddress, type HealthCheckSettings, LOG_LEVELS } from "./setting_values.ts";
import {
  DEFAULTS,
  FLAG_KEYS,
  flagToKey,
  formatDefault,
  keyToFlag,
  NUMERIC_KEYS,
  SETTINGS,
} from "./setting_table.ts";

export {
  formatDuration,
  LOG_LEVELS,
  parseBackend,
  parseDiscoveryTarget,
  parseDuration,
  parseSize,
} from "./setting_values.ts";
export type { AdminAddress, DiscoveryTarget, HealthCheckSettings } from "./setting_values.ts";
export { DEFAULTS, flagToKey, keyToFlag };

/** Log levels, most verbose first. */
export type LogLevel = typeof LOG_LEVELS[number];

/**
 * Settings a service may set for itself (`services.NAME.KEY`); each defaults to the top-level
 * value. The table's `scope` of each key must agree (the table's type enforces it).
 */
export type ServiceKey =
  | "backends"
  | "discover"
  | "policy"
  | "hashKey"
  | "stickyCookie"
  | "stickySecret"
  | "slowStart"
  | "maxConns"
  | "retries"
  | "connectTimeout"
  | "timeout"
  | "readTimeout"
  | "ejectAfter"
  | "ejectTime"
  | "ejectMaxTime"
  | "ejectMaxPercent"
  | "ejectOn5xx"
  | "panicThreshold"
  | "retryBudget"
  | "retryBudgetMin"
  | "maxBody"
  | "bodyTimeout"
  | "transport"
  | "healthInterval"
  | "healthTimeout"
  | "healthPath"
  | "rise"
  | "fall";

/** One service: any per-service setting, each defaulting to the top-level value. */
export type ServiceSettings = Partial<Pick<Config, ServiceKey>> & {
  healthCheck?: HealthCheckSettings;
};

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
  /** Client ranges allowed on routes without their own list; empty = everyone. @default [] */
  allow?: string[];
  /** Client ranges refused (403) on routes without their own list. @default [] */
  deny?: string[];
  /** Who serves clients: Deno.serve, or the balancer's own HTTP/1.1 server. @default "deno" */
  frontend?: "deno" | "native";
  /** Native front end: time to receive a request head (ms). @default 10000 */
  headerTimeout?: number;
  /** Native front end: kept-alive connection with no request (ms). @default 60000 */
  idleTimeout?: number;
  /** Native front end: client connections at once; 0 = unlimited. @default 0 */
  maxConnections?: number;
  /** Listen backlog of the main listener (the kernel caps it at somaxconn). @default 4096 */
  backlog?: number;
  /** Native front end: PROXY protocol headers from `trustedProxies`. @default false */
  proxyProtocol?: boolean;
  /** Automatic HTTPS from an ACME server; on whenever `acmeDomains` is set. @default false */
  acme?: boolean;
  /** Names the ACME certificate covers. @default the routes' exact hosts */
  acmeDomains?: string[];
  /** Contact address of the ACME account. @default none */
  acmeEmail?: string;
  /** ACME directory URL. @default Let's Encrypt production */
  acmeDirectory?: string;
  /** Extra CA (PEM file) trusted for the ACME server's HTTPS. @default none */
  acmeCa?: string;
  /** Folder of ACME keys and certificates. @default acme/ beside the config file */
  acmeDir?: string;
  /** Rate limit of routes without their own. @default none */
  rateLimit?: RateLimitSpec | false;
  /** Basic auth of routes without their own. @default none */
  basicAuth?: BasicAuthSpec | false;
  /** Response compression of routes without their own. @default none */
  compress?: CompressSpec | false;
  /** Mirror of service routes without their own. @default none */
  mirror?: MirrorSpec | false;
  /** Connections the native transport opens per backend origin; 0 is unlimited. @default 0 */
  maxBackendConnections?: number;
  /** Idle keep-alive connections kept per backend origin; 0 is no cap. @default 0 */
  maxIdleBackendConnections?: number;
  /** Services by name (file only); see {@linkcode ServiceSettings}. @default undefined */
  services?: Record<string, ServiceSettings>;
  /** Routes to services, in order, first match wins (file only). @default undefined */
  routes?: RouteSpec[];
}

/** Help text printed by `--help`: the option lines come from the setting table. */
export const USAGE = usage();

function usage(): string {
  // A flag too long for the column gets a line of its own, so it never runs into its help.
  const line = (flag: string, help: string) =>
    (flag.length < 25 ? "" : `  ${flag}\n`) +
    help.split("\n").map((text, i) =>
      `  ${(i === 0 && flag.length < 25 ? flag : "").padEnd(25)}${text}`
    )
      .join("\n");
  const settingLine = (key: keyof Config) => {
    const { arg, help } = SETTINGS[key];
    return line(
      `${keyToFlag(key)}${arg ? ` ${arg}` : ""}`,
      help.replace("{default}", formatDefault(key)),
    );
  };
  const [first, ...rest] = FLAG_KEYS;
  const fileOnly = (Object.keys(SETTINGS) as (keyof Config)[]).filter((k) =>
    SETTINGS[k].flag === "none"
  );
  return [
    "Usage: load-balancer -backends=URL[,URL...] [options]",
    "       load-balancer --config lb.jsonc [options]",
    "",
    "Options (one or two leading dashes; --flag=value or --flag value):",
    // Where the backends and settings come from first, then every setting in table order.
    settingLine(first),
    line("--config FILE", "read settings from a JSONC file (flags override it)"),
    line("--check", "validate flags and config file, print every problem, and exit"),
    ...rest.map(settingLine),
    line("--help", "print this help"),
    line("--version", "print the version"),
    "",
    "Durations: a number with a unit: 500ms, 2s, 1m, 1h.",
    `Config file only: ${
      fileOnly.join(", ")
    } (several services behind routes; see docs/configuration.md).`,
  ].join("\n");
}

/** The options `parseArgs` reads: every setting's flag, then the command's own. */
const FLAG_OPTIONS = {
  ...Object.fromEntries(FLAG_KEYS.map((key) => {
    const kind = SETTINGS[key].flag;
    return [
      keyToFlag(key).slice(2),
      kind === "switch"
        ? { type: "boolean" as const }
        : { type: "string" as const, multiple: kind === "list" },
    ];
  })),
  config: { type: "string" },
  check: { type: "boolean" },
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
  const typed = values as Record<string, string | string[] | boolean | undefined>;
  for (const key of FLAG_KEYS) {
    const value = typed[keyToFlag(key).slice(2)];
    // `--demo` is a switch of the command, not a setting a file may hold.
    if (value === undefined || value === false || SETTINGS[key].file === false) continue;
    const converted = flagValue(key, value);
    if (converted !== undefined) given[key] = converted;
  }
  return {
    kind: values.check ? "check" : "run",
    given,
    configPath: values.config,
    demo: typed.demo === true,
  };
}

/** A flag's words in the file's shape: digits of a numeric setting become a number. */
function flagValue(key: keyof Config, value: string | string[] | true): unknown {
  const { fromFlag } = SETTINGS[key];
  const raw = value === true
    ? true
    : Array.isArray(value)
    ? splitList(value)
    : NUMERIC_KEYS.has(key) && /^\d{1,15}$/.test(value.trim())
    ? Number(value)
    : value;
  return fromFlag ? fromFlag(raw) : raw;
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
