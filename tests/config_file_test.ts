import assert from "node:assert/strict";
import { type Config, DEFAULTS, parseDuration } from "../lib/config.ts";
import {
  checkSettings,
  ConfigFileError,
  FILE_KEYS,
  type FileSettings,
  formatProblem,
  IGNORED_KEYS,
  mergeSettings,
  OPS_DEFAULTS,
  parseConfigSource,
  type Problem,
  validateFileSettings,
} from "../lib/config_file.ts";
import { ConfigError } from "../lib/errors.ts";
import { parseJsonc } from "../lib/jsonc.ts";

const SCHEMA_URL = new URL("../lb.schema.json", import.meta.url);
const EXAMPLE_URL = new URL("../examples/lb.jsonc", import.meta.url);
const schema = JSON.parse(await Deno.readTextFile(SCHEMA_URL)) as JsonSchema;

function problemsOf(raw: unknown): string[] {
  return validateFileSettings(raw).problems.map((p) => formatProblem(p));
}

function configFileError(text: string): ConfigFileError {
  try {
    parseConfigSource(text, "lb.jsonc");
  } catch (error) {
    assert.ok(error instanceof ConfigFileError, `not a ConfigFileError: ${error}`);
    return error;
  }
  assert.fail("parsed without error");
}

// ---------------------------------------------------------------------------------------------
// validateFileSettings()

Deno.test("validateFileSettings() reports every problem at once, each with its path", () => {
  const { settings, problems } = validateFileSettings({
    backends: ["http://a:8081", "ftp://x"],
    healthInterval: "5 sec",
    healthIntervall: "5s",
    port: 8080,
  });
  assert.deepEqual(problems, [
    { path: "healthIntervall", message: 'unknown key (did you mean "healthInterval"?)' },
    { path: "backends[1]", message: '"ftp://x" is not an absolute http(s) URL' },
    { path: "healthInterval", message: '"5 sec" is not a duration (use e.g. 500ms, 2s, 1m)' },
  ]);
  // Good keys are still read; bad ones are left out.
  assert.deepEqual(settings, { port: 8080 });
});

Deno.test("validateFileSettings() gives object backends' problems at .url and .weight", () => {
  assert.deepEqual(
    problemsOf({
      backends: [
        { url: "http://a:1", weight: 3 },
        { url: "ftp://x" },
        { url: "http://b:2", weight: 2.5 },
        { url: "http://c:3", weight: 1_000_001 },
        { url: "http://d:4/api" },
        { weight: 2 },
        { url: "http://e:5", wieght: 2 },
        { url: "http://f:6*3" },
        { url: "http://user:pw@g:7" },
        42,
        "http://h:8*x",
        { url: 5 },
      ],
    }),
    [
      'backends[1].url: "ftp://x" is not an absolute http(s) URL',
      "backends[2].weight: 2.5 is not a whole number",
      "backends[3].weight: 1000001 is out of range (0 to 1000000)",
      'backends[4].url: "http://d:4/api" must be an origin only (scheme://host:port), ' +
      "without path or query",
      'backends[5]: needs a "url"',
      'backends[6].wieght: unknown key (did you mean "weight"?)',
      'backends[7].url: "http://f:6*3" is not an absolute http(s) URL',
      'backends[8].url: "http://user:pw@g:7" must not contain credentials',
      'backends[9]: 42 is not a URL or a {"url", "weight"} object',
      'backends[10]: weight "x" of http://h:8 is not a whole number 0-1000000',
      "backends[11].url: 5 is not an absolute http(s) URL",
    ],
  );
});

Deno.test("validateFileSettings() reads string and object backends with weights", () => {
  const { settings, problems } = validateFileSettings({
    backends: [
      "http://a:1",
      "http://b:2*3",
      { url: "HTTPS://C:443/" },
      { url: "http://[::1]:4", weight: 0 },
      { url: "http://e:5", weight: 1_000_000 },
    ],
  });
  assert.deepEqual(problems, []);
  assert.deepEqual(settings.backends, [
    { url: "http://a:1", weight: 1 },
    { url: "http://b:2", weight: 3 },
    { url: "https://c", weight: 1 },
    { url: "http://[::1]:4", weight: 0 },
    { url: "http://e:5", weight: 1_000_000 },
  ]);
});

