/**
 * @module
 * Pure unit tests of lib/headers.ts: hop-by-hop stripping, Host validation, the upstream header
 * set, and describing a body that fetch decoded by itself.
 */

import assert from "node:assert/strict";
import {
  appendResponseHeaders,
  copyWithoutHopByHop,
  downstreamResponseHeaders,
  fetchDecodedBody,
  HOP_BY_HOP,
  isValidHost,
  readClientHeaders,
  readClientRequest,
} from "../lib/headers.ts";
import { upstreamHeadersOf } from "./helpers.ts";

const FACTS = { clientIp: "127.0.0.1", proto: "http", host: "public.example:8080" };

function names(headers: Headers): string[] {
  return [...headers.keys()];
}

Deno.test("copyWithoutHopByHop() removes every hop-by-hop header", () => {
  const source = new Headers({
    "Connection": "keep-alive",
    "Keep-Alive": "timeout=5, max=100",
    "Proxy-Connection": "keep-alive",
    "Proxy-Authenticate": "Basic realm=x",
    "Proxy-Authorization": "Basic dTpw",
    "TE": "trailers",
    "Trailer": "X-Checksum",
    "Transfer-Encoding": "chunked",
    "Upgrade": "websocket",
    "Content-Type": "text/plain",
    "Authorization": "Bearer t",
  });
  const headers = copyWithoutHopByHop(source);
  assert.deepEqual(names(headers), ["authorization", "content-type"]);
  for (const name of HOP_BY_HOP) assert.equal(headers.has(name), false, name);
});

Deno.test("copyWithoutHopByHop() removes every header named in Connection, mixed case and spaced", () => {
  const source = new Headers([
    ["Connection", "  X-Secret ,x-other-SECRET,\tKeep-Alive,, "],
    ["Connection", "X-Third"],
    ["x-secret", "1"],
    ["X-Other-Secret", "2"],
    ["x-third", "3"],
    ["X-Kept", "4"],
  ]);
  assert.deepEqual(names(copyWithoutHopByHop(source)), ["x-kept"]);
});

Deno.test("copyWithoutHopByHop() ignores Connection tokens that are not header names", () => {
  const source = new Headers({
    "connection": `"quoted", a b, x-gone, é`,
    "x-gone": "1",
    "a": "2",
  });
  assert.deepEqual(names(copyWithoutHopByHop(source)), ["a"]);
});

Deno.test("isValidHost() accepts names, IPv4 and bracketed IPv6 with optional port", () => {
  for (
    const host of [
      "example.com",
      "a:80",
      "127.0.0.1:3030",
      "[::1]:8080",
      "[::1]",
      "localhost",
      "Public.Example:65535",
      "xn--bcher-kva.example",
    ]
  ) {
    assert.equal(isValidHost(host), true, host);
  }
});

Deno.test("isValidHost() rejects paths, userinfo, bad ports, spaces and empty values", () => {
  for (
    const host of [
      "evil/admin?",
      "a:99999",
      "a:65536",
      "user@host",
      "a b",
      "",
      "a:",
      "a:port",
      ":80",
      "a:80:80",
      "a#b",
      "a?b",
      "a%41",
      "a\\b",
      "[::1",
      "::1",
      "a:-1",
      "a:+80",
    ]
  ) {
    assert.equal(isValidHost(host), false, JSON.stringify(host));
  }
});

Deno.test("isValidHost() rejects hosts that would make new URL(req.url) throw", () => {
  // Each of these matched the character classes but is not a host a URL parser accepts, so
  // any later `new URL(req.url)` (a policy, a log line) would throw on attacker input.
  for (const host of ["[...]", "[:::::]", "[1:2]", "1.2.3.999", "1.2.3.4.5", "99999999999"]) {
    assert.equal(URL.canParse(`http://${host}/`), false, `precondition: ${host}`);
    assert.equal(isValidHost(host), false, host);
  }
});

Deno.test("upstreamRequestHeaders() replaces client-sent X-Forwarded-* and keeps Host", () => {
  const incoming = new Headers({
    "host": "public.example:8080",
    "x-forwarded-for": "6.6.6.6",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "evil.example",
    "accept-encoding": "gzip",
    "cookie": "a=b",
  });
  const headers = upstreamHeadersOf(incoming, FACTS);
  assert.equal(headers.get("host"), "public.example:8080");
  assert.equal(headers.get("x-forwarded-for"), "127.0.0.1");
  assert.equal(headers.get("x-forwarded-proto"), "http");
  assert.equal(headers.get("x-forwarded-host"), "public.example:8080");
  assert.equal(headers.get("accept-encoding"), "gzip");
  assert.equal(headers.get("cookie"), "a=b");
  // The client's headers are left as they were.
  assert.equal(incoming.get("x-forwarded-for"), "6.6.6.6");
});

