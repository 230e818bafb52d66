/**
 * @module
 * Byte-exact request targets (issue 5): the native transport (lib/upstream_native.ts, the
 * default) writes every target as received; with `--transport fetch`, requests whose path
 * fetch's URL parser would rewrite (`..`, `%2e%2e`, `\`) still go through the native transport,
 * everything else through fetch. Every wire test runs a real balancer between a raw-socket
 * client (a fetch client would normalise the path itself) and a raw-socket backend that
 * records the request line as it arrived, on 127.0.0.1 with ports from the OS.
 *
 * Which transport carried a request is told apart by a difference only fetch makes: it adds
 * `user-agent: Deno/<version>` to a request that has none, the native transport adds nothing.
 */

import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { HEALTH_CHECK_USER_AGENT } from "../lib/health.ts";
import { fetchRewritesTarget } from "../lib/upstream.ts";
import {
  captureLog,
  concat,
  rawServer,
  refusingUrl,
  startTestBalancer,
  waitFor,
  writeAll,
} from "./helpers.ts";
import { installed, Pki } from "./pki.ts";
import { headerValues, parseHead, type RawResponse, rawResponse, Wire } from "./wire.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const WAIT_MS = 10_000;

/** The paths of the issue, as a client sends them; each must reach the backend unchanged. */
const ODD_PATHS = [
  "/a/../b",
  "/a/../../../etc/passwd",
  "/a/%2e%2e/b",
  "/a/%2E%2E/%2e%2E/b",
  "/a/.%2e/b",
  "/a\\b",
  "/a/./b?q=../..",
];

// ---------------------------------------------------------------------------------------------
// The choice (pure)
// ---------------------------------------------------------------------------------------------

Deno.test("fetchRewritesTarget() is true exactly where the URL parser changes the target", () => {
  for (const path of ODD_PATHS) assert.equal(fetchRewritesTarget(path), true, path);
  for (
    const path of [
      "/a/./b/.",
      "/a\\..\\b",
      "/%2e",
      "/a/%2E",
      "/a/..",
      "/a?x=1#frag",
      "/a b",
      '/a"b',
      "/a<b>",
      "/a`b",
      "/a{b}",
      "/a?b'c",
      "/caf\u00e9",
    ]
  ) {
    assert.equal(fetchRewritesTarget(path), true, path);
  }
  for (
    const path of [
      "/",
      "/a/b?c=d&e=f",
      "/.well-known/x", // starts like a dot segment, is not one
      "/a/..b/c.",
      "/a/%2fb",
      "/a/..%2fb",
      "/a/%2e%2e%2fb",
      "/a?x=../..",
      "//double/slash", // a path, never a host: it is appended to the origin, not resolved
      "/a'b",
      "/~user/a-b_c!$&()*+,;=:@",
      "/a%zz",
    ]
  ) {
    assert.equal(fetchRewritesTarget(path), false, path);
  }
});

// ---------------------------------------------------------------------------------------------
// A raw backend and a raw client
// ---------------------------------------------------------------------------------------------

/** One request as the backend read it off its socket. */
interface Seen {
  /** The request line, e.g. `GET /a/../b HTTP/1.1`. */
  line: string;
  headers: Headers;
  body: Uint8Array;
  /** Which accepted connection carried it (1, 2, ...). */
  connection: number;
  /** Set when the balancer closed that connection while the backend held the request. */
  closed: boolean;
}

/**
 * What the backend does with a request: the bytes to answer with, or `undefined` to hold it
 * (no answer) until the balancer closes the connection. It may also write on `wire` itself.
 */
type Answer = (seen: Seen, wire: Wire) => Promise<string | Uint8Array | undefined>;

const OK: Answer = () => Promise.resolve(reply(200, [], "ok"));

/** An HTTP/1.1 response with a Content-Length. */
function reply(status: number, headers: [string, string][], body: string | Uint8Array): Uint8Array {
  const bytes = typeof body === "string" ? encoder.encode(body) : body;
  const head = [`HTTP/1.1 ${status} X`, ...headers.map(([n, v]) => `${n}: ${v}`)];
  head.push(`content-length: ${bytes.length}`, "", "");
  return concat([encoder.encode(head.join("\r\n")), bytes]);
}

