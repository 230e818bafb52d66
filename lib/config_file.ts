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

import type { Config } from "./config.ts";
import { ConfigError } from "./errors.ts";
import { JsoncSyntaxError, type Location, parseJsonc } from "./jsonc.ts";
import type { Problem } from "./problem.ts";
import { lintRoutes } from "./routes.ts";
import { type CheckFn, checkKeys, isObject, show } from "./setting_values.ts";
import {
  DEFAULT_SERVICE,
  DEFAULTS,
  FILE_KEYS as TABLE_FILE_KEYS,
  impliedRoutes,
  SETTINGS,
} from "./setting_table.ts";

export type { Problem };
export { ACCESS_LOG_FORMATS, LOG_FORMATS, TRANSPORTS } from "./setting_values.ts";

/** Address of the admin listener, from `"HOST:PORT"` (`"[::1]:9090"` for IPv6). */
export type { AdminAddress } from "./config.ts";

/**
 * The defaults of the operations, edge and scale-out settings: since every default is declared
 * in the setting table, this is the same object as `DEFAULTS` (lib/config.ts), kept for importers.
 */
export const OPS_DEFAULTS = DEFAULTS;

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

/** Every setting key a file may hold, in documentation order (the setting table's). */
export const FILE_KEYS = TABLE_FILE_KEYS as readonly (keyof FileSettings)[];

/**
 * Keys accepted but ignored: `$schema` lets editors find `lb.schema.json`
 * (`"$schema": "./lb.schema.json"`).
 */
export const IGNORED_KEYS = ["$schema"] as const;

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
    const value = (SETTINGS[key].check as CheckFn<unknown>)(raw[key], key, problems);
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

/** A configuration file's settings, and where each value is in its text. */
export interface ConfigSource {
  settings: FileSettings;
  /** Line and column of every value, by JSON path (for problems found after merging). */
  locations: ReadonlyMap<string, Location>;
}

/**
 * Parses and validates the text of a configuration file, also returning where each value is, so
 * that problems found later (by {@linkcode checkSettings}) can be placed with
 * {@linkcode locateProblem}.
 *
 * @param file Name used in messages.
 * @throws {ConfigFileError} with the syntax error, or with every validation problem, each with
 * the line and column of its value (or of the nearest enclosing value that exists).
 */
export function parseConfigSource(text: string, file: string): ConfigSource {
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
    throw new ConfigFileError(file, problems.map((p) => locateProblem(locations, p)));
  }
  return { settings, locations };
}

/** The problem with the line and column of its path, or of the nearest enclosing value. */
export function locateProblem(locations: ReadonlyMap<string, Location>, problem: Problem): Problem {
  return { ...problem, ...locate(locations, problem.path) };
}

/** Location of `path`, or of its nearest ancestor in the file (a missing key has none). */
function locate(locations: ReadonlyMap<string, Location>, path: string): Location | undefined {
  for (let p = path;;) {
    const location = locations.get(p);
    const parent = p.replace(/(?:\.[^.[\]]*|\[[^\]]*\])$/, "");
    if (location || parent === p) return location ?? locations.get("");
    p = parent;
  }
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
 * Rules across settings that only hold once file and flags are merged: some backend in some
 * service (unless `demo`), settings that come in pairs, `ejectMaxTime` not below `ejectTime`
 * (top level and each service), and the routes against the services (lib/routes.ts
 * `lintRoutes`). Paths name the file keys. Problems with `warning: true` do not stop anything.
 */