Deno.test("upstreamRequestHeaders() drops a client-sent Forwarded header", () => {
  // RFC 7239 Forwarded says the same as X-Forwarded-For; passing the client's on lets it
  // spoof its address to any backend that reads the standard header instead.
  const incoming = new Headers({ "host": "a", "forwarded": "for=6.6.6.6;proto=https" });
  const headers = upstreamHeadersOf(incoming, { ...FACTS, host: "a" });
  assert.equal(headers.has("forwarded"), false);
  assert.equal(headers.get("x-forwarded-for"), "127.0.0.1");
});

Deno.test("upstreamRequestHeaders() cannot be made to drop its own headers via Connection", () => {
  const incoming = new Headers({
    "host": "a",
    "connection": "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Host, X-Secret",
    "x-secret": "s",
    "keep-alive": "timeout=1",
    "te": "trailers",
    "upgrade": "h2c",
  });
  const headers = upstreamHeadersOf(incoming, { ...FACTS, host: "a" });
  assert.equal(headers.get("x-forwarded-for"), "127.0.0.1");
  assert.equal(headers.get("x-forwarded-proto"), "http");
  assert.equal(headers.get("x-forwarded-host"), "a");
  assert.equal(headers.get("host"), "a");
  for (const name of ["connection", "x-secret", "keep-alive", "te", "upgrade"]) {
    assert.equal(headers.has(name), false, name);
  }
});

Deno.test("upstreamRequestHeaders() asks for identity when the client named no encoding", () => {
  const headers = upstreamHeadersOf(new Headers({ host: "a" }), { ...FACTS, host: "a" });
  assert.equal(headers.get("accept-encoding"), "identity");
});

Deno.test("upstreamRequestHeaders() sends no Host or X-Forwarded-Host without a host", () => {
  const incoming = new Headers({ "x-forwarded-host": "evil.example" });
  const headers = upstreamHeadersOf(incoming, { ...FACTS, host: null });
  assert.equal(headers.has("host"), false);
  assert.equal(headers.has("x-forwarded-host"), false);
});

Deno.test("fetchDecodedBody() is true for gzip and br when the request allowed decoding", () => {
  for (const coding of ["gzip", "br", "GZIP", " br "]) {
    for (const accept of [null, "gzip, br", "deflate", "", "identity;q=1"]) {
      const request = new Headers(accept === null ? {} : { "accept-encoding": accept });
      const response = new Headers({ "content-encoding": coding, "content-length": "44" });
      assert.equal(fetchDecodedBody(request, response), true, `${coding} / ${accept}`);
    }
  }
});

Deno.test("fetchDecodedBody() is false for codings fetch leaves alone", () => {
  const request = new Headers({ "accept-encoding": "gzip, deflate, br, zstd" });
  for (const coding of ["deflate", "zstd", "x-gzip", "identity", "gzip, br", "identity, gzip"]) {
    const response = new Headers({ "content-encoding": coding });
    assert.equal(fetchDecodedBody(request, response), false, coding);
  }
  assert.equal(fetchDecodedBody(request, new Headers()), false, "no content-encoding");
});

Deno.test("fetchDecodedBody() is false for an identity or ranged request", () => {
  const response = new Headers({ "content-encoding": "gzip" });
  for (const accept of ["identity", "IDENTITY", " identity "]) {
    assert.equal(fetchDecodedBody(new Headers({ "accept-encoding": accept }), response), false);
  }
  const ranged = new Headers({ "accept-encoding": "gzip", "range": "bytes=0-9" });
  assert.equal(fetchDecodedBody(ranged, response), false);
});

Deno.test("downstreamResponseHeaders() describes a decoded body truthfully", () => {
  for (const coding of ["gzip", "br"]) {
    const upstream = new Headers({
      "content-encoding": coding,
      "content-length": "44",
      "content-type": "text/html",
      "etag": `"v1"`,
      "vary": "Accept-Encoding",
    });
    const request = new Headers({ "accept-encoding": "gzip, br" });
    const headers = downstreamResponseHeaders(upstream, fetchDecodedBody(request, upstream));
    assert.equal(headers.has("content-encoding"), false, coding);
    assert.equal(headers.has("content-length"), false, coding);
    assert.equal(headers.get("etag"), `W/"v1"`, coding);
    assert.equal(headers.get("content-type"), "text/html");
    assert.equal(headers.get("vary"), "Accept-Encoding");
    assert.equal(upstream.get("content-encoding"), coding, "input untouched");
  }
});

