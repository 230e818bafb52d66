/**
 * @module
 * What a setting's value may be: the grammars shared by flags and file (durations, sizes,
 * backend URLs, discovery targets) and the checks the validator runs, each carrying the JSON
 * Schema of what it accepts so that `lb.schema.json` is generated from the same rules.
 *
 * A check takes a raw value (a JSON value from the file, or the text of a flag), pushes a
 * {@linkcode Problem} for each mistake at its JSON path, and returns the converted value
 * (durations in ms, backends as specs) or undefined.
 */

import { parseAddress, parseCidr } from "./cidr.ts";
import { ConfigError } from "./errors.ts";
import { unbracket } from "./host.ts";
import { childPath } from "./jsonc.ts";
import { type HashKeySpec, parseHashKey } from "./policies/hash.ts";
import type { BackendSpec } from "./pool.ts";
import { checkKeys, isObject, type Problem, show } from "./problem.ts";
import { formatDuration, parseDuration, parseSize, sizeValue } from "./units.ts";

export { formatDuration, parseDuration, parseSize };

export { checkKeys, isObject, show };
import { checkRoutes, type RouteSpec } from "./routes.ts";
import { PROTECTION_SCHEMAS } from "./protection.ts";

/** Log levels, most verbose first. */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
/** Access log line formats. */
export const ACCESS_LOG_FORMATS = ["combined", "json"] as const;
/** Process log formats. */
export const LOG_FORMATS = ["text", "json"] as const;
/** Upstream transports. */
export const TRANSPORTS = ["native", "fetch"] as const;
/** Front ends: Deno.serve, or the project's own HTTP/1.1 server. */
export const FRONTENDS = ["deno", "native"] as const;

// ---------------------------------------------------------------------------------------------
// Grammars

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
  // The URL parser drops tabs and newlines anywhere ("http://h:80\n81" is port 8081): refused.
  if ([...urlText.trim()].some((c) => c <= " " || c === "\x7f")) {
    throw new ConfigError(
      `--backends: ${JSON.stringify(urlText)} contains a space or a control character`,
    );
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
  if (url.port === "0") {
    throw new ConfigError(`--backends: "${urlText}" has port 0, which no backend can listen on`);
  }
  if ((url.pathname !== "/" && url.pathname !== "") || url.search || url.hash) {
    throw new ConfigError(
      `--backends: "${urlText}" must be an origin only (scheme://host:port), without path or query`,
    );
  }
  return { url: url.origin, weight };
}

// ---------------------------------------------------------------------------------------------
// Checks

/** A JSON Schema (draft 2020-12) node, as `lb.schema.json` holds them. */
export interface JsonSchema {
  [keyword: string]: unknown;
}

/** Checks one value; pushes problems and returns undefined when the value is unusable. */
export type CheckFn<T> = (value: unknown, path: string, problems: Problem[]) => T | undefined;

/** A check that also says, for the generated schema and docs, what it accepts. */
export interface Check<T> extends CheckFn<T> {
  /** JSON Schema of the values accepted (it may accept more: `--check` is authoritative). */
  readonly schema: JsonSchema;
  /** A checked value as the file spells it (`300000` -> `"5m"`), for schema defaults. */
  readonly toJson?: (value: T) => unknown;
}

/** Attaches the schema (and file spelling) to a check function. */
export function describe<T>(
  check: CheckFn<T>,
  schema: JsonSchema,
  toJson?: (value: T) => unknown,
): Check<T> {
  return Object.assign(check, { schema, toJson });
}

/** RFC 9110 token characters (header and cookie names), as a regular expression class. */
const TOKEN_CHARS = "[!#$%&'*+.^_`|~0-9A-Za-z-]";

