/**
 * @module
 * HTTP Basic authentication per route (RFC 7617), with users and bcrypt hashes as `htpasswd -B`
 * writes them: the `basicAuth` route key's check ({@linkcode checkBasicAuth}) and schema, the
 * htpasswd file reader ({@linkcode loadUsers}), the challenge header ({@linkcode challenge}) and
 * the verifier ({@linkcode BasicAuthVerifier}).
 *
 * bcrypt is slow on purpose (about 70 ms per check at cost 10 with bcryptjs), so the verifier
 * never runs it on the thread that serves requests: checks go to one worker thread
 * (lib/bcrypt_worker.ts) through a bounded queue, and a full queue answers "busy" at once rather
 * than queueing without limit. Verdicts are cached by an HMAC of user, password and hash (keyed
 * with a random per-process secret, so the cache is no fast offline oracle for the password):
 * successes for `cacheMs`, failures for at most 10 s. An unknown user costs one bcrypt check of a
 * dummy hash as well, so the answer's timing does not tell which users exist.
 *
 * Passwords, hashes and the Authorization header never appear in a message of this module: a
 * "hash" in a config file may be a plain-text password put there by mistake.
 */

import { nodeCrypto } from "./node_builtins.ts";
import { assertRegularFile } from "./file_failure.ts";
import { childPath } from "./jsonc.ts";
import { isObject, type Problem, show } from "./problem.ts";

/** The `basicAuth` key of a route (or of the top level, as every route's default). */
export interface BasicAuthSpec {
  /** Shown by browsers in the login prompt; printable ASCII without `"` and `\`. @default "restricted" */
  realm: string;
  /** User name to bcrypt hash (`$2a$`, `$2b$` or `$2y$`). @default none */
  users?: Record<string, string>;
  /**
   * An htpasswd file (`user:hash` lines, `#` comments), read by {@linkcode loadUsers} at start-up
   * and on every reload; merged with `users` (a user in both is an error). @default none
   */
  usersFile?: string;
}

/** The verifier's verdict: "busy" means the queue of checks is full (answer 503). */
export type BasicAuthOutcome = "ok" | "denied" | "busy";

/** A check the worker runs (lib/bcrypt_worker.ts). */
export interface BcryptRequest {
  id: number;
  password: string;
  hash: string;
}

/**
 * What the worker posts: "ready" once it listens (Deno loses messages that arrive before a worker's
 * module has been evaluated), then one "answer" per {@linkcode BcryptRequest}.
 */
export type BcryptAnswer = { type: "ready" } | { type: "answer"; id: number; ok: boolean };

/** The module the verifier's worker thread runs (for a read-permission check at start-up). */
export const BCRYPT_WORKER_MODULE = new URL("./bcrypt_worker.ts", import.meta.url);

/** The realm when none is given. */
export const DEFAULT_REALM = "restricted";

const SPEC_KEYS = ["realm", "users", "usersFile"];
/** What `htpasswd -B` writes: `$2y$`, a two-digit cost, 22 characters of salt, 31 of hash. */
const BCRYPT = /^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$/;
/** bcrypt's own range starts at 4; htpasswd -B stops at 17 (about 9 s per check with bcryptjs). */
const MIN_COST = 4;
const MAX_COST = 17;
/** Printable ASCII without `"` and `\`, so the realm needs no escaping in the quoted string. */
const REALM = /^[\x20\x21\x23-\x5b\x5d-\x7e]+$/;
/** RFC 7617 §2: a user-id cannot contain a colon; control characters cannot be typed. */
// deno-lint-ignore no-control-regex -- control characters are what the pattern excludes
const USER = /^[^:\x00-\x1f\x7f]+$/;
const ONLY_BCRYPT =
  "only bcrypt hashes ($2a$, $2b$, $2y$, as htpasswd -B writes them) are accepted";

/**
 * Why `hash` is not an accepted bcrypt hash, or undefined when it is one. Names the kind of hash
 * found, never the value (it may be a plain-text password).
 */
export function hashProblem(hash: string): string | undefined {
  const bcrypt = BCRYPT.exec(hash);
  if (bcrypt) {
    const cost = Number(bcrypt[1]);
    if (cost >= MIN_COST && cost <= MAX_COST) return undefined;
    return `bcrypt cost ${cost} is out of range (${MIN_COST} to ${MAX_COST}, as htpasswd -B)`;
  }
  const kind = hashKind(hash);
  return `${kind}: ${ONLY_BCRYPT}`;
}