Deno.test("downstreamResponseHeaders() keeps an already weak ETag as it is", () => {
  const upstream = new Headers({ "content-encoding": "gzip", "etag": `W/"v1"` });
  assert.equal(downstreamResponseHeaders(upstream, true).get("etag"), `W/"v1"`);
});

Deno.test("downstreamResponseHeaders() leaves undecoded bodies' headers alone", () => {
  const cases: [string, Headers][] = [
    ["deflate", new Headers({ "accept-encoding": "gzip, deflate" })],
    ["zstd", new Headers({ "accept-encoding": "zstd" })],
    ["gzip", new Headers({ "accept-encoding": "identity" })],
  ];
  for (const [coding, request] of cases) {
    const upstream = new Headers({
      "content-encoding": coding,
      "content-length": "32",
      "etag": `"v1"`,
    });
    const headers = downstreamResponseHeaders(upstream, fetchDecodedBody(request, upstream));
    assert.equal(headers.get("content-encoding"), coding);
    assert.equal(headers.get("content-length"), "32");
    assert.equal(headers.get("etag"), `"v1"`);
  }
});

Deno.test("downstreamResponseHeaders() strips hop-by-hop and Connection-named headers", () => {
  const upstream = new Headers({
    "connection": "close, X-Secret",
    "x-secret": "1",
    "keep-alive": "timeout=5",
    "trailer": "X-T",
    "transfer-encoding": "chunked",
    "upgrade": "h2c",
    "proxy-authenticate": "Basic",
    "set-cookie": "a=1",
    "x-custom": "yes",
  });
  upstream.append("set-cookie", "b=2");
  const headers = downstreamResponseHeaders(upstream, false);
  assert.deepEqual(names(headers), ["set-cookie", "set-cookie", "x-custom"]);
  assert.deepEqual(headers.getSetCookie(), ["a=1", "b=2"]);
});

Deno.test("copyWithoutHopByHop() keeps end-to-end fields in order, Set-Cookie kept apart", () => {
  const source = new Headers([
    ["Connection", "keep-alive, X-Secret , upgrade"],
    ["X-Secret", "1"],
    ["Keep-Alive", "timeout=5"],
    ["Upgrade", "h2c"],
    ["TE", "trailers"],
    ["Set-Cookie", "a=1; Path=/"],
    ["Set-Cookie", "b=2; Path=/"],
    ["Accept", "text/html"],
    ["Accept", "application/json"],
    ["X-Forwarded-For", "6.6.6.6"],
  ]);
  const copy = copyWithoutHopByHop(source);
  assert.deepEqual([...copy], [
    ["accept", "text/html, application/json"],
    ["set-cookie", "a=1; Path=/"],
    ["set-cookie", "b=2; Path=/"],
    ["x-forwarded-for", "6.6.6.6"],
  ]);
  assert.deepEqual(copy.getSetCookie(), ["a=1; Path=/", "b=2; Path=/"]);
  assert.equal(copy.get("accept"), "text/html, application/json");
  assert.equal(copy.has("x-secret"), false);
  assert.equal(copy.has("connection"), false);
  assert.equal(source.get("x-secret"), "1", "the source is left alone");
});

Deno.test("appendResponseHeaders() takes fields as received: any case, Connection-named and `except` left out", () => {
  const to = new Headers();
  const length = appendResponseHeaders(
    [
      ["Server", "nginx"],
      ["X-Secret", "1"],
      ["Content-Length", "3"],
      ["Connection", "keep-alive, X-Secret"],
      ["Transfer-Encoding", "chunked"],
      ["X-Request-Id", "backend's"],
      ["Set-Cookie", "a=1"],
      ["set-cookie", "b=2"],
    ],
    to,
    false,
    "x-request-id",
  );
  assert.equal(length, "3");
  assert.deepEqual([...to], [
    ["content-length", "3"],
    ["server", "nginx"],
    ["set-cookie", "a=1"],
    ["set-cookie", "b=2"],
  ]);
});

Deno.test("appendResponseHeaders() describes a decoded body truthfully and returns no length", () => {
  const to = new Headers();
  const pairs: [string, string][] = [
    ["Content-Encoding", "gzip"],
    ["Content-Length", "44"],
    ["ETag", `"v1"`],
  ];
  assert.equal(appendResponseHeaders(pairs, to, true), null);
  assert.deepEqual([...to], [["etag", `W/"v1"`]]);
});