/** Reusable schema definitions (`#/$defs/NAME`) the checks' schemas refer to. */
export const SCHEMA_DEFS: Record<string, JsonSchema> = {
  duration: {
    type: "string",
    pattern: "^\\d+(\\.\\d+)?(ms|s|m|h)$",
    description: "A number and a unit: 500ms, 2s, 1.5m, 1h.",
  },
  positiveDuration: {
    type: "string",
    pattern: "^(?!0+(\\.0+)?(ms|s|m|h)$)\\d+(\\.\\d+)?(ms|s|m|h)$",
    description: "A number and a unit, more than zero: 500ms, 2s, 1.5m, 1h.",
  },
  backendUrl: {
    type: "string",
    pattern: "^[hH][tT][tT][pP][sS]?://[^/?#@\\s*]+/?$",
    description: "An origin: http(s)://host:port, without path, query or credentials.",
  },
  backend: {
    oneOf: [
      {
        type: "string",
        pattern: "^[hH][tT][tT][pP][sS]?://[^/?#@\\s*]+/?(\\*\\d{1,7})?$",
        description: 'An origin, optionally followed by *WEIGHT: "http://10.0.0.1:8081*3".',
      },
      {
        type: "object",
        additionalProperties: false,
        required: ["url"],
        properties: {
          url: { $ref: "#/$defs/backendUrl" },
          weight: {
            type: "integer",
            minimum: 0,
            maximum: 1000000,
            default: 1,
            description: "Relative share of traffic; 0 receives nothing.",
          },
        },
      },
    ],
  },
  route: {
    type: "object",
    additionalProperties: false,
    description: "One route: conditions (all must hold) and exactly one action: " +
      "service, redirect or respond. See docs/configuration.md.",
    properties: {
      name: { type: "string", minLength: 1, description: "Name in metrics and logs." },
      host: {
        type: "string",
        description: "Host to match: exact (api.example.com) or *.suffix; any port.",
      },
      pathPrefix: {
        type: "string",
        pattern: "^/",
        description: "Path prefix, whole segments: /api matches /api and /api/x, not /apix.",
      },
      methods: {
        type: "array",
        minItems: 1,
        items: { type: "string", pattern: `^${TOKEN_CHARS}+$` },
        description: "Methods to match, exactly as sent (GET, POST, ...).",
      },
      headers: {
        type: "object",
        additionalProperties: { type: "string" },
        description: "Request headers to match: name -> exact value.",
      },
      service: { type: "string", description: "Service that answers." },
      stripPrefix: { type: "boolean", description: "Remove pathPrefix before forwarding." },
      addPrefix: {
        type: "string",
        pattern: "^/",
        description: "Path prepended before forwarding (after stripPrefix).",
      },
      redirect: {
        type: "object",
        additionalProperties: false,
        required: ["to"],
        properties: {
          to: { type: "string", description: "Location; {host} and {path} are replaced." },
          status: { enum: [301, 302, 303, 307, 308], default: 302 },
        },
      },
      respond: {
        type: "object",
        additionalProperties: false,
        required: ["status"],
        properties: {
          status: { type: "integer", minimum: 200, maximum: 599 },
          body: { type: "string", default: "" },
          contentType: { type: "string", default: "text/plain; charset=utf-8" },
        },
      },
      requestHeaders: { $ref: "#/$defs/headerRules" },
      responseHeaders: { $ref: "#/$defs/headerRules" },
      ...PROTECTION_SCHEMAS,
    },
    oneOf: [{ required: ["service"] }, { required: ["redirect"] }, { required: ["respond"] }],
  },
  headerRules: {
    type: "object",
    additionalProperties: false,
    description: "Header changes, applied as remove, then set (replacing), then add.",
    properties: {
      remove: { type: "array", items: { type: "string" } },
      set: { type: "object", additionalProperties: { type: "string" } },
      add: { type: "object", additionalProperties: { type: "string" } },
    },
  },
};

const DURATION_TEXT = /^\d+(?:\.\d+)?(?:ms|s|m|h)$/;
const MAX_TIMER_MS = 2_147_483_647;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Records a problem; returns undefined so a check can `return reject(...)`. */
export function reject(problems: Problem[], path: string, message: string): undefined {
  problems.push({ path, message });
  return undefined;
}

/** A whole number from `min` to `max`. */
export function integer(min: number, max: number): Check<number> {
  return describe((value, path, problems) => {
    if (typeof value !== "number" || !Number.isInteger(value)) {
      return reject(problems, path, `${show(value)} is not a whole number`);
    }
    if (value < min || value > max) {
      return reject(problems, path, `${value} is out of range (${min} to ${max})`);
    }
    return value;
  }, { type: "integer", minimum: min, maximum: max });
}

