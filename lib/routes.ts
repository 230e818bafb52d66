/**
 * @module
 * The route table: several services behind one balancer (nginx `server`/`location`, Traefik
 * routers, Caddy `handle_path`). Pure: route types, shape checks of the `routes` key of a config
 * file ({@linkcode checkRoutes}), static checks for `--check` ({@linkcode lintRoutes}), matching
 * ({@linkcode RouteTable}) and the per-request helpers (upstream path, redirect Location, header
 * rules, a one-line description).
 *
 * Routes are tried in order and the first that matches wins. A route matches on any of:
 * - `host`: exact (`api.example.com`) or a wildcard (`*.example.com`: one or more labels before
 *   `.example.com`, never `example.com` itself); case-insensitive; the request's port and a
 *   trailing dot are ignored.
 * - `pathPrefix`: whole segments (`/api` matches `/api`, `/api/`, `/api/x`, never `/apix`; `/api/`
 *   matches `/api/` and below), on the path without its query. The path is compared in a
 *   normalised form (unreserved `%XX` decoded, `//` merged, `.` and `..` segments resolved), so
 *   that `/%61pi`, `//api` and `/x/../api` are routed where a backend would resolve them.
 * - `methods` (exact, case-sensitive) and `headers` (name to exact value of `Headers.get()`).
 *
 * and does one of: forward to a `service` (optionally `stripPrefix`, `addPrefix`), `redirect`, or
 * `respond` with a fixed answer. `requestHeaders` and `responseHeaders` rules apply to any route.
 */

import { checkProtection, PROTECTION_KEYS, type ProtectionSpec } from "./protection.ts";
import type { HeaderPairs } from "./headers.ts";
import { hostWithoutPort } from "./host.ts";
import { isToken } from "./http_token.ts";
import { checkKeys, closestKey, isObject, type Problem, show } from "./problem.ts";
import { childPath } from "./jsonc.ts";

/** Header edits, applied in the order remove, set (replacing every value), add. */
export interface HeaderRules {
  /** Headers to set, replacing any values already there. @default {} */
  set?: Record<string, string>;
  /** Headers to append, keeping values already there. @default {} */
  add?: Record<string, string>;
  /** Names of headers to remove. @default [] */
  remove?: string[];
}

/** One route as written in the config file's `routes` list. */
export interface RouteSpec extends ProtectionSpec {
  /** Name in metrics and logs. @default `route-<index>`, e.g. `route-0` */
  name?: string;
  /** `api.example.com` or `*.example.com`. @default any host */
  host?: string;
  /** Path prefix on segment boundaries, starting with `/`. @default any path */
  pathPrefix?: string;
  /** Request methods, case-sensitive (`GET`). @default any method */
  methods?: string[];
  /** Request header name to exact value; names are case-insensitive. @default no condition */
  headers?: Record<string, string>;
  /** Name of the service to forward to (one of `service`, `redirect`, `respond`). */
  service?: string;
  /** Remove `pathPrefix` from the path sent upstream (`/api/x?q` to `/x?q`). @default false */
  stripPrefix?: boolean;
  /** Prefix the path sent upstream with this (after stripping), e.g. `/v1`. @default none */
  addPrefix?: string;
  /** Answer with a redirect; `to` may hold `{host}` and `{path}`. `status` @default 302 */
  redirect?: { to: string; status?: number };
  /**
   * Answer with a fixed response. `body` @default "", `contentType`
   * @default "text/plain; charset=utf-8"
   */
  respond?: { status: number; body?: string; contentType?: string };
  /** Edits of the request headers sent upstream. @default none */
  requestHeaders?: HeaderRules;
  /** Edits of the response headers sent to the client. @default none */
  responseHeaders?: HeaderRules;
}

/** A route ready for matching: the spec plus what {@linkcode RouteTable} precomputed. */
export interface CompiledRoute {
  /** `spec.name`, or `route-<index>`. */
  readonly name: string;
  /** Position in the table, from 0. */
  readonly index: number;
  /** The route as given (a frozen copy). */
  readonly spec: RouteSpec;
  /** What the route does. */
  readonly action: "service" | "redirect" | "respond";
  /** Lower-case exact host to match, when the route has an exact host. */
  readonly hostExact?: string;
  /** Lower-case `.example.com` a host must end with (and be longer than), for `*.example.com`. */
  readonly hostSuffix?: string;
  /** `pathPrefix` without a trailing `/` (`""` for `/`), when the route has one. */
  readonly prefixBase?: string;
  /** Whether `pathPrefix` ends with `/`, so the bare `prefixBase` does not match. */
  readonly prefixNeedsSlash: boolean;
  /** Allowed methods, when restricted. */
  readonly methods?: readonly string[];
  /** Lower-case header name and exact value pairs that must all be present. */
  readonly headers?: readonly (readonly [string, string])[];
}

