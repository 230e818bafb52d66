/**
 * @module
 * Pure unit tests of lib/routes.ts: matching (hosts, wildcards, ports, segment-aware prefixes,
 * normalised paths, methods, headers, precedence), the per-request helpers (upstream path,
 * redirect Location, header rules, descriptions) and the config checks (checkRoutes, lintRoutes).
 */

import assert from "node:assert/strict";
import fc from "npm:fast-check@^3";
import {
  applyRequestHeaderRules,
  applyResponseHeaderRules,
  checkRoutes,
  type CompiledRoute,
  describeRoute,
  fixedResponse,
  lintRoutes,
  normalizePath,
  redirectLocation,
  redirectStatus,
  RouteSpec,
  RouteTable,
  routingHost,
  upstreamPath,
} from "../lib/routes.ts";
import type { Problem } from "../lib/problem.ts";

const NO_HEADERS = new Headers();

/** The name of the route `table` picks, or undefined. */
function pick(
  table: RouteTable,
  host: string | null,
  path = "/",
  method = "GET",
  headers = NO_HEADERS,
): string | undefined {
  return table.match(host, path, method, { headers })?.name;
}

/** The one route of a table of `spec`. */
function only(spec: RouteSpec): CompiledRoute {
  return new RouteTable([spec]).routes[0];
}

/** The problems checkRoutes reports for `routes`, as `path: message` lines. */
function check(routes: unknown): string[] {
  const problems: Problem[] = [];
  const result = checkRoutes(routes, "routes", problems);
  assert.equal(result === undefined, problems.length > 0, "undefined exactly when problems");
  return problems.map((p) => `${p.path}: ${p.message}`);
}

function lint(routes: RouteSpec[], services: string[]): string[] {
  return lintRoutes(routes, services).map((p) =>
    `${p.warning ? "warning " : ""}${p.path}: ${p.message}`
  );
}

// ---------------------------------------------------------------------------------------------
// Matching

Deno.test("RouteTable.match() compares exact hosts case-insensitively, ignoring port and trailing dot", () => {
  const table = new RouteTable([{ name: "api", host: "API.example.com", service: "api" }]);
  for (
    const host of [
      "api.example.com",
      "Api.Example.COM",
      "api.example.com:8080",
      "api.example.com.",
      "api.example.com.:443",
    ]
  ) assert.equal(pick(table, host), "api", host);
  for (const host of ["example.com", "xapi.example.com", "api.example.co", "api.example.com.x"]) {
    assert.equal(pick(table, host), undefined, host);
  }
  assert.equal(pick(table, null), undefined);
});

Deno.test("RouteTable.match() matches *.suffix at any depth but never the bare suffix", () => {
  const table = new RouteTable([{ name: "wild", host: "*.example.com", service: "web" }]);
  assert.equal(pick(table, "a.example.com"), "wild");
  assert.equal(pick(table, "a.b.example.com:81"), "wild");
  assert.equal(pick(table, "A.EXAMPLE.COM."), "wild");
  assert.equal(pick(table, "example.com"), undefined);
  assert.equal(pick(table, ".example.com"), undefined);
  assert.equal(pick(table, "badexample.com"), undefined);
  assert.equal(pick(table, "a.example.com.evil"), undefined);
});

Deno.test("RouteTable.match() matches a bracketed IPv6 host with or without a port", () => {
  const table = new RouteTable([{ name: "v6", host: "[::1]", service: "web" }]);
  assert.equal(pick(table, "[::1]:8080"), "v6");
  assert.equal(pick(table, "[::1]"), "v6");
  assert.equal(pick(table, "[::2]"), undefined);
});

Deno.test("routingHost() drops the port and trailing dot and lower-cases", () => {
  assert.equal(routingHost("Example.COM.:8443"), "example.com");
  assert.equal(routingHost("[::1]:80"), "[::1]");
  assert.equal(routingHost(null), "");
  const same = "plain.example";
  assert.equal(routingHost(same), same);
});

Deno.test("RouteTable.match() matches pathPrefix on whole segments, ignoring the query", () => {
  const table = new RouteTable([{ name: "api", pathPrefix: "/api", service: "api" }]);
  for (const path of ["/api", "/api/", "/api/x", "/api/x/y", "/api?q=1", "/api/?q=/apix"]) {
    assert.equal(pick(table, "h", path), "api", path);
  }
  for (const path of ["/apix", "/ap", "/", "/x/api", "/API", "/apix?/api", "/api%2Fx"]) {
    assert.equal(pick(table, "h", path), undefined, path);
  }
});

