/**
 * @module
 * Every setting, declared once: its check (and through it the schema), default, flag, help line,
 * reference text, scope (global, or per service) and whether changing it needs a restart.
 *
 * From {@linkcode SETTINGS} come `--help` and the flag parser (lib/config.ts), the validator
 * (lib/config_file.ts), {@linkcode DEFAULTS}, {@linkcode RESTART_ONLY}, and, through
 * tools/gen_config_docs.ts, `lb.schema.json` and docs/configuration.md (a test keeps those two
 * equal to what the tool generates). Adding a per-service setting is one entry here plus its
 * field in `Config` (and its name in `ServiceKey`); the table's type refuses anything less.
 *
 * It also resolves services: {@linkcode serviceConfigs} gives each service every per-service
 * setting (service value, else top-level value, else default), {@linkcode effectiveRoutes} the
 * routes in effect.
 */

import { domainProblem } from "./acme_domains.ts";
import { PROTECTION_CHECKS, PROTECTION_SCHEMAS } from "./protection.ts";
import type { Config, ServiceKey, ServiceSettings } from "./config.ts";
import { childPath } from "./jsonc.ts";
import { POLICY_NAMES } from "./policies/mod.ts";
import type { Problem } from "./problem.ts";
import type { RouteSpec } from "./routes.ts";
import {
  ACCESS_LOG_FORMATS,
  accessLog,
  admin,
  adminToken,
  alertWebhook,
  backends,
  bool,
  type Check,
  checkKeys,
  cidr,
  cookieName,
  describe,
  discoveryTarget,
  dnsServer,
  duration,
  filePath,
  FRONTENDS,
  hashKey,
  healthCheck,
  type HealthCheckSettings,
  healthPath,
  host,
  integer,
  isObject,
  type JsonSchema,
  listOf,
  LOG_FORMATS,
  LOG_LEVELS,
  oneOf,
  port,
  reject,
  routes,
  show,
  size,
  stickySecret,
  text,
  TRANSPORTS,
  workers,
} from "./setting_values.ts";

/** Settings without a default: absent means off (or, for the lists, none given). */
type NoDefault =
  | "backends"
  | "demo"
  | "services"
  | "routes"
  | "admin"
  | "adminToken"
  | "accessLog"
  | "alertWebhook"
  | "tlsCert"
  | "tlsKey"
  | "redirectHttp"
  | "backendCa"
  | "backendCert"
  | "backendKey"
  | "dnsServer"
  | "acmeDomains"
  | "acmeEmail"
  | "acmeCa"
  | "acmeDir"
  | "rateLimit"
  | "basicAuth"
  | "compress"
  | "mirror";

/** One setting's declaration. */
export type Setting<K extends keyof Config = keyof Config> =
  & {
    /** What a value may be, its conversion (durations to ms), and its JSON Schema. */
    check: Check<NonNullable<Config[K]>>;
    /**
     * How the command line gives it: `value` (`--port 80`), `list` (repeatable, comma-separated),
     * `switch` (`--forwarded`), or `none` (config file only). The flag is `--` + the key in
     * kebab case ({@linkcode keyToFlag}).
     */
    flag: "value" | "list" | "switch" | "none";
    /** The flag's value in `--help`: `N`, `DUR`, `FILE`... @default none (switches) */
    arg?: string;
    /** Its `--help` text; `{default}` stands for the default; `\n` continues on the next line. */
    help: string;
    /** What it does, for `lb.schema.json` and docs/configuration.md (one or two sentences). */
    doc: string;
    /** `service`: a service may set its own (`services.NAME.KEY`); top-level is its default. */
    scope: K extends ServiceKey ? "service" : "global";
    /** Whether a reload ignores a change (a restart applies it). */
    restart: boolean;
    /** `false`: a switch of the command only, not a key of the file. @default true */
    file?: false;
    /** Adjusts the flag's words (after list splitting and number conversion); undefined = unset. */
    fromFlag?: (value: unknown) => unknown;
  }
  & (K extends NoDefault ? { default?: undefined }
    : {
      /** Value when neither file nor flag sets it. */
      default: NonNullable<Config[K]>;
    });

/** Every setting's default (durations in ms). */
export type Defaults = {
  readonly [K in Exclude<keyof Config, NoDefault>]-?: NonNullable<Config[K]>;
};

const SERVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** The `services` object: name -> per-service settings (checked against this table). */
const services: Check<Record<string, ServiceSettings>> = describe((value, path, problems) => {
  if (!isObject(value)) {
    return reject(problems, path, `${show(value)} is not an object of services (name: {...})`);
  }
  const before = problems.length;
  const out: Record<string, ServiceSettings> = {};
  for (const [name, raw] of Object.entries(value)) {
    const at = childPath(path, name);
    if (!SERVICE_NAME.test(name)) {
      reject(
        problems,
        at,
        `${JSON.stringify(name)} is not a service name (up to 64 letters, digits, "_", "." ` +
          'or "-", starting with a letter or digit)',
      );
      continue;
    }
    const service = checkService(raw, at, problems);
    if (service !== undefined) out[name] = service;
  }
  return problems.length > before ? undefined : out;
}, {
  type: "object",
  propertyNames: { pattern: SERVICE_NAME.source },
  additionalProperties: { $ref: "#/$defs/service" },
});

