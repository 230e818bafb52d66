/**
 * @module
 * The configuration file (`--config lb.jsonc`): JSON with comments and trailing commas, checked
 * key by key against the same rules as the command-line flags.
 *
 * Like `nginx -t`, validation reports every problem in the file at once, each with its JSON path
 * (`backends[1].url`) and, when read from text, its line and column:
 *
 *     lb.jsonc:7:5: backends[1].url: "ftp://x" is not an absolute http(s) URL
 *     lb.jsonc:9:3: healthInterval: "5 sec" is not a duration (use e.g. 500ms, 2s, 1m)
 *     lb.jsonc:12:3: healthIntervall: unknown key (did you mean "healthInterval"?)
 *
 * Keys are the camelCase names of the flags (`--health-interval` is `healthInterval`), durations
 * are strings with a unit as on the command line, and `lb.schema.json` at the repository root
 * describes the same shape for editors. Settings from the command line override the file, which
 * overrides the defaults ({@linkcode mergeSettings}).
 */

import {
  type AdminAddress,
  type Config,
  LOG_LEVELS,
  parseBackend,
  parseDiscoveryTarget,
  parseDuration,
  parseSize,
} from "./config.ts";
import { parseAddress, parseCidr } from "./cidr.ts";
import { ConfigError } from "./errors.ts";
import type { BackendSpec } from "./pool.ts";
import { POLICY_NAMES } from "./policies/mod.ts";
import { parseHashKey } from "./policies/hash.ts";

import type { Problem } from "./problem.ts";
export type { Problem };

/** Address of the admin listener, from `"HOST:PORT"` (`"[::1]:9090"` for IPv6). */
export type { AdminAddress } from "./config.ts";

/** Access log line formats. */
export const ACCESS_LOG_FORMATS = ["combined", "json"] as const;
/** Process log formats. */
export const LOG_FORMATS = ["text", "json"] as const;
/** Upstream transports. */
export const TRANSPORTS = ["native", "fetch"] as const;

/** Defaults of the optional (operations, edge, scale-out) settings that have one. */
export const OPS_DEFAULTS = {
  accessLogFormat: "combined",
  logFormat: "text",
  trustedProxies: [] as string[],
  forwarded: false,
  maxBody: 10 * 1024 * 1024,
  bodyTimeout: 30_000,
  discover: [] as string[],
  discoverInterval: 10_000,
  workers: 1,
  transport: "native",
  readTimeout: 60_000,
} satisfies Partial<Config>;

/**
 * What a configuration file may set: any {@linkcode Config} field except `demo` (a development
 * switch, flag only), durations in ms and backends as specs.
 * A key absent from the file is absent here.
 */
export type FileSettings = Partial<Omit<Config, "demo">>;

/** A configuration file that cannot be used; the message lists every problem, one per line. */
export class ConfigFileError extends ConfigError {
  override name = "ConfigFileError";

  constructor(readonly file: string, readonly problems: readonly Problem[]) {
    super(problems.map((problem) => formatProblem(problem, file)).join("\n"));
  }
}

/** A JSONC syntax error; the message starts with `line:column:`. */
export class JsoncSyntaxError extends SyntaxError {
  override name = "JsoncSyntaxError";

  constructor(
    /** The message without the position. */
    readonly reason: string,
    /** 1-based line. */
    readonly line: number,
    /** 1-based column, in UTF-16 code units. */
    readonly column: number,
  ) {
    super(`${line}:${column}: ${reason}`);
  }
}

/** A position in the text, 1-based. */
export interface Location {
  line: number;
  column: number;
}

/**
 * Formats a problem as one line: `file:line:column: path: message`, leaving out what is unknown
 * (compilers' format, so editors and terminals can jump to it).
 */
export function formatProblem(problem: Problem, file?: string): string {
  let where = file ?? "";
  if (problem.line !== undefined) {
    where += `${where ? ":" : ""}${problem.line}:${problem.column ?? 1}`;
  }
  const what = problem.path ? `${problem.path}: ${problem.message}` : problem.message;
  return where ? `${where}: ${what}` : what;
}

/**
 * The JSON path of `key` inside `parent`: `a.b`, `a[2]`, or `a["odd key"]` for keys that are not
 * words (dashes count as word characters so that a kebab-case typo reads as written).
 */