Deno.test("validateFileSettings() refuses duplicate backends, compared as origins", () => {
  assert.deepEqual(
    problemsOf({
      backends: ["http://a:1", { url: "HTTP://A:1/" }, "http://b:80", "http://b*2"],
    }),
    [
      "backends[1].url: duplicate backend http://a:1 (also backends[0])",
      "backends[3]: duplicate backend http://b (also backends[2])",
    ],
  );
  assert.deepEqual(problemsOf({ backends: [] }), [
    "backends: is empty: list at least one backend, or leave the key out",
  ]);
  assert.deepEqual(problemsOf({ backends: "http://a:1" }), [
    'backends: "http://a:1" is not a list of backends',
  ]);
});

Deno.test("validateFileSettings() applies the flags' rules to every key", () => {
  assert.deepEqual(
    problemsOf({
      port: 70000,
      host: "a b",
      healthInterval: 5000,
      healthTimeout: "0ms",
      healthPath: "healthz",
      rise: 0,
      fall: "3",
      retries: 101,
      connectTimeout: " 2s",
      timeout: "25d",
      drainTimeout: "1d",
      logLevel: "INFO",
      policy: "rr",
      hashKey: "header:",
      stickyCookie: "a b",
      stickySecret: "short",
      slowStart: "-1s",
      maxConns: -1,
      ejectAfter: 1.5,
      ejectTime: "1h",
      ejectMaxTime: "1m",
      ejectMaxPercent: 101,
      ejectOn5xx: "yes",
      panicThreshold: null,
      retryBudget: [20],
      retryBudgetMin: { n: 1 },
      admin: "localhost",
      adminToken: "short",
      accessLog: "",
      accessLogFormat: "clf",
      alertWebhook: "https://user:pw@hooks.example.com/x",
      logFormat: "yaml",
    }),
    [
      "port: 70000 is out of range (0 to 65535)",
      'host: "a b" is not a bind address',
      "healthInterval: 5000 is not a duration (use e.g. 500ms, 2s, 1m)",
      'healthTimeout: "0ms" must be at least 1ms',
      'healthPath: "healthz" must be a path starting with /',
      "rise: 0 is out of range (1 to 1000)",
      'fall: "3" is not a whole number',
      "retries: 101 is out of range (0 to 100)",
      'connectTimeout: " 2s" is not a duration (use e.g. 500ms, 2s, 1m)',
      'timeout: "25d" is not a duration (use e.g. 500ms, 2s, 1m)',
      'drainTimeout: "1d" is not a duration (use e.g. 500ms, 2s, 1m)',
      'logLevel: "INFO" is not one of debug, info, warn, error',
      'logFormat: "yaml" is not one of text, json',
      'policy: "rr" is not one of round-robin, least-conn, p2c-ewma, random, hash',
      'hashKey: hash key "header:": "" is not a valid header name',
      'stickyCookie: "a b" is not a valid cookie name',
      "stickySecret: must be at least 16 bytes long",
      'slowStart: "-1s" is not a duration (use e.g. 500ms, 2s, 1m)',
      "maxConns: -1 is out of range (0 to 1000000)",
      "ejectAfter: 1.5 is not a whole number",
      "ejectMaxPercent: 101 is out of range (0 to 100)",
      'ejectOn5xx: "yes" is not true or false',
      "panicThreshold: null is not a whole number",
      "retryBudget: a list is not a whole number",
      "retryBudgetMin: an object is not a whole number",
      'admin: "localhost" is not HOST:PORT (e.g. 127.0.0.1:9090)',
      "adminToken: must be at least 16 characters long",
      'accessLog: "" is not "stdout" or a file path',
      'accessLogFormat: "clf" is not one of combined, json',
      'alertWebhook: "https://user:pw@hooks.example.com/x" must not contain credentials',
      'ejectMaxTime: "1m" is shorter than ejectTime ("1h")',
    ],
  );
  assert.deepEqual(problemsOf({ timeout: "600h" }), ['timeout: "600h" is too long']);
});

