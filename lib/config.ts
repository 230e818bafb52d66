/**
 * @module
 * Command-line flags to a validated {@linkcode Config}. Every problem becomes a
 * {@linkcode ConfigError} with a one-line message naming the flag and the value.
 *
 * Go-style single-dash long flags (`-backends=URL -port=3030`, as the original tool took them)
 * are accepted alongside `--backends URL --port 3030`.
 */

import { parseArgs } from "node:util";
import { ConfigError } from "./errors.ts";
import type { BackendSpec } from "./pool.ts";
import { isPolicyName, POLICY_NAMES, type PolicyName } from "./policies/mod.ts";
import { type HashKeySpec, parseHashKey } from "./policies/hash.ts";

/** Log levels, most verbose first. */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = typeof LOG_LEVELS[number];

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
}

/** What the command line asked for: run with a config, or print help or the version. */
export type Invocation =
  | { kind: "run"; config: Config }
  | { kind: "help" }
  | { kind: "version" };

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

Options (one or two leading dashes; --flag=value or --flag value):
  --backends URL,...       backend origins, e.g. http://localhost:8081,http://localhost:8082;
                           a weight follows as URL*N (e.g. 'http://a:8081*3'); repeatable
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
  --drain-timeout DUR      time in-flight requests get on shutdown (default 10s)
  --log-level LEVEL        debug, info, warn or error (default ${DEFAULTS.logLevel})
  --policy NAME            ${POLICY_NAMES.join(", ")} (default round-robin)
  --hash-key KEY           for --policy=hash: ip, path, header:NAME or cookie:NAME (default ip)
  --sticky-cookie NAME     pin clients to a backend with this cookie (any policy; default off)
  --sticky-secret TEXT     key for sticky cookie values, 16+ chars (default: random per process)
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
  --demo                   start three demo backends in-process and balance across them
  --help                   print this help
  --version                print the version