/** A keep-alive backend on a raw socket (TLS with `tls`) recording every request but health checks. */
function recordingBackend(answer: Answer = OK, tls?: { cert: string; key: string }) {
  const seen: Seen[] = [];
  async function serveConnection(conn: Deno.Conn, id: number): Promise<void> {
    const wire = new Wire(conn);
    for (let i = 0; i < 1000; i++) {
      const head = await wire.head();
      if (head === null) return;
      const { line, fields } = parseHead(head);
      const headers = new Headers(fields);
      const length = Number(headers.get("content-length") ?? 0);
      const body = headers.get("transfer-encoding") === "chunked"
        ? await wire.chunked()
        : await wire.bytes(length);
      const request: Seen = { line, headers, body, connection: id, closed: false };
      if (headers.get("user-agent") === HEALTH_CHECK_USER_AGENT) {
        await writeAll(conn, reply(200, [], "healthy"));
        continue;
      }
      seen.push(request);
      const answered = await answer(request, wire);
      if (answered === undefined) {
        for (let j = 0; j < 100_000 && await wire.more(); j++) { /* hold until closed */ }
        request.closed = true;
        return;
      }
      await writeAll(conn, typeof answered === "string" ? encoder.encode(answered) : answered);
    }
  }

  const server = rawServer(async (conn, id) => {
    try {
      await serveConnection(conn, id);
    } finally {
      try {
        conn.close();
      } catch { /* closed already */ }
    }
  }, tls);

  return {
    url: server.url,
    seen,
    /** Request lines seen, in order. */
    lines: () => seen.map((s) => s.line),
    [Symbol.asyncDispose]: () => server[Symbol.asyncDispose](),
  };
}

/** Sends raw request bytes on a new connection (ending with `Connection: close`); parses the answer. */
function send(port: number, request: string | Uint8Array): Promise<RawResponse> {
  return rawResponse(port, request, WAIT_MS);
}

function get(path: string, extra = ""): string {
  return `GET ${path} HTTP/1.1\r\nHost: site.example\r\n${extra}Connection: close\r\n\r\n`;
}

// ---------------------------------------------------------------------------------------------
// Through the balancer
// ---------------------------------------------------------------------------------------------

Deno.test("every path reaches the backend byte for byte through the native transport", async () => {
  await using backend = recordingBackend();
  await using lb = await startTestBalancer([backend.url], { transport: "native" });
  for (const path of [...ODD_PATHS, "/a/b", "/a/b?q=../..", "/a/..%2fb"]) {
    const response = await send(lb.port, get(path));
    assert.equal(response.status, 200, path);
    const seen = backend.seen.at(-1)!;
    assert.equal(seen.line, `GET ${path} HTTP/1.1`);
    assert.equal(seen.headers.get("user-agent"), null, `${path}: no fetch-added user-agent`);
  }
});