/** One service object: per-service settings and `healthCheck`. */
function checkService(
  value: unknown,
  path: string,
  problems: Problem[],
): ServiceSettings | undefined {
  if (!isObject(value)) return reject(problems, path, `${show(value)} is not a service object`);
  const before = problems.length;
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(value)) {
    // A global setting inside a service is a likely mix-up: say where it belongs.
    if (Object.hasOwn(SETTINGS, key) && !SERVICE_KEY_SET.has(key)) {
      reject(problems, childPath(path, key), "is a global setting: set it at the top level");
    }
  }
  const allowed = [...SERVICE_KEYS, "healthCheck"];
  checkKeys(
    Object.fromEntries(Object.entries(value).filter(([k]) => !Object.hasOwn(SETTINGS, k))),
    allowed,
    path,
    problems,
  );
  for (const key of SERVICE_KEYS) {
    if (!Object.hasOwn(value, key)) continue;
    const check = SETTINGS[key].check as Check<unknown>;
    out[key] = check(value[key], childPath(path, key), problems);
  }
  if (Object.hasOwn(value, "healthCheck")) {
    out.healthCheck = healthCheck(value.healthCheck, childPath(path, "healthCheck"), problems);
  }
  return problems.length > before ? undefined : out as ServiceSettings;
}

/**
 * The settings, in `--help` and documentation order. Typed against `Config`: a key missing here,
 * an extra key, a wrong default type or a `scope` that disagrees with `ServiceKey` does not
 * compile.
 */