/** A name for what a non-bcrypt htpasswd value looks like. */
function hashKind(hash: string): string {
  if (/^\$2[aby]\$/.test(hash)) {
    return "a malformed bcrypt hash (a two-digit cost and 53 characters)";
  }
  if (hash.startsWith("$2x$")) return "a $2x$ hash (flagged by crypt_blowfish as made by its bug)";
  if (hash.startsWith("$apr1$")) return "an MD5 (apr1) hash";
  if (hash.startsWith("{SHA}")) return "a SHA-1 ({SHA}) hash";
  if (hash.startsWith("$1$")) return "an MD5-crypt hash";
  if (hash.startsWith("$5$") || hash.startsWith("$6$")) return "a SHA-crypt hash";
  if (hash.startsWith("$argon2")) return "an Argon2 hash";
  if (/^[./0-9A-Za-z]{13}$/.test(hash)) return "a DES crypt hash (or a plain-text password)";
  return "not a hash (a plain-text password?)";
}

/** Why `user` cannot be a Basic auth user name, or undefined when it can. */
function userProblem(user: string): string | undefined {
  if (USER.test(user)) return undefined;
  if (user === "") return `"" is not a user name`;
  return `${show(user)} is not a user name (no colon or control characters)`;
}

/**
 * Checks the `basicAuth` value of a route or of the top level: pushes one Problem per mistake at
 * paths like `routes[2].basicAuth.users.alice`, and returns the spec with its realm filled in, or
 * undefined when anything is wrong. The users file is only named here; {@linkcode loadUsers}
 * reads it.
 */
export function checkBasicAuth(
  value: unknown,
  path: string,
  problems: Problem[],
): BasicAuthSpec | undefined {
  const fail = (at: string, message: string): undefined => {
    problems.push({ path: at, message });
    return undefined;
  };
  if (!isObject(value)) {
    return fail(path, `${show(value)} is not an object with realm and users or usersFile`);
  }
  const before = problems.length;
  for (const key of Object.keys(value)) {
    if (!SPEC_KEYS.includes(key)) {
      fail(childPath(path, key), `unknown key (use ${SPEC_KEYS.join(", ")})`);
    }
  }
  const has = (key: string) => Object.hasOwn(value, key);
  const spec: BasicAuthSpec = { realm: DEFAULT_REALM };
  if (has("realm")) {
    const at = childPath(path, "realm");
    if (typeof value.realm !== "string") fail(at, `${show(value.realm)} is not a string`);
    else if (!REALM.test(value.realm)) {
      fail(at, `${show(value.realm)} is not a realm (printable ASCII without " and \\, not empty)`);
    } else spec.realm = value.realm;
  }
  if (has("users")) spec.users = checkUsers(value.users, childPath(path, "users"), fail);
  if (has("usersFile")) {
    const at = childPath(path, "usersFile");
    if (typeof value.usersFile !== "string" || value.usersFile === "") {
      fail(at, `${show(value.usersFile)} is not a file name`);
    } else spec.usersFile = value.usersFile;
  }
  if (!has("users") && !has("usersFile")) {
    fail(path, `needs users or usersFile (or both): nobody could log in`);
  } else if (!has("usersFile") && isObject(value.users) && Object.keys(value.users).length === 0) {
    fail(childPath(path, "users"), `no users and no usersFile: nobody could log in`);
  }
  return problems.length > before ? undefined : spec;
}

function checkUsers(
  value: unknown,
  path: string,
  fail: (at: string, message: string) => undefined,
): Record<string, string> | undefined {
  if (!isObject(value)) return fail(path, `${show(value)} is not an object of user name to hash`);
  const users: Record<string, string> = {};
  for (const [user, hash] of Object.entries(value)) {
    const at = childPath(path, user);
    const problem = userProblem(user) ??
      (typeof hash === "string" ? hashProblem(hash) : `${show(hash)} is not a string`);
    if (problem !== undefined) fail(at, problem);
    else users[user] = hash as string;
  }
  return users;
}