Deno.test("with --transport fetch, odd paths still go byte for byte (native); ordinary ones through fetch", async () => {
  await using backend = recordingBackend();
  await using lb = await startTestBalancer([backend.url], { transport: "fetch" });
  for (const path of ODD_PATHS) {
    const response = await send(lb.port, get(path));
    assert.equal(response.status, 200, path);
    assert.equal(decoder.decode(response.body), "ok", path);
    const seen = backend.seen.at(-1)!;
    assert.equal(seen.line, `GET ${path} HTTP/1.1`);
    assert.equal(seen.headers.get("host"), "site.example", path);
    assert.equal(seen.headers.get("x-forwarded-for"), "127.0.0.1", path);
    assert.equal(seen.headers.get("user-agent"), null, `${path}: no fetch-added user-agent`);
  }
  for (const path of ["/a/b", "/a/b?q=../..", "/.well-known/x", "/a/..%2fb"]) {
    const response = await send(lb.port, get(path));
    assert.equal(response.status, 200, path);
    const seen = backend.seen.at(-1)!;
    assert.equal(seen.line, `GET ${path} HTTP/1.1`);
    assert.match(seen.headers.get("user-agent") ?? "", /^Deno\//, `${path} went through fetch`);
  }
});

Deno.test("odd requests keep every byte: a UTF-8 path, a lower-case method", async () => {
  await using backend = recordingBackend();
  await using lb = await startTestBalancer([backend.url]);
  // Deno.serve decodes the target from UTF-8; it must leave as the same bytes, not as
  // `%C3%A9` (fetch) nor as one Latin-1 byte per character.
  const utf8 = encoder.encode(
    "GET /caf\u00e9/../x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
  );
  assert.equal((await send(lb.port, utf8)).status, 200);
  assert.equal(backend.seen.at(-1)!.line, "GET /caf\u00e9/../x HTTP/1.1"); // read as UTF-8
  // Methods are case-sensitive: sent as received, not upper-cased.
  const purge = "purge /a/%2e%2e/b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
  assert.equal((await send(lb.port, purge)).status, 200);
  assert.equal(backend.seen.at(-1)!.line, "purge /a/%2e%2e/b HTTP/1.1");
});

Deno.test("interim responses: 103 is skipped, an unasked-for 101 is a 502", async () => {
  await using backend = recordingBackend((seen) =>
    Promise.resolve(
      seen.line.includes("/switch")
        ? "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n"
        : "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" +
          "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
    )
  );
  await using lb = await startTestBalancer([backend.url], { retries: 0 });
  const early = await send(lb.port, get("/x/../early"));
  assert.equal(early.status, 200);
  assert.equal(decoder.decode(early.body), "final");
  assert.equal((await send(lb.port, get("/x/../switch"))).status, 502);
});

Deno.test("a POST body to an odd path arrives whole: buffered, streamed with a length, chunked", async () => {
  await using backend = recordingBackend((seen) =>
    Promise.resolve(reply(200, [], `${seen.body.length}`))
  );
  await using lb = await startTestBalancer([backend.url]);
  const large = new Uint8Array(300 * 1024).map((_, i) => i % 251);
  const cases: [string, Uint8Array, boolean][] = [
    ["small", encoder.encode("name=value&x=1"), false],
    ["large, Content-Length", large, false],
    ["large, chunked", large, true],
  ];
  for (const [what, body, chunked] of cases) {
    const framing = chunked
      ? concat([
        encoder.encode(`${body.length.toString(16)}\r\n`),
        body,
        encoder.encode("\r\n0\r\n\r\n"),
      ])
      : body;
    const head = `POST /up/../load HTTP/1.1\r\nHost: site.example\r\n` +
      (chunked ? "Transfer-Encoding: chunked\r\n" : `Content-Length: ${body.length}\r\n`) +
      "Connection: close\r\n\r\n";
    const response = await send(lb.port, concat([encoder.encode(head), framing]));
    assert.equal(response.status, 200, what);
    const seen = backend.seen.at(-1)!;
    assert.equal(seen.line, "POST /up/../load HTTP/1.1", what);
    assert.deepEqual(seen.body, body, what);
    // Unlike fetch, which streams every large body chunked, the native transport keeps a declared length.
    assert.equal(seen.headers.get("content-length"), chunked ? null : String(body.length), what);
    assert.equal(decoder.decode(response.body), String(body.length), what);
  }
});

Deno.test("responses to odd paths are relayed as sent: two Set-Cookie, gzip untouched, HEAD", async () => {
  const gzipped = new Uint8Array(gzipSync(encoder.encode("compressible text ".repeat(200))));
  await using backend = recordingBackend((seen) => {
    if (seen.line.startsWith("HEAD ")) {
      // A HEAD answer: the GET's length, no body.
      return Promise.resolve('HTTP/1.1 200 OK\r\ncontent-length: 1234\r\netag: "v1"\r\n\r\n');
    }
    return Promise.resolve(reply(200, [
      ["set-cookie", "a=1; Path=/"],
      ["set-cookie", "b=2; Path=/"],
      ["content-encoding", "gzip"],
      ["etag", '"v1"'],
      ["x-custom", "kept"],
    ], gzipped));
  });
  await using lb = await startTestBalancer([backend.url]);
  const response = await send(lb.port, get("/a/../gz", "Accept-Encoding: gzip\r\n"));
  assert.equal(response.status, 200);
  assert.deepEqual(headerValues(response, "set-cookie"), ["a=1; Path=/", "b=2; Path=/"]);
  assert.deepEqual(headerValues(response, "content-encoding"), ["gzip"]);
  assert.deepEqual(headerValues(response, "content-length"), [String(gzipped.length)]);
  assert.deepEqual(headerValues(response, "etag"), ['"v1"'], "a strong ETag stays strong");
  assert.deepEqual(headerValues(response, "x-custom"), ["kept"]);
  assert.deepEqual(response.body, gzipped, "the compressed bytes, untouched");
  assert.equal(backend.seen[0].headers.get("accept-encoding"), "gzip");

  const head = await send(
    lb.port,
    `HEAD /a/../gz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
  );
  assert.equal(head.status, 200);
  assert.deepEqual(headerValues(head, "content-length"), ["1234"]);
  assert.equal(head.body.length, 0);
  assert.equal(backend.seen[1].line, "HEAD /a/../gz HTTP/1.1");
  // The connection stayed in sync after the bodiless answer: the next request reuses it.
  assert.equal((await send(lb.port, get("/a/../gz"))).status, 200);
  assert.equal(backend.seen[2].connection, backend.seen[1].connection);
});

Deno.test("sequential odd-path requests share one keep-alive backend connection", async () => {
  await using backend = recordingBackend();
  await using lb = await startTestBalancer([backend.url]);
  for (let i = 0; i < 5; i++) {
    assert.equal((await send(lb.port, get(`/k/../${i}`))).status, 200);
  }
  assert.deepEqual(backend.lines(), [0, 1, 2, 3, 4].map((i) => `GET /k/../${i} HTTP/1.1`));
  assert.equal(new Set(backend.seen.map((s) => s.connection)).size, 1, "one connection");
});

Deno.test("an odd-path request with no response headers in time gets 504 and is not retried", async () => {
  await using backend = recordingBackend(() => Promise.resolve(undefined));
  await using lb = await startTestBalancer([backend.url], { timeout: 300, retries: 1 });
  const started = performance.now();
  const response = await send(lb.port, get("/slow/../x"));
  assert.equal(response.status, 504);
  assert.ok(performance.now() - started < 5000);
  assert.ok(await waitFor(() => backend.seen[0]?.closed === true, WAIT_MS), "upstream closed");
  assert.equal(backend.seen.length, 1);
});

Deno.test("an odd-path POST to a refused backend is retried on the other one (a connect failure)", async () => {
  await using backend = recordingBackend((seen) =>
    Promise.resolve(reply(200, [], decoder.decode(seen.body)))
  );
  const log = captureLog();
  // High `fall`: the start-up health check must not take the refused backend out first.
  await using lb = await startTestBalancer([refusingUrl(), backend.url], { fall: 100 }, log);
  const body = "payload";
  const response = await send(
    lb.port,
    `POST /x/../y HTTP/1.1\r\nHost: h\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
  );
  assert.equal(response.status, 200);
  assert.equal(decoder.decode(response.body), body);
  assert.deepEqual(backend.lines(), ["POST /x/../y HTTP/1.1"]);
  const refused = lb.balancer.pool.backends[0];
  assert.equal(refused.failures, 1);
  assert.equal(refused.status, "down", "a connect failure takes the backend down at once");
  // POST is retried only after a connect failure: nothing can have been sent.
  assert.ok(
    log.lines.some((l) => /failed: connection refused \(POST, attempt 1, retrying\)/.test(l)),
    log.lines.join("\n"),
  );
});

Deno.test("a client hanging up cancels the odd-path request upstream, waiting or mid-body", async () => {
  await using backend = recordingBackend(async (seen, wire) => {
    if (seen.line.includes("/wait")) return undefined;
    // Headers and a first chunk, then more every 20 ms until the balancer closes the socket.
    await writeAll(
      wire.conn,
      encoder.encode("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"),
    );
    for (let i = 0; i < 1000; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      try {
        await writeAll(wire.conn, encoder.encode("4\r\nmore\r\n"));
      } catch {
        seen.closed = true;
        return "";
      }
    }
    return "";
  });
  await using lb = await startTestBalancer([backend.url]);
  for (const path of ["/wait/../x", "/stream/../x"]) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: lb.port });
    await writeAll(conn, encoder.encode(get(path)));
    assert.ok(await waitFor(() => backend.seen.some((s) => s.line.includes(path)), WAIT_MS));
    if (path.startsWith("/stream")) {
      const first = new Uint8Array(1024);
      assert.ok((await conn.read(first))! > 0, "the response started");
    }
    conn.close();
    const seen = backend.seen.find((s) => s.line.includes(path))!;
    assert.ok(await waitFor(() => seen.closed, WAIT_MS), `${path}: upstream connection closed`);
  }
});