Deno.test("RouteTable.match() with a prefix ending in / matches that directory and below only", () => {
  const table = new RouteTable([{ name: "dir", pathPrefix: "/api/", service: "api" }]);
  assert.equal(pick(table, "h", "/api/"), "dir");
  assert.equal(pick(table, "h", "/api/x"), "dir");
  assert.equal(pick(table, "h", "/api/?q"), "dir");
  assert.equal(pick(table, "h", "/api"), undefined);
  assert.equal(pick(table, "h", "/api?q"), undefined);
  assert.equal(pick(table, "h", "/apix/"), undefined);
});

Deno.test("RouteTable.match() with pathPrefix / matches every path", () => {
  const table = new RouteTable([
    { name: "root", pathPrefix: "/", methods: ["GET"], service: "web" },
  ]);
  for (const path of ["/", "/x", "/x/", "/?q"]) assert.equal(pick(table, "h", path), "root");
});

Deno.test("RouteTable.match() routes the normalised path: escapes, // and dot segments", () => {
  const table = new RouteTable([
    { name: "admin", pathPrefix: "/admin", respond: { status: 403 } },
    { name: "rest", service: "web" },
  ]);
  for (
    const path of [
      "/admin",
      "/%61dmin",
      "/adm%69n",
      "//admin",
      "/./admin",
      "/x/../admin/y",
      "/%2e%2e/admin",
      "/admin/.",
      "/admin//x",
    ]
  ) assert.equal(pick(table, "h", path), "admin", path);
  for (const path of ["/admin/../x", "/admin%2F", "/Admin", "/x/admin", "/%2561dmin"]) {
    assert.equal(pick(table, "h", path), "rest", path);
  }
});

Deno.test("normalizePath() returns the same string when the path is normal already", () => {
  const path = "/api/v1/items";
  assert.equal(normalizePath(path), path);
  assert.equal(normalizePath("/"), "/");
  assert.equal(normalizePath("/a/b/.."), "/a/");
  assert.equal(normalizePath("/../.."), "/");
  assert.equal(normalizePath("/caf%c3%a9/%7euser"), "/caf%C3%A9/~user");
  assert.equal(normalizePath("/a%zz"), "/a%zz");
});

Deno.test("RouteTable.match() returns the first route that matches", () => {
  const table = new RouteTable([
    { name: "status", pathPrefix: "/status", respond: { status: 200, body: "up\n" } },
    { name: "api-host", host: "api.example.com", service: "api" },
    { name: "api-path", host: "*.example.com", pathPrefix: "/api", service: "api" },
    { name: "web", service: "web" },
  ]);
  assert.equal(pick(table, "api.example.com", "/status"), "status");
  assert.equal(pick(table, "api.example.com", "/api/x"), "api-host");
  assert.equal(pick(table, "www.example.com", "/api/x"), "api-path");
  assert.equal(pick(table, "www.example.com", "/x"), "web");
  assert.equal(pick(table, null, "/x"), "web");
});

Deno.test("RouteTable.match() checks methods exactly and headers by exact value", () => {
  const table = new RouteTable([
    { name: "write", methods: ["POST", "PUT"], service: "writer" },
    { name: "canary", headers: { "X-Env": "canary" }, service: "canary" },
    { name: "rest", pathPrefix: "/", service: "web" },
  ]);
  assert.equal(pick(table, "h", "/", "POST"), "write");
  assert.equal(pick(table, "h", "/", "PUT"), "write");
  assert.equal(pick(table, "h", "/", "post"), "rest");
  assert.equal(pick(table, "h", "/", "GET", new Headers({ "x-env": "canary" })), "canary");
  assert.equal(pick(table, "h", "/", "GET", new Headers({ "x-env": "Canary" })), "rest");
  assert.equal(pick(table, "h", "/", "GET", new Headers({ "x-env": "canary2" })), "rest");
});

Deno.test("RouteTable.match() returns the catch-all itself when it is the first route", () => {
  const table = new RouteTable([{ service: "web" }]);
  const route = table.match("any", "/x?y", "DELETE", { headers: NO_HEADERS });
  assert.equal(route, table.routes[0]);
  assert.equal(route?.name, "route-0");
  assert.equal(table.match(null, "/", "GET", { headers: NO_HEADERS }), route);
});

Deno.test("RouteTable.match() returns undefined when no route matches, and for an empty table", () => {
  assert.equal(pick(new RouteTable([{ host: "a.example", service: "a" }]), "b.example"), undefined);
  assert.equal(pick(new RouteTable([]), "b.example"), undefined);
});