export function checkSettings(config: Config): Problem[] {
  const problems: Problem[] = [];
  const topHasBackends = config.backends.length > 0 || (config.discover ?? []).length > 0;
  const services = Object.entries(config.services ?? {});
  if (!topHasBackends && !config.demo && services.length === 0) {
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
  const native = config.frontend === "native";
  for (const key of ["headerTimeout", "idleTimeout", "maxConnections", "proxyProtocol"] as const) {
    if (!native && config[key] !== DEFAULTS[key]) {
      problems.push({ path: key, message: "needs the native front end (frontend: native)" });
    }
  }
  if (config.proxyProtocol && (config.tlsCert !== undefined || acmeEnabled(config))) {
    problems.push({
      path: "proxyProtocol",
      message: "cannot be used with TLS: the header comes before the handshake Deno makes itself",
    });
  }
  if (config.proxyProtocol && (config.trustedProxies ?? []).length === 0) {
    problems.push({
      path: "proxyProtocol",
      message: "needs --trusted-proxies: only their connections may carry a PROXY header",
    });
  }
  const acme = acmeEnabled(config);
  if (config.redirectHttp !== undefined && config.tlsCert === undefined && !acme) {
    problems.push({ path: "redirectHttp", message: "needs TLS (tlsCert and tlsKey, or ACME)" });
  }
  if (acme && config.tlsCert !== undefined) {
    problems.push({
      path: "tlsCert",
      message: "ACME manages the certificate: give tlsCert/tlsKey or ACME, not both",
    });
  }
  if (acme && acmeDomainsOf(config).length === 0) {
    problems.push({
      path: "acmeDomains",
      message: "ACME is on but names no domain: set acmeDomains, or routes with exact hosts",
    });
  }
  if (config.ejectMaxTime < config.ejectTime) {
    problems.push({
      path: "ejectMaxTime",
      message: `${config.ejectMaxTime}ms is shorter than ejectTime (${config.ejectTime}ms)`,
    });
  }
  for (const [name, service] of services) {
    problems.push(...checkService(name, service, config, topHasBackends));
  }
  problems.push(...checkRouting(config, topHasBackends));
  return problems;
}

/** One service's whole-config rules: backends of its own, a consistent ejection time. */
function checkService(
  name: string,
  service: NonNullable<Config["services"]>[string],
  config: Config,
  topHasBackends: boolean,
): Problem[] {
  const problems: Problem[] = [];
  const path = `services.${name}`;
  if (name === DEFAULT_SERVICE && topHasBackends) {
    problems.push({
      path,
      message: 'the top-level "backends" and "discover" already form the service "default": ' +
        "move them into it, or give this service another name",
    });
  }
  if ((service.backends ?? []).length === 0 && (service.discover ?? []).length === 0) {
    problems.push({ path, message: 'no backends: give the service "backends" or "discover"' });
  }
  const ejectTime = service.ejectTime ?? config.ejectTime;
  const ejectMaxTime = service.ejectMaxTime ?? config.ejectMaxTime;
  const set = service.ejectTime !== undefined || service.ejectMaxTime !== undefined;
  if (set && ejectMaxTime < ejectTime) {
    problems.push({
      path: `${path}.${service.ejectMaxTime !== undefined ? "ejectMaxTime" : "ejectTime"}`,
      message: `ejectMaxTime (${ejectMaxTime}ms) is shorter than ejectTime (${ejectTime}ms)`,
    });
  }
  return problems;
}

/** Whether automatic HTTPS is on: `acme`, or any `acmeDomains`. */
export function acmeEnabled(config: Config): boolean {
  return config.acme === true || (config.acmeDomains ?? []).length > 0;
}

/** The names the ACME certificate covers: `acmeDomains`, else the routes' exact hosts. */
export function acmeDomainsOf(config: Config): string[] {
  if ((config.acmeDomains ?? []).length > 0) return [...config.acmeDomains!];
  const hosts = (config.routes ?? [])
    .map((route) => route.host?.toLowerCase())
    .filter((host): host is string => host !== undefined && !host.startsWith("*."));
  return [...new Set(hosts)];
}

/** The routes against the services that exist (`--demo`'s backends form `default`). */
function checkRouting(config: Config, topHasBackends: boolean): Problem[] {
  const names = Object.keys(config.services ?? {});
  if ((topHasBackends || config.demo) && !names.includes(DEFAULT_SERVICE)) {
    names.unshift(DEFAULT_SERVICE);
  }
  const problems: Problem[] = [];
  const routes = config.routes ?? impliedRoutes(names, problems);
  // Without routes or services there is nothing to compare (a config with no backends at all).
  if (config.routes !== undefined || names.length > 0) problems.push(...lintRoutes(routes, names));
  if (config.mirror && !names.includes(config.mirror.service)) {
    problems.push({
      path: "mirror.service",
      message: `no service named ${JSON.stringify(config.mirror.service)}`,
    });
  }
  return problems;
}