Durations: a number with a unit: 500ms, 2s, 1m, 1h.`;

const FLAG_OPTIONS = {
  backends: { type: "string", multiple: true },
  port: { type: "string" },
  host: { type: "string" },
  "health-interval": { type: "string" },
  "health-timeout": { type: "string" },
  "health-path": { type: "string" },
  rise: { type: "string" },
  fall: { type: "string" },
  retries: { type: "string" },
  "connect-timeout": { type: "string" },
  timeout: { type: "string" },
  "drain-timeout": { type: "string" },
  "log-level": { type: "string" },
  demo: { type: "boolean" },
  policy: { type: "string" },
  "hash-key": { type: "string" },
  "sticky-cookie": { type: "string" },
  "sticky-secret": { type: "string" },
  "slow-start": { type: "string" },
  "max-conns": { type: "string" },
  "eject-after": { type: "string" },
  "eject-time": { type: "string" },
  "eject-max-time": { type: "string" },
  "eject-max-percent": { type: "string" },
  "eject-on-5xx": { type: "boolean" },
  "panic-threshold": { type: "string" },
  "retry-budget": { type: "string" },
  "retry-budget-min": { type: "string" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "v" },
} as const;

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
    out.push(!terminated && /^-[a-zA-Z][a-zA-Z-]+(=|$)/.test(arg) ? `-${arg}` : arg);
  }
  return out;
}

/** Parses and validates the command line. Throws {@linkcode ConfigError} on any problem. */
export function parseCommandLine(argv: readonly string[]): Invocation {
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

  const demo = values.demo ?? false;
  const backends = parseBackendList(values.backends ?? []);
  if (backends.length === 0 && !demo) {
    throw new ConfigError("no backends: give --backends=URL[,URL...] (or --demo)");
  }
  const config: Config = {
    backends,
    port: parsePort("--port", values.port, DEFAULTS.port),
    host: parseHost(values.host ?? DEFAULTS.host),
    healthInterval: parseDurationFlag("--health-interval", values["health-interval"], 5000, 1),
    healthTimeout: parseDurationFlag("--health-timeout", values["health-timeout"], 2000, 1),
    healthPath: parseHealthPath(values["health-path"] ?? DEFAULTS.healthPath),
    rise: parseIntFlag("--rise", values.rise, DEFAULTS.rise, 1, 1000),
    fall: parseIntFlag("--fall", values.fall, DEFAULTS.fall, 1, 1000),
    retries: parseIntFlag("--retries", values.retries, DEFAULTS.retries, 0, 100),
    connectTimeout: parseDurationFlag("--connect-timeout", values["connect-timeout"], 3000, 1),
    timeout: parseDurationFlag("--timeout", values.timeout, 30000, 1),
    drainTimeout: parseDurationFlag("--drain-timeout", values["drain-timeout"], 10000, 0),
    logLevel: parseLogLevel(values["log-level"] ?? DEFAULTS.logLevel),
    demo,
    policy: parsePolicy(values.policy ?? DEFAULTS.policy),
    hashKey: parseHashKeyFlag(values["hash-key"]),
    stickyCookie: parseCookieName(values["sticky-cookie"] ?? ""),
    stickySecret: parseSecret(values["sticky-secret"] ?? ""),
    slowStart: parseDurationFlag("--slow-start", values["slow-start"], 0, 0),
    maxConns: parseIntFlag("--max-conns", values["max-conns"], 0, 0, 1_000_000),
    ejectAfter: parseIntFlag("--eject-after", values["eject-after"], DEFAULTS.ejectAfter, 0, 1000),
    ejectTime: parseDurationFlag("--eject-time", values["eject-time"], DEFAULTS.ejectTime, 1),
    ejectMaxTime: parseDurationFlag(
      "--eject-max-time",
      values["eject-max-time"],
      DEFAULTS.ejectMaxTime,
      1,
    ),
    ejectMaxPercent: parseIntFlag(
      "--eject-max-percent",
      values["eject-max-percent"],
      DEFAULTS.ejectMaxPercent,
      0,
      100,
    ),
    ejectOn5xx: values["eject-on-5xx"] ?? false,
    panicThreshold: parseIntFlag(
      "--panic-threshold",
      values["panic-threshold"],
      DEFAULTS.panicThreshold,
      0,
      100,
    ),
    retryBudget: parseIntFlag(
      "--retry-budget",
      values["retry-budget"],
      DEFAULTS.retryBudget,
      0,
      100,
    ),
    retryBudgetMin: parseIntFlag(
      "--retry-budget-min",
      values["retry-budget-min"],
      DEFAULTS.retryBudgetMin,
      0,
      1_000_000,
    ),
  };
  if (config.ejectMaxTime < config.ejectTime) {
    throw new ConfigError(
      `--eject-max-time: ${values["eject-max-time"]} is shorter than --eject-time`,
    );
  }
  return { kind: "run", config };
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

function parseDurationFlag(
  flag: string,
  text: string | undefined,
  fallback: number,
  minimumMs: number,
): number {
  if (text === undefined) return fallback;
  const ms = parseDuration(text);
  if (ms === undefined) {
    throw new ConfigError(`${flag}: "${text}" is not a duration (use e.g. 500ms, 2s, 1m)`);
  }
  if (ms < minimumMs) throw new ConfigError(`${flag}: "${text}" must be at least ${minimumMs}ms`);
  if (ms > 2_147_483_647) throw new ConfigError(`${flag}: "${text}" is too long`);
  return ms;
}

function parseIntFlag(
  flag: string,
  text: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text.trim())) throw new ConfigError(`${flag}: "${text}" is not a whole number`);
  const n = Number(text);
  if (n < min || n > max) {
    throw new ConfigError(`${flag}: ${text} is out of range (${min} to ${max})`);
  }
  return n;
}

function parsePort(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text.trim())) throw new ConfigError(`${flag}: "${text}" is not a port number`);
  const n = Number(text);
  if (n > 65535) throw new ConfigError(`${flag}: ${text} is out of range (0 to 65535)`);
  return n;
}

function parseHost(text: string): string {
  if (text.trim() === "" || /[\s/?#@]/.test(text)) {
    throw new ConfigError(`--host: "${text}" is not a bind address`);
  }
  return text.replace(/^\[(.*)\]$/, "$1");
}

function parseHealthPath(text: string): string {
  if (!text.startsWith("/") || /[\s#]/.test(text)) {
    throw new ConfigError(`--health-path: "${text}" must be a path starting with /`);
  }
  return text;
}

function parsePolicy(text: string): PolicyName {
  if (!isPolicyName(text)) {
    throw new ConfigError(`--policy: "${text}" is not one of ${POLICY_NAMES.join(", ")}`);
  }
  return text;
}

function parseHashKeyFlag(text: string | undefined): HashKeySpec {
  if (text === undefined) return DEFAULTS.hashKey;
  try {
    return parseHashKey(text);
  } catch (error) {
    throw new ConfigError(`--hash-key: ${(error as Error).message}`);
  }
}

function parseCookieName(text: string): string {
  if (text !== "" && !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(text)) {
    throw new ConfigError(`--sticky-cookie: "${text}" is not a valid cookie name`);
  }
  return text;
}

function parseSecret(text: string): string {
  if (text !== "" && new TextEncoder().encode(text).length < 16) {
    throw new ConfigError("--sticky-secret: must be at least 16 bytes long");
  }
  return text;
}

function parseLogLevel(text: string): LogLevel {
  const level = LOG_LEVELS.find((l) => l === text.toLowerCase());
  if (!level) {
    throw new ConfigError(`--log-level: "${text}" is not one of ${LOG_LEVELS.join(", ")}`);
  }
  return level;
}

/**
 * Parses the values of (possibly repeated) `--backends` flags: comma-separated origins, each
 * optionally followed by `*WEIGHT`. Rejects duplicates, since a backend listed twice would
 * silently get twice the traffic; a weight says that explicitly.
 */
export function parseBackendList(values: readonly string[]): BackendSpec[] {
  const specs: BackendSpec[] = [];
  const seen = new Set<string>();
  for (const value of values) {
    for (const item of value.split(",")) {
      const text = item.trim();
      if (text === "") continue;
      const spec = parseBackend(text);
      if (seen.has(spec.url)) throw new ConfigError(`--backends: duplicate backend ${spec.url}`);
      seen.add(spec.url);
      specs.push(spec);
    }
  }
  return specs;
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