export const SETTINGS: { readonly [K in keyof Config]-?: Setting<K> } = {
  backends: {
    check: backends,
    flag: "list",
    arg: "URL,...",
    help: "backend origins, e.g. http://localhost:8081,http://localhost:8082;\n" +
      "a weight follows as URL*N (e.g. 'http://a:8081*3'); repeatable",
    doc:
      'Backend origins (http(s)://host:port, no path, query or credentials), each a URL string ("URL*N" gives weight N, as with --backends) or {"url", "weight"}. No duplicates. --backends on the command line replaces this list. At the top level they form the service "default".',
    scope: "service",
    restart: false,
    // An empty list is "no backends given", which the merged check reports clearly.
    fromFlag: (list) => (list as string[]).length > 0 ? list : undefined,
  },
  port: {
    check: port,
    default: 3030,
    flag: "value",
    arg: "N",
    help: "listening port (default {default})",
    doc: "Listening port (0 = any free port).",
    scope: "global",
    restart: true,
  },
  host: {
    check: host,
    default: "0.0.0.0",
    flag: "value",
    arg: "ADDR",
    help: "bind address (default {default})",
    doc: "Bind address.",
    scope: "global",
    restart: true,
  },
  healthInterval: {
    check: duration(1),
    default: 5000,
    flag: "value",
    arg: "DUR",
    help: "time between health checks (default {default})",
    doc: "Time between health check rounds, at least 1ms.",
    scope: "service",
    restart: false,
  },
  healthTimeout: {
    check: duration(1),
    default: 2000,
    flag: "value",
    arg: "DUR",
    help: "time limit of one health check (default {default})",
    doc: "Time limit of one health check, at least 1ms.",
    scope: "service",
    restart: false,
  },
  healthPath: {
    check: healthPath,
    default: "/",
    flag: "value",
    arg: "PATH",
    help: "GET path for health checks; 2xx/3xx is healthy (default {default})",
    doc: "GET path of health checks; 2xx and 3xx are healthy.",
    scope: "service",
    restart: false,
  },
  rise: {
    check: integer(1, 1000),
    default: 2,
    flag: "value",
    arg: "N",
    help: "passing checks that bring a backend back (default {default})",
    doc: "Passing checks in a row that bring a down backend back.",
    scope: "service",
    restart: false,
  },
  fall: {
    check: integer(1, 1000),
    default: 3,
    flag: "value",
    arg: "N",
    help: "failing checks that take a backend down (default {default})",
    doc: "Failing checks in a row that take an up backend down.",
    scope: "service",
    restart: false,
  },
  retries: {
    check: integer(0, 100),
    default: 2,
    flag: "value",
    arg: "N",
    help: "extra attempts, each on another backend (default {default})",
    doc: "Extra attempts after the first, each on a backend not yet tried.",
    scope: "service",
    restart: false,
  },
  connectTimeout: {
    check: duration(1),
    default: 3000,
    flag: "value",
    arg: "DUR",
    help: "time to connect to a backend (default {default})",
    doc: "Time to establish a backend connection, at least 1ms.",
    scope: "service",
    restart: false,
  },
  timeout: {
    check: duration(1),
    default: 30_000,
    flag: "value",
    arg: "DUR",
    help: "time to receive response headers (default {default})",
    doc:
      "Time from sending a request (its body included) to receiving response headers, at least 1ms. While a request body is sent, each piece must be taken by the backend within it; the client's own pauses do not count (--body-timeout bounds those). On the fetch transport it counts from the start of the attempt.",
    scope: "service",
    restart: false,
  },
  readTimeout: {
    check: duration(1),
    default: 60_000,
    flag: "value",
    arg: "DUR",
    help: "longest pause between two reads of a response body (default {default})",
    doc:
      "Longest pause between two reads of a response body; the client connection is then aborted and the backend's failure counted (native transport).",
    scope: "service",
    restart: false,
  },
  maxBackendConnections: {
    check: integer(0, 1_000_000),
    default: 0,
    flag: "value",
    arg: "N",
    help: "connections the native transport opens per backend, 0 = unlimited (default {default})",
    doc:
      "Connections the native transport keeps open (or opening) to one backend origin, shared by every service that names it; at the cap a request waits for a released connection up to its timeout, then fails as a connect failure (retried elsewhere; the backend is not marked down or ejected for it). 0 is unlimited, as nginx's max_conns.",
    scope: "global",
    restart: false,
  },
  maxIdleBackendConnections: {
    check: integer(0, 1_000_000),
    default: 0,
    flag: "value",
    arg: "N",
    help: "idle keep-alive connections kept per backend, 0 = no cap (default {default})",
    doc:
      "Idle keep-alive connections the native transport keeps to one backend origin; a connection released when that many are idle is closed (nginx's keepalive N). 0 is no cap: connections stay until unused for 30 s, as HAProxy's and Envoy's pools, since a cap below the number of requests in flight closes and reopens connections all the time under load.",
    scope: "global",
    restart: false,
  },
  drainTimeout: {
    check: duration(0),
    default: 10_000,
    flag: "value",
    arg: "DUR",
    help: "time in-flight requests get on shutdown (default {default})",
    doc: "Time in-flight requests get to finish on SIGINT/SIGTERM.",
    scope: "global",
    restart: false,
  },
  logLevel: {
    check: oneOf(LOG_LEVELS),
    default: "info",
    flag: "value",
    arg: "LEVEL",
    help: "debug, info, warn or error (default {default})",
    doc: "Lowest level logged (the flag ignores case).",
    scope: "global",
    restart: false,
    fromFlag: (text) => typeof text === "string" ? text.toLowerCase() : text,
  },
  logFormat: {
    check: oneOf(LOG_FORMATS),
    default: "text",
    flag: "value",
    arg: "FORMAT",
    help: "text or json (default {default})",
    doc: "Format of the balancer's own log lines.",
    scope: "global",
    restart: false,
  },
  policy: {
    check: oneOf(POLICY_NAMES),
    default: "round-robin",
    flag: "value",
    arg: "NAME",
    help: `${POLICY_NAMES.join(", ")} (default {default})`,
    doc: "Balancing algorithm.",
    scope: "service",
    restart: false,
  },
  hashKey: {
    check: hashKey,
    default: { kind: "ip" },
    flag: "value",
    arg: "KEY",
    help: "for --policy=hash: ip, path, header:NAME or cookie:NAME (default {default})",
    doc:
      "What the hash policy hashes: ip (the client address, read through X-Forwarded-For from --trusted-proxies as rate limits and access rules read it), path, header:NAME or cookie:NAME (a missing header or cookie falls back to ip).",
    scope: "service",
    restart: false,
  },
  stickyCookie: {
    check: cookieName,
    default: "",
    flag: "value",
    arg: "NAME",
    help: "pin clients to a backend with this cookie (any policy; default off)",
    doc: "Cookie that pins each client to a backend, on top of any policy; empty is off.",
    scope: "service",
    restart: false,
  },
  stickySecret: {
    check: stickySecret,
    default: "",
    flag: "value",
    arg: "TEXT",
    help: "key for sticky cookie values, 16+ bytes (default: random per process)",
    doc: "Key for sticky cookie values, at least 16 bytes; empty means a random one per process.",
    scope: "service",
    restart: false,
  },
  slowStart: {
    check: duration(0),
    default: 0,
    flag: "value",
    arg: "DUR",
    help: "ramp a returning or new backend's share over DUR (default off)",
    doc:
      "Ramp a backend that comes back (or is added) from 1/10 to its full share over this time; 0s is off.",
    scope: "service",
    restart: false,
  },
  maxConns: {
    check: integer(0, 1_000_000),
    default: 0,
    flag: "value",
    arg: "N",
    help: "concurrent requests per backend, 0 = unlimited (default {default})",
    doc: "Concurrent requests per backend; 0 is unlimited.",
    scope: "service",
    restart: false,
  },
  ejectAfter: {
    check: integer(0, 1000),
    default: 5,
    flag: "value",
    arg: "N",
    help: "consecutive failures that eject a backend, 0 = never (default {default})",
    doc: "Consecutive failed attempts that eject a backend; 0 is never.",
    scope: "service",
    restart: false,
  },
  ejectTime: {
    check: duration(1),
    default: 30_000,
    flag: "value",
    arg: "DUR",
    help: "first ejection time, multiplied on repeats (default {default})",
    doc: "First ejection; the n-th lasts n times as long. At least 1ms.",
    scope: "service",
    restart: false,
  },
  ejectMaxTime: {
    check: duration(1),
    default: 300_000,
    flag: "value",
    arg: "DUR",
    help: "longest ejection (default {default})",
    doc: "Longest ejection; not shorter than ejectTime.",
    scope: "service",
    restart: false,
  },
  ejectMaxPercent: {
    check: integer(0, 100),
    default: 50,
    flag: "value",
    arg: "N",
    help: "most backends ejected at once, percent (default {default})",
    doc: "Most backends ejected at once, in percent.",
    scope: "service",
    restart: false,
  },
  ejectOn5xx: {
    check: bool,
    default: false,
    flag: "switch",
    help: "count 5xx answers as failures for ejection",
    doc: "Count 5xx answers as failures for ejection.",
    scope: "service",
    restart: false,
  },
  panicThreshold: {
    check: integer(0, 100),
    default: 50,
    flag: "value",
    arg: "N",
    help: "ignore ejections when fewer than N% of healthy backends remain (default {default})",
    doc:
      "When ejections leave fewer than this percentage of the healthy backends, ignore ejections.",
    scope: "service",
    restart: false,
  },
  retryBudget: {
    check: integer(0, 100),
    default: 20,
    flag: "value",
    arg: "N",
    help: "retries may add at most N% of requests (default {default})",
    doc: "Retries may add at most this percentage to the requests of the last 10 s.",
    scope: "service",
    restart: false,
  },
  retryBudgetMin: {
    check: integer(0, 1_000_000),
    default: 10,
    flag: "value",
    arg: "N",
    help: "retries per second always allowed (default {default})",
    doc: "Retries per second allowed whatever the budget.",
    scope: "service",
    restart: false,
  },
  admin: {
    check: admin,
    flag: "value",
    arg: "HOST:PORT",
    help: "admin listener: API, /metrics, dashboard (default off)",
    doc:
      "Listen address of the admin API as HOST:PORT ([::1]:9090 for IPv6; port 0 = any free port). Absent: no admin API.",
    scope: "global",
    restart: true,
  },
  adminToken: {
    check: adminToken,
    flag: "value",
    arg: "TOKEN",
    help: "bearer token for the admin listener (or env LB_ADMIN_TOKEN)",
    doc:
      "Bearer token the admin API requires: 16 or more visible ASCII characters, no spaces. Required when the admin listener is off loopback.",
    scope: "global",
    restart: false,
  },
  accessLog: {
    check: accessLog,
    flag: "value",
    arg: "TARGET",
    help: "stdout or a file path (default off)",
    doc:
      'Where access log lines go: "stdout" or a file path (relative to the working directory). Absent: no access log.',
    scope: "global",
    restart: false,
  },
  accessLogFormat: {
    check: oneOf(ACCESS_LOG_FORMATS),
    default: "combined",
    flag: "value",
    arg: "F",
    help: "combined or json (default {default})",
    doc: "Access log line format: Apache/nginx combined, or one JSON object per line.",
    scope: "global",
    restart: false,
  },
  alertWebhook: {
    check: alertWebhook,
    flag: "value",
    arg: "URL",
    help: "POST a JSON event on every backend state change (default off)",
    doc:
      "Absolute http(s) URL (no user:password@) that receives a POST when a backend changes state. Absent: no alerts.",
    scope: "global",
    restart: false,
  },
  tlsCert: {
    check: filePath,
    flag: "value",
    arg: "FILE",
    help: "PEM certificate: terminate TLS (HTTP/2 and HTTP/1.1 by ALPN)",
    doc:
      "PEM certificate file: terminate TLS (HTTP/2 and HTTP/1.1 by ALPN). Needs tlsKey. The file's content is reloaded on SIGHUP and when it changes; which file needs a restart.",
    scope: "global",
    restart: true,
  },
  tlsKey: {
    check: filePath,
    flag: "value",
    arg: "FILE",
    help: "PEM private key for --tls-cert",
    doc: "PEM private key file for tlsCert.",
    scope: "global",
    restart: true,
  },
  redirectHttp: {
    check: integer(0, 65535),
    flag: "value",
    arg: "PORT",
    help: "plain-HTTP listener that redirects to HTTPS (with TLS)",
    doc: "Plain-HTTP port that redirects every request to HTTPS (needs TLS).",
    scope: "global",
    restart: true,
  },
  acme: {
    check: bool,
    default: false,
    flag: "switch",
    help: "HTTPS with certificates from an ACME server (Let's Encrypt); on with --acme-domains",
    doc:
      "Turns on automatic HTTPS: one certificate for acmeDomains (default: the routes' exact hosts) is ordered, stored and renewed; challenges are answered on redirectHttp (default 80). On whenever acmeDomains is set.",
    scope: "global",
    restart: true,
  },
  acmeDomains: {
    check: listOf(
      text((v) => domainProblem(v) === undefined, "is not a DNS name (no wildcard or IP)", {
        type: "string",
      }),
      "domain names",
    ),
    flag: "list",
    arg: "NAMES",
    help: "names the ACME certificate covers (default the routes' exact hosts)",
    doc:
      "Names one ACME certificate covers (Deno serves one certificate per listener). Setting it turns ACME on.",
    scope: "global",
    restart: true,
  },
  acmeEmail: {
    check: text((v) => /^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(v), "is not an e-mail address", {
      type: "string",
      format: "email",
    }),
    flag: "value",
    arg: "ADDRESS",
    help: "contact address for the ACME account (expiry notices)",
    doc: "Contact address given to the ACME server with the account.",
    scope: "global",
    restart: true,
  },
  acmeDirectory: {
    check: text((v) => /^https:\/\/[^\s]+$/.test(v), "is not an https URL", {
      type: "string",
      pattern: "^https://",
    }),
    default: "https://acme-v02.api.letsencrypt.org/directory",
    flag: "value",
    arg: "URL",
    help:
      "ACME directory (default Let's Encrypt production;\nstaging: https://acme-staging-v02.api.letsencrypt.org/directory)",
    doc:
      "ACME directory URL. Let's Encrypt's staging directory (https://acme-staging-v02.api.letsencrypt.org/directory) issues untrusted certificates under generous limits: use it to try a set-up.",
    scope: "global",
    restart: true,
  },
  acmeCa: {
    check: filePath,
    flag: "value",
    arg: "FILE",
    help: "extra CA (PEM) trusted for the ACME server's own HTTPS (test servers)",
    doc: "PEM file of a CA trusted for the ACME server's own HTTPS, besides the system roots.",
    scope: "global",
    restart: true,
  },
  acmeDir: {
    check: filePath,
    flag: "value",
    arg: "DIR",
    help: "where ACME keys and certificates are kept (default acme/ beside the config file)",
    doc:
      "Folder for the ACME account key and certificates (files mode 0600, written atomically). Default: `acme/` beside the config file, else `$XDG_DATA_HOME/load-balancer/acme` (`~/.local/share/...`).",
    scope: "global",
    restart: true,
  },
  backendCa: {
    check: filePath,
    flag: "value",
    arg: "FILE",
    help: "PEM CA bundle trusted for HTTPS backends (besides system roots)",
    doc: "PEM CA bundle trusted for HTTPS backends, besides the system roots.",
    scope: "global",
    restart: false,
  },
  backendCert: {
    check: filePath,
    flag: "value",
    arg: "FILE",
    help: "PEM client certificate for mTLS to backends",
    doc: "PEM client certificate for mTLS to backends. Needs backendKey.",
    scope: "global",
    restart: false,
  },
  backendKey: {
    check: filePath,
    flag: "value",
    arg: "FILE",
    help: "PEM client key for --backend-cert",
    doc: "PEM client key for backendCert.",
    scope: "global",
    restart: false,
  },
  trustedProxies: {
    check: listOf(cidr, "CIDR ranges"),
    default: [],
    flag: "list",
    arg: "CIDRS",
    help: "peers whose X-Forwarded-* are kept and extended (default none)",
    doc:
      "Peers (IP or CIDR) whose X-Forwarded-For is appended to and X-Forwarded-Proto/Host kept; from anyone else they are replaced.",
    scope: "global",
    restart: false,
  },
  allow: {
    check: listOf(cidr, "CIDR ranges"),
    default: [],
    flag: "list",
    arg: "CIDRS",
    help: "only clients in these ranges get through, 403 for others (default everyone)",
    doc:
      "Client addresses (IP or CIDR, IPv4 and IPv6) allowed on every route that has no allow list of its own; others get 403 and never reach a backend. The client address is the peer's, or the one --trusted-proxies vouch for.",
    scope: "global",
    restart: false,
  },
  deny: {
    check: listOf(cidr, "CIDR ranges"),
    default: [],
    flag: "list",
    arg: "CIDRS",
    help: "clients in these ranges get 403; deny wins over allow (default none)",
    doc:
      "Client addresses (IP or CIDR) refused with 403 on every route that has no deny list of its own; deny wins over allow.",
    scope: "global",
    restart: false,
  },
  forwarded: {
    check: bool,
    default: false,
    flag: "switch",
    help: "also send an RFC 7239 Forwarded header upstream",
    doc: "Also send an RFC 7239 Forwarded header upstream.",
    scope: "global",
    restart: false,
  },
  maxBody: {
    check: size,
    default: 10 * 1024 * 1024,
    flag: "value",
    arg: "SIZE",
    help: "largest request body, e.g. 1048576 or 10MiB (default 10MiB)",
    doc: "Largest request body: bytes (1048576) or with a unit (10MiB); larger gets 413.",
    scope: "service",
    restart: false,
  },
  bodyTimeout: {
    check: duration(1),
    default: 30_000,
    flag: "value",
    arg: "DUR",
    help: "longest wait between two reads of a request body (default {default})",
    doc: "Longest wait between two reads of a request body; a slower client gets 408.",
    scope: "service",
    restart: false,
  },
  discover: {
    check: listOf(discoveryTarget, "discovery URLs"),
    default: [],
    flag: "list",
    arg: "URL",
    help: "backends from DNS: dns+srv://NAME or dns+a://NAME:PORT; repeatable",
    doc:
      "Backends from DNS: dns+srv://NAME (SRV: host, port, weight) or dns+a://NAME:PORT (every A/AAAA address), besides backends.",
    scope: "service",
    restart: false,
  },
  discoverInterval: {
    check: duration(1),
    default: 10_000,
    flag: "value",
    arg: "DUR",
    help: "time between DNS lookups (default {default})",
    doc: "Time between DNS discovery lookups.",
    scope: "global",
    restart: false,
  },
  dnsServer: {
    check: dnsServer,
    flag: "value",
    arg: "HOST:PORT",
    help: "DNS server for discovery (default: the system resolver)",
    doc:
      "DNS server for discovery as IP:PORT ([IPv6]:PORT or localhost:PORT; a host name cannot be used). Absent: the system resolver.",
    scope: "global",
    restart: false,
  },
  workers: {
    check: workers,
    default: 1,
    flag: "value",
    arg: "N",
    help: "threads serving the port (SO_REUSEPORT); auto = one per core",
    doc: 'Serving threads sharing the port (SO_REUSEPORT); "auto" = one per core.',
    scope: "global",
    restart: true,
  },
  transport: {
    check: oneOf(TRANSPORTS),
    default: "native",
    flag: "value",
    arg: "NAME",
    help: "native (HTTP/1.1, default) or fetch (Deno's client, HTTP/2 backends)",
    doc:
      "How requests reach backends: native (the balancer's own HTTP/1.1 client) or fetch (Deno's client; for backends that need HTTP/2).",
    scope: "service",
    restart: false,
  },
  frontend: {
    check: oneOf(FRONTENDS),
    default: "deno",
    flag: "value",
    arg: "NAME",
    help:
      "deno (Deno.serve: HTTP/2 and HTTP/1.1, default) or native (HTTP/1.1 with\nheader and idle timeouts, PROXY protocol)",
    doc:
      "Who serves clients: deno (Deno.serve; HTTP/2 by ALPN on TLS, no header or idle timeout) or native (the balancer's own strict HTTP/1.1 server with --header-timeout, --idle-timeout, --max-connections and --proxy-protocol). See docs/frontend.md.",
    scope: "global",
    restart: true,
  },
  headerTimeout: {
    check: duration(1),
    default: 10_000,
    flag: "value",
    arg: "DUR",
    help: "native front end: time to receive a request head (default {default})",
    doc:
      "Native front end: longest time to receive a complete request head, from the connection's start or the end of the previous request; then 408 and the connection closes.",
    scope: "global",
    restart: true,
  },
  idleTimeout: {
    check: duration(1),
    default: 60_000,
    flag: "value",
    arg: "DUR",
    help: "native front end: keep-alive connection with no request (default {default})",
    doc:
      "Native front end: a kept-alive connection with no request for this long is closed, and so is one whose client takes no bytes of a response for this long.",
    scope: "global",
    restart: true,
  },
  maxConnections: {
    check: integer(0, 1_000_000),
    default: 0,
    flag: "value",
    arg: "N",
    help: "native front end: client connections at once, 0 = unlimited (default {default})",
    doc:
      "Native front end: client connections open at once; at the limit the balancer stops accepting (new connections wait in the kernel's backlog, as with HAProxy's maxconn). Per thread with --workers. 0 is unlimited.",
    scope: "global",
    restart: true,
  },
  backlog: {
    check: integer(1, 1_000_000),
    default: 4096,
    flag: "value",
    arg: "N",
    help: "listen backlog of the main listener, capped by net.core.somaxconn (default {default})",
    doc:
      "Connections the kernel queues on the main listener before the balancer accepts them (nginx's and HAProxy's backlog); the kernel caps it at net.core.somaxconn. With thousands of clients connecting at once, a short queue drops SYNs, which clients retry only after a second.",
    scope: "global",
    restart: true,
  },
  proxyProtocol: {
    check: bool,
    default: false,
    flag: "switch",
    help: "native front end: connections from --trusted-proxies start with a PROXY header",
    doc:
      "Native front end, plain HTTP: connections from --trusted-proxies start with a PROXY protocol header (v1 or v2) that names the client; from anyone else they are refused. The client address it names is used for X-Forwarded-For, hashing, rate limits, access rules and logs.",
    scope: "global",
    restart: true,
  },
  services: {
    check: services,
    flag: "none",
    help: "services by name, each with its own backends and per-service settings",
    doc:
      'Services by name (letters, digits, "_", "." and "-"), each an object of per-service settings (any setting marked "service", e.g. backends, policy, retries) and healthCheck; what a service leaves out comes from the top level. Config file only.',
    scope: "global",
    restart: false,
  },
  rateLimit: {
    check: describe(PROTECTION_CHECKS.rateLimit, PROTECTION_SCHEMAS.rateLimit),
    flag: "none",
    help: "token bucket per client on every route: 429 with Retry-After beyond it",
    doc:
      'Default rate limit of every route without its own: `{ "requestsPerSecond": 20, "burst": 40, "key": "ip" }` (or `"key": "header:X-Api-Key"`); one bucket per client key and route, shared by --workers threads. Over it: 429 with Retry-After. Config file only.',
    scope: "global",
    restart: false,
  },
  basicAuth: {
    check: describe(PROTECTION_CHECKS.basicAuth, PROTECTION_SCHEMAS.basicAuth),
    flag: "none",
    help: "users (bcrypt hashes, or an htpasswd usersFile) every route requires",
    doc:
      'Default basic auth of every route without its own: `{ "realm": "ops", "users": { "alice": "$2y$10$..." } }` or `"usersFile": "/etc/lb/htpasswd"` (bcrypt only, as htpasswd -B writes; re-read on reload). Missing or wrong credentials: 401. Config file only.',
    scope: "global",
    restart: false,
  },
  compress: {
    check: describe(PROTECTION_CHECKS.compress, PROTECTION_SCHEMAS.compress),
    flag: "none",
    help: "compress responses (br, gzip, zstd) on every route",
    doc:
      'Default response compression of every route without its own: `true`, or `{ "encodings": ["br", "gzip"], "minSize": 1024, "types": ["text/*"] }`. Only when the client accepts it and the backend did not encode. Config file only.',
    scope: "global",
    restart: false,
  },
  mirror: {
    check: describe(PROTECTION_CHECKS.mirror, PROTECTION_SCHEMAS.mirror),
    flag: "none",
    help: "copy a share of every route's requests to another service",
    doc:
      'Default mirror of every service route without its own: `{ "service": "shadow", "percent": 10, "maxBody": "64KiB" }`. Fire-and-forget: the client never waits for the copy. Config file only.',
    scope: "global",
    restart: false,
  },
  routes: {
    check: routes,
    flag: "none",
    help: "which requests go to which service, in order, first match wins",
    doc:
      'Routes, in order, first match wins: conditions (host, pathPrefix, methods, headers) and one action (service, redirect or respond). Absent: everything goes to the service "default" (or to the only service). Config file only.',
    scope: "global",
    restart: false,
  },
  demo: {
    check: bool,
    flag: "switch",
    file: false,
    help: "start three demo backends in-process and balance across them",
    doc:
      'Start three demo backends in-process; they join the service "default". Command line only.',
    scope: "global",
    restart: true,
  },
};

