/**
 * @module
 * The setting table (lib/setting_table.ts) and what is generated from it: `--help`, the
 * validator of services and routes, the service resolver, `lb.schema.json` and
 * docs/configuration.md.
 */
import assert from "node:assert/strict";
import { type Config, type ServiceKey, USAGE } from "../lib/config.ts";
import { checkSettings, formatProblem, validateFileSettings } from "../lib/config_file.ts";
import {
  DEFAULT_SERVICE,
  DEFAULTS,
  effectiveRoutes,
  keyToFlag,
  RESTART_ONLY,
  SERVICE_KEYS,
  serviceConfigs,
  SETTING_KEYS,
  SETTINGS,
  usersFilesOf,
} from "../lib/setting_table.ts";
import { defaultConfig, type Invocation, parseCommandLine } from "../lib/settings.ts";
import { ConfigError } from "../lib/errors.ts";
import type { Problem } from "../lib/problem.ts";
import { generate } from "../tools/gen_config_docs.ts";
import { runMain } from "./process.ts";

// Type-level: the table has exactly Config's keys, and its service scope is exactly ServiceKey.
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true
  : false;
const tableKeysAreConfigKeys: Equal<keyof typeof SETTINGS, keyof Config> = true;
const serviceKeysAreServiceKey: Equal<typeof SERVICE_KEYS[number], ServiceKey> = true;

Deno.test("SETTINGS has one entry per Config field, and the scopes the issue lists", () => {
  assert.ok(tableKeysAreConfigKeys && serviceKeysAreServiceKey);
  // A runtime view of the same: every entry names a key of a complete Config.
  const config = defaultConfig();
  for (const key of SETTING_KEYS) {
    assert.ok(key in config || SETTINGS[key].default === undefined, key);
  }
  assert.deepEqual([...SERVICE_KEYS].sort(), [
    "backends",
    "bodyTimeout",
    "connectTimeout",
    "discover",
    "ejectAfter",
    "ejectMaxPercent",
    "ejectMaxTime",
    "ejectOn5xx",
    "ejectTime",
    "fall",
    "hashKey",
    "healthInterval",
    "healthPath",
    "healthTimeout",
    "maxBody",
    "maxConns",
    "panicThreshold",
    "policy",
    "readTimeout",
    "retries",
    "retryBudget",
    "retryBudgetMin",
    "rise",
    "slowStart",
    "stickyCookie",
    "stickySecret",
    "timeout",
    "transport",
  ]);
});

Deno.test("RESTART_ONLY is exactly the settings a reload cannot apply", () => {
  assert.deepEqual([...RESTART_ONLY].sort(), [
    "acme",
    "acmeCa",
    "acmeDir",
    "acmeDirectory",
    "acmeDomains",
    "acmeEmail",
    "admin",
    "backlog",
    "frontend",
    "headerTimeout",
    "host",
    "idleTimeout",
    "maxConnections",
    "port",
    "proxyProtocol",
    "redirectHttp",
    "tlsCert",
    "tlsKey",
    "workers",
  ]);
});

Deno.test("USAGE names every setting: a flag for each, file-only keys by name", () => {
  for (const key of SETTING_KEYS) {
    const word = SETTINGS[key].flag === "none" ? key : keyToFlag(key);
    assert.match(USAGE, new RegExp(`(^|[\\s,])${word.replace(/[-]/g, "\\-")}(\\s|,|$)`, "m"), key);
  }
  // Today's lines are kept, defaults filled in from the table.
  assert.ok(USAGE.startsWith("Usage: load-balancer -backends=URL[,URL...] [options]\n"));
  assert.match(USAGE, /^ {2}--port N {17}listening port \(default 3030\)$/m);
  assert.match(USAGE, /^ {2}--health-interval DUR {4}time between health checks \(default 5s\)$/m);
  assert.match(USAGE, /^ {2}--eject-max-time DUR {5}longest ejection \(default 5m\)$/m);
  assert.match(USAGE, /^ {2}--hash-key KEY .*\(default ip\)$/m);
  assert.match(USAGE, /^ {27}a weight follows as URL\*N/m);
});