const ACTIONS = ["service", "redirect", "respond"] as const;
const ROUTE_KEYS = [
  "name",
  "host",
  "pathPrefix",
  "methods",
  "headers",
  ...ACTIONS,
  "stripPrefix",
  "addPrefix",
  "requestHeaders",
  "responseHeaders",
  ...PROTECTION_KEYS,
] as const;
const REDIRECT_STATUSES = [301, 302, 303, 307, 308];
const DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8";
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/i;
/** Outside RFC 9110 §5.5 field values; Headers also throws on anything beyond U+00FF. */
const BAD_VALUE_CHAR = /[^\t\x20-\x7e\x80-\xff]/;
/** Statuses whose response has no body (the Response constructor throws on one). */
const NULL_BODY_STATUSES = [204, 205, 304];
/** Connection-level headers (RFC 9110 §7.6.1) and framing: a rule must never touch them. */
const FORBIDDEN_HEADERS = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "content-length",
]);
const STANDARD_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE"];

// ---------------------------------------------------------------------------------------------
// Shape checks

/** Collects problems for one value; `fail` records one and returns undefined. */
class Checker {
  constructor(readonly problems: Problem[]) {}

  fail(path: string, message: string): undefined {
    this.problems.push({ path, message });
    return undefined;
  }

  string(value: unknown, path: string): string | undefined {
    return typeof value === "string" ? value : this.fail(path, `${show(value)} is not a string`);
  }

  /** A header field value: a string without CR, LF or NUL (they would split the message). */
  fieldValue(value: unknown, path: string): string | undefined {
    const text = this.string(value, path);
    if (text === undefined) return undefined;
    if (BAD_VALUE_CHAR.test(text)) {
      return this.fail(path, `${show(text)} has a line break, control or non-Latin-1 character`);
    }
    // Headers trims values, so a condition on " x" would never match and a rule would not send it.
    if (text.trim() !== text) {
      return this.fail(path, `${show(text)} has leading or trailing spaces`);
    }
    return text;
  }

  object(value: unknown, path: string): Record<string, unknown> | undefined {
    return isObject(value) ? value : this.fail(path, `${show(value)} is not an object`);
  }
}

/** Why `host` is not a route host, or undefined when it is one. */
function hostProblem(host: string): string | undefined {
  const shown = show(host);
  if (host === "" || host === "*") return `${shown} matches any host: leave "host" out instead`;
  if (/^\[[0-9A-Fa-f:.]+\]$/.test(host)) return undefined;
  if (host.endsWith(".")) return `${shown}: write the host without its trailing dot`;
  const name = host.startsWith("*.") ? host.slice(2) : host;
  if (/:\d*$/.test(name)) {
    return `${shown}: a route's host has no port (the request's port is ignored)`;
  }
  if (name.length > 253 || !name.split(".").every((label) => LABEL.test(label))) {
    return `${shown} is not a host name or *. followed by a host name`;
  }
  return undefined;
}