/** JSON Schema of the `basicAuth` key, for lb.schema.json. */
export const BASIC_AUTH_SCHEMA: object = {
  type: "object",
  additionalProperties: false,
  description: "HTTP Basic authentication: answers 401 unless the request carries the " +
    "name and password of one of the users (bcrypt hashes, as htpasswd -B writes them).",
  properties: {
    realm: {
      type: "string",
      pattern: "^[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e]+$",
      default: DEFAULT_REALM,
      description: 'Shown in the login prompt; printable ASCII without " and \\.',
    },
    users: {
      type: "object",
      propertyNames: { pattern: "^[^:\\x00-\\x1f\\x7f]+$" },
      additionalProperties: {
        type: "string",
        pattern: "^\\$2[aby]\\$(0[4-9]|1[0-7])\\$[./A-Za-z0-9]{53}$",
      },
      description: "User name to bcrypt hash ($2a$, $2b$ or $2y$, cost 4 to 17).",
    },
    usersFile: {
      type: "string",
      minLength: 1,
      description: "htpasswd file of user:hash lines (bcrypt only), re-read on reload; " +
        "merged with users.",
    },
  },
  anyOf: [{ required: ["users"] }, { required: ["usersFile"] }],
};

// ---------------------------------------------------------------------------------------------
// Users

/**
 * Parses htpasswd text: `user:hash` per line, `#` comments and blank lines ignored, CRLF and a
 * leading BOM accepted. Throws an Error with a one-line message naming `source` and the line.
 */
export function parseHtpasswd(text: string, source: string): Map<string, string> {
  const users = new Map<string, string>();
  const lines = text.replace(/^\uFEFF/, "").split("\n");
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, "").trim();
    if (line === "" || line.startsWith("#")) return;
    const where = `${source}:${i + 1}`;
    const colon = line.indexOf(":");
    if (colon === -1) throw new Error(`${where}: not a user:hash line`);
    const user = line.slice(0, colon);
    const problem = userProblem(user) ?? hashProblem(line.slice(colon + 1));
    if (problem !== undefined) {
      throw new Error(`${where}: ${user === "" ? "" : `user ${show(user)}: `}${problem}`);
    }
    if (users.has(user)) throw new Error(`${where}: user ${show(user)} appears twice`);
    users.set(user, line.slice(colon + 1));
  });
  return users;
}

/**
 * The users of a spec: `users` merged with the lines of `usersFile`, read now (synchronously, so
 * call it at start-up and on reload, never per request). Throws an Error with a one-line message
 * naming the file and line on a bad or unreadable file, a user in both, or no users at all.
 */
export function loadUsers(spec: BasicAuthSpec): Map<string, string> {
  const users = new Map(Object.entries(spec.users ?? {}));
  if (spec.usersFile !== undefined) {
    const file = spec.usersFile;
    let text: string;
    try {
      assertRegularFile(file);
      text = Deno.readTextFileSync(file);
    } catch (error) {
      throw new Error(`basicAuth usersFile ${file}: ${(error as Error).message.split("\n")[0]}`);
    }
    for (const [user, hash] of parseHtpasswd(text, file)) {
      if (users.has(user)) {
        throw new Error(`${file}: user ${show(user)} is also in basicAuth.users (keep one)`);
      }
      users.set(user, hash);
    }
    if (users.size === 0) throw new Error(`${file}: no users: nobody could log in`);
  }
  return users;
}

/** The `WWW-Authenticate` value of a 401 for `realm` (RFC 7617 §2.1: UTF-8 credentials). */
export function challenge(realm: string): string {
  return `Basic realm="${realm}", charset="UTF-8"`;
}

// ---------------------------------------------------------------------------------------------
// Credentials

/** Longest Authorization value decoded: bcrypt reads 72 bytes of password anyway. */
const MAX_AUTHORIZATION = 4096;
const BASIC = /^basic +([A-Za-z0-9+/]+={0,2}) *$/i;
const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The user and password of a `Basic` Authorization value, or undefined when there is none or it
 * is malformed (another scheme, bad base64, invalid UTF-8, no colon).
 */
export function parseAuthorization(
  authorization: string | null,
): { user: string; password: string } | undefined {
  if (authorization === null || authorization.length > MAX_AUTHORIZATION) return undefined;
  const match = BASIC.exec(authorization);
  if (!match) return undefined;
  let text: string;
  try {
    text = utf8.decode(Uint8Array.from(atob(match[1]), (c) => c.charCodeAt(0)));
  } catch {
    return undefined;
  }
  const colon = text.indexOf(":");
  if (colon <= 0) return undefined;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}

// ---------------------------------------------------------------------------------------------
// Verifier