/** Same grammar as the flags; `parseDuration` alone would also accept surrounding spaces. */
export function duration(minimumMs: 0 | 1): Check<number> {
  return describe(
    (value, path, problems) => {
      const ms = typeof value === "string" && DURATION_TEXT.test(value)
        ? parseDuration(value)
        : undefined;
      if (ms === undefined) {
        return reject(problems, path, `${show(value)} is not a duration (use e.g. 500ms, 2s, 1m)`);
      }
      if (ms < minimumMs) {
        return reject(problems, path, `${show(value)} must be at least ${minimumMs}ms`);
      }
      if (ms > MAX_TIMER_MS) return reject(problems, path, `${show(value)} is too long`);
      return ms;
    },
    { $ref: minimumMs === 0 ? "#/$defs/duration" : "#/$defs/positiveDuration" },
    formatDuration,
  );
}

/** Exactly one of `names` (case matters, unlike `--log-level`, so that the schema can say it). */
export function oneOf<T extends string>(names: readonly T[]): Check<T> {
  return describe((value, path, problems) => {
    if (typeof value === "string" && (names as readonly string[]).includes(value)) {
      return value as T;
    }
    return reject(problems, path, `${show(value)} is not one of ${names.join(", ")}`);
  }, { enum: [...names] });
}

/** A string passing `test`, else the problem `<value> <what>`; `schema` says the same. */
export function text(
  test: (value: string) => boolean,
  what: string,
  schema: JsonSchema,
): Check<string> {
  return describe(
    (value, path, problems) =>
      typeof value === "string" && test(value)
        ? value
        : reject(problems, path, `${show(value)} ${what}`),
    { type: "string", ...schema },
  );
}

export const bool: Check<boolean> = describe(
  (value, path, problems) =>
    typeof value === "boolean"
      ? value
      : reject(problems, path, `${show(value)} is not true or false`),
  { type: "boolean" },
);

export const port: Check<number> = describe((value, path, problems) => {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    return reject(problems, path, `${show(value)} is not a port number`);
  }
  if (value < 0 || value > 65535) {
    return reject(problems, path, `${value} is out of range (0 to 65535)`);
  }
  return value;
}, { type: "integer", minimum: 0, maximum: 65535 });