Deno.test("DEFAULTS come from the table and give a complete Config", () => {
  assert.equal(DEFAULTS.port, 3030);
  assert.equal(DEFAULTS.healthInterval, 5000);
  assert.equal(DEFAULTS.maxBody, 10 * 1024 * 1024);
  assert.equal(DEFAULTS.transport, "native");
  const config = defaultConfig();
  config.discover!.push("dns+a://x:1");
  assert.deepEqual(DEFAULTS.discover, [], "defaultConfig() copies the lists");
});

Deno.test("lb.schema.json and docs/configuration.md are what tools/gen_config_docs.ts generates", async () => {
  const generated = await generate();
  for (const [path, text] of Object.entries(generated)) {
    const committed = await Deno.readTextFile(new URL(`../${path}`, import.meta.url));
    assert.ok(
      committed === text,
      `${path} is stale: run deno run -A tools/gen_config_docs.ts`,
    );
  }
  const docs = generated["docs/configuration.md"];
  for (const key of SETTING_KEYS) assert.ok(docs.includes(`### \`${key}\``), key);
});

// ---------------------------------------------------------------------------------------------
// services and routes in the validator

function problemsOf(raw: unknown): string[] {
  return validateFileSettings(raw).problems.map((p) => formatProblem(p));
}

Deno.test("validateFileSettings() checks each service with the per-service rules", () => {
  assert.deepEqual(
    problemsOf({
      services: {
        "bad name!": { backends: ["http://a:1"] },
        api: {
          backends: ["ftp://x"],
          port: 80,
          retrys: 1,
          timeout: "5",
          healthCheck: {
            path: "healthz",
            expectStatus: [],
            host: "a b",
            bodyContains: "",
            interval: "0s",
            rise: 0,
            extra: 1,
          },
        },
        web: "http://a:1",
      },
    }),
    [
      'services["bad name!"]: "bad name!" is not a service name (up to 64 letters, digits, "_", "." or "-", starting with a letter or digit)',
      "services.api.port: is a global setting: set it at the top level",
      'services.api.retrys: unknown key (did you mean "retries"?)',
      'services.api.backends[0]: "ftp://x" is not an absolute http(s) URL',
      'services.api.timeout: "5" is not a duration (use e.g. 500ms, 2s, 1m)',
      "services.api.healthCheck.extra: unknown key",
      'services.api.healthCheck.path: "healthz" must be a path starting with /',
      "services.api.healthCheck.expectStatus: a list is not a non-empty list of statuses",
      'services.api.healthCheck.host: "a b" is not hostname[:port]',
      'services.api.healthCheck.bodyContains: "" must not be empty',
      'services.api.healthCheck.interval: "0s" must be at least 1ms',
      "services.api.healthCheck.rise: 0 is out of range (1 to 1000)",
      'services.web: "http://a:1" is not a service object',
    ],
  );
  assert.deepEqual(problemsOf({ services: [] }), [
    "services: a list is not an object of services (name: {...})",
  ]);
  assert.deepEqual(
    problemsOf({
      services: { a: { backends: ["http://a:1"], healthCheck: { expectStatus: [99] } } },
    }),
    ["services.a.healthCheck.expectStatus[0]: 99 is out of range (100 to 599)"],
  );
});

Deno.test("validateFileSettings() converts a service's values as the top level's", () => {
  const { settings, problems } = validateFileSettings({
    services: {
      "api.v2": {
        backends: ["http://a:1*2"],
        timeout: "5s",
        hashKey: "header:X-User",
        healthCheck: { path: "/hz", expectStatus: [200, 204], host: "api.example.com:8443" },
      },
    },
  });
  assert.deepEqual(problems, []);
  assert.deepEqual(settings.services, {
    "api.v2": {
      backends: [{ url: "http://a:1", weight: 2 }],
      timeout: 5000,
      hashKey: { kind: "header", name: "x-user" },
      healthCheck: { path: "/hz", expectStatus: [200, 204], host: "api.example.com:8443" },
    },
  });
});

Deno.test("validateFileSettings() passes routes to lib/routes.ts's checkRoutes", () => {
  const ok = validateFileSettings({ routes: [{ pathPrefix: "/api", service: "api" }] });
  assert.deepEqual(ok.problems, []);
  assert.deepEqual(ok.settings.routes, [{ pathPrefix: "/api", service: "api" }]);
  const bad = validateFileSettings({ routes: [{ service: "api" }, { pathPrefix: 3 }] }).problems;
  assert.ok(bad.length > 0);
  assert.ok(bad.every((p) => p.path.startsWith("routes[1]")), JSON.stringify(bad));
  assert.deepEqual(problemsOf({ routes: {} }).length, 1);
});