// ---------------------------------------------------------------------------------------------
// HTTPS backends
// ---------------------------------------------------------------------------------------------

Deno.test({
  name: "an HTTPS backend with a private CA gets odd paths exactly once backendCa names the CA",
  ignore: !(await installed("openssl")),
  async fn() {
    await using pki = await Pki.create();
    const ca = await pki.ca("exact-ca");
    const leaf = await pki.leaf("exact-backend", ca);
    await using backend = recordingBackend(OK, { cert: leaf.cert, key: leaf.key });
    {
      // Verified by default: the private CA is not trusted without backendCa. As on the fetch
      // path, a refused certificate is a connect failure: the backend is down at once.
      const log = captureLog();
      await using lb = await startTestBalancer([backend.url], { retries: 0 }, log);
      assert.equal((await send(lb.port, get("/a/../b"))).status, 502);
      assert.equal(backend.seen.length, 0, "nothing reached the backend");
      assert.ok(
        log.lines.some((l) =>
          /\[down\] \(connection failed: .*(UnknownIssuer|unable to verify)/.test(l)
        ),
        log.lines.join("\n"),
      );
    }
    await using lb = await startTestBalancer([backend.url], { backendCa: ca.certPath });
    for (const path of ODD_PATHS) {
      const response = await send(lb.port, get(path));
      assert.equal(response.status, 200, path);
      assert.equal(backend.seen.at(-1)!.line, `GET ${path} HTTP/1.1`);
    }
  },
});