Deno.test("validateFileSettings() converts values as the flags do", () => {
  const { settings, problems } = validateFileSettings({
    $schema: "./lb.schema.json",
    port: 0,
    host: "[::1]",
    healthInterval: "1.5s",
    drainTimeout: "0s",
    hashKey: "header:X-User",
    admin: "[::1]:9090",
    alertWebhook: "https://hooks.example.com/a?b=c",
    stickySecret: "",
  });
  assert.deepEqual(problems, []);
  assert.deepEqual(settings, {
    port: 0,
    host: "::1",
    healthInterval: 1500,
    drainTimeout: 0,
    hashKey: { kind: "header", name: "x-user" },
    admin: { host: "::1", port: 9090 },
    alertWebhook: "https://hooks.example.com/a?b=c",
    stickySecret: "",
  });
  assert.deepEqual(validateFileSettings({ admin: "0.0.0.0:0" }).settings, {
    admin: { host: "0.0.0.0", port: 0 },
  });
  assert.deepEqual(problemsOf({ admin: "127.0.0.1:65536" }), [
    "admin: port 65536 is out of range (0 to 65535)",
  ]);
  assert.deepEqual(validateFileSettings({}), { settings: {}, problems: [] });
});

Deno.test("validateFileSettings() names unknown keys and suggests the intended one", () => {
  assert.deepEqual(
    problemsOf({ "health-interval": "5s", LogLevel: "info", "x y": 1, demo: true }),
    [
      'health-interval: unknown key (did you mean "healthInterval"?)',
      'LogLevel: unknown key (did you mean "logLevel"?)',
      '["x y"]: unknown key',
      'demo: unknown key (did you mean "deny"?)',
    ],
  );
});

Deno.test("validateFileSettings() wants an object at the top", () => {
  assert.deepEqual(problemsOf([]), ["the file must hold an object ({ ... }), not a list"]);
  assert.deepEqual(problemsOf("x"), ['the file must hold an object ({ ... }), not "x"']);
});

// ---------------------------------------------------------------------------------------------
// parseConfigSource()

Deno.test("parseConfigSource() reports every problem with file, line and column", () => {
  const error = configFileError(`{
  "backends": [
    "http://a:8081",
    { "url": "ftp://x" }, // bad
    { "weight": 2 }
  ],
  "healthInterval": "5 sec",
  "healthIntervall": "5s",
}`);
  assert.ok(error instanceof ConfigError, "main.ts already turns ConfigError into exit code 2");
  assert.equal(error.file, "lb.jsonc");
  assert.equal(
    error.message,
    [
      'lb.jsonc:8:3: healthIntervall: unknown key (did you mean "healthInterval"?)',
      'lb.jsonc:4:7: backends[1].url: "ftp://x" is not an absolute http(s) URL',
      'lb.jsonc:5:5: backends[2]: needs a "url"',
      'lb.jsonc:7:3: healthInterval: "5 sec" is not a duration (use e.g. 500ms, 2s, 1m)',
    ].join("\n"),
  );
  assert.equal(error.problems.length, 4);
});

Deno.test("parseConfigSource() reports a syntax error with file, line and column", () => {
  const error = configFileError('{\n  "port": 3030\n  "host": "::"\n}');
  assert.equal(error.message, 'lb.jsonc:3:3: expected "," or "}" after a member, found "\\""');
  assert.deepEqual(error.problems, [{
    path: "",
    message: 'expected "," or "}" after a member, found "\\""',
    line: 3,
    column: 3,
  }]);
});

// ---------------------------------------------------------------------------------------------
// examples/lb.jsonc and lb.schema.json