// ---------------------------------------------------------------------------------------------
// serviceConfigs(), effectiveRoutes(), checkSettings()

const API = { url: "http://api:1", weight: 1 };
const TOP = { url: "http://top:1", weight: 1 };

function config(overrides: Partial<Config>): Config {
  return { ...defaultConfig(), ...overrides };
}

Deno.test("serviceConfigs() takes the service's value, else the top level's, else the default", () => {
  const services = serviceConfigs(config({
    backends: [TOP],
    timeout: 7000,
    rise: 4,
    healthPath: "/top",
    services: {
      api: {
        backends: [API],
        timeout: 1000,
        healthInterval: 900,
        healthCheck: { timeout: 50, expectStatus: [204], bodyContains: "ok" },
      },
    },
  }));
  assert.deepEqual([...services.keys()], [DEFAULT_SERVICE, "api"]);
  const api = services.get("api")!;
  assert.equal(api.name, "api");
  assert.equal(api.timeout, 1000); // service
  assert.equal(api.rise, 4); // top level
  assert.equal(api.retries, DEFAULTS.retries); // default
  assert.deepEqual(api.backends, [API]);
  assert.deepEqual(api.discover, [], "a service does not inherit the top-level lists");
  assert.deepEqual(api.healthCheck, {
    path: "/top",
    interval: 900,
    timeout: 50,
    rise: 4,
    fall: DEFAULTS.fall,
    expectStatus: [204],
    bodyContains: "ok",
  });
  const top = services.get(DEFAULT_SERVICE)!;
  assert.deepEqual(top.backends, [TOP]);
  assert.equal(top.timeout, 7000);
  assert.equal(top.healthCheck.path, "/top");
  assert.equal(top.transport, "native");
});

Deno.test("serviceConfigs() has no default service without top-level backends or discover", () => {
  assert.deepEqual([...serviceConfigs(config({ services: { api: { backends: [API] } } })).keys()], [
    "api",
  ]);
  assert.deepEqual([...serviceConfigs(config({ discover: ["dns+a://x:80"] })).keys()], [
    DEFAULT_SERVICE,
  ]);
});

Deno.test("effectiveRoutes() gives the configured routes, or the one catch-all that is clear", () => {
  const routes = [{ pathPrefix: "/api", service: "api" }];
  assert.equal(effectiveRoutes(config({ routes })), routes);
  assert.deepEqual(effectiveRoutes(config({ backends: [TOP] })), [{ service: DEFAULT_SERVICE }]);
  assert.deepEqual(
    effectiveRoutes(config({ backends: [TOP], services: { api: { backends: [API] } } })),
    [{ service: DEFAULT_SERVICE }],
  );
  assert.deepEqual(effectiveRoutes(config({ services: { api: { backends: [API] } } })), [
    { service: "api" },
  ]);
  const problems: Problem[] = [];
  const several = config({ services: { a: { backends: [API] }, b: { backends: [TOP] } } });
  assert.deepEqual(effectiveRoutes(several, problems), []);
  assert.deepEqual(problems.map((p) => p.path), ["routes"]);
  assert.match(problems[0].message, /several services \(a, b\) and no "routes"/);
});

Deno.test("checkSettings() accepts services without top-level backends and checks each", () => {
  assert.deepEqual(checkSettings(config({ services: { api: { backends: [API] } } })), []);
  const problems = checkSettings(config({
    backends: [TOP],
    services: {
      default: { backends: [API] },
      empty: {},
      short: { backends: [API], ejectTime: 600_000 },
    },
    routes: [{ service: "default" }, { pathPrefix: "/x", service: "short" }],
  })).map((p) => `${p.warning ? "warning " : ""}${formatProblem(p)}`);
  assert.deepEqual(problems.filter((p) => !p.includes("routes")), [
    'services.default: the top-level "backends" and "discover" already form the service "default": move them into it, or give this service another name',
    'services.empty: no backends: give the service "backends" or "discover"',
    "services.short.ejectTime: ejectMaxTime (300000ms) is shorter than ejectTime (600000ms)",
    'warning services.empty: no route sends requests to service "empty"',
  ]);
  assert.ok(problems.some((p) => p.startsWith("routes[1]") && /unreachable/.test(p)), problems[0]);
});