/** Options of {@linkcode BasicAuthVerifier}. */
export interface BasicAuthVerifierOptions {
  /**
   * Checks waiting for or running in the worker beyond which `verify` answers "busy" at once.
   * Bounds how long a check can wait (64 x 70 ms at cost 10) and memory. @default 64
   */
  maxPending?: number;
  /** How long a successful check is remembered, in ms; 0 remembers nothing. @default 60000 */
  cacheMs?: number;
  /**
   * Successful checks remembered at most (the oldest is forgotten first); failures have a
   * separate cache of the same size, so wrong passwords never push out logged-in clients.
   * @default 1000
   */
  cacheSize?: number;
  /** The clock, in ms (tests pass a fake one). @default performance.now */
  now?: () => number;
  /** Told when the worker thread fails (never with credentials). @default ignores it */
  log?: { error(message: string): void };
}

/** What a verifier has done so far, for metrics. */
export interface BasicAuthStats {
  /** bcrypt checks handed to the worker thread. */
  verifications: number;
  /** Answers taken from the cache (success or failure). */
  cacheHits: number;
  /** Answers "busy": the queue was full, the worker failed (or failed < 5 s ago), or closed. */
  busy: number;
}

/** After the worker failed, checks answer "busy" this long before it is started again. */
const RESTART_DELAY_MS = 5_000;
/** Failures are remembered at most this long (see docs/protection.md, "Basic auth"). */
const NEGATIVE_CACHE_MS = 10_000;
/** Salt and hash of a password nobody knows: an unknown user's check costs the same as a known one's. */
const DUMMY_TAIL = "A5OsmcTEvxL5Jm87OJJiy.0Rhn0h3ts7PEwc1686fpDmTZxaRJnN6";

/**
 * Checks Basic credentials against bcrypt hashes on a worker thread, with a bounded queue and a
 * cache. One per balancer, shared by every route (each passes its own users).
 *
 * The thread starts on {@linkcode start} or the first check that needs it, and runs until
 * {@linkcode close} (a live worker keeps the process running: call it at shutdown). It is not
 * ended when idle: `new Worker()` blocks the calling thread while the worker starts, a stall
 * of every request in flight each time it would start again.
 */
export class BasicAuthVerifier {
  readonly #maxPending: number;
  readonly #cacheMs: number;
  readonly #cacheSize: number;
  readonly #now: () => number;
  readonly #log: { error(message: string): void } | undefined;
  readonly #secret = crypto.getRandomValues(new Uint8Array(32));
  /** HMAC key -> time it expires; insertion order is age order. */
  readonly #passed = new Map<string, number>();
  readonly #failed = new Map<string, number>();
  /** Checks under way by key, so parallel requests with the same credentials share one. */
  readonly #inFlight = new Map<string, Promise<BasicAuthOutcome>>();
  /** Answers awaited from the worker, by request id; undefined means the worker failed. */
  readonly #waiting = new Map<number, (ok: boolean | undefined) => void>();
  readonly #stats: BasicAuthStats = { verifications: 0, cacheHits: 0, busy: 0 };
  #worker: Worker | undefined;
  /** Requests posted once the worker says it is ready; undefined when it is. */
  #unsent: BcryptRequest[] | undefined;
  #nextId = 0;
  #closed = false;
  /** Until when (on the clock) a failed worker is not started again. */
  #restartAt = -Infinity;

  /** @throws Error when an option is not a whole number in range. */
  constructor(options: BasicAuthVerifierOptions = {}) {
    const { maxPending = 64, cacheMs = 60_000, cacheSize = 1000 } = options;
    for (
      const [name, v, min] of [["maxPending", maxPending, 1], ["cacheMs", cacheMs, 0], [
        "cacheSize",
        cacheSize,
        1,
      ]] as const
    ) {
      if (!Number.isSafeInteger(v) || v < min) {
        throw new Error(`basic auth: ${name} must be a whole number >= ${min}, got ${v}`);
      }
    }
    this.#maxPending = maxPending;
    this.#cacheMs = cacheMs;
    this.#cacheSize = cacheSize;
    this.#now = options.now ?? (() => performance.now());
    this.#log = options.log;
  }