Deno.test("examples/lb.jsonc uses every key and has no problems", async () => {
  const raw = parseJsonc(await Deno.readTextFile(EXAMPLE_URL)) as Record<string, unknown>;
  assert.deepEqual(Object.keys(raw).sort(), [...IGNORED_KEYS, ...FILE_KEYS].sort());
  assert.deepEqual(validateFileSettings(raw).problems, []);
  const { settings } = parseConfigSource(await Deno.readTextFile(EXAMPLE_URL), "lb.jsonc");
  assert.deepEqual(Object.keys(settings).sort(), [...FILE_KEYS].sort());
  assert.deepEqual(settings.backends, [
    { url: "http://10.0.0.11:8081", weight: 1 },
    { url: "http://10.0.0.12:8081", weight: 2 },
    { url: "http://10.0.0.13:8081", weight: 3 },
    { url: "https://backup.internal:8443", weight: 0 },
  ]);
  assert.deepEqual(schemaErrors(schema, raw), []);
});

Deno.test("lb.schema.json has exactly the keys validateFileSettings() accepts", () => {
  assert.equal(schema.additionalProperties, false);
  assert.deepEqual(Object.keys(schema.properties!), [...IGNORED_KEYS, ...FILE_KEYS]);
  for (const key of FILE_KEYS) {
    // Each schema key is accepted (no "unknown key")...
    const problems = validateFileSettings({ [key]: null }).problems;
    assert.ok(problems.every((p) => p.message !== "unknown key"), key);
    assert.ok(schema.properties![key].description, `${key} has no description`);
  }
  // ...and a key outside the schema is not.
  assert.deepEqual(problemsOf({ notAKey: 1 }), ["notAKey: unknown key"]);
});

Deno.test("lb.schema.json defaults are the flags' defaults", () => {
  const defaults: Record<string, unknown> = { ...DEFAULTS, ...OPS_DEFAULTS };
  let checked = 0;
  for (const [key, property] of Object.entries(schema.properties!)) {
    if (!("default" in property)) continue;
    const expected = defaults[key];
    const actual = typeof expected === "number" && typeof property.default === "string"
      ? parseDuration(property.default)
      : key === "hashKey"
      ? { kind: property.default }
      : property.default;
    assert.deepEqual(actual, expected, key);
    checked++;
  }
  assert.equal(checked, Object.keys(DEFAULTS).length);
});

Deno.test("lb.schema.json and validateFileSettings() agree on good and bad values", () => {
  const samples: Record<string, unknown>[] = [
    { backends: ["http://a:1", "https://b*3", { url: "http://c:3", weight: 0 }] },
    { backends: [] },
    { backends: ["ftp://x"] },
    { backends: ["http://a:1/path"] },
    { backends: [{ url: "http://a:1*2" }] },
    { backends: [{ url: "http://a:1", weight: -1 }] },
    { backends: [{ url: "http://a:1", extra: 1 }] },
    { backends: [{ weight: 1 }] },
    { port: 0 },
    { port: 65536 },
    { port: "80" },
    { host: "::" },
    { host: "a/b" },
    { healthInterval: "1.5s" },
    { healthInterval: "0s" },
    { healthInterval: "5" },
    { drainTimeout: "0s" },
    { slowStart: "0ms" },
    { healthPath: "/x" },
    { healthPath: "x" },
    { rise: 1000 },
    { rise: 1001 },
    { rise: 1.5 },
    { logLevel: "warn" },
    { logLevel: "Warn" },
    { policy: "p2c-ewma" },
    { policy: "weighted" },
    { hashKey: "cookie:sid" },
    { hashKey: "query:x" },
    { stickyCookie: "" },
    { stickyCookie: "a;b" },
    { stickySecret: "" },
    { stickySecret: "0123456789abcdef" },
    { stickySecret: "0123456789abcde" },
    { ejectOn5xx: true },
    { ejectOn5xx: 1 },
    { ejectMaxPercent: 100 },
    { ejectMaxPercent: 101 },
    { retryBudgetMin: 0 },
    { admin: "127.0.0.1:9090" },
    { admin: "[::1]:0" },
    { admin: ":9090" },
    { admin: "a:b" },
    { adminToken: "0123456789abcdef" },
    { adminToken: "0123456789 abcdef" },
    { accessLog: "stdout" },
    { accessLog: "" },
    { accessLogFormat: "json" },
    { accessLogFormat: "JSON" },
    { alertWebhook: "https://hooks.example.com/x" },
    { alertWebhook: "mailto:ops@example.com" },
    { logFormat: "json" },
    { logFormat: "logfmt" },
    { $schema: "./lb.schema.json" },
    { unknown: 1 },
  ];
  for (const sample of samples) {
    const byValidator = validateFileSettings(sample).problems.length === 0;
    const bySchema = schemaErrors(schema, sample).length === 0;
    assert.equal(
      bySchema,
      byValidator,
      `${JSON.stringify(sample)}: ${schemaErrors(schema, sample)}`,
    );
  }
});