Deno.test("RouteTable() keeps a frozen copy, so changing the given routes changes nothing", () => {
  const spec: RouteSpec = {
    host: "a.example",
    pathPrefix: "/api",
    stripPrefix: true,
    service: "a",
  };
  const table = new RouteTable([spec]);
  spec.host = "b.example";
  spec.stripPrefix = false;
  assert.equal(pick(table, "a.example", "/api"), "route-0");
  assert.equal(upstreamPath(table.routes[0], "/api/x"), "/x");
  assert.ok(Object.isFrozen(table.routes[0].spec));
});

Deno.test("RouteTable() throws a one-line TypeError on a route checkRoutes refuses", () => {
  assert.throws(
    () => new RouteTable([{ service: "a" }, { host: "a b", service: "a" }]),
    (error: unknown) =>
      error instanceof TypeError &&
      error.message === 'invalid route: routes[1].host: "a b" is not a host name or *. ' +
          "followed by a host name",
  );
  assert.throws(() => new RouteTable([{} as RouteSpec]), /needs one of service, redirect/);
});

// ---------------------------------------------------------------------------------------------
// Per-request helpers

Deno.test("upstreamPath() strips the prefix and keeps the query", () => {
  const route = only({ pathPrefix: "/api", stripPrefix: true, service: "api" });
  assert.equal(upstreamPath(route, "/api/x?q=1"), "/x?q=1");
  assert.equal(upstreamPath(route, "/api/x/"), "/x/");
  assert.equal(upstreamPath(route, "/api"), "/");
  assert.equal(upstreamPath(route, "/api/"), "/");
  assert.equal(upstreamPath(route, "/api?q=/api"), "/?q=/api");
  assert.equal(upstreamPath(route, "//api/./x?q"), "/x?q");
  assert.equal(upstreamPath(route, "/%61pi/x"), "/x");
  assert.equal(upstreamPath(route, "/apix/y?q"), "/apix/y?q", "a path the route does not match");
});

Deno.test("upstreamPath() strips a prefix that ends in /", () => {
  const route = only({ pathPrefix: "/api/", stripPrefix: true, service: "api" });
  assert.equal(upstreamPath(route, "/api/x?q"), "/x?q");
  assert.equal(upstreamPath(route, "/api/"), "/");
});

Deno.test("upstreamPath() adds addPrefix after stripping", () => {
  const route = only({ pathPrefix: "/api", stripPrefix: true, addPrefix: "/v1", service: "api" });
  assert.equal(upstreamPath(route, "/api/x?q"), "/v1/x?q");
  assert.equal(upstreamPath(route, "/api"), "/v1");
  assert.equal(upstreamPath(route, "/api/"), "/v1/");
  assert.equal(upstreamPath(route, "/api?q"), "/v1?q");
});

Deno.test("upstreamPath() with addPrefix only prepends to the normalised path", () => {
  const route = only({ addPrefix: "/v1", service: "api" });
  assert.equal(upstreamPath(route, "/x?q"), "/v1/x?q");
  assert.equal(upstreamPath(route, "/"), "/v1/");
  assert.equal(upstreamPath(route, "/../../etc?q"), "/v1/etc?q");
  assert.equal(upstreamPath(only({ addPrefix: "/", service: "api" }), "//x"), "//x");
});

Deno.test("upstreamPath() returns the path as received when the route does not rewrite", () => {
  const route = only({ pathPrefix: "/api", service: "api" });
  const path = "/api//x/../y?q=%41";
  assert.equal(upstreamPath(route, path), path);
  const noStrip = only({ pathPrefix: "/api", stripPrefix: false, service: "api" });
  assert.equal(upstreamPath(noStrip, "/api/x"), "/api/x");
});

Deno.test("redirectLocation() puts in {host} without the port and {path} with the query", () => {
  const route = only({ redirect: { to: "https://{host}{path}", status: 308 } });
  assert.equal(
    redirectLocation(route, "Example.com:8080", "/a/b?c=d"),
    "https://Example.com/a/b?c=d",
  );
  assert.equal(redirectLocation(route, "[::1]:80", "/"), "https://[::1]/");
  assert.equal(redirectLocation(route, null, "/x"), "https:///x");
  assert.equal(redirectStatus(route), 308);
  const fixed = only({ redirect: { to: "https://example.com/" } });
  assert.equal(redirectLocation(fixed, "old.example.com", "/x"), "https://example.com/");
  assert.equal(redirectStatus(fixed), 302);
  const twice = only({ redirect: { to: "/new{path}#{host}{path}" } });
  assert.equal(redirectLocation(twice, "h", "/p?q"), "/new/p?q#h/p?q");
});