// ---------------------------------------------------------------------------------------------
// Through the command line and --check

async function withConfigFile<T>(text: string, body: (path: string) => Promise<T> | T) {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/lb.jsonc`;
    await Deno.writeTextFile(path, text);
    return await body(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function commandLineProblems(args: string[]): string[] {
  try {
    parseCommandLine(args);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return error.message.split("\n");
  }
  assert.fail("no problem found");
}

const SERVICES_FILE = `{
  "services": {
    "api": {
      "backends": ["http://127.0.0.1:1"],
      "healthCheck": { "expectStatus": [700] }
    },
    "web": { "backends": ["http://127.0.0.1:2"], "port": 80 },
    "idle": { "backends": ["http://127.0.0.1:3"] }
  },
  "routes": [
    { "pathPrefix": "/api", "service": "api" },
    { "service": "nope" }
  ]
}
`;

Deno.test("parseCommandLine() places service and route problems at their line and column", async () => {
  await withConfigFile(SERVICES_FILE, (path) => {
    assert.deepEqual(commandLineProblems(["--check", "--config", path]), [
      `${path}:5:41: services.api.healthCheck.expectStatus[0]: 700 is out of range (100 to 599)`,
      `${path}:7:50: services.web.port: is a global setting: set it at the top level`,
    ]);
  });
  const fixed = SERVICES_FILE.replace("[700]", "[200]").replace(', "port": 80', "");
  await withConfigFile(fixed, (path) => {
    const lines = commandLineProblems(["--check", "--config", path]);
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.match(
      lines[0],
      new RegExp(`^${path}:12:7: routes\\[1\\]\\.service: no service named "nope"`),
    );
  });
});

Deno.test("parseCommandLine() returns warnings without failing", async () => {
  const file = SERVICES_FILE.replace("[700]", "[200]").replace(', "port": 80', "")
    .replace('"nope"', '"web"');
  await withConfigFile(file, (path) => {
    const invocation = parseCommandLine(["--check", "--config", path]) as Invocation & {
      kind: "check";
    };
    assert.equal(invocation.kind, "check");
    assert.deepEqual(invocation.warnings, [
      `warning: ${path}:8:5: services.idle: no route sends requests to service "idle"`,
    ]);
    assert.deepEqual(Object.keys(invocation.config.services!), ["api", "web", "idle"]);
  });
});

Deno.test("--check exits 2 with file:line:column for a service mistake, and 0 with only warnings", async () => {
  await withConfigFile(SERVICES_FILE, async (path) => {
    const bad = await runMain(["--check", "--config", path], {
      permissions: [`--allow-read=${path}`],
    });
    assert.equal(bad.code, 2, bad.stderr);
    assert.ok(
      bad.stderr.includes(
        `load-balancer: ${path}:7:50: services.web.port: is a global setting: set it at the top level`,
      ),
      bad.stderr,
    );
    assert.doesNotMatch(bad.stderr, /\bat .*\.ts:\d+/, "no stack trace");
  });
  const file = SERVICES_FILE.replace("[700]", "[200]").replace(', "port": 80', "")
    .replace('"nope"', '"web"');
  await withConfigFile(file, async (path) => {
    const ok = await runMain(["--check", "--config", path], {
      permissions: [`--allow-read=${path}`],
    });
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /: ok$/m);
  });
});

Deno.test("usersFilesOf() lists the users files of the top level and the routes, once each", () => {
  const auth = (usersFile?: string) => ({
    realm: "r",
    users: {},
    ...(usersFile ? { usersFile } : {}),
  });
  const config: Config = {
    ...defaultConfig(),
    basicAuth: auth("/etc/lb/users"),
    routes: [
      { service: "default", basicAuth: auth("/etc/lb/ops") },
      { service: "default", basicAuth: false },
      { service: "default", basicAuth: auth() },
      { service: "default", basicAuth: auth("/etc/lb/users") },
      { service: "default" },
    ],
  };
  assert.deepEqual(usersFilesOf(config), ["/etc/lb/ops", "/etc/lb/users"]);
  assert.deepEqual(usersFilesOf(defaultConfig()), []);
});