export function childPath(parent: string, key: string | number): string {
  if (typeof key === "number") return `${parent}[${key}]`;
  if (/^[A-Za-z_$][\w$-]*$/.test(key)) return parent ? `${parent}.${key}` : key;
  return `${parent}[${JSON.stringify(key)}]`;
}

// ---------------------------------------------------------------------------------------------
// JSONC

/** Options for {@linkcode parseJsonc}. */
export interface ParseJsoncOptions {
  /**
   * When given, receives where every value is, by JSON path (the root is `""`): the key of an
   * object member, the start of an array element. @default undefined
   */
  locations?: Map<string, Location>;
}

/**
 * Parses JSON extended with `//` and `/* *\/` comments and trailing commas in objects and
 * arrays (as VS Code's `jsonc`). Everything else is strict JSON: double-quoted strings and keys,
 * no `NaN`, no leading zeros. A leading byte-order mark is skipped.
 *
 * Duplicate keys are refused: in a configuration file one of the two is always a mistake, and
 * which one wins would be invisible. A key `__proto__` becomes an ordinary own property.
 *
 * @throws {JsoncSyntaxError} at the first syntax error, with its line and column.
 */
export function parseJsonc(text: string, options: ParseJsoncOptions = {}): unknown {
  return new JsoncParser(text, options.locations).parseDocument();
}

/** Nesting deeper than this is refused rather than risking the call stack. */
const MAX_DEPTH = 500;
const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
const ESCAPES: Record<string, string> = {
  '"': '"',
  "\\": "\\",
  "/": "/",
  b: "\b",
  f: "\f",
  n: "\n",
  r: "\r",
  t: "\t",
};

class JsoncParser {
  #pos = 0;
  #lineStarts?: number[];

  constructor(readonly text: string, readonly locations?: Map<string, Location>) {}