Deno.test("fixedResponse() applies the body and content type defaults", () => {
  assert.deepEqual(fixedResponse(only({ respond: { status: 503 } })), {
    status: 503,
    body: "",
    contentType: "text/plain; charset=utf-8",
  });
  assert.deepEqual(
    fixedResponse(only({ respond: { status: 200, body: "{}", contentType: "application/json" } })),
    { status: 200, body: "{}", contentType: "application/json" },
  );
});

Deno.test("applyRequestHeaderRules() removes, then sets (replacing all), then adds", () => {
  const pairs: [string, string][] = [
    ["accept", "*/*"],
    ["x-debug", "1"],
    ["x-tag", "a"],
    ["x-tag", "b"],
    ["cookie", "c=1"],
  ];
  const before = structuredClone(pairs);
  const out = applyRequestHeaderRules({
    remove: ["X-Debug", "cookie"],
    set: { "X-Tag": "only", host: "internal.example" },
    add: { "x-tag": "extra", cookie: "added=1" },
  }, pairs);
  assert.deepEqual(out, [
    ["accept", "*/*"],
    ["x-tag", "only"],
    ["host", "internal.example"],
    ["x-tag", "extra"],
    ["cookie", "added=1"],
  ]);
  assert.deepEqual(pairs, before, "the input is not changed");
  assert.equal(applyRequestHeaderRules({}, pairs), pairs, "no rules: the same array");
});

Deno.test("applyResponseHeaderRules() removes, then sets, then adds, in place", () => {
  const headers = new Headers([["server", "x"], ["set-cookie", "a=1"], ["x-a", "1"]]);
  applyResponseHeaderRules({
    remove: ["Server"],
    set: { "x-a": "2", "strict-transport-security": "max-age=31536000" },
    add: { "set-cookie": "b=2", "x-a": "3" },
  }, headers);
  assert.equal(headers.get("server"), null);
  assert.equal(headers.get("x-a"), "2, 3");
  assert.deepEqual(headers.getSetCookie(), ["a=1", "b=2"]);
  assert.equal(headers.get("strict-transport-security"), "max-age=31536000");
});

Deno.test("describeRoute() names the match and the action in one line each", () => {
  const table = new RouteTable([
    { name: "api", host: "API.example.com", pathPrefix: "/api", stripPrefix: true, service: "api" },
    { host: "old.example.com", redirect: { to: "https://example.com{path}", status: 301 } },
    { pathPrefix: "/status", methods: ["GET", "HEAD"], respond: { status: 200, body: "up\n" } },
    {
      headers: { "X-Env": "canary" },
      addPrefix: "/v1",
      service: "web",
      requestHeaders: { set: { host: "web.internal" } },
      responseHeaders: { remove: ["server"], add: { "x-a": "1" } },
    },
  ]);
  assert.deepEqual(table.routes.map(describeRoute), [
    { name: "api", match: "host=api.example.com path=/api", action: "service api (strip)" },
    {
      name: "route-1",
      match: "host=old.example.com",
      action: "redirect 301 https://example.com{path}",
    },
    { name: "route-2", match: "path=/status methods=GET,HEAD", action: "respond 200" },
    {
      name: "route-3",
      match: "header x-env=canary",
      action: "service web (add /v1); request headers set host; response headers remove server " +
        "add x-a",
    },
  ]);
  assert.equal(describeRoute(only({ service: "web" })).match, "any");
});

// ---------------------------------------------------------------------------------------------
// checkRoutes

Deno.test("checkRoutes() returns the typed routes of the documented example with no problem", () => {
  const routes = [
    { host: "api.example.com", service: "api" },
    { host: "*.example.com", pathPrefix: "/api", stripPrefix: true, service: "api" },
    { host: "old.example.com", redirect: { to: "https://example.com{path}", status: 301 } },
    { pathPrefix: "/status", respond: { status: 200, body: "up\n" } },
    {
      name: "web",
      service: "web",
      responseHeaders: { set: { "strict-transport-security": "max-age=31536000" } },
    },
  ];
  const problems: Problem[] = [];
  assert.equal(checkRoutes(routes, "routes", problems), routes);
  assert.deepEqual(problems, []);
});

Deno.test("checkRoutes() refuses a value that is not a list, and items that are not objects", () => {
  assert.deepEqual(check({ service: "a" }), ["routes: an object is not a list of routes"]);
  assert.deepEqual(check([{ service: "a" }, "api"]), ['routes[1]: "api" is not an object']);
});