  /** Counters since construction (a copy). */
  get stats(): BasicAuthStats {
    return { ...this.#stats };
  }

  /** Checks waiting for or running in the worker. */
  get pending(): number {
    return this.#waiting.size;
  }

  /**
   * Checks the Authorization header value of a request against `users` (from
   * {@linkcode loadUsers}): "ok", "denied" (missing, malformed or wrong credentials: answer 401
   * with {@linkcode challenge}) or "busy" (too many checks waiting: answer 503). Never rejects.
   */
  verify(users: Map<string, string>, authorization: string | null): Promise<BasicAuthOutcome> {
    const credentials = parseAuthorization(authorization);
    if (credentials === undefined || users.size === 0) return Promise.resolve("denied");
    const { user, password } = credentials;
    const hash = users.get(user);
    const key = this.#key(user, password, hash ?? "");
    const now = this.#now();
    if (hash !== undefined && this.#cached(this.#passed, key, now)) return this.#hit("ok");
    if (this.#cached(this.#failed, key, now)) return this.#hit("denied");
    const running = this.#inFlight.get(key);
    if (running !== undefined) return running;
    const down = this.#worker === undefined && now < this.#restartAt;
    if (this.#closed || down || this.#waiting.size >= this.#maxPending) {
      this.#stats.busy++;
      return Promise.resolve("busy");
    }
    // An unknown user is checked against a dummy hash of the same cost, and always fails.
    const target = hash ?? `${users.values().next().value!.slice(0, 7)}${DUMMY_TAIL}`;
    const outcome = this.#check(password, target).then((ok): BasicAuthOutcome => {
      this.#inFlight.delete(key);
      if (ok === undefined) {
        this.#stats.busy++;
        return "busy";
      }
      const passed = ok && hash !== undefined;
      if (passed) this.#remember(this.#passed, key, this.#cacheMs);
      else this.#remember(this.#failed, key, Math.min(this.#cacheMs, NEGATIVE_CACHE_MS));
      return passed ? "ok" : "denied";
    });
    this.#inFlight.set(key, outcome);
    return outcome;
  }

  /** Ends the worker thread; checks under way answer "busy", and so does every later one. */
  close(): Promise<void> {
    this.#closed = true;
    this.#stopWorker();
    this.#passed.clear();
    this.#failed.clear();
    return Promise.resolve();
  }

  #hit(outcome: BasicAuthOutcome): Promise<BasicAuthOutcome> {
    this.#stats.cacheHits++;
    return Promise.resolve(outcome);
  }

  /** Keyed with a per-process secret: a cache key is no fast offline test of a password. */
  #key(user: string, password: string, hash: string): string {
    return nodeCrypto().createHmac("sha256", this.#secret)
      .update(`${user.length}:${user}${password.length}:${password}${hash}`)
      .digest("base64");
  }

  #cached(cache: Map<string, number>, key: string, now: number): boolean {
    const expires = cache.get(key);
    if (expires === undefined) return false;
    if (expires > now) return true;
    cache.delete(key);
    return false;
  }

  #remember(cache: Map<string, number>, key: string, ms: number): void {
    if (ms === 0) return;
    cache.delete(key);
    // Oldest first: the first key is the one to forget.
    if (cache.size >= this.#cacheSize) cache.delete(cache.keys().next().value!);
    cache.set(key, this.#now() + ms);
  }

  /** Runs one bcrypt check on the worker: true or false, undefined when the worker failed. */
  #check(password: string, hash: string): Promise<boolean | undefined> {
    this.#stats.verifications++;
    this.start();
    const request: BcryptRequest = { id: ++this.#nextId, password, hash };
    return new Promise((resolve) => {
      this.#waiting.set(request.id, resolve);
      if (this.#unsent) this.#unsent.push(request);
      else this.#worker!.postMessage(request);
    });
  }

  /**
   * Starts the worker thread now if it is not running (when a config with basicAuth is loaded),
   * so that the first request does not wait for it. Does nothing once closed.
   */
  start(): void {
    if (this.#worker !== undefined || this.#closed) return;
    const worker = new Worker(BCRYPT_WORKER_MODULE, { type: "module", name: "bcrypt" });
    this.#worker = worker;
    this.#unsent = [];
    worker.onmessage = (event: MessageEvent<BcryptAnswer>) => {
      const answer = event.data;
      if (answer.type === "ready") {
        for (const request of this.#unsent ?? []) worker.postMessage(request);
        this.#unsent = undefined;
        return;
      }
      const resolve = this.#waiting.get(answer.id);
      this.#waiting.delete(answer.id);
      resolve?.(answer.ok);
    };
    worker.onerror = (event) => {
      // Handled here, or the error would end the process; checks under way answer "busy".
      event.preventDefault();
      this.#log?.error(
        `basic auth: bcrypt worker failed (answering 503 for ${RESTART_DELAY_MS / 1000} s): ` +
          event.message,
      );
      this.#restartAt = this.#now() + RESTART_DELAY_MS;
      this.#stopWorker();
    };
  }

  #stopWorker(): void {
    this.#worker?.terminate();
    this.#worker = undefined;
    this.#unsent = undefined;
    const waiting = [...this.#waiting.values()];
    this.#waiting.clear();
    for (const resolve of waiting) resolve(undefined);
  }
}
