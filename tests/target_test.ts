/**
 * @module
 * lib/target.ts: reading the request target safely. Unit tests feed parseTarget() what
 * Deno.serve hands a handler (its `req.url` is built from Host or an absolute-form target); the
 * wire tests send raw bytes through the balancer, since fetch would normalise exactly what
 * matters here.
 */

import assert from "node:assert/strict";
import { HttpError } from "../lib/errors.ts";
import { parseTarget } from "../lib/target.ts";
import { rawRequest, startTestBackend, startTestBalancer } from "./helpers.ts";

/**
 * A request as Deno.serve presents it: `url` verbatim (not normalised by `new Request`), as the
 * wire tests below confirm Deno builds it.
 */
function served(method: string, url: string, host: string | null): Request {
  const headers = new Headers(host === null ? {} : { host });
  return { method, url, headers } as unknown as Request;
}

function httpError(status: number) {
  return (error: unknown) => error instanceof HttpError && error.status === status;
}

/** The status code and lower-cased headers of a raw HTTP/1.1 response. */
function parseHead(raw: string): { status: number; headers: Map<string, string> } {
  const head = raw.slice(0, raw.indexOf("\r\n\r\n"));
  const [statusLine, ...lines] = head.split("\r\n");
  const status = Number(statusLine.split(" ")[1]);
  assert.ok(statusLine.startsWith("HTTP/1.1 ") && status >= 100, `not a response: ${raw}`);
  const headers = new Map<string, string>();
  for (const line of lines) {
    const colon = line.indexOf(":");
    headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  return { status, headers };
}

Deno.test("parseTarget() returns the path and query as sent and the Host", () => {
  const target = parseTarget(served("GET", "http://ok:8080//a//b?q=%20&r=a+b", "ok:8080"));
  assert.deepEqual(target, { pathAndQuery: "//a//b?q=%20&r=a+b", host: "ok:8080" });
});

Deno.test("parseTarget() is not fooled by a Host that shifts where req.url's path starts", () => {
  // Deno.serve builds `http://evil/admin?/p?q=1` here: URL parsing would give path /admin.
  const req = served("GET", "http://evil/admin?/p?q=1", "evil/admin?");
  assert.throws(() => parseTarget(req), httpError(400));
});

Deno.test("parseTarget() rejects invalid Host values with 400", () => {
  for (const host of ["a:99999", "user@host", "a:", "a:port", "", "[...]"]) {
    const req = served("GET", `http://${host}/p`, host);
    assert.throws(() => parseTarget(req), httpError(400), JSON.stringify(host));
  }
});

Deno.test("parseTarget() rejects an absolute-form target naming another host than Host", () => {
  assert.throws(() => parseTarget(served("GET", "http://evil.example/x", "ok")), httpError(400));
  assert.throws(() => parseTarget(served("GET", "http://u:p@ok/x", "ok")), httpError(400));
});

Deno.test("parseTarget() accepts an absolute-form target naming the Host (any case)", () => {
  assert.deepEqual(parseTarget(served("GET", "http://OK/x?y", "ok")), {
    pathAndQuery: "/x?y",
    host: "ok",
  });
});

Deno.test("parseTarget() answers CONNECT with 405 and an Allow header", () => {
  assert.throws(
    () => parseTarget(served("CONNECT", "http://example.com:443", "example.com:443")),
    (error: unknown) => httpError(405)(error) && "allow" in (error as HttpError).headers,
  );
});

Deno.test("parseTarget() takes the authority from req.url when there is no Host (HTTP/2)", () => {
  assert.deepEqual(parseTarget(served("GET", "http://ok:8443/p?q", null)), {
    pathAndQuery: "/p?q",
    host: "ok:8443",
  });
  assert.throws(() => parseTarget(served("GET", "http://a:99999/p", null)), httpError(400));
});

Deno.test("parseTarget() drops a fragment and supplies the leading slash", () => {
  assert.equal(parseTarget(served("GET", "http://ok/a?b#c", "ok")).pathAndQuery, "/a?b");
  assert.equal(parseTarget(served("GET", "http://ok?x", "ok")).pathAndQuery, "/?x");
  assert.equal(parseTarget(served("GET", "http://ok", "ok")).pathAndQuery, "/");
});

/** Sends one raw request through a fresh balancer; returns the response and what the backend saw. */
async function throughBalancer(request: string) {
  await using backend = await startTestBackend(() => new Response("reached"));
  await using lb = await startTestBalancer([backend.url]);
  const raw = await rawRequest(lb.port, request.replaceAll("PORT", String(lb.port)));
  return { raw, ...parseHead(raw), received: [...backend.received], backendPort: backend.port };
}

Deno.test("balancer answers an absolute-form target for another host with 400, forwards nothing", async () => {
  const { status, received } = await throughBalancer(
    "GET http://evil.example/x HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 400);
  assert.equal(received.length, 0);
});

Deno.test("balancer answers a path-shifting Host (evil/admin?) with 400, forwards nothing", async () => {
  const { status, received } = await throughBalancer(
    "GET /p?q=1 HTTP/1.1\r\nHost: evil/admin?\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 400);
  assert.equal(received.length, 0);
});

Deno.test("balancer answers Host with an out-of-range port with 400, forwards nothing", async () => {
  const { status, received } = await throughBalancer(
    "GET / HTTP/1.1\r\nHost: a:99999\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 400);
  assert.equal(received.length, 0);
});

Deno.test("balancer answers Host with userinfo with 400, forwards nothing", async () => {
  const { status, received } = await throughBalancer(
    "GET / HTTP/1.1\r\nHost: user@host\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 400);
  assert.equal(received.length, 0);
});

Deno.test("balancer answers CONNECT with 405 and Allow, forwards nothing", async () => {
  const { status, headers, received } = await throughBalancer(
    "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 405);
  assert.ok(headers.get("allow")?.includes("GET"));
  assert.equal(received.length, 0);
});

Deno.test("balancer sends a valid request to the configured backend with Host kept", async () => {
  const { status, raw, received } = await throughBalancer(
    "GET /a/b?x=1&y=%2F&z HTTP/1.1\r\nHost: public.example:8080\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 200);
  assert.ok(raw.endsWith("reached"));
  // It reached the 127.0.0.1 backend (nothing resolved public.example): exactly one request.
  assert.equal(received.length, 1);
  const seen = received[0];
  assert.equal(seen.method, "GET");
  assert.equal(seen.headers.get("host"), "public.example:8080");
  assert.equal(seen.headers.get("x-forwarded-host"), "public.example:8080");
  assert.equal(seen.path, "/a/b?x=1&y=%2F&z");
  assert.equal(seen.url, "http://public.example:8080/a/b?x=1&y=%2F&z");
});

Deno.test("balancer forwards an absolute-form target naming the Host as origin-form", async () => {
  const { status, received } = await throughBalancer(
    "GET http://ok:81/x?y HTTP/1.1\r\nHost: ok:81\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 200);
  assert.equal(received.length, 1);
  assert.equal(received[0].path, "/x?y");
  assert.equal(received[0].headers.get("host"), "ok:81");
});

Deno.test("balancer forwards //double//slash?q=%20 exactly", async () => {
  const { status, received } = await throughBalancer(
    "GET //double//slash?q=%20&r=a+b HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 200);
  assert.equal(received.length, 1);
  assert.equal(received[0].path, "//double//slash?q=%20&r=a+b");
});

Deno.test("balancer forwards percent-encoded bytes and ;= in the path unchanged", async () => {
  const { status, received } = await throughBalancer(
    "GET /a%2Fb/%25/c;v=1?x=%2e%2e&y=%ZZ HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 200);
  assert.equal(received[0].path, "/a%2Fb/%25/c;v=1?x=%2e%2e&y=%ZZ");
});

Deno.test("balancer drops a fragment from the request target", async () => {
  const { status, received } = await throughBalancer(
    "GET /a?b#frag HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 200);
  assert.equal(received[0].path, "/a?b");
});

Deno.test("balancer forwards dot segments and backslashes unresolved (issue 5)", async () => {
  // fetch's WHATWG parser would resolve `..`/`.` (also `%2e%2e`) and turn `\` into `/`; such
  // targets go through the native transport (lib/upstream_native.ts, tests/exact_path_test.ts).
  const { status, received } = await throughBalancer(
    "GET /a/../b/%2e%2e/c/./d\\e?k=../v HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n",
  );
  assert.equal(status, 200);
  assert.equal(received[0].path, "/a/../b/%2e%2e/c/./d\\e?k=../v");
});