Deno.test("checkRoutes() names an unknown key and suggests the closest one", () => {
  assert.deepEqual(check([{ service: "a", pathprefix: "/x", stripPrefx: true, zzz: 1 }]), [
    'routes[0].pathprefix: unknown key (did you mean "pathPrefix"?)',
    'routes[0].stripPrefx: unknown key (did you mean "stripPrefix"?)',
    "routes[0].zzz: unknown key",
  ]);
  assert.deepEqual(check([{ redirect: { to: "/x", staus: 301 } }]), [
    'routes[0].redirect.staus: unknown key (did you mean "status"?)',
  ]);
});

Deno.test("checkRoutes() wants exactly one action", () => {
  assert.deepEqual(check([{ host: "a.example" }]), [
    "routes[0]: a route needs one of service, redirect, respond",
  ]);
  assert.deepEqual(check([{ service: "a", respond: { status: 200 } }]), [
    "routes[0]: a route has exactly one of service, redirect, respond (found service, respond)",
  ]);
  assert.deepEqual(check([{ service: "" }, { service: 3 }]), [
    'routes[0].service: "" is not a service name',
    "routes[1].service: 3 is not a string",
  ]);
});

Deno.test("checkRoutes() refuses hosts that are not a name or *. and a name", () => {
  assert.deepEqual(
    check([
      { host: "*", service: "a" },
      { host: "api.example.com:8080", service: "a" },
      { host: "example.com.", service: "a" },
      { host: "a.*.example.com", service: "a" },
      { host: "a b", service: "a" },
      { host: "-a.example", service: "a" },
      { host: 7, service: "a" },
      { host: "*.Example.COM", service: "a" },
      { host: "127.0.0.1", service: "a" },
      { host: "[::1]", service: "a" },
    ]),
    [
      'routes[0].host: "*" matches any host: leave "host" out instead',
      "routes[1].host: \"api.example.com:8080\": a route's host has no port (the request's port " +
      "is ignored)",
      'routes[2].host: "example.com.": write the host without its trailing dot',
      'routes[3].host: "a.*.example.com" is not a host name or *. followed by a host name',
      'routes[4].host: "a b" is not a host name or *. followed by a host name',
      'routes[5].host: "-a.example" is not a host name or *. followed by a host name',
      "routes[6].host: 7 is not a string",
    ],
  );
});

Deno.test("checkRoutes() refuses path prefixes that are not normal absolute paths", () => {
  assert.deepEqual(
    check([
      { pathPrefix: "api", service: "a" },
      { pathPrefix: "/api?x", service: "a" },
      { pathPrefix: "/a//b", service: "a" },
      { pathPrefix: "/a/../b", service: "a" },
      { pathPrefix: "/%61pi", service: "a" },
      { pathPrefix: "/100%", service: "a" },
    ]),
    [
      'routes[0].pathPrefix: "api" is not a path prefix (it must start with /)',
      'routes[1].pathPrefix: "/api?x" is not a path prefix (no query, fragment, spaces or stray %)',
      'routes[2].pathPrefix: "/a//b" is not in normal form (requests are matched as "/a/b")',
      'routes[3].pathPrefix: "/a/../b" is not in normal form (requests are matched as "/b")',
      'routes[4].pathPrefix: "/%61pi" is not in normal form (requests are matched as "/api")',
      'routes[5].pathPrefix: "/100%" is not a path prefix (no query, fragment, spaces or stray %)',
    ],
  );
});

Deno.test("checkRoutes() refuses bad method and header conditions and names", () => {
  assert.deepEqual(
    check([
      { methods: [], service: "a" },
      { methods: "GET", service: "a" },
      { methods: ["GET", "get", "BAD METHOD", 1], service: "a" },
      { headers: { "x-env": 1, "bad name": "v", "x-ok": "a\r\nb" }, service: "a" },
      { name: "has space", service: "a" },
      { name: "", service: "a" },
      { name: "none", service: "a" },
    ]),
    [
      "routes[0].methods: a list is not a non-empty list of methods",
      'routes[1].methods: "GET" is not a non-empty list of methods',
      'routes[2].methods[1]: "get" never matches: methods are case-sensitive (use "GET")',
      'routes[2].methods[2]: "BAD METHOD" is not a method',
      "routes[2].methods[3]: 1 is not a string",
      "routes[3].headers.x-env: 1 is not a string",
      'routes[3].headers["bad name"]: "bad name" is not a header name',
      'routes[3].headers.x-ok: "a\\r\\nb" has a line break, control or non-Latin-1 character',
      'routes[4].name: "has space" is not a route name (letters, digits, . _ -; at most 64)',
      'routes[5].name: "" is not a route name (letters, digits, . _ -; at most 64)',
      'routes[6].name: "none" is reserved: it labels requests no route matched',
    ],
  );
});