/** Same rule as `--host`: not empty, no spaces, `/`, `?`, `#` or `@`; brackets are dropped. */
function isBindAddress(value: string): boolean {
  return value.trim() !== "" && !/[\s/?#@]/.test(value);
}

const bindAddress = text(isBindAddress, "is not a bind address", {});
export const host: Check<string> = describe(
  (value, path, problems) => {
    const address = bindAddress(value, path, problems);
    return address === undefined ? undefined : unbracket(address);
  },
  { type: "string", pattern: "^[^\\s/?#@]+$" },
);

export const healthPath = text(
  (v) => v.startsWith("/") && !/[\s#]/.test(v),
  "must be a path starting with /",
  { pattern: "^/[^\\s#]*$" },
);

/** `ip`, `path`, `header:NAME` or `cookie:NAME`. */
export const hashKey: Check<HashKeySpec> = describe((value, path, problems) => {
  if (typeof value !== "string") {
    return reject(
      problems,
      path,
      `${show(value)} is not one of ip, path, header:NAME, cookie:NAME`,
    );
  }
  try {
    return parseHashKey(value);
  } catch (error) {
    return reject(problems, path, (error as Error).message);
  }
}, {
  type: "string",
  pattern: `^(ip|path|(header|cookie):${TOKEN_CHARS}+)$`,
}, (spec) => "name" in spec ? `${spec.kind}:${spec.name}` : spec.kind);

export const cookieName = text((v) => v === "" || TOKEN.test(v), "is not a valid cookie name", {
  pattern: `^${TOKEN_CHARS}*$`,
});

/** Same rule as `--sticky-secret`: empty (a random one per process) or at least 16 bytes. */
export const stickySecret: Check<string> = describe((value, path, problems) => {
  if (typeof value !== "string") return reject(problems, path, `${show(value)} is not a string`);
  if (value !== "" && new TextEncoder().encode(value).length < 16) {
    return reject(problems, path, "must be at least 16 bytes long");
  }
  return value;
}, { type: "string", anyOf: [{ const: "" }, { minLength: 16 }] });

/** Sent as `Authorization: Bearer TOKEN`, so visible ASCII only; 16+ so it is not guessable. */
export const adminToken: Check<string> = describe((value, path, problems) => {
  if (typeof value !== "string" || !/^[\x21-\x7e]*$/.test(value)) {
    return reject(problems, path, "must be visible ASCII characters without spaces");
  }
  if (value.length < 16) return reject(problems, path, "must be at least 16 characters long");
  return value;
}, { type: "string", pattern: "^[!-~]{16,}$" });

/** Where the admin listener binds. */
export interface AdminAddress {
  host: string;
  port: number;
}

export const admin: Check<AdminAddress> = describe((value, path, problems) => {
  const match = typeof value === "string"
    ? /^(\[[0-9A-Fa-f:.]+\]|[^\s/?#@:[\]]+):(\d{1,5})$/.exec(value)
    : null;
  if (!match || !isBindAddress(match[1])) {
    return reject(problems, path, `${show(value)} is not HOST:PORT (e.g. 127.0.0.1:9090)`);
  }
  if (Number(match[2]) > 65535) {
    return reject(problems, path, `port ${match[2]} is out of range (0 to 65535)`);
  }
  return { host: unbracket(match[1]), port: Number(match[2]) };
}, {
  type: "string",
  pattern: "^(\\[[0-9A-Fa-f:.]+\\]|[^\\s/?#@:\\[\\]]+):\\d{1,5}$",
  examples: ["127.0.0.1:9090"],
});

export const accessLog = text(
  (value) => value !== "" && !value.includes("\0"),
  'is not "stdout" or a file path',
  { minLength: 1, examples: ["stdout", "/var/log/lb/access.log"] },
);

export const alertWebhook: Check<string> = describe((value, path, problems) => {
  let url: URL | undefined;
  try {
    url = typeof value === "string" ? new URL(value) : undefined;
  } catch { /* reported below */ }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) {
    return reject(problems, path, `${show(value)} is not an absolute http(s) URL`);
  }
  if (url.username || url.password) {
    // fetch() refuses URLs with credentials; put a token in the path or query instead.
    return reject(problems, path, `${show(value)} must not contain credentials`);
  }
  return url.href;
}, { type: "string", format: "uri", pattern: "^[hH][tT][tT][pP][sS]?://" });

export const filePath = text((v) => v !== "" && !v.includes("\0"), "is not a file path", {
  minLength: 1,
});

/** Bytes as a JSON number, or a string with a unit like "10MiB". */
export const size: Check<number> = describe((value, path, problems) => {
  const bytes = sizeValue(value);
  if (bytes === undefined) {
    return reject(problems, path, `${show(value)} is not a size (use e.g. 1048576 or 10MiB)`);
  }
  return bytes;
}, {
  oneOf: [
    { type: "integer", minimum: 0 },
    { type: "string", pattern: "^\\s*\\d+(\\.\\d+)?\\s*([bB]|[kKmMgG]([iI]?[bB])?)?$" },
  ],
});

/** A list of strings, each checked by `item`. */
export function listOf(item: Check<string>, what: string): Check<string[]> {
  return describe((value, path, problems) => {
    if (!Array.isArray(value)) {
      return reject(problems, path, `${show(value)} is not a list of ${what}`);
    }
    const before = problems.length;
    const out = value.map((v, i) => item(v, childPath(path, i), problems));
    return problems.length > before ? undefined : out as string[];
  }, { type: "array", items: item.schema });
}

export const cidr = text((v) => parseCidr(v) !== undefined, "is not an IP address or CIDR range", {
  pattern: "^[0-9A-Fa-f:.]+(/\\d{1,3})?$",
});

export const discoveryTarget = text(
  (v) => parseDiscoveryTarget(v) !== undefined,
  "is not dns+srv://NAME or dns+a://NAME:PORT",
  { pattern: "^dns\\+(srv://[A-Za-z0-9_.-]+|a://[A-Za-z0-9_.-]+:\\d{1,5})$" },
);

/** Deno.resolveDns needs an IP address for its name server, so a host name is refused here. */
export const dnsServer = text(
  (v) => {
    const match = /^(\[([0-9A-Fa-f:.]+)\]|[^\s/?#@:[\]]+):(\d{1,5})$/.exec(v);
    if (match === null || Number(match[3]) > 65535) return false;
    const host = match[2] ?? match[1];
    return host === "localhost" || parseAddress(host) !== undefined;
  },
  "is not IP:PORT ([IPv6]:PORT or localhost:PORT)",
  {
    pattern: "^(\\[[0-9A-Fa-f:.]+\\]|[0-9.]+|localhost):\\d{1,5}$",
  },
);

const workerCount = integer(1, 256);
export const workers: Check<number | "auto"> = describe(
  (value, path, problems) => value === "auto" ? "auto" : workerCount(value, path, problems),
  { oneOf: [workerCount.schema, { const: "auto" }] },
);

/** `--workers`: a count, or `auto` for one per core. */
export function resolveWorkerCount(workers: number | "auto" | undefined): number {
  if (workers === "auto") return Math.max(1, navigator.hardwareConcurrency || 1);
  return workers ?? 1;
}

/** The message of a `parseBackend()` error without its flag prefix. */
function backendMessage(error: unknown): string {
  return (error as Error).message.replace(/^--backends:\s*/, "");
}

const BACKEND_KEYS = ["url", "weight"];
const weight = integer(0, 1_000_000);

/** One backend: `"URL"`, `"URL*WEIGHT"` (as in `--backends`) or `{ "url": URL, "weight": N }`. */
const backend: CheckFn<BackendSpec> = (value, path, problems) => {
  if (typeof value === "string") {
    try {
      return parseBackend(value);
    } catch (error) {
      return reject(problems, path, backendMessage(error));
    }
  }
  if (!isObject(value)) {
    return reject(problems, path, `${show(value)} is not a URL or a {"url", "weight"} object`);
  }
  const before = problems.length;
  checkKeys(value, BACKEND_KEYS, path, problems);
  const url = Object.hasOwn(value, "url")
    ? backendUrl(value.url, childPath(path, "url"), problems)
    : reject(problems, path, 'needs a "url"');
  const w = Object.hasOwn(value, "weight")
    ? weight(value.weight, childPath(path, "weight"), problems)
    : 1;
  if (problems.length > before || url === undefined || w === undefined) return undefined;
  return { url, weight: w };
};

/** The `url` of a backend object: an origin, without the `*WEIGHT` suffix of the string form. */
const backendUrl: CheckFn<string> = (value, path, problems) => {
  // parseBackend() would read "*3" as a weight; in an object the weight has its own key.
  if (typeof value !== "string" || value.includes("*")) {
    return reject(problems, path, `${show(value)} is not an absolute http(s) URL`);
  }
  try {
    return parseBackend(value).url;
  } catch (error) {
    return reject(problems, path, backendMessage(error));
  }
};

/** A non-empty list of backends, no origin twice. */
export const backends: Check<BackendSpec[]> = describe((value, path, problems) => {
  if (!Array.isArray(value)) {
    return reject(problems, path, `${show(value)} is not a list of backends`);
  }
  if (value.length === 0) {
    return reject(problems, path, "is empty: list at least one backend, or leave the key out");
  }
  const before = problems.length;
  const specs: BackendSpec[] = [];
  const firstAt = new Map<string, string>();
  value.forEach((item, index) => {
    const itemPath = childPath(path, index);
    const spec = backend(item, itemPath, problems);
    if (!spec) return;
    const first = firstAt.get(spec.url);
    if (first !== undefined) {
      // A backend listed twice silently gets twice the traffic; a weight says that explicitly.
      const at = typeof item === "string" ? itemPath : childPath(itemPath, "url");
      reject(problems, at, `duplicate backend ${spec.url} (also ${first})`);
      return;
    }
    firstAt.set(spec.url, itemPath);
    specs.push(spec);
  });
  return problems.length > before ? undefined : specs;
}, { type: "array", minItems: 1, items: { $ref: "#/$defs/backend" } });

/** Health check of one service; unset fields take the top-level health settings. */
export interface HealthCheckSettings {
  /** GET path of the check. @default the top-level `healthPath` */
  path?: string;
  /** Statuses that pass. @default any 2xx or 3xx */
  expectStatus?: number[];
  /** Host header sent with the check, `hostname[:port]`. @default the backend's host */
  host?: string;
  /** The check passes only if the body contains this text. @default undefined (not looked at) */
  bodyContains?: string;
  /** Time between checks (ms). @default the top-level `healthInterval` */
  interval?: number;
  /** Time limit of one check (ms). @default the top-level `healthTimeout` */
  timeout?: number;
  /** Passing checks in a row that bring a backend back. @default the top-level `rise` */
  rise?: number;
  /** Failing checks in a row that take a backend down. @default the top-level `fall` */
  fall?: number;
}

const HOST_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
const HOST_HEADER = new RegExp(
  `^(?:${HOST_LABEL}(?:\\.${HOST_LABEL})*|\\[[0-9A-Fa-f:.]+\\])(?::(\\d{1,5}))?$`,
);
const statusCode = integer(100, 599);
const checkCount = integer(1, 1000);

/** The parts of a health check, by key, in documentation order. */
const HEALTH_CHECK_FIELDS: {
  [K in keyof HealthCheckSettings]-?: Check<NonNullable<HealthCheckSettings[K]>>;
} = {
  path: healthPath,
  expectStatus: describe((value, path, problems) => {
    if (!Array.isArray(value) || value.length === 0) {
      return reject(problems, path, `${show(value)} is not a non-empty list of statuses`);
    }
    const before = problems.length;
    const out = value.map((v, i) => statusCode(v, childPath(path, i), problems));
    return problems.length > before ? undefined : out as number[];
  }, { type: "array", minItems: 1, items: statusCode.schema }),
  host: text(
    (v) => HOST_HEADER.test(v) && Number(HOST_HEADER.exec(v)![1] ?? 0) <= 65535,
    "is not hostname[:port]",
    { pattern: HOST_HEADER.source },
  ),
  bodyContains: text((v) => v !== "", "must not be empty", { minLength: 1 }),
  interval: duration(1),
  timeout: duration(1),
  rise: checkCount,
  fall: checkCount,
};

/** Keys of a `healthCheck` object. */
export const HEALTH_CHECK_KEYS = Object.keys(HEALTH_CHECK_FIELDS) as (keyof HealthCheckSettings)[];

/** A service's `healthCheck` object. */
export const healthCheck: Check<HealthCheckSettings> = describe((value, path, problems) => {
  if (!isObject(value)) return reject(problems, path, `${show(value)} is not an object`);
  const before = problems.length;
  checkKeys(value, HEALTH_CHECK_KEYS, path, problems);
  const out: Record<string, unknown> = {};
  for (const key of HEALTH_CHECK_KEYS) {
    if (!Object.hasOwn(value, key)) continue;
    out[key] = (HEALTH_CHECK_FIELDS[key] as CheckFn<unknown>)(
      value[key],
      childPath(path, key),
      problems,
    );
  }
  return problems.length > before ? undefined : out as HealthCheckSettings;
}, {
  type: "object",
  additionalProperties: false,
  properties: {
    path: { ...HEALTH_CHECK_FIELDS.path.schema, description: "GET path of the check." },
    expectStatus: {
      ...HEALTH_CHECK_FIELDS.expectStatus.schema,
      description: "Statuses that pass (100-599). Default: any 2xx or 3xx.",
    },
    host: {
      ...HEALTH_CHECK_FIELDS.host.schema,
      description: "Host header sent with the check, hostname[:port].",
    },
    bodyContains: {
      ...HEALTH_CHECK_FIELDS.bodyContains.schema,
      description: "The check passes only if the response body (first 64 KiB) contains this.",
    },
    interval: { ...HEALTH_CHECK_FIELDS.interval.schema, description: "Time between checks." },
    timeout: { ...HEALTH_CHECK_FIELDS.timeout.schema, description: "Time limit of one check." },
    rise: { ...checkCount.schema, description: "Passing checks in a row that bring it back." },
    fall: { ...checkCount.schema, description: "Failing checks in a row that take it down." },
  },
});

/** The `routes` list, checked by lib/routes.ts (which owns the route grammar). */
export const routes: Check<RouteSpec[]> = describe(checkRoutes, {
  type: "array",
  items: { $ref: "#/$defs/route" },
});

// ---------------------------------------------------------------------------------------------
// Keys of objects