Deno.test("readClientHeaders() keeps end-to-end fields and notes those the proxy reads or sets", () => {
  const client = readClientHeaders(
    new Headers({
      host: "a.example",
      connection: "keep-alive, X-Secret",
      "keep-alive": "timeout=5",
      upgrade: "websocket",
      "transfer-encoding": "chunked",
      "content-length": "5",
      "x-request-id": "id-1",
      "x-forwarded-for": "6.6.6.6",
      "x-forwarded-proto": "https",
      "x-forwarded-host": "b.example",
      forwarded: "for=6.6.6.6",
      "accept-encoding": "gzip",
      "x-secret": "s",
      cookie: "c=1",
    }),
  );
  assert.deepEqual(client.fields, [
    ["accept-encoding", "gzip"],
    ["content-length", "5"],
    ["cookie", "c=1"],
    ["x-secret", "s"],
  ]);
  assert.equal(client.host, "a.example");
  assert.equal(client.connection, "keep-alive, X-Secret");
  assert.equal(client.upgrade, "websocket");
  assert.equal(client.transferEncoding, "chunked");
  assert.equal(client.contentLength, "5");
  assert.equal(client.requestId, "id-1");
  assert.equal(client.forwardedFor, "6.6.6.6");
  assert.equal(client.forwardedProto, "https");
  assert.equal(client.forwardedHost, "b.example");
  assert.equal(client.forwarded, "for=6.6.6.6");
  assert.equal(client.acceptEncoding, true);
});

Deno.test("upstreamRequestHeaders() sends the given request id in place of the client's", () => {
  const incoming = new Headers({ host: "a", "x-request-id": "client-id" });
  assert.equal(upstreamHeadersOf(incoming, FACTS).get("x-request-id"), "client-id");
  const replaced = upstreamHeadersOf(incoming, { ...FACTS, requestId: "lb-id" });
  assert.equal(replaced.get("x-request-id"), "lb-id");
});

Deno.test("fetchDecodedBody() reads request pairs as it reads Headers", () => {
  const response = new Headers({ "content-encoding": "gzip" });
  assert.equal(fetchDecodedBody([["accept-encoding", "gzip"]], response), true);
  assert.equal(fetchDecodedBody([["accept-encoding", " Identity "]], response), false);
  assert.equal(fetchDecodedBody([["range", "bytes=0-1"]], response), false);
});

Deno.test("readClientRequest() reads a request's fields as received as readClientHeaders() reads its Headers, in arrival order, without building the Headers", () => {
  const cases: [string, string][][] = [
    [["Host", "a.example"], ["Accept", "*/*"]],
    [
      ["host", "b.example:8080"],
      ["X-Forwarded-For", "10.0.0.1"],
      ["Cookie", "a=1"],
      ["x-forwarded-for", "10.0.0.2"],
      ["Connection", "keep-alive, X-Secret"],
      ["X-Secret", "1"],
      ["Accept-Encoding", "gzip"],
      ["Content-Length", "5"],
      ["Cookie", "b=2"],
      ["X-Request-Id", "req-1"],
      ["Forwarded", "for=10.0.0.3"],
      ["X-Forwarded-Proto", "https"],
      ["X-Forwarded-Host", "c.example"],
      ["Keep-Alive", "timeout=5"],
      ["Upgrade", "websocket"],
      ["Transfer-Encoding", "chunked"],
    ],
    // Deno's joining of empty values, and Set-Cookie (never joined).
    [["host", "a"], ["x-e", ""], ["x-e", "1"], ["x-f", "1"], ["x-f", ""], ["x-f", "2"]],
    [["host", "a"], ["Set-Cookie", "a=1"], ["set-cookie", "b=2"], ["x-g", ""], ["x-g", ""]],
  ];
  for (const fields of cases) {
    const request = {
      method: "GET",
      url: "http://a.example/",
      body: null,
      signal: new AbortController().signal,
      fields,
      get headers(): Headers {
        throw new Error("the Headers were built");
      },
    };
    const fromFields = readClientRequest(request);
    const fromHeaders = readClientHeaders(new Headers(fields));
    const { fields: inOrder, ...rest } = fromFields;
    const { fields: sorted, ...restFromHeaders } = fromHeaders;
    assert.deepEqual(rest, restFromHeaders);
    assert.deepEqual([...inOrder].sort(([a], [b]) => a < b ? -1 : 1), sorted);
    // Arrival order: the first field's name comes first whatever its place in the alphabet.
    const keptNames = fields.map(([name]) => name.toLowerCase())
      .filter((name, i, all) =>
        (name === "set-cookie" || all.indexOf(name) === i) && inOrder.some(([n]) => n === name)
      );
    assert.deepEqual(inOrder.map(([name]) => name), keptNames);
  }
  // Without fields (a Request from Deno.serve), the Headers are read.
  const viaHeaders = readClientRequest(new Request("http://a.example/", { headers: { a: "1" } }));
  assert.deepEqual(viaHeaders.fields, [["a", "1"]]);
});