Deno.test("checkRoutes() refuses header values Headers would refuse or trim", () => {
  assert.deepEqual(
    check([
      { headers: { "x-a": " canary" }, service: "a" },
      { service: "a", responseHeaders: { set: { "x-price": "5 €" }, add: { "x-c": "a\x01" } } },
      { respond: { status: 200, contentType: "text/plain; charset=utf-8" } },
      { service: "a", responseHeaders: { set: { "x-name": "café", "x-t": "a\tb" } } },
    ]),
    [
      'routes[0].headers.x-a: " canary" has leading or trailing spaces',
      'routes[1].responseHeaders.set.x-price: "5 €" has a line break, control or non-Latin-1 ' +
      "character",
      'routes[1].responseHeaders.add.x-c: "a\\u0001" has a line break, control or non-Latin-1 ' +
      "character",
    ],
  );
});

Deno.test("checkRoutes() refuses bad redirects: status, placeholders, targets", () => {
  assert.deepEqual(
    check([
      { redirect: { to: "https://example.com{path}", status: 200 } },
      { redirect: { to: "https://{hostname}{path}" } },
      { redirect: { to: "https://example.com/{path}" } },
      { redirect: { to: "{path}" } },
      { redirect: { to: "ftp://example.com" } },
      { redirect: { to: "https://example.com{path" } },
      { redirect: { status: 301 } },
      { redirect: "https://example.com" },
      { redirect: { to: "//evil.example" } },
      { redirect: { to: "/café menu" } },
    ]),
    [
      "routes[0].redirect.status: 200 is not one of 301, 302, 303, 307, 308",
      'routes[1].redirect.to: "https://{hostname}{path}": unknown placeholder {hostname} (use ' +
      "{host} or {path})",
      'routes[2].redirect.to: "https://example.com/{path}": {path} already starts with /; write ' +
      "e.g. https://example.com{path}",
      'routes[3].redirect.to: "{path}": {path} already starts with /; write e.g. ' +
      "https://example.com{path}",
      'routes[4].redirect.to: "ftp://example.com" is neither an absolute http(s) URL nor a path ' +
      "starting with /",
      'routes[5].redirect.to: "https://example.com{path": a { or } that is not part of {host} ' +
      "or {path}",
      "routes[6].redirect.to: missing: the URL or path to redirect to",
      'routes[7].redirect: "https://example.com" is not an object',
      'routes[8].redirect.to: "//evil.example" is neither an absolute http(s) URL nor a path ' +
      "starting with /",
      'routes[9].redirect.to: "/café menu" has a space, control or non-ASCII character ' +
      "(percent-encode it)",
    ],
  );
});

Deno.test("checkRoutes() refuses bad fixed responses", () => {
  assert.deepEqual(
    check([
      { respond: { status: 101 } },
      { respond: { status: 600 } },
      { respond: { status: "200" } },
      { respond: { body: "x" } },
      { respond: { status: 204, body: "x" } },
      { respond: { status: 200, contentType: "" } },
      { respond: { status: 200, body: 5, contentType: "a\nb" } },
    ]),
    [
      "routes[0].respond.status: 101 is out of range (200 to 599)",
      "routes[1].respond.status: 600 is out of range (200 to 599)",
      'routes[2].respond.status: "200" is not a whole number',
      "routes[3].respond.status: missing: the status to answer with",
      "routes[4].respond.body: a 204 response has no body",
      'routes[5].respond.contentType: "" is not a content type',
      "routes[6].respond.body: 5 is not a string",
      'routes[6].respond.contentType: "a\\nb" has a line break, control or non-Latin-1 character',
    ],
  );
  assert.deepEqual(check([{ respond: { status: 204, body: "" } }]), []);
});

Deno.test("checkRoutes() refuses path rewrites that cannot apply", () => {
  assert.deepEqual(
    check([
      { stripPrefix: true, service: "a" },
      { pathPrefix: "/x", stripPrefix: "yes", service: "a" },
      { pathPrefix: "/x", stripPrefix: true, redirect: { to: "/y" } },
      { addPrefix: "v1", service: "a" },
      { addPrefix: "/v1/", service: "a" },
      { addPrefix: "/", service: "a" },
    ]),
    [
      "routes[0].stripPrefix: needs a pathPrefix to strip",
      'routes[1].stripPrefix: "yes" is not true or false',
      "routes[2].stripPrefix: only a service route rewrites the path",
      'routes[3].addPrefix: "v1" is not a prefix to add (it must start with /)',
      'routes[4].addPrefix: "/v1/" ends with / (the path after it starts with one)',
    ],
  );
});