/** Why `prefix` is not a path prefix, or undefined when it is one. */
function prefixProblem(prefix: string, what: string): string | undefined {
  const shown = show(prefix);
  if (!prefix.startsWith("/")) return `${shown} is not a ${what} (it must start with /)`;
  if (/[?#\s\0]/.test(prefix) || /%(?![0-9A-Fa-f]{2})/.test(prefix)) {
    return `${shown} is not a ${what} (no query, fragment, spaces or stray %)`;
  }
  const normal = normalizePath(prefix);
  if (normal !== prefix) {
    return `${shown} is not in normal form (requests are matched as ${show(normal)})`;
  }
  return undefined;
}

/** Why a redirect `to` is unusable, or undefined when it is fine. */
function redirectProblem(to: string): string | undefined {
  const shown = show(to);
  const unknown = /\{([^{}]*)\}/g;
  for (const [whole, name] of to.matchAll(unknown)) {
    if (name !== "host" && name !== "path") {
      return `${shown}: unknown placeholder ${whole} (use {host} or {path})`;
    }
  }
  const sample = to.replaceAll("{host}", "example.com").replaceAll("{path}", "/p");
  if (/[{}]/.test(sample)) return `${shown}: a { or } that is not part of {host} or {path}`;
  if (/[^\x21-\x7e]/.test(to)) {
    return `${shown} has a space, control or non-ASCII character (percent-encode it)`;
  }
  // {path} starts with /, so at the start or after a / it would make `//evil.example` (another
  // host, for a browser) out of a request for `//evil.example`.
  if (to.startsWith("{path}") || to.includes("/{path}")) {
    return `${shown}: {path} already starts with /; write e.g. https://example.com{path}`;
  }
  const relative = sample.startsWith("/") && !sample.startsWith("//");
  const absolute = /^https?:\/\//i.test(sample) && URL.canParse(sample);
  if (!relative && !absolute) {
    return `${shown} is neither an absolute http(s) URL nor a path starting with /`;
  }
  return undefined;
}

function checkName(c: Checker, value: unknown, path: string): string | undefined {
  const name = c.string(value, path);
  if (name !== undefined && !NAME.test(name)) {
    return c.fail(path, `${show(name)} is not a route name (letters, digits, . _ -; at most 64)`);
  }
  // Metrics label requests no route matched `route="none"` (NO_ROUTE in lib/metrics.ts).
  if (name === "none") {
    return c.fail(path, `"none" is reserved: it labels requests no route matched`);
  }
  return name;
}

function checkMethods(c: Checker, value: unknown, path: string): string[] | undefined {
  if (!Array.isArray(value) || value.length === 0) {
    return c.fail(path, `${show(value)} is not a non-empty list of methods`);
  }
  const before = c.problems.length;
  value.forEach((item, i) => {
    const at = childPath(path, i);
    const method = c.string(item, at);
    if (method === undefined) return;
    if (!isToken(method)) return c.fail(at, `${show(method)} is not a method`);
    const upper = method.toUpperCase();
    if (method !== upper && STANDARD_METHODS.includes(upper)) {
      c.fail(at, `${show(method)} never matches: methods are case-sensitive (use "${upper}")`);
    }
  });
  return c.problems.length > before ? undefined : value as string[];
}

function checkHeaderName(c: Checker, name: string, path: string): boolean {
  if (isToken(name)) return true;
  c.fail(path, `${show(name)} is not a header name`);
  return false;
}

function checkConditionHeaders(
  c: Checker,
  value: unknown,
  path: string,
): Record<string, string> | undefined {
  const object = c.object(value, path);
  if (object === undefined) return undefined;
  const before = c.problems.length;
  for (const [name, v] of Object.entries(object)) {
    const at = childPath(path, name);
    if (checkHeaderName(c, name, at)) c.fieldValue(v, at);
  }
  return c.problems.length > before ? undefined : object as Record<string, string>;
}

/** A rule's header name: a token that is not connection-level (host only with `set` upstream). */
function checkRuleName(
  c: Checker,
  name: string,
  path: string,
  kind: keyof HeaderRules,
  request: boolean,
): void {
  if (!checkHeaderName(c, name, path)) return;
  const lower = name.toLowerCase();
  if (FORBIDDEN_HEADERS.has(lower)) {
    c.fail(path, `${show(name)} is a connection-level header; the proxy manages it`);
  } else if (lower === "host" && !(request && kind === "set")) {
    c.fail(path, `"host" can only be set, in requestHeaders (a message has exactly one Host)`);
  }
}

function checkHeaderRules(
  c: Checker,
  value: unknown,
  path: string,
  request: boolean,
): HeaderRules | undefined {
  const object = c.object(value, path);
  if (object === undefined) return undefined;
  const before = c.problems.length;
  checkKeys(object, ["set", "add", "remove"], path, c.problems);
  for (const kind of ["set", "add"] as const) {
    if (!Object.hasOwn(object, kind)) continue;
    const at = childPath(path, kind);
    const fields = c.object(object[kind], at);
    for (const [name, v] of Object.entries(fields ?? {})) {
      const fieldPath = childPath(at, name);
      checkRuleName(c, name, fieldPath, kind, request);
      c.fieldValue(v, fieldPath);
    }
  }
  if (Object.hasOwn(object, "remove")) {
    const at = childPath(path, "remove");
    const names = object.remove;
    if (!Array.isArray(names)) {
      c.fail(at, `${show(names)} is not a list of header names`);
    } else {
      names.forEach((name, i) => {
        const nameAt = childPath(at, i);
        if (c.string(name, nameAt) !== undefined) {
          checkRuleName(c, name, nameAt, "remove", request);
        }
      });
    }
  }
  return c.problems.length > before ? undefined : object as HeaderRules;
}

function checkRedirect(c: Checker, value: unknown, path: string): void {
  const object = c.object(value, path);
  if (object === undefined) return;
  checkKeys(object, ["to", "status"], path, c.problems);
  const toPath = childPath(path, "to");
  if (!Object.hasOwn(object, "to")) c.fail(toPath, "missing: the URL or path to redirect to");
  else {
    const to = c.string(object.to, toPath);
    const problem = to === undefined ? undefined : redirectProblem(to);
    if (problem !== undefined) c.fail(toPath, problem);
  }
  if (Object.hasOwn(object, "status") && !REDIRECT_STATUSES.includes(object.status as number)) {
    c.fail(
      childPath(path, "status"),
      `${show(object.status)} is not one of ${REDIRECT_STATUSES.join(", ")}`,
    );
  }
}

function checkRespond(c: Checker, value: unknown, path: string): void {
  const object = c.object(value, path);
  if (object === undefined) return;
  checkKeys(object, ["status", "body", "contentType"], path, c.problems);
  const statusPath = childPath(path, "status");
  const status = object.status;
  if (!Object.hasOwn(object, "status")) c.fail(statusPath, "missing: the status to answer with");
  else if (typeof status !== "number" || !Number.isInteger(status)) {
    c.fail(statusPath, `${show(status)} is not a whole number`);
  } else if (status < 200 || status > 599) {
    c.fail(statusPath, `${status} is out of range (200 to 599)`);
  }
  if (Object.hasOwn(object, "body")) {
    const bodyPath = childPath(path, "body");
    const body = c.string(object.body, bodyPath);
    if (body && NULL_BODY_STATUSES.includes(status as number)) {
      c.fail(bodyPath, `a ${status} response has no body`);
    }
  }
  if (Object.hasOwn(object, "contentType")) {
    const at = childPath(path, "contentType");
    const type = c.fieldValue(object.contentType, at);
    if (type === "") c.fail(at, `"" is not a content type`);
  }
}

/** Checks one route; pushes its problems. */
function checkRoute(c: Checker, value: unknown, path: string): void {
  const route = c.object(value, path);
  if (route === undefined) return;
  checkKeys(route, ROUTE_KEYS, path, c.problems);
  const at = (key: string) => childPath(path, key);
  const has = (key: string) => Object.hasOwn(route, key);
  if (has("name")) checkName(c, route.name, at("name"));
  if (has("host")) {
    const host = c.string(route.host, at("host"));
    const problem = host === undefined ? undefined : hostProblem(host);
    if (problem !== undefined) c.fail(at("host"), problem);
  }
  if (has("pathPrefix")) {
    const prefix = c.string(route.pathPrefix, at("pathPrefix"));
    const problem = prefix === undefined ? undefined : prefixProblem(prefix, "path prefix");
    if (problem !== undefined) c.fail(at("pathPrefix"), problem);
  }
  if (has("methods")) checkMethods(c, route.methods, at("methods"));
  checkProtection(route, path, c.problems);
  if (has("headers")) checkConditionHeaders(c, route.headers, at("headers"));

  const actions = ACTIONS.filter(has);
  if (actions.length === 0) {
    c.fail(path, `a route needs one of ${ACTIONS.join(", ")}`);
  } else if (actions.length > 1) {
    c.fail(path, `a route has exactly one of ${ACTIONS.join(", ")} (found ${actions.join(", ")})`);
  }
  if (has("service")) {
    const service = c.string(route.service, at("service"));
    if (service === "") c.fail(at("service"), `"" is not a service name`);
  }
  if (has("redirect")) checkRedirect(c, route.redirect, at("redirect"));
  if (has("respond")) checkRespond(c, route.respond, at("respond"));
  for (const key of ["stripPrefix", "addPrefix"]) {
    if (has(key) && !has("service")) c.fail(at(key), `only a service route rewrites the path`);
  }
  if (has("mirror") && route.mirror !== false && !has("service")) {
    c.fail(at("mirror"), `only a service route has requests to mirror`);
  }
  if (has("stripPrefix")) {
    if (typeof route.stripPrefix !== "boolean") {
      c.fail(at("stripPrefix"), `${show(route.stripPrefix)} is not true or false`);
    } else if (route.stripPrefix && !has("pathPrefix")) {
      c.fail(at("stripPrefix"), `needs a pathPrefix to strip`);
    }
  }
  if (has("addPrefix")) {
    const add = c.string(route.addPrefix, at("addPrefix"));
    let problem = add === undefined ? undefined : prefixProblem(add, "prefix to add");
    if (problem === undefined && add !== undefined && add !== "/" && add.endsWith("/")) {
      problem = `${show(add)} ends with / (the path after it starts with one)`;
    }
    if (problem !== undefined) c.fail(at("addPrefix"), problem);
  }
  if (has("requestHeaders")) checkHeaderRules(c, route.requestHeaders, at("requestHeaders"), true);
  if (has("responseHeaders")) {
    checkHeaderRules(c, route.responseHeaders, at("responseHeaders"), false);
  }
}

/**
 * Shape validation of the `routes` value of a config file, config_file.ts style: pushes one
 * Problem per mistake at paths like `routes[2].redirect.status`, returns the typed value or
 * undefined (when any problem was found).
 */
export function checkRoutes(
  value: unknown,
  path: string,
  problems: Problem[],
): RouteSpec[] | undefined {
  const c = new Checker(problems);
  if (!Array.isArray(value)) return c.fail(path, `${show(value)} is not a list of routes`);
  const before = problems.length;
  value.forEach((route, i) => checkRoute(c, route, childPath(path, i)));
  return problems.length > before ? undefined : value as RouteSpec[];
}

// ---------------------------------------------------------------------------------------------
// Static checks

/** Whether every request `later` matches is matched by `earlier` (so `later` is unreachable). */
function covers(earlier: CompiledRoute, later: CompiledRoute): boolean {
  return hostCovers(earlier, later) && prefixCovers(earlier, later) &&
    (earlier.methods === undefined ||
      (later.methods !== undefined && later.methods.every((m) => earlier.methods!.includes(m)))) &&
    (earlier.headers === undefined ||
      earlier.headers.every(([n, v]) => later.headers?.some(([ln, lv]) => ln === n && lv === v)));
}

function hostCovers(earlier: CompiledRoute, later: CompiledRoute): boolean {
  if (earlier.hostExact !== undefined) return later.hostExact === earlier.hostExact;
  if (earlier.hostSuffix === undefined) return true;
  const host = later.hostExact ?? later.hostSuffix;
  return host !== undefined && host.length > earlier.hostSuffix.length &&
    host.endsWith(earlier.hostSuffix);
}

function prefixCovers(earlier: CompiledRoute, later: CompiledRoute): boolean {
  if (earlier.prefixBase === undefined) return true;
  if (later.prefixBase === undefined) return false;
  // Every path `later` matches is `later.spec.pathPrefix` or below it.
  return prefixMatches(earlier, later.spec.pathPrefix!);
}

/**
 * Static checks for `--check` and start-up, given the service names that exist. Errors: any
 * problem {@linkcode checkRoutes} finds (for routes built in code), a route to an unknown service,
 * a duplicate name, a route no request can reach (every request it matches is matched first by
 * an earlier route: after a catch-all, or an identical or wider match). Warning
 * (`warning: true`, path `services.<name>`): a service no route uses, when there are routes.
 */
export function lintRoutes(routes: readonly RouteSpec[], services: readonly string[]): Problem[] {
  const problems: Problem[] = [];
  if (checkRoutes(routes, "routes", problems) === undefined) return problems;
  const compiled = routes.map(compileRoute);
  const used = new Set<string>();
  const names = new Map<string, number>();
  for (const route of compiled) {
    const path = childPath("routes", route.index);
    const service = route.spec.service;
    if (service !== undefined) {
      used.add(service);
      if (!services.includes(service)) {
        const guess = closestKey(service, services);
        const hint = guess ? ` (did you mean ${JSON.stringify(guess)}?)` : "";
        problems.push({
          path: childPath(path, "service"),
          message: `no service named ${show(service)}${hint}`,
        });
      }
    }
    const mirror = route.spec.mirror;
    if (mirror) {
      used.add(mirror.service);
      if (!services.includes(mirror.service)) {
        problems.push({
          path: childPath(childPath(path, "mirror"), "service"),
          message: `no service named ${show(mirror.service)}`,
        });
      } else if (mirror.service === service) {
        problems.push({
          path: childPath(childPath(path, "mirror"), "service"),
          message: `${show(service)} is the route's own service: each request would reach it twice`,
        });
      }
    }
    const twin = names.get(route.name);
    if (twin !== undefined) {
      problems.push({
        path,
        message: `the name ${show(route.name)} is also that of routes[${twin}]`,
      });
    } else names.set(route.name, route.index);
    const earlier = compiled.slice(0, route.index).find((e) => covers(e, route));
    if (earlier !== undefined) {
      problems.push({
        path,
        message: `unreachable: routes[${earlier.index}] (${earlier.name}, ${
          describeMatch(earlier)
        }) matches every request this route matches`,
      });
    }
  }
  if (routes.length > 0) {
    for (const service of services) {
      if (used.has(service)) continue;
      problems.push({
        path: childPath("services", service),
        message: `no route sends requests to service ${show(service)}`,
        warning: true,
      });
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// Matching

/** Compiles one route; throws a TypeError on a route {@linkcode checkRoutes} refuses. */
function compileRoute(given: RouteSpec, index: number): CompiledRoute {
  const problems: Problem[] = [];
  checkRoute(new Checker(problems), given, `routes[${index}]`);
  if (problems.length > 0) {
    const [first] = problems;
    throw new TypeError(`invalid route: ${first.path}: ${first.message}`);
  }
  // A copy, so that changing the caller's object cannot change a table in use.
  const spec = deepFreeze(structuredClone(given));
  const host = spec.host?.toLowerCase();
  const prefix = spec.pathPrefix;
  const headers = spec.headers === undefined ? [] : Object.entries(spec.headers);
  return Object.freeze({
    name: spec.name ?? `route-${index}`,
    index,
    spec,
    action: ACTIONS.find((key) => spec[key] !== undefined)!,
    hostExact: host !== undefined && !host.startsWith("*.") ? host : undefined,
    hostSuffix: host?.startsWith("*.") ? host.slice(1) : undefined,
    prefixBase: prefix?.endsWith("/") ? prefix.slice(0, -1) : prefix,
    prefixNeedsSlash: prefix !== undefined && prefix !== "/" && prefix.endsWith("/"),
    methods: spec.methods === undefined ? undefined : Object.freeze([...spec.methods]),
    headers: headers.length === 0
      ? undefined
      : Object.freeze(headers.map(([n, v]) => Object.freeze([n.toLowerCase(), v] as const))),
  });
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === "object") {
    for (const item of Object.values(value)) deepFreeze(item);
    Object.freeze(value);
  }
  return value;
}

/** Whether `route` has no condition at all (it matches every request). */
function isCatchAll(route: CompiledRoute): boolean {
  return route.hostExact === undefined && route.hostSuffix === undefined &&
    route.prefixBase === undefined && route.methods === undefined && route.headers === undefined;
}

/**
 * The host part of a Host header or `:authority`, lower-case, without port or trailing dot; `""`
 * for none.
 */
export function routingHost(host: string | null): string {
  if (host === null) return "";
  let end = host.length;
  if (host.charCodeAt(0) === 0x5b /* [ */) end = host.indexOf("]") + 1 || end;
  else {
    const colon = host.lastIndexOf(":");
    if (colon !== -1) end = colon;
  }
  if (host.charCodeAt(end - 1) === 0x2e /* . */) end--;
  const name = end === host.length ? host : host.slice(0, end);
  return /[A-Z]/.test(name) ? name.toLowerCase() : name;
}

/** Unreserved characters (RFC 3986 §2.3): their `%XX` forms mean the same path. */
const UNRESERVED = /[A-Za-z0-9\-._~]/;

function decodeUnreserved(segment: string): string {
  return segment.replace(/%([0-9A-Fa-f]{2})/g, (whole, hex: string) => {
    const char = String.fromCharCode(parseInt(hex, 16));
    return UNRESERVED.test(char) ? char : whole.toUpperCase();
  });
}

/**
 * `path` (no query) in the form routes match on: unreserved `%XX` decoded and other escapes in
 * upper case (RFC 3986 §6.2.2), runs of `/` merged (as nginx's merge_slashes), and `.` and `..`
 * segments resolved (RFC 3986 §5.2.4; `..` stops at the root). Returns `path` itself when it is
 * in that form already, without allocating.
 */
export function normalizePath(path: string): string {
  if (!/%|\/\/|\/\.|^[^/]/.test(path)) return path;
  const out: string[] = [];
  const parts = path.split("/");
  let trailingSlash = false;
  for (let i = 1; i < parts.length; i++) {
    const part = decodeUnreserved(parts[i]);
    trailingSlash = part === "" || part === "." || part === "..";
    if (part === "..") out.pop();
    else if (part !== "" && part !== ".") out.push(part);
  }
  if (parts[0] !== "") out.unshift(decodeUnreserved(parts[0]));
  const joined = `/${out.join("/")}`;
  return trailingSlash && out.length > 0 ? `${joined}/` : joined;
}

/** Splits path + query at the first `?`: the normalised path and the raw `?query` (or `""`). */
function splitTarget(target: string): [path: string, query: string] {
  const q = target.indexOf("?");
  if (q === -1) return [normalizePath(target), ""];
  return [normalizePath(target.slice(0, q)), target.slice(q)];
}

/** Whether normalised `path` (no query) is at or below `route`'s prefix, on whole segments. */
function prefixMatches(route: CompiledRoute, path: string): boolean {
  const base = route.prefixBase!;
  if (!path.startsWith(base)) return false;
  if (path.length === base.length) return !route.prefixNeedsSlash;
  return path.charCodeAt(base.length) === 0x2f /* / */;
}

function hostMatches(route: CompiledRoute, host: string): boolean {
  if (route.hostExact !== undefined) return host === route.hostExact;
  if (route.hostSuffix !== undefined) {
    return host.length > route.hostSuffix.length && host.endsWith(route.hostSuffix);
  }
  return true;
}

/** A compiled, immutable route table. */
export class RouteTable {
  /** The routes, in order. */
  readonly routes: readonly CompiledRoute[];
  /** Set when the first route matches everything: match() returns it at once. */
  readonly #first: CompiledRoute | undefined;

  /** Compiles `routes`; throws a TypeError on a route {@linkcode checkRoutes} would refuse. */
  constructor(routes: readonly RouteSpec[]) {
    this.routes = Object.freeze(routes.map(compileRoute));
    const first = this.routes[0];
    this.#first = first !== undefined && isCatchAll(first) ? first : undefined;
  }

  /**
   * First route that matches, or undefined. `host` is the Host header / :authority as received
   * (may include a port, may be null); `path` is path + query as received; `request`'s headers
   * are read only for a route with header conditions.
   */
  match(
    host: string | null,
    path: string,
    method: string,
    request: { readonly headers: Headers },
  ): CompiledRoute | undefined {
    if (this.#first !== undefined) return this.#first;
    let routingName: string | undefined;
    let routingPath: string | undefined;
    for (const route of this.routes) {
      if (route.hostExact !== undefined || route.hostSuffix !== undefined) {
        routingName ??= routingHost(host);
        if (!hostMatches(route, routingName)) continue;
      }
      if (route.prefixBase !== undefined) {
        routingPath ??= pathOnly(path);
        if (!prefixMatches(route, routingPath)) continue;
      }
      if (route.methods !== undefined && !route.methods.includes(method)) continue;
      // Only read for a route with header conditions (a request may build its Headers then).
      if (route.headers !== undefined && !headersMatch(route.headers, request.headers)) continue;
      return route;
    }
    return undefined;
  }
}

function pathOnly(target: string): string {
  const q = target.indexOf("?");
  return normalizePath(q === -1 ? target : target.slice(0, q));
}

function headersMatch(wanted: readonly (readonly [string, string])[], headers: Headers): boolean {
  for (const [name, value] of wanted) {
    if (headers.get(name) !== value) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Per-request helpers

/**
 * The path sent upstream for a service route, from path + query as received. Unchanged when the
 * route neither strips nor adds a prefix; otherwise built from the normalised path (so `..`
 * cannot climb out of an added prefix) and the query as received: with `pathPrefix: "/api"`,
 * `stripPrefix`, `/api/x?q` gives `/x?q` and `/api` gives `/`; with `addPrefix: "/v1"` too,
 * `/v1/x?q` and `/v1`. A path outside the route's prefix is not stripped.
 */
export function upstreamPath(route: CompiledRoute, path: string): string {
  const strip = route.spec.stripPrefix === true && route.prefixBase !== undefined;
  const add = route.spec.addPrefix === "/" ? undefined : route.spec.addPrefix;
  if (!strip && add === undefined) return path;
  let [rest, query] = splitTarget(path);
  if (strip && prefixMatches(route, rest)) rest = rest.slice(route.prefixBase!.length);
  if (add !== undefined) return `${add}${rest}${query}`;
  return `${rest || "/"}${query}`;
}

/**
 * The Location of a redirect route: `to` with `{host}` (the request's host without port; `""`
 * when there is none) and `{path}` (path and query as received) put in.
 */
export function redirectLocation(route: CompiledRoute, host: string | null, path: string): string {
  const to = route.spec.redirect!.to;
  if (!to.includes("{")) return to;
  return to.replace(
    /\{(host|path)\}/g,
    (_, name) => name === "host" ? hostWithoutPort(host ?? "") : path,
  );
}

/** The status of a redirect route. */
export function redirectStatus(route: CompiledRoute): number {
  return route.spec.redirect?.status ?? 302;
}

/** The fixed answer of a respond route: status, body and content type with defaults applied. */
export function fixedResponse(
  route: CompiledRoute,
): { status: number; body: string; contentType: string } {
  const respond = route.spec.respond!;
  return {
    status: respond.status,
    body: respond.body ?? "",
    contentType: respond.contentType ?? DEFAULT_CONTENT_TYPE,
  };
}

/**
 * Applies rules to request header pairs (lower-case names): returns a new array, leaving `pairs`
 * unchanged (or `pairs` itself when `rules` is empty). Removed and set names go; set pairs, then
 * added pairs, are appended at the end.
 */
export function applyRequestHeaderRules(rules: HeaderRules, pairs: HeaderPairs): HeaderPairs {
  const set = rules.set === undefined ? [] : Object.entries(rules.set);
  const add = rules.add === undefined ? [] : Object.entries(rules.add);
  const drop = new Set(rules.remove?.map((name) => name.toLowerCase()));
  for (const [name] of set) drop.add(name.toLowerCase());
  if (drop.size === 0 && add.length === 0) return pairs;
  const out: HeaderPairs = pairs.filter(([name]) => !drop.has(name));
  for (const [name, value] of set) out.push([name.toLowerCase(), value]);
  for (const [name, value] of add) out.push([name.toLowerCase(), value]);
  return out;
}

/** Applies rules to a response's Headers, in place: remove, then set, then add. */
export function applyResponseHeaderRules(rules: HeaderRules, headers: Headers): void {
  for (const name of rules.remove ?? []) headers.delete(name);
  for (const [name, value] of Object.entries(rules.set ?? {})) headers.set(name, value);
  for (const [name, value] of Object.entries(rules.add ?? {})) headers.append(name, value);
}

/** The match part of a description: `host=… path=… methods=… headers=…`, or `any`. */
function describeMatch(route: CompiledRoute): string {
  const { host, pathPrefix, methods } = route.spec;
  const parts: string[] = [];
  if (host !== undefined) parts.push(`host=${host.toLowerCase()}`);
  if (pathPrefix !== undefined) parts.push(`path=${pathPrefix}`);
  if (methods !== undefined) parts.push(`methods=${methods.join(",")}`);
  for (const [name, value] of route.headers ?? []) parts.push(`header ${name}=${value}`);
  return parts.length === 0 ? "any" : parts.join(" ");
}

function describeRules(label: string, rules: HeaderRules | undefined): string {
  if (rules === undefined) return "";
  const parts: string[] = [];
  for (const kind of ["remove", "set", "add"] as const) {
    const names = kind === "remove" ? rules.remove : Object.keys(rules[kind] ?? {});
    if (names !== undefined && names.length > 0) parts.push(`${kind} ${names.join(",")}`);
  }
  return parts.length === 0 ? "" : `; ${label} ${parts.join(" ")}`;
}

/**
 * One-line description of a route's match and action for the admin API and dashboard, e.g.
 * `{ name: "api", match: "host=api.example.com path=/api", action: "service api (strip)" }`.
 */
export function describeRoute(
  route: CompiledRoute,
): { name: string; match: string; action: string } {
  const spec = route.spec;
  let action: string;
  if (route.action === "service") {
    const rewrites: string[] = [];
    if (spec.stripPrefix) rewrites.push("strip");
    if (spec.addPrefix !== undefined) rewrites.push(`add ${spec.addPrefix}`);
    action = `service ${spec.service}${rewrites.length ? ` (${rewrites.join(", ")})` : ""}`;
  } else if (route.action === "redirect") {
    action = `redirect ${redirectStatus(route)} ${spec.redirect!.to}`;
  } else {
    action = `respond ${spec.respond!.status}`;
  }
  action += describeRules("request headers", spec.requestHeaders) +
    describeRules("response headers", spec.responseHeaders);
  return { name: route.name, match: describeMatch(route), action };
}