// ---------------------------------------------------------------------------------------------
// mergeSettings(), checkSettings()

const BASE: Config = { ...DEFAULTS, backends: [], demo: false };

Deno.test("mergeSettings() takes flags over the file over the defaults", () => {
  const file: FileSettings = {
    port: 8080,
    timeout: 5000,
    logLevel: "debug",
    backends: [{ url: "http://a:1", weight: 1 }, { url: "http://b:2", weight: 2 }],
  };
  const flags: Partial<Config> = { port: 9090, retries: undefined };
  const merged = mergeSettings(BASE, file, flags);
  assert.equal(merged.port, 9090); // flag
  assert.equal(merged.timeout, 5000); // file
  assert.equal(merged.logLevel, "debug"); // file
  assert.equal(merged.retries, DEFAULTS.retries); // undefined flag does not count
  assert.equal(merged.host, DEFAULTS.host); // default
  assert.deepEqual(merged.backends, file.backends);
  assert.equal(BASE.port, DEFAULTS.port, "the defaults object is not modified");
});

Deno.test("mergeSettings() lets --backends replace the file's list, not extend it", () => {
  const merged = mergeSettings(
    BASE,
    { backends: [{ url: "http://a:1", weight: 1 }] },
    { backends: [{ url: "http://canary:1", weight: 1 }] },
  );
  assert.deepEqual(merged.backends, [{ url: "http://canary:1", weight: 1 }]);
});

Deno.test("mergeSettings() carries the ops settings and their defaults", () => {
  const merged = mergeSettings(
    { ...BASE, ...OPS_DEFAULTS } as Config & FileSettings,
    { admin: { host: "127.0.0.1", port: 9090 }, logFormat: "json" },
    {},
  );
  assert.deepEqual(merged.admin, { host: "127.0.0.1", port: 9090 });
  assert.equal(merged.logFormat, "json");
  assert.equal(merged.accessLogFormat, "combined");
  assert.equal(merged.accessLog, undefined);
});

Deno.test("checkSettings() finds what only the merged settings can show", () => {
  assert.deepEqual(checkSettings({ ...BASE, backends: [{ url: "http://a:1", weight: 1 }] }), []);
  assert.deepEqual(checkSettings({ ...BASE, demo: true }), []);
  const problems: Problem[] = checkSettings({ ...BASE, ejectTime: 600_000 });
  assert.deepEqual(problems.map((p) => formatProblem(p)), [
    'backends: no backends: list them in the file\'s "backends" or give --backends (or --discover, or --demo)',
    "ejectMaxTime: 300000ms is shorter than ejectTime (600000ms)",
  ]);
});

// ---------------------------------------------------------------------------------------------
// A JSON Schema checker for the subset lb.schema.json uses, so the test can hold the schema
// against the validator without a dependency. Unsupported keywords fail loudly.

interface JsonSchema {
  $ref?: string;
  type?: string;
  enum?: unknown[];
  const?: unknown;
  pattern?: string;
  minLength?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  maxLength?: number;
  items?: JsonSchema;
  minItems?: number;
  maxItems?: number;
  uniqueItems?: boolean;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  propertyNames?: JsonSchema;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  $defs?: Record<string, JsonSchema>;
  default?: unknown;
  description?: string;
}