Deno.test("checkRoutes() refuses header rules on connection-level headers and bad values", () => {
  assert.deepEqual(
    check([{
      service: "a",
      requestHeaders: {
        set: { host: "ok.internal", "content-length": "1", "x-a": "a\nb" },
        add: { Host: "x", "bad name": "v" },
        remove: ["Connection", "host", 3],
        remve: [],
      },
      responseHeaders: { set: { host: "x", "Transfer-Encoding": "chunked" }, remove: "server" },
    }]),
    [
      'routes[0].requestHeaders.remve: unknown key (did you mean "remove"?)',
      'routes[0].requestHeaders.set.content-length: "content-length" is a connection-level ' +
      "header; the proxy manages it",
      'routes[0].requestHeaders.set.x-a: "a\\nb" has a line break, control or non-Latin-1 character',
      'routes[0].requestHeaders.add.Host: "host" can only be set, in requestHeaders (a message ' +
      "has exactly one Host)",
      'routes[0].requestHeaders.add["bad name"]: "bad name" is not a header name',
      'routes[0].requestHeaders.remove[0]: "Connection" is a connection-level header; the proxy ' +
      "manages it",
      'routes[0].requestHeaders.remove[1]: "host" can only be set, in requestHeaders (a message ' +
      "has exactly one Host)",
      "routes[0].requestHeaders.remove[2]: 3 is not a string",
      'routes[0].responseHeaders.set.host: "host" can only be set, in requestHeaders (a message ' +
      "has exactly one Host)",
      'routes[0].responseHeaders.set.Transfer-Encoding: "Transfer-Encoding" is a ' +
      "connection-level header; the proxy manages it",
      'routes[0].responseHeaders.remove: "server" is not a list of header names',
    ],
  );
});

// ---------------------------------------------------------------------------------------------
// lintRoutes

Deno.test("lintRoutes() reports a route to an unknown service, with a suggestion", () => {
  assert.deepEqual(
    lint([{ host: "a.example", service: "apii" }, { service: "web" }], ["api", "web"]),
    [
      'routes[0].service: no service named "apii" (did you mean "api"?)',
      'warning services.api: no route sends requests to service "api"',
    ],
  );
  assert.deepEqual(lint([{ service: "zzz" }], ["api"]), [
    'routes[0].service: no service named "zzz"',
    'warning services.api: no route sends requests to service "api"',
  ]);
});

Deno.test("lintRoutes() refuses a route whose mirror is its own service", () => {
  const mirror = (service: string) => ({ service, percent: 100, maxBody: 65536 });
  assert.deepEqual(
    lint([{ host: "a.example", service: "api", mirror: mirror("api") }, {
      service: "web",
      mirror: mirror("api"),
    }], [
      "api",
      "web",
    ]),
    [`routes[0].mirror.service: "api" is the route's own service: each request would reach it twice`],
  );
});

Deno.test("lintRoutes() warns about a service no route uses, only when there are routes", () => {
  assert.deepEqual(lint([{ service: "api" }], ["api", "web", "odd name"]), [
    'warning services.web: no route sends requests to service "web"',
    'warning services["odd name"]: no route sends requests to service "odd name"',
  ]);
  assert.deepEqual(lint([], ["api"]), []);
});

Deno.test("lintRoutes() reports every route after a catch-all as unreachable", () => {
  assert.deepEqual(lint([{ service: "web" }, { host: "a.example", service: "web" }], ["web"]), [
    "routes[1]: unreachable: routes[0] (route-0, any) matches every request this route matches",
  ]);
});

Deno.test("lintRoutes() reports a route whose match equals an earlier route's", () => {
  assert.deepEqual(
    lint([
      { name: "a", host: "API.example.com", service: "web" },
      { name: "b", host: "api.example.com", redirect: { to: "/x" } },
    ], ["web"]),
    [
      "routes[1]: unreachable: routes[0] (a, host=api.example.com) matches every request this " +
      "route matches",
    ],
  );
});

Deno.test("lintRoutes() reports a route whose match an earlier, wider route covers", () => {
  const routes: RouteSpec[] = [
    { host: "*.example.com", service: "web" },
    { host: "a.b.example.com", service: "web" },
    { pathPrefix: "/api", methods: ["GET", "POST"], service: "web" },
    { host: "x.org", pathPrefix: "/api/v1/", methods: ["GET"], service: "web" },
    { headers: { "x-env": "canary" }, service: "web" },
    { headers: { "X-Env": "canary", "x-b": "1" }, service: "web" },
  ];
  assert.deepEqual(lint(routes, ["web"]).map((line) => line.slice(0, 34)), [
    "routes[1]: unreachable: routes[0] ",
    "routes[3]: unreachable: routes[2] ",
    "routes[5]: unreachable: routes[4] ",
  ]);
});