  parseDocument(): unknown {
    if (this.text.charCodeAt(0) === 0xfeff) this.#pos = 1;
    this.#skip();
    if (this.#pos >= this.text.length) this.#fail("expected a value, found the end of the text");
    const value = this.#value("", 0);
    this.#skip();
    if (this.#pos < this.text.length) this.#fail(`unexpected ${this.#found()} after the value`);
    return value;
  }

  /** Parses the value at the current position; `start` is where its location points. */
  #value(path: string, depth: number, start = this.#pos): unknown {
    if (depth > MAX_DEPTH) this.#fail(`nested more than ${MAX_DEPTH} levels deep`);
    this.locations?.set(path, this.location(start));
    const c = this.text[this.#pos];
    if (c === "{") return this.#object(path, depth);
    if (c === "[") return this.#array(path, depth);
    if (c === '"') return this.#string();
    if (c === "-" || (c >= "0" && c <= "9")) return this.#number();
    for (const [word, value] of [["true", true], ["false", false], ["null", null]] as const) {
      if (this.text.startsWith(word, this.#pos) && !this.#isWordChar(this.#pos + word.length)) {
        this.#pos += word.length;
        return value;
      }
    }
    if (c === "'") this.#fail("strings must be in double quotes");
    return this.#fail(`expected a value, found ${this.#found()}`);
  }

  #object(path: string, depth: number): Record<string, unknown> {
    const result: Record<string, unknown> = {};
    this.#pos++; // {
    this.#skip();
    while (this.text[this.#pos] !== "}") {
      if (this.text[this.#pos] !== '"') {
        this.#fail(`expected a double-quoted key or "}", found ${this.#found()}`);
      }
      const keyStart = this.#pos;
      const key = this.#string();
      if (Object.hasOwn(result, key)) this.#fail(`duplicate key ${JSON.stringify(key)}`, keyStart);
      this.#skip();
      if (this.text[this.#pos] !== ":") {
        this.#fail(`expected ":" after the key, found ${this.#found()}`);
      }
      this.#pos++;
      this.#skip();
      // defineProperty, not assignment: a "__proto__" key must not replace the prototype.
      Object.defineProperty(result, key, {
        // A member's location is its key, where an editor would put the cursor.
        value: this.#value(childPath(path, key), depth + 1, keyStart),
        enumerable: true,
        writable: true,
        configurable: true,
      });
      this.#skip();
      if (this.text[this.#pos] === ",") {
        this.#pos++;
        this.#skip();
      } else if (this.text[this.#pos] !== "}") {
        this.#fail(`expected "," or "}" after a member, found ${this.#found()}`);
      }
    }
    this.#pos++; // }
    return result;
  }

  #array(path: string, depth: number): unknown[] {
    const result: unknown[] = [];
    this.#pos++; // [
    this.#skip();
    while (this.text[this.#pos] !== "]") {
      if (this.text[this.#pos] === ",") this.#fail('expected a value or "]", found ","');
      if (this.#pos >= this.text.length) {
        this.#fail('expected a value or "]", found the end of the text');
      }
      result.push(this.#value(childPath(path, result.length), depth + 1));
      this.#skip();
      if (this.text[this.#pos] === ",") {
        this.#pos++;
        this.#skip();
      } else if (this.text[this.#pos] !== "]") {
        this.#fail(`expected "," or "]" after an element, found ${this.#found()}`);
      }
    }
    this.#pos++; // ]
    return result;
  }

  #string(): string {
    const start = this.#pos;
    this.#pos++; // opening quote
    let result = "";
    let chunkStart = this.#pos;
    while (true) {
      if (this.#pos >= this.text.length) this.#fail("unterminated string", start);
      const code = this.text.charCodeAt(this.#pos);
      if (code === 0x22) break; // "
      if (code < 0x20) this.#fail("control character in a string (escape it, e.g. \\n)");
      if (code !== 0x5c) { // not a backslash
        this.#pos++;
        continue;
      }
      result += this.text.slice(chunkStart, this.#pos);
      const escape = this.text[this.#pos + 1];
      if (escape === "u") {
        const hex = this.text.slice(this.#pos + 2, this.#pos + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.#fail("\\u must be followed by four hex digits");
        result += String.fromCharCode(parseInt(hex, 16));
        this.#pos += 6;
      } else if (escape !== undefined && Object.hasOwn(ESCAPES, escape)) {
        result += ESCAPES[escape];
        this.#pos += 2;
      } else {
        this.#fail(`invalid escape \\${escape ?? ""} in a string`);
      }
      chunkStart = this.#pos;
    }
    result += this.text.slice(chunkStart, this.#pos);
    this.#pos++; // closing quote
    return result;
  }

  #number(): number {
    NUMBER.lastIndex = this.#pos;
    const match = NUMBER.exec(this.text);
    if (!match || this.#isWordChar(this.#pos + match[0].length)) {
      const word = /^[-+.\w]*/.exec(this.text.slice(this.#pos))![0];
      this.#fail(`invalid number ${JSON.stringify(word)}`);
    }
    this.#pos += match[0].length;
    return Number(match[0]);
  }

  /** Skips whitespace and comments. */
  #skip(): void {
    const text = this.text;
    while (this.#pos < text.length) {
      const c = text[this.#pos];
      if (c === " " || c === "\t" || c === "\n" || c === "\r") {
        this.#pos++;
      } else if (c === "/" && text[this.#pos + 1] === "/") {
        while (this.#pos < text.length && text[this.#pos] !== "\n" && text[this.#pos] !== "\r") {
          this.#pos++;
        }
      } else if (c === "/" && text[this.#pos + 1] === "*") {
        const end = text.indexOf("*/", this.#pos + 2);
        if (end === -1) this.#fail("unterminated /* comment");
        this.#pos = end + 2;
      } else {
        return;
      }
    }
  }

  #isWordChar(index: number): boolean {
    return /[\w.+-]/.test(this.text[index] ?? "");
  }

  #found(): string {
    if (this.#pos >= this.text.length) return "the end of the text";
    return JSON.stringify(String.fromCodePoint(this.text.codePointAt(this.#pos)!));
  }

  #fail(reason: string, at = this.#pos): never {
    const { line, column } = this.location(at);
    throw new JsoncSyntaxError(reason, line, column);
  }

  /** Line and column of an offset; CRLF, LF and lone CR each end a line. */
  location(offset: number): Location {
    if (!this.#lineStarts) {
      this.#lineStarts = [0];
      for (const match of this.text.matchAll(/\r\n?|\n/g)) {
        this.#lineStarts.push(match.index + match[0].length);
      }
    }
    const starts = this.#lineStarts;
    let low = 0;
    let high = starts.length - 1;
    while (low < high) {
      const mid = (low + high + 1) >> 1;
      if (starts[mid] <= offset) low = mid;
      else high = mid - 1;
    }
    return { line: low + 1, column: offset - starts[low] + 1 };
  }
}

// ---------------------------------------------------------------------------------------------
// Validation

/** Checks one value; pushes problems and returns undefined when the value is unusable. */
type Check<T> = (value: unknown, path: string, problems: Problem[]) => T | undefined;

const DURATION_TEXT = /^\d+(?:\.\d+)?(?:ms|s|m|h)$/;
const MAX_TIMER_MS = 2_147_483_647;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Short, one-line rendering of any JSON value for messages. */
function show(value: unknown): string {
  if (Array.isArray(value)) return "a list";
  if (value !== null && typeof value === "object") return "an object";
  const text = JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 77)}..."` : text;
}

/** Records a problem; returns undefined so a check can `return reject(...)`. */
function reject(problems: Problem[], path: string, message: string): undefined {
  problems.push({ path, message });
  return undefined;
}

function integer(min: number, max: number): Check<number> {
  return (value, path, problems) => {
    if (typeof value !== "number" || !Number.isInteger(value)) {
      return reject(problems, path, `${show(value)} is not a whole number`);
    }
    if (value < min || value > max) {
      return reject(problems, path, `${value} is out of range (${min} to ${max})`);
    }
    return value;
  };
}

/** Same grammar as the flags; `parseDuration` alone would also accept surrounding spaces. */
function duration(minimumMs: number): Check<number> {
  return (value, path, problems) => {
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
  };
}

/** Exactly one of `names` (case matters, unlike `--log-level`, so that the schema can say it). */
function oneOf<T extends string>(names: readonly T[]): Check<T> {
  return (value, path, problems) => {
    if (typeof value === "string" && (names as readonly string[]).includes(value)) {
      return value as T;
    }
    return reject(problems, path, `${show(value)} is not one of ${names.join(", ")}`);
  };
}

/** A string passing `test`, else the problem `<value> <what>`. */
function text(test: (value: string) => boolean, what: string): Check<string> {
  return (value, path, problems) =>
    typeof value === "string" && test(value)
      ? value
      : reject(problems, path, `${show(value)} ${what}`);
}

const bool: Check<boolean> = (value, path, problems) =>
  typeof value === "boolean"
    ? value
    : reject(problems, path, `${show(value)} is not true or false`);

const port: Check<number> = (value, path, problems) => {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    return reject(problems, path, `${show(value)} is not a port number`);
  }
  if (value < 0 || value > 65535) {
    return reject(problems, path, `${value} is out of range (0 to 65535)`);
  }
  return value;
};

/** Same rule as `--host`: not empty, no spaces, `/`, `?`, `#` or `@`; brackets are dropped. */
function isBindAddress(value: string): boolean {
  return value.trim() !== "" && !/[\s/?#@]/.test(value);
}

const bindAddress = text(isBindAddress, "is not a bind address");
const host: Check<string> = (value, path, problems) =>
  bindAddress(value, path, problems)?.replace(/^\[(.*)\]$/, "$1");

const hashKey: Check<Config["hashKey"]> = (value, path, problems) => {
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
};

/** Same rule as `--sticky-secret`: empty (a random one per process) or at least 16 bytes. */
const stickySecret: Check<string> = (value, path, problems) => {
  if (typeof value !== "string") return reject(problems, path, `${show(value)} is not a string`);
  if (value !== "" && new TextEncoder().encode(value).length < 16) {
    return reject(problems, path, "must be at least 16 bytes long");
  }
  return value;
};

/** Sent as `Authorization: Bearer TOKEN`, so visible ASCII only; 16+ so it is not guessable. */
const adminToken: Check<string> = (value, path, problems) => {
  if (typeof value !== "string" || !/^[\x21-\x7e]*$/.test(value)) {
    return reject(problems, path, "must be visible ASCII characters without spaces");
  }
  if (value.length < 16) return reject(problems, path, "must be at least 16 characters long");
  return value;
};

const admin: Check<AdminAddress> = (value, path, problems) => {
  const match = typeof value === "string"
    ? /^(\[[0-9A-Fa-f:.]+\]|[^\s/?#@:[\]]+):(\d{1,5})$/.exec(value)
    : null;
  if (!match || !isBindAddress(match[1])) {
    return reject(problems, path, `${show(value)} is not HOST:PORT (e.g. 127.0.0.1:9090)`);
  }
  if (Number(match[2]) > 65535) {
    return reject(problems, path, `port ${match[2]} is out of range (0 to 65535)`);
  }
  return { host: match[1].replace(/^\[(.*)\]$/, "$1"), port: Number(match[2]) };
};

const accessLog = text(
  (value) => value !== "" && !value.includes("\0"),
  'is not "stdout" or a file path',
);

const alertWebhook: Check<string> = (value, path, problems) => {
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
};

const filePath = text((v) => v !== "" && !v.includes("\0"), "is not a file path");

/** Bytes as a JSON number, or a string with a unit like "10MiB". */
const size: Check<number> = (value, path, problems) => {
  const bytes = typeof value === "number" && Number.isSafeInteger(value) && value >= 0
    ? value
    : typeof value === "string"
    ? parseSize(value)
    : undefined;
  if (bytes === undefined) {
    return reject(problems, path, `${show(value)} is not a size (use e.g. 1048576 or 10MiB)`);
  }
  return bytes;
};

/** A list of strings, each checked by `item`. */
function listOf(item: Check<string>, what: string): Check<string[]> {
  return (value, path, problems) => {
    if (!Array.isArray(value)) {
      return reject(problems, path, `${show(value)} is not a list of ${what}`);
    }
    const before = problems.length;
    const out = value.map((v, i) => item(v, childPath(path, i), problems));
    return problems.length > before ? undefined : out as string[];
  };
}

const cidr = text((v) => parseCidr(v) !== undefined, "is not an IP address or CIDR range");
const discoveryTarget = text(
  (v) => parseDiscoveryTarget(v) !== undefined,
  "is not dns+srv://NAME or dns+a://NAME:PORT",
);
/** Deno.resolveDns needs an IP address for its name server, so a host name is refused here. */
const dnsServer = text((v) => {
  const match = /^(\[([0-9A-Fa-f:.]+)\]|[^\s/?#@:[\]]+):(\d{1,5})$/.exec(v);
  if (match === null || Number(match[3]) > 65535) return false;
  const host = match[2] ?? match[1];
  return host === "localhost" || parseAddress(host) !== undefined;
}, "is not IP:PORT ([IPv6]:PORT or localhost:PORT)");
const workers: Check<number | "auto"> = (value, path, problems) =>
  value === "auto" ? "auto" : integer(1, 256)(value, path, problems);

/** The message of a `parseBackend()` error without its flag prefix. */
function backendMessage(error: unknown): string {
  return (error as Error).message.replace(/^--backends:\s*/, "");
}

const BACKEND_KEYS = ["url", "weight"];
const weight = integer(0, 1_000_000);

/** One backend: `"URL"`, `"URL*WEIGHT"` (as in `--backends`) or `{ "url": URL, "weight": N }`. */
const backend: Check<BackendSpec> = (value, path, problems) => {
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
const backendUrl: Check<string> = (value, path, problems) => {
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

const backends: Check<BackendSpec[]> = (value, path, problems) => {
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
};

/**
 * The check of every key the file may hold. Typed against {@linkcode FileSettings}, so a field
 * added to `Config` does not compile until it gets a rule here (and then in `lb.schema.json`,
 * which a test compares with {@linkcode FILE_KEYS}).
 */
const FIELDS: { [K in keyof FileSettings]-?: Check<NonNullable<FileSettings[K]>> } = {
  backends,
  port,
  host,
  healthInterval: duration(1),
  healthTimeout: duration(1),
  healthPath: text((v) => v.startsWith("/") && !/[\s#]/.test(v), "must be a path starting with /"),
  rise: integer(1, 1000),
  fall: integer(1, 1000),
  retries: integer(0, 100),
  connectTimeout: duration(1),
  timeout: duration(1),
  drainTimeout: duration(0),
  logLevel: oneOf(LOG_LEVELS),
  policy: oneOf(POLICY_NAMES),
  hashKey,
  stickyCookie: text((v) => v === "" || TOKEN.test(v), "is not a valid cookie name"),
  stickySecret,
  slowStart: duration(0),
  maxConns: integer(0, 1_000_000),
  ejectAfter: integer(0, 1000),
  ejectTime: duration(1),
  ejectMaxTime: duration(1),
  ejectMaxPercent: integer(0, 100),
  ejectOn5xx: bool,
  panicThreshold: integer(0, 100),
  retryBudget: integer(0, 100),
  retryBudgetMin: integer(0, 1_000_000),
  admin,
  adminToken,
  accessLog,
  accessLogFormat: oneOf(ACCESS_LOG_FORMATS),
  alertWebhook,
  logFormat: oneOf(LOG_FORMATS),
  tlsCert: filePath,
  tlsKey: filePath,
  redirectHttp: integer(0, 65535),
  backendCa: filePath,
  backendCert: filePath,
  backendKey: filePath,
  trustedProxies: listOf(cidr, "CIDR ranges"),
  forwarded: bool,
  maxBody: size,
  bodyTimeout: duration(1),
  discover: listOf(discoveryTarget, "discovery URLs"),
  discoverInterval: duration(1),
  dnsServer,
  workers,
  transport: oneOf(TRANSPORTS),
  readTimeout: duration(1),
};

/** Every setting key a file may hold, in documentation order. */
export const FILE_KEYS = Object.keys(FIELDS) as readonly (keyof FileSettings)[];

/**
 * Keys accepted but ignored: `$schema` lets editors find `lb.schema.json`
 * (`"$schema": "./lb.schema.json"`).
 */
export const IGNORED_KEYS = ["$schema"] as const;

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Reports keys of `object` not in `allowed`, suggesting the closest allowed key. */
function checkKeys(
  object: Record<string, unknown>,
  allowed: readonly string[],
  path: string,
  problems: Problem[],
): void {
  for (const key of Object.keys(object)) {
    if (allowed.includes(key)) continue;
    const guess = closestKey(key, allowed);
    const hint = guess ? ` (did you mean ${JSON.stringify(guess)}?)` : "";
    problems.push({ path: childPath(path, key), message: `unknown key${hint}` });
  }
}

/** The allowed key a typo most likely meant: same letters ignoring case, `-` and `_`, or 2 edits. */
function closestKey(key: string, allowed: readonly string[]): string | undefined {
  const squash = (s: string) => s.toLowerCase().replace(/[-_]/g, "");
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of allowed) {
    const d = squash(key) === squash(candidate) ? 0 : editDistance(key, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j] + 1,
        current[j - 1] + 1,
        previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length];
}

/**
 * Checks a parsed file against the rules of the flags and returns the usable settings together
 * with every problem found (all of them, not the first). A key whose value has a problem is left
 * out of `settings`; use the settings only when `problems` is empty.
 */
export function validateFileSettings(
  raw: unknown,
): { settings: FileSettings; problems: Problem[] } {
  const problems: Problem[] = [];
  const settings: Record<string, unknown> = {};
  if (!isObject(raw)) {
    problems.push({
      path: "",
      message: `the file must hold an object ({ ... }), not ${show(raw)}`,
    });
    return { settings, problems };
  }
  checkKeys(raw, [...IGNORED_KEYS, ...FILE_KEYS], "", problems);
  for (const key of FILE_KEYS) {
    if (!Object.hasOwn(raw, key)) continue;
    const value = (FIELDS[key] as Check<unknown>)(raw[key], key, problems);
    if (value !== undefined) settings[key] = value;
  }
  const { ejectTime, ejectMaxTime } = settings as FileSettings;
  if (ejectTime !== undefined && ejectMaxTime !== undefined && ejectMaxTime < ejectTime) {
    problems.push({
      path: "ejectMaxTime",
      message: `${show(raw.ejectMaxTime)} is shorter than ejectTime (${show(raw.ejectTime)})`,
    });
  }
  return { settings, problems };
}

/**
 * Parses and validates the text of a configuration file. Problems carry the line and column of
 * the value they are about (or of the nearest enclosing value that exists).
 *
 * @param file Name used in messages.
 * @throws {ConfigFileError} with the syntax error, or with every validation problem.
 */
export function parseConfigText(text: string, file: string): FileSettings {
  const locations = new Map<string, Location>();
  let raw: unknown;
  try {
    raw = parseJsonc(text, { locations });
  } catch (error) {
    if (!(error instanceof JsoncSyntaxError)) throw error;
    throw new ConfigFileError(file, [
      { path: "", message: error.reason, line: error.line, column: error.column },
    ]);
  }
  const { settings, problems } = validateFileSettings(raw);
  if (problems.length > 0) {
    throw new ConfigFileError(file, problems.map((p) => ({ ...p, ...locate(locations, p.path) })));
  }
  return settings;
}

/** Location of `path`, or of its nearest ancestor in the file (a missing key has none). */
function locate(locations: Map<string, Location>, path: string): Location | undefined {
  for (let p = path;;) {
    const location = locations.get(p);
    const parent = p.replace(/(?:\.[^.[\]]*|\[[^\]]*\])$/, "");
    if (location || parent === p) return location ?? locations.get("");
    p = parent;
  }
}

/**
 * Reads, parses and validates a configuration file (needs `--allow-read` for it).
 *
 * @throws {ConfigFileError} when the file cannot be read, is not JSONC, or has any problem;
 * the message lists them all, one per line, as `file:line:column: path: message`.
 */
export async function readConfigFile(path: string | URL): Promise<FileSettings> {
  const name = path instanceof URL ? path.pathname : path;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    const reason = error instanceof Deno.errors.NotFound
      ? "no such file"
      : error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
      ? "not allowed to read it (run with --allow-read)"
      : (error as Error).message;
    throw new ConfigFileError(name, [{ path: "", message: `cannot read the file: ${reason}` }]);
  }
  return parseConfigText(text, name);
}

// ---------------------------------------------------------------------------------------------
// Merging

/**
 * Layers settings: each key comes from `flags` if set there, else from `file`, else from
 * `defaults`. A key that is absent or `undefined` in a layer does not count as set, so `flags`
 * should hold only what the user typed.
 *
 * Lists are replaced, not appended: `--backends` on the command line replaces the file's
 * `backends` (as every other flag replaces its key), so one file can be run against other
 * backends without editing it.
 */
export function mergeSettings<T extends object>(
  defaults: T,
  file: Partial<T>,
  flags: Partial<T>,
): T {
  const result = { ...defaults };
  for (const layer of [file, flags]) {
    for (const [key, value] of Object.entries(layer)) {
      if (value !== undefined) (result as Record<string, unknown>)[key] = value;
    }
  }
  return result;
}

/**
 * Rules across settings that only hold once file and flags are merged: some backend (unless
 * `demo`), and `ejectMaxTime` not below `ejectTime`. Paths name the file keys.
 */
export function checkSettings(config: Config): Problem[] {
  const problems: Problem[] = [];
  if (config.backends.length === 0 && !config.demo && (config.discover ?? []).length === 0) {
    problems.push({
      path: "backends",
      message:
        'no backends: list them in the file\'s "backends" or give --backends (or --discover, or --demo)',
    });
  }
  const pairs = [["tlsCert", "tlsKey"], ["backendCert", "backendKey"]] as const;
  for (const [a, b] of pairs) {
    if ((config[a] === undefined) !== (config[b] === undefined)) {
      const [given, missing] = config[a] === undefined ? [b, a] : [a, b];
      problems.push({ path: missing, message: `${given} is set but ${missing} is not: give both` });
    }
  }
  if (config.redirectHttp !== undefined && config.tlsCert === undefined) {
    problems.push({ path: "redirectHttp", message: "needs TLS (tlsCert and tlsKey)" });
  }
  if (config.ejectMaxTime < config.ejectTime) {
    problems.push({
      path: "ejectMaxTime",
      message: `${config.ejectMaxTime}ms is shorter than ejectTime (${config.ejectTime}ms)`,
    });
  }
  return problems;
}
