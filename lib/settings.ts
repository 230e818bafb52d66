/**
 * @module
 * Layers the settings: defaults, then the config file, then the flags the user typed, all
 * checked by the same rules, reporting every problem at once (`--check`, like `nginx -t`).
 */

import { type AdminAddress, type Config, DEFAULTS, keyToFlag, parseFlags } from "./config.ts";
import {
  checkSettings,
  ConfigFileError,
  type ConfigSource,
  formatProblem,
  locateProblem,
  mergeSettings,
  parseConfigSource,
  type Problem,
  validateFileSettings,
} from "./config_file.ts";
import { ConfigError } from "./errors.ts";
import { assertRegularFile, fileFailure } from "./file_failure.ts";
import { SETTING_KEYS, SETTINGS } from "./setting_table.ts";

/** What to do, with validated settings. */
export type Invocation =
  | { kind: "help" }
  | { kind: "version" }
  | {
    kind: "run" | "check";
    config: Config;
    configPath?: string;
    /** Problems that stop nothing (a service no route uses), one line each, to be printed. */
    warnings: string[];
  };

/** Settings every run starts from (a fresh copy: lists in it may be changed). */
export function defaultConfig(): Config {
  return { ...structuredClone(DEFAULTS), backends: [], demo: false };
}

/**
 * Reads the command line (and the config file it names), validates everything, and returns
 * what to do. Throws one {@linkcode ConfigError} whose message has a line per problem:
 * `--port: 70000 is out of range (0 to 65535)`, `lb.jsonc:4:7: backends[1].url: ...`.
 */
export function parseCommandLine(argv: readonly string[]): Invocation {
  return readInvocation(argv, undefined);
}

/**
 * The settings for a reload: the process's command line read again, with the config file's
 * current content (its flags still override the file). `boundAdmin` is the address the running
 * admin listener is bound to: `admin` needs a restart, so a reload must not leave that address
 * without a token, whatever the file names now. Throws {@linkcode ConfigError} listing every
 * problem.
 */
export function reloadSettings(argv: readonly string[], boundAdmin?: AdminAddress): Config {
  const invocation = readInvocation(argv, boundAdmin);
  if (invocation.kind === "help" || invocation.kind === "version") {
    throw new ConfigError("the command line no longer describes a run");
  }
  return invocation.config;
}

function readInvocation(argv: readonly string[], boundAdmin: AdminAddress | undefined): Invocation {
  const flags = parseFlags(argv);
  if (flags.kind === "help" || flags.kind === "version") return flags;
  const problems: string[] = [];
  const source = flags.configPath === undefined
    ? { settings: {}, locations: new Map() }
    : readFileSettings(flags.configPath, problems);
  const { settings: given, problems: flagProblems } = validateFileSettings(flags.given);
  problems.push(...flagProblems.map(describeFlagProblem));
  if (problems.length === 0) {
    const config = mergeSettings<Config>(
      defaultConfig(),
      source.settings,
      given as Partial<Config>,
    );
    config.demo = flags.demo;
    if (!config.adminToken) config.adminToken = environmentToken();
    const merged = checkSettings(config);
    const describe = (p: Problem) => describeMergedProblem(p, source, flags.configPath);
    problems.push(...merged.filter((p) => !p.warning).map(describe));
    const exposed = adminExposedWithoutToken(config) ??
      boundAdminLeftWithoutToken(boundAdmin, config.adminToken);
    if (exposed !== undefined) problems.push(exposed);
    if (problems.length === 0) {
      const warnings = merged.filter((p) => p.warning).map((p) => `warning: ${describe(p)}`);
      return { kind: flags.kind, config, configPath: flags.configPath, warnings };
    }
  }
  throw new ConfigError(problems.join("\n"));
}

/** The admin token from `LB_ADMIN_TOKEN`, when the process may read it. */
function environmentToken(): string {
  try {
    return Deno.env.get("LB_ADMIN_TOKEN") ?? "";
  } catch {
    return ""; // no --allow-env for it: the variable simply does not count
  }
}

/**
 * The admin API can drain every backend: off loopback it must not run without a token, or
 * anyone who can reach the port controls the balancer.
 */
function adminExposedWithoutToken(config: Config): string | undefined {
  if (config.admin === undefined || config.adminToken || isLoopback(config.admin.host)) {
    return undefined;
  }
  return `--admin: ${config.admin.host} is not a loopback address; set --admin-token ` +
    "(or LB_ADMIN_TOKEN) so that not everyone who reaches it controls the balancer";
}

/** The same rule for the listener a reload keeps (the file may name another address). */
function boundAdminLeftWithoutToken(
  bound: AdminAddress | undefined,
  token: string | undefined,
): string | undefined {
  if (bound === undefined || token || isLoopback(bound.host)) return undefined;
  return `--admin-token: the admin listener stays on ${bound.host}, not a loopback address, ` +
    "until a restart; keep a token (or LB_ADMIN_TOKEN) so that not everyone who reaches it " +
    "controls the balancer";
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

function readFileSettings(path: string, problems: string[]): ConfigSource {
  try {
    assertRegularFile(path);
    return parseConfigSource(Deno.readTextFileSync(path), path);
  } catch (error) {
    if (error instanceof ConfigFileError) {
      problems.push(...error.problems.map((p) => formatProblem(p, path)));
    } else {
      problems.push(`${path}: cannot read the file: ${fileFailure(error)}`);
    }
    return { settings: {}, locations: new Map() };
  }
}

/** A flag's problem, named by the flag: `--health-interval: "5" is not a duration`. */
function describeFlagProblem(problem: Problem): string {
  const key = /^[A-Za-z0-9]+/.exec(problem.path)?.[0] ?? problem.path;
  return `${keyToFlag(key)}: ${problem.message}`;
}

/** Keys only a file can set (no flag): their problems are placed in the file, by line and column. */
const FILE_ONLY_KEYS: ReadonlySet<string> = new Set(
  SETTING_KEYS.filter((key) => SETTINGS[key].flag === "none"),
);

function fileOnly(path: string): boolean {
  return FILE_ONLY_KEYS.has(/^[A-Za-z0-9]+/.exec(path)?.[0] ?? "");
}

/**
 * A problem of the merged settings. File-only keys (services, routes, ...) get the file's
 * `file:line:column`; any other key may come from file or flags: name both.
 */
function describeMergedProblem(problem: Problem, source: ConfigSource, file?: string): string {
  if (fileOnly(problem.path) && file !== undefined) {
    return formatProblem(locateProblem(source.locations, problem), file);
  }
  if (problem.path === "backends") return problem.message;
  return `${keyToFlag(problem.path)} (${problem.path}): ${problem.message}`;
}