Deno.test("lintRoutes() accepts routes that narrow differently or come before wider ones", () => {
  const routes: RouteSpec[] = [
    { host: "a.example.com", service: "web" },
    { host: "*.example.com", service: "web" },
    { host: "example.com", service: "web" },
    { pathPrefix: "/api/", service: "web" },
    { pathPrefix: "/api", service: "web" },
    { pathPrefix: "/apix", service: "web" },
    { methods: ["GET"], pathPrefix: "/z", service: "web" },
    { methods: ["POST"], pathPrefix: "/z", service: "web" },
    { pathPrefix: "/z", service: "web" },
    { headers: { "x-a": "1" }, service: "web" },
    { headers: { "x-a": "2" }, service: "web" },
    { service: "web" },
  ];
  assert.deepEqual(lint(routes, ["web"]), []);
});

Deno.test("lintRoutes() reports duplicate names, given or defaulted", () => {
  assert.deepEqual(
    lint([
      { name: "route-1", host: "a.example", service: "web" },
      { host: "b.example", service: "web" },
      { name: "route-1", host: "c.example", service: "web" },
    ], ["web"]),
    [
      'routes[1]: the name "route-1" is also that of routes[0]',
      'routes[2]: the name "route-1" is also that of routes[0]',
    ],
  );
});

Deno.test("lintRoutes() reports the checkRoutes problems of routes built in code", () => {
  assert.deepEqual(
    lint([
      { host: "bad host", service: "web" },
      { redirect: { to: "https://{who}/" } },
    ], ["web"]),
    [
      'routes[0].host: "bad host" is not a host name or *. followed by a host name',
      'routes[1].redirect.to: "https://{who}/": unknown placeholder {who} (use {host} or {path})',
    ],
  );
});

// ---------------------------------------------------------------------------------------------
// Properties

const segment = fc.stringMatching(/^[a-z0-9._~-]{1,4}$/).filter((s) => s !== "." && s !== "..");
const segments = fc.array(segment, { minLength: 0, maxLength: 4 });

Deno.test("RouteTable.match() matches a prefix exactly on segment boundaries (property)", () => {
  fc.assert(
    fc.property(segments, segments, fc.boolean(), fc.boolean(), (pre, req, dir, slash) => {
      const prefix = `/${pre.join("/")}${dir && pre.length > 0 ? "/" : ""}`;
      const path = `/${req.join("/")}${slash && req.length > 0 ? "/" : ""}`;
      const table = new RouteTable([{ name: "p", pathPrefix: prefix, service: "s" }]);
      // Model: the request's segments start with the prefix's (and, for a prefix written with a
      // trailing /, the request goes at least one / further than the bare prefix).
      const under = pre.every((s, i) => req[i] === s) && req.length >= pre.length;
      const expected = under &&
        (!(dir && pre.length > 0) || req.length > pre.length || (slash && req.length > 0));
      assert.equal(pick(table, "h", `${path}?q=${prefix}`) === "p", expected, `${prefix} ${path}`);
    }),
    { numRuns: 500 },
  );
});

Deno.test("normalizePath() is idempotent and leaves no //, . or .. segment (property)", () => {
  const piece = fc.constantFrom("a", "b", ".", "..", "", "%2e", "%2E%2e", "%41", "%2f", "~");
  fc.assert(
    fc.property(fc.array(piece, { maxLength: 8 }), (pieces) => {
      const normal = normalizePath(`/${pieces.join("/")}`);
      assert.equal(normalizePath(normal), normal);
      assert.ok(normal.startsWith("/"));
      assert.ok(!/\/\/|\/\.\.?(\/|$)/.test(normal), normal);
    }),
    { numRuns: 500 },
  );
});

Deno.test("upstreamPath() with strip then add gives the added prefix plus the rest (property)", () => {
  fc.assert(
    fc.property(segments, segments, fc.string({ maxLength: 6 }), (pre, rest, query) => {
      if (pre.length === 0) return;
      const prefix = `/${pre.join("/")}`;
      const route = only({ pathPrefix: prefix, stripPrefix: true, addPrefix: "/v1", service: "s" });
      const tail = rest.length === 0 ? "" : `/${rest.join("/")}`;
      const q = `?${query}`;
      assert.equal(upstreamPath(route, `${prefix}${tail}${q}`), `/v1${tail}${q}`);
    }),
    { numRuns: 300 },
  );
});