const SUPPORTED = new Set([
  "$schema",
  "$ref",
  "$defs",
  "title",
  "description",
  "default",
  "examples",
  "format",
  "type",
  "enum",
  "const",
  "pattern",
  "minLength",
  "minimum",
  "maximum",
  "exclusiveMinimum",
  "exclusiveMaximum",
  "maxLength",
  "items",
  "minItems",
  "maxItems",
  "uniqueItems",
  "properties",
  "required",
  "additionalProperties",
  "propertyNames",
  "anyOf",
  "oneOf",
]);

function schemaErrors(root: JsonSchema, value: unknown, node = root, path = ""): string[] {
  for (const keyword of Object.keys(node)) {
    if (!SUPPORTED.has(keyword)) throw new Error(`schema keyword ${keyword} is not supported`);
  }
  if (node.$ref) {
    const name = node.$ref.replace("#/$defs/", "");
    return schemaErrors(root, value, root.$defs![name], path);
  }
  const errors: string[] = [];
  const fail = (message: string) => errors.push(`${path || "(root)"}: ${message}`);
  const isObject = value !== null && typeof value === "object" && !Array.isArray(value);
  if (node.type) {
    const ok = {
      string: typeof value === "string",
      integer: Number.isInteger(value),
      number: typeof value === "number" && Number.isFinite(value),
      boolean: typeof value === "boolean",
      array: Array.isArray(value),
      object: isObject,
    }[node.type];
    if (ok === undefined) throw new Error(`type ${node.type} is not supported`);
    if (!ok) return [`${path}: not ${node.type}`];
  }
  if (node.enum && !node.enum.includes(value)) fail("not in enum");
  if ("const" in node && node.const !== value) fail("not const");
  if (typeof value === "string") {
    if (node.pattern && !new RegExp(node.pattern, "u").test(value)) fail("pattern");
    if (node.minLength !== undefined && [...value].length < node.minLength) fail("minLength");
    if (node.maxLength !== undefined && [...value].length > node.maxLength) fail("maxLength");
  }
  if (typeof value === "number") {
    if (node.minimum !== undefined && value < node.minimum) fail("minimum");
    if (node.maximum !== undefined && value > node.maximum) fail("maximum");
    if (node.exclusiveMinimum !== undefined && value <= node.exclusiveMinimum) {
      fail("exclusiveMinimum");
    }
    if (node.exclusiveMaximum !== undefined && value >= node.exclusiveMaximum) {
      fail("exclusiveMaximum");
    }
  }
  if (Array.isArray(value)) {
    if (node.minItems !== undefined && value.length < node.minItems) fail("minItems");
    if (node.maxItems !== undefined && value.length > node.maxItems) fail("maxItems");
    if (node.uniqueItems && new Set(value.map((v) => JSON.stringify(v))).size !== value.length) {
      fail("uniqueItems");
    }
    const items = node.items;
    if (items) {
      value.forEach((item, i) => errors.push(...schemaErrors(root, item, items, `${path}[${i}]`)));
    }
  }
  if (isObject) {
    const object = value as Record<string, unknown>;
    for (const key of node.required ?? []) if (!(key in object)) fail(`missing ${key}`);
    for (const [key, item] of Object.entries(object)) {
      const sub = node.properties?.[key];
      const extra = node.additionalProperties;
      if (node.propertyNames) errors.push(...schemaErrors(root, key, node.propertyNames, path));
      if (sub) errors.push(...schemaErrors(root, item, sub, `${path}.${key}`));
      else if (extra === false) fail(`additional property ${key}`);
      else if (typeof extra === "object") {
        errors.push(...schemaErrors(root, item, extra, `${path}.${key}`));
      }
    }
  }
  if (node.anyOf && !node.anyOf.some((s) => schemaErrors(root, value, s, path).length === 0)) {
    fail("anyOf");
  }
  if (node.oneOf) {
    const matches = node.oneOf.filter((s) => schemaErrors(root, value, s, path).length === 0);
    if (matches.length !== 1) fail(`oneOf matched ${matches.length}`);
  }
  return errors;
}