/** Every setting key, in table order. */
export const SETTING_KEYS = Object.keys(SETTINGS) as readonly (keyof Config)[];

/** Keys the command line can set (`--KEY`), in table order. */
export const FLAG_KEYS: readonly (keyof Config)[] = SETTING_KEYS.filter((key) =>
  SETTINGS[key].flag !== "none"
);

/** Keys a configuration file may hold, in table order. */
export const FILE_KEYS: readonly (keyof Config)[] = SETTING_KEYS.filter((key) =>
  SETTINGS[key].file !== false
);

/** Keys a service may set for itself, in table order. */
export const SERVICE_KEYS: readonly ServiceKey[] = SETTING_KEYS.filter((key): key is ServiceKey =>
  SETTINGS[key].scope === "service"
);
const SERVICE_KEY_SET: ReadonlySet<string> = new Set(SERVICE_KEYS);

/** Settings a reload leaves as they are: a change is reported and applied by a restart. */
export const RESTART_ONLY: readonly (keyof Config)[] = SETTING_KEYS.filter((key) =>
  SETTINGS[key].restart && SETTINGS[key].file !== false
);

/** Settings whose flag text is a JSON number in the file when it is all digits. */
export const NUMERIC_KEYS: ReadonlySet<keyof Config> = new Set(
  FLAG_KEYS.filter((key) => acceptsInteger(SETTINGS[key].check.schema)),
);

function acceptsInteger(schema: JsonSchema): boolean {
  return schema.type === "integer" ||
    ((schema.oneOf ?? []) as JsonSchema[]).some((s) => s.type === "integer");
}

/** Every default, by key (durations in ms). Shared: copy before changing a list in it. */
export const DEFAULTS: Defaults = Object.fromEntries(
  SETTING_KEYS.filter((key) => SETTINGS[key].default !== undefined)
    .map((key) => [key, SETTINGS[key].default]),
) as unknown as Defaults;

/** A setting's default as the file spells it (`"5s"`), or undefined when it has none. */
export function defaultJson(key: keyof Config): unknown {
  const { default: value, check } = SETTINGS[key] as Setting;
  if (value === undefined) return undefined;
  return check.toJson ? (check.toJson as (v: unknown) => unknown)(value) : value;
}

/** A setting's default for help text: `5s`, `3030`, `round-robin`; `""` for the empty string. */
export function formatDefault(key: keyof Config): string {
  const value = defaultJson(key);
  return typeof value === "string" && value !== "" ? value : JSON.stringify(value);
}

/** `health-interval` -> `healthInterval`. */
export function flagToKey(flag: string): string {
  return flag.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** `healthInterval` -> `--health-interval` (for messages about flags). */
export function keyToFlag(key: string): string {
  return `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`).replace(/(\d+)/g, "-$1")}`;
}

// ---------------------------------------------------------------------------------------------
// Services

/** The service the top-level `backends` and `discover` form. */
export const DEFAULT_SERVICE = "default";

/** Every per-service setting resolved (service value, else top-level value, else default). */
export type ServiceConfig = Pick<Required<Config>, ServiceKey> & {
  name: string;
  healthCheck:
    & Required<Omit<HealthCheckSettings, "host" | "bodyContains" | "expectStatus">>
    & { host?: string; bodyContains?: string; expectStatus?: number[] };
};

/**
 * The services a config defines: each of `services`, plus `default` built from the top-level
 * settings when the top level has backends or discover targets. A service's own `backends` and
 * `discover` are its own (the top-level lists belong to `default`); every other per-service
 * setting falls back to the top level, then to its default. `healthCheck` fields fall back to
 * the service's (or top-level) `healthPath`, `healthInterval`, `healthTimeout`, `rise`, `fall`.
 */
export function serviceConfigs(config: Config): Map<string, ServiceConfig> {
  const out = new Map<string, ServiceConfig>();
  if (config.backends.length > 0 || (config.discover ?? []).length > 0) {
    out.set(
      DEFAULT_SERVICE,
      resolveService(
        DEFAULT_SERVICE,
        { backends: config.backends, discover: config.discover },
        config,
      ),
    );
  }
  for (const [name, service] of Object.entries(config.services ?? {})) {
    out.set(name, resolveService(name, service, config));
  }
  return out;
}

/** Settings a service never takes from the top level: those lists are the `default` service's. */
const OWN_KEYS: ReadonlySet<ServiceKey> = new Set(["backends", "discover"]);

function resolveService(name: string, service: ServiceSettings, config: Config): ServiceConfig {
  const top = config as unknown as Record<string, unknown>;
  const defaults = DEFAULTS as unknown as Record<string, unknown>;
  const own = service as Record<string, unknown>;
  const resolved: Record<string, unknown> = { name };
  for (const key of SERVICE_KEYS) {
    resolved[key] = OWN_KEYS.has(key) ? own[key] ?? [] : own[key] ?? top[key] ?? defaults[key];
  }
  const r = resolved as Pick<Required<Config>, ServiceKey>;
  const check = service.healthCheck ?? {};
  const healthCheck: ServiceConfig["healthCheck"] = {
    path: check.path ?? r.healthPath,
    interval: check.interval ?? r.healthInterval,
    timeout: check.timeout ?? r.healthTimeout,
    rise: check.rise ?? r.rise,
    fall: check.fall ?? r.fall,
  };
  if (check.host !== undefined) healthCheck.host = check.host;
  if (check.bodyContains !== undefined) healthCheck.bodyContains = check.bodyContains;
  if (check.expectStatus !== undefined) healthCheck.expectStatus = check.expectStatus;
  return { ...r, name, healthCheck };
}

/**
 * The routes in effect: `config.routes`, or when absent one catch-all route to `default` (or to
 * the only service when there is exactly one). With several services and no routes (and no
 * `default`) there is no sensible guess: the result is empty and `problems` gets one.
 */
export function effectiveRoutes(config: Config, problems?: Problem[]): RouteSpec[] {
  if (config.routes !== undefined) return config.routes;
  return impliedRoutes([...serviceConfigs(config).keys()], problems);
}

/** The basic-auth users files `config` reads (top level and routes), each once, sorted. */
export function usersFilesOf(config: Config): string[] {
  const specs = [config.basicAuth, ...(config.routes ?? []).map((route) => route.basicAuth)];
  const files = specs.map((spec) => spec ? spec.usersFile : undefined);
  return [...new Set(files.filter((file) => file !== undefined))].sort();
}

/** The routes of a config without `routes`, given the service names that exist. */
export function impliedRoutes(names: readonly string[], problems?: Problem[]): RouteSpec[] {
  if (names.length === 0 || names.includes(DEFAULT_SERVICE)) {
    return [{ service: DEFAULT_SERVICE }];
  }
  if (names.length === 1) return [{ service: names[0] }];
  problems?.push({
    path: "routes",
    message: `several services (${names.join(", ")}) and no "routes": ` +
      "add routes that say which requests go to which service",
  });
  return [];
}
