/**
 * @module
 * The native transport (lib/upstream_native.ts), called directly over real sockets on 127.0.0.1
 * with ports from the OS, against `Deno.serve` backends and hand-written ones (tests/wire.ts)
 * that misbehave on purpose (the parser's and head builder's own rules are in
 * tests/http1_parse_test.ts and tests/http1_request_test.ts). Every backend and transport is
 * closed by its test; run with
 * `deno test --allow-all --sanitize-ops --sanitize-resources tests/upstream_native_test.ts`.
 */

import assert from "node:assert/strict";
import * as nodeTls from "node:tls";
import { gzipSync } from "node:zlib";
import {
  createNativeTransport,
  type NativeTransport,
  type NativeTransportOptions,
} from "../lib/upstream_native.ts";
import type { HeaderPairs } from "../lib/headers.ts";
import type {
  AttemptOptions,
  AttemptRequest,
  AttemptResult,
  UpstreamResponse,
} from "../lib/upstream.ts";
import {
  concat,
  delay,
  hangingConnectUrl,
  rawServer,
  startTestBackend,
  waitFor,
} from "./helpers.ts";
import { Pki } from "./pki.ts";
import { Wire } from "./wire.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The native transport takes no fetch client; the field is fetch's. */
const OPTIONS: AttemptOptions = { timeout: 5000, connectTimeout: 2000 };
const NEVER = new AbortController().signal;

/** A transport that `await using` closes. */
function transport(options?: NativeTransportOptions): NativeTransport & AsyncDisposable {
  const t = createNativeTransport(options);
  return Object.assign(t, { [Symbol.asyncDispose]: () => t.close() });
}

function request(
  method = "GET",
  headers: HeadersInit = {},
  body: BodyInit | null = null,
  onBodyFailure?: (detail: string) => void,
): AttemptRequest {
  return { method, headers: pairsOf(headers), body, onBodyFailure };
}

/** Sends `req` to `origin` + `target`. */
function send(
  t: NativeTransport,
  origin: string,
  target = "/",
  req: AttemptRequest = request(),
  options: Partial<AttemptOptions> = {},
  signal = NEVER,
): Promise<AttemptResult> {
  return t.send(origin, origin + target, req, signal, { ...OPTIONS, ...options });
}

/** Header fields as pairs, lower-case names, as the proxy gives them to a transport. */
function pairsOf(headers: HeadersInit): HeaderPairs {
  return [...new Headers(headers)];
}

/** An answer as a Response with every field as received, to read its body and fields. */
function asResponse(answer: UpstreamResponse): Response {
  const { status, statusText, headers, body } = answer;
  return new Response(body, { status, statusText, headers });
}

/** The response of a successful attempt (fails the test otherwise). */
function ok(result: AttemptResult): Response {
  if (!result.ok) assert.fail(`attempt failed: ${result.failure.kind}: ${result.failure.detail}`);
  assert.equal(result.value.decoded, false);
  assert.equal(result.status, result.value.status);
  return asResponse(result.value);
}

/** An HTTP/1.1 response with a Content-Length. */
function reply(body: string | Uint8Array, status = 200, headers: string[] = []): Uint8Array {
  const bytes = typeof body === "string" ? encoder.encode(body) : body;
  const head = [`HTTP/1.1 ${status} X`, ...headers, `content-length: ${bytes.length}`, "", ""];
  return concat([encoder.encode(head.join("\r\n")), bytes]);
}

/** Reads from `wire` until the peer closes (bounded). */
async function untilClosed(wire: Wire): Promise<void> {
  for (let i = 0; i < 10_000 && (await wire.more()); i++) { /* discard */ }
}

/**
 * Like {@linkcode untilClosed}, but closes the connection itself after `ms`: a backend that
 * stalls on purpose, bounded, so that a transport without a read timeout fails the test
 * rather than hanging it.
 */
async function stall(wire: Wire, ms = 10_000): Promise<void> {
  const timer = setTimeout(() => {
    try {
      wire.conn.close();
    } catch { /* closed already */ }
  }, ms);
  try {
    await untilClosed(wire);
  } finally {
    clearTimeout(timer);
  }
}

/** Bytes of a string one per character (Latin-1), for responses that are not UTF-8. */
function latin1Bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

/** A small seeded PRNG (mulberry32), so random splits repeat. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `bytes` cut at up to `cuts` random points. */
function split(bytes: Uint8Array, random: () => number, cuts: number): Uint8Array[] {
  const points = [
    ...new Set(Array.from({ length: cuts }, () => Math.floor(random() * bytes.length))),
  ]
    .filter((p) => p > 0).sort((a, b) => a - b);
  const pieces: Uint8Array[] = [];
  let from = 0;
  for (const p of [...points, bytes.length]) {
    pieces.push(bytes.subarray(from, p));
    from = p;
  }
  return pieces;
}

/** Writes the pieces with a pause between them, so that they arrive as separate reads. */
async function writePieces(wire: Wire, pieces: Uint8Array[]): Promise<void> {
  for (let i = 0; i < pieces.length; i++) {
    if (i > 0) await delay(2);
    await wire.write(pieces[i]);
  }
}

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** `size` bytes of a fixed pseudo-random sequence. */
function data(size: number, seed = 1): Uint8Array<ArrayBuffer> {
  const random = prng(seed);
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (random() * 256) | 0;
  return out;
}

/** `bytes` as a stream of `chunk`-byte pieces. */
function streamOf(bytes: Uint8Array, chunk = 64 * 1024): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= bytes.length) return controller.close();
      controller.enqueue(bytes.slice(offset, offset + chunk));
      offset += chunk;
    },
  });
}

/** How a malformed answer surfaced: a failed attempt, or (mid-body) a failed stream. */
async function malformedDetail(result: AttemptResult, bodyFailures: string[]): Promise<string> {
  if (!result.ok) {
    assert.equal(result.failure.kind, "maybe-sent");
    return result.failure.detail;
  }
  await assert.rejects(asResponse(result.value).arrayBuffer());
  assert.equal(bodyFailures.length, 1, "the backend is blamed once");
  return bodyFailures[0];
}

// ---------------------------------------------------------------------------------------------
// Pass-through, framing, keep-alive
// ---------------------------------------------------------------------------------------------

Deno.test("send() passes a gzip body through byte-identical with Content-Encoding, Content-Length and ETag", async () => {
  const small = gzipSync(encoder.encode("compressible text ".repeat(1200)));
  const large = gzipSync(data(200_000)); // random bytes: larger than 64 KiB compressed too
  await using backend = await startTestBackend((req) => {
    const body = new URL(req.url).pathname === "/large" ? large : small;
    return new Response(new Uint8Array(body), {
      headers: { "content-encoding": "gzip", etag: '"v1"', "content-type": "text/plain" },
    });
  });
  await using t = transport();
  for (const [path, expected] of [["/small", small], ["/large", large]] as const) {
    const response = ok(
      await send(t, backend.url, path, request("GET", { "accept-encoding": "gzip" })),
    );
    assert.equal(response.headers.get("content-encoding"), "gzip");
    assert.equal(response.headers.get("content-length"), String(expected.length));
    assert.equal(response.headers.get("etag"), '"v1"');
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), new Uint8Array(expected));
  }
});

Deno.test("send() reuses a kept-alive connection, most recently released first", async () => {
  await using server = rawServer(async (conn, id) => {
    const wire = new Wire(conn);
    while ((await wire.head()) !== null) await wire.write(reply(String(id)));
  });
  await using t = transport();
  for (let i = 0; i < 5; i++) assert.equal(await ok(await send(t, server.url)).text(), "1");
  assert.deepEqual(t.stats(server.url), { open: 1, idle: 1, connects: 1, reuses: 4, waiting: 0 });
  // Two at once need two connections; the one released last is taken next (LIFO).
  const released: string[] = [];
  await Promise.all([0, 1].map(async () => {
    const text = await ok(await send(t, server.url)).text();
    released.push(text);
  }));
  assert.equal(t.stats(server.url).open, 2);
  assert.equal(await ok(await send(t, server.url)).text(), released[1]);
});

Deno.test("send() keeps at most maxIdlePerOrigin idle connections", async () => {
  await using backend = await startTestBackend(() => new Response("ok"));
  await using t = transport({ maxIdlePerOrigin: 1 });
  const results = await Promise.all([0, 1, 2].map(() => send(t, backend.url)));
  for (const result of results) assert.equal(await ok(result).text(), "ok");
  assert.equal(t.stats(backend.url).idle, 1);
  assert.equal(t.stats(backend.url).open, 1);
});

Deno.test("send() keeps every released connection idle by default: no cap to close them under load", async () => {
  // More requests at once than a fixed cap of 128 would keep: a cap below the concurrency closed
  // and reopened connections all the time at 2,000 client connections.
  const concurrent = 150;
  let arrived = 0;
  const all = Promise.withResolvers<void>();
  await using backend = await startTestBackend(async () => {
    if (++arrived === concurrent) all.resolve();
    await all.promise;
    return new Response("ok");
  });
  await using t = transport();
  const results = await Promise.all(
    Array.from({ length: concurrent }, () => send(t, backend.url)),
  );
  for (const result of results) assert.equal(await ok(result).text(), "ok");
  assert.deepEqual(t.stats(backend.url), {
    open: concurrent,
    idle: concurrent,
    connects: concurrent,
    reuses: 0,
    waiting: 0,
  });
});

Deno.test("send() gives HEAD, 204 and 304 no body even when their headers claim a length", async () => {
  const answers: Record<string, Uint8Array> = {
    HEAD: encoder.encode("HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"),
    "/204": encoder.encode("HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n"),
    "/304": encoder.encode("HTTP/1.1 304 Not Modified\r\ncontent-length: 1234\r\n\r\n"),
    "/205": encoder.encode("HTTP/1.1 205 Reset Content\r\ncontent-length: 0\r\n\r\n"),
  };
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    for (let head = await wire.head(); head !== null; head = await wire.head()) {
      const [method, target] = head.split(" ");
      await wire.write(answers[method] ?? answers[target] ?? reply("next"));
    }
  });
  await using t = transport();
  for (
    const [method, target, status] of [["HEAD", "/", 200], ["GET", "/204", 204], [
      "GET",
      "/304",
      304,
    ], ["GET", "/205", 205]] as const
  ) {
    const response = ok(await send(t, server.url, target, request(method)));
    assert.equal(response.status, status);
    assert.equal(response.body, null);
    // The connection is still in step: the next answer is the next request's.
    assert.equal(await ok(await send(t, server.url, "/next")).text(), "next");
  }
  assert.equal(server.connections(), 1);
});

Deno.test("send() reads a close-delimited body to EOF and does not reuse the connection", async () => {
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    if ((await wire.head()) === null) return;
    await wire.write("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end");
    await delay(5);
    await wire.write(" of the connection");
    conn.close();
  });
  await using t = transport();
  for (let i = 0; i < 2; i++) {
    const response = ok(await send(t, server.url));
    assert.equal(await response.text(), "until the end of the connection");
  }
  assert.equal(server.connections(), 2);
  assert.equal(t.stats(server.url).open, 0);
});

Deno.test("send() does not reuse a connection with bytes left after the response", async () => {
  await using server = rawServer(async (conn, id) => {
    const wire = new Wire(conn);
    for (let n = 0; (await wire.head()) !== null; n++) {
      // The first answer comes with a second, unasked-for one in the same write.
      await wire.write(n === 0 ? concat([reply(`one ${id}`), reply("smuggled")]) : reply("two"));
    }
  });
  await using t = transport();
  assert.equal(await ok(await send(t, server.url)).text(), "one 1");
  assert.equal(await ok(await send(t, server.url)).text(), "one 2");
  assert.equal(server.connections(), 2);
});

Deno.test("send() never hands bytes past a long body to the next request: the connection is closed and reported", async () => {
  // Up to 64 KiB are read whole past the connection's first read; more are streamed. Sizes
  // around each buffer's length (16 and 64 KiB) and their multiples.
  for (
    const size of [20_000, 30_000, 40_000, 60_000, 65_536, 100_000, 131_072, 147_456, 200_000]
  ) {
    const body = "x".repeat(size);
    let answered = 0;
    await using server = rawServer(async (conn) => {
      const wire = new Wire(conn);
      while ((await wire.head()) !== null) {
        // A wrong Content-Length, or an error page after a complete answer: one write.
        const first = answered++ === 0;
        await wire.write(first ? concat([reply(body), reply("smuggled")]) : reply("two"));
      }
    });
    const extra: [string, number][] = [];
    await using t = transport({
      maxConnsPerOrigin: 1,
      onExtraBytes: (origin, count) => extra.push([origin, count]),
    });
    // The second request waits for the only connection, which the first releases to it.
    const [first, second] = [send(t, server.url), send(t, server.url)];
    assert.equal((await ok(await first).text()).length, size, `${size}: the whole body`);
    assert.equal(await ok(await second).text(), "two", `${size}: the second request's own answer`);
    assert.equal(server.connections(), 2, `${size}: the first connection was not reused`);
    assert.deepEqual(extra, [[server.url, reply("smuggled").length]], `${size}: reported`);
  }
});
Deno.test("send() skips 1xx responses other than 101", async () => {
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    while ((await wire.head()) !== null) {
      await wire.write("HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n");
      await wire.write("HTTP/1.1 100 Continue\r\n\r\n");
      await wire.write(reply("final", 201));
    }
  });
  await using t = transport();
  const response = ok(await send(t, server.url));
  assert.equal(response.status, 201);
  assert.equal(await response.text(), "final");
  assert.equal(response.headers.get("link"), null);
});

Deno.test("send() writes the method and target exactly as received", async () => {
  const lines: string[] = [];
  const heads: string[] = [];
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    for (let head = await wire.head(); head !== null; head = await wire.head()) {
      lines.push(head.split("\r\n")[0]);
      heads.push(head);
      await wire.write(reply("ok"));
    }
  });
  await using t = transport();
  const targets = ["/a/../b", "/a/%2e%2e/b", "/a\\b", "/café?q=../..", "//double", "/a/./b?x=%zz"];
  for (const target of targets) {
    assert.equal(await ok(await send(t, server.url, target)).text(), "ok");
  }
  assert.equal(await ok(await send(t, server.url, "/x", request("purge"))).text(), "ok");
  assert.deepEqual(lines, [...targets.map((p) => `GET ${p} HTTP/1.1`), "purge /x HTTP/1.1"]);
  // Host first and as given; the caller's framing replaced by the transport's own.
  const posted = ok(
    await send(
      t,
      server.url,
      "/p",
      request("POST", {
        host: "example.test",
        "transfer-encoding": "chunked",
        "x-b": "caf\u00e9",
        connection: "x-b",
      }, "body"),
    ),
  );
  await posted.body?.cancel();
  const head = heads.at(-1)!.split("\r\n");
  assert.equal(head[1], "host: example.test");
  assert.ok(head.includes("content-length: 4"));
  // Header values are byte strings: U+00E9 went out as the one byte 0xE9 (not UTF-8's two),
  // which the backend's UTF-8 decoding shows as U+FFFD.
  assert.ok(head.includes("x-b: caf\uFFFD"));
  assert.ok(!head.some((l) => /^(transfer-encoding|connection):/i.test(l)));
});

Deno.test("send() refuses a header value with CR, LF or NUL, or a bad name, and sends nothing", async () => {
  await using server = rawServer(async (conn) => await untilClosed(new Wire(conn)));
  await using t = transport();
  const cases: [HeaderPairs, RegExp][] = [
    // Headers cannot hold these; a caller's own header list could.
    ...["a\r\nx-injected: 1", "a\nb", "a\0b"].map((value): [HeaderPairs, RegExp] => [
      [["x-bad", value]],
      /CR, LF or NUL in x-bad/,
    ]),
    ...["x bad", "x:y", "a\r\nb", ""].map((name): [HeaderPairs, RegExp] => [
      [[name, "1"]],
      /invalid header name/,
    ]),
    [[["host", "a\r\nx-injected: 1"]], /CR, LF or NUL in host/],
  ];
  for (const [headers, why] of cases) {
    const result = await t.send(
      server.url,
      `${server.url}/`,
      { method: "GET", headers, body: null },
      NEVER,
      OPTIONS,
    );
    assert.equal(result.ok, false);
    if (!result.ok) {
      assert.equal(result.failure.kind, "connect");
      assert.match(result.failure.detail, why);
    }
  }
  assert.equal(server.connections(), 0);
});

// ---------------------------------------------------------------------------------------------
// Malformed responses
// ---------------------------------------------------------------------------------------------

const H = "HTTP/1.1 200 OK\r\n";
/** Malformed answers and why they are refused: at the head (always a failed attempt) or mid-body. */
const MALFORMED: { name: string; response: string; why: RegExp; at: "head" | "body" }[] = [
  {
    name: "status not digits",
    response: "HTTP/1.1 2OO OK\r\n\r\n",
    why: /bad status line/,
    at: "head",
  },
  {
    name: "HTTP/2 status line",
    response: "HTTP/2.0 200 OK\r\n\r\n",
    why: /bad status line/,
    at: "head",
  },
  { name: "not HTTP", response: "ICY 200 OK\r\n\r\n", why: /bad status line/, at: "head" },
  { name: "status 600", response: "HTTP/1.1 600 Odd\r\n\r\n", why: /status 600/, at: "head" },
  {
    name: "CL with TE",
    response: `${H}content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n`,
    why: /Content-Length with Transfer-Encoding/,
    at: "head",
  },
  {
    name: "different CLs",
    response: `${H}content-length: 5\r\ncontent-length: 6\r\n\r\nhello`,
    why: /conflicting Content-Length/,
    at: "head",
  },
  {
    name: "different CLs in a list",
    response: `${H}content-length: 5, 6\r\n\r\nhello`,
    why: /conflicting Content-Length/,
    at: "head",
  },
  {
    name: "CL 5x",
    response: `${H}content-length: 5x\r\n\r\nhello`,
    why: /bad Content-Length/,
    at: "head",
  },
  {
    name: "CL +5",
    response: `${H}content-length: +5\r\n\r\nhello`,
    why: /bad Content-Length/,
    at: "head",
  },
  {
    name: "CL -1",
    response: `${H}content-length: -1\r\n\r\n`,
    why: /bad Content-Length/,
    at: "head",
  },
  {
    name: "CL empty",
    response: `${H}content-length:\r\n\r\n`,
    why: /bad Content-Length/,
    at: "head",
  },
  {
    name: "TE gzip",
    response: `${H}transfer-encoding: gzip\r\n\r\nxx`,
    why: /only chunked/,
    at: "head",
  },
  {
    name: "TE gzip, chunked",
    response: `${H}transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
    why: /only chunked/,
    at: "head",
  },
  {
    name: "TE chunked twice",
    response: `${H}transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n`,
    why: /only chunked/,
    at: "head",
  },
  {
    name: "TE in HTTP/1.0",
    response: "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    why: /HTTP\/1\.0/,
    at: "head",
  },
  {
    name: "head over 64 KiB",
    response: `${H}x-big: ${"a".repeat(70_000)}\r\n\r\n`,
    why: /head larger than 64 KiB/,
    at: "head",
  },
  {
    name: "101 header fields",
    response: `${H}${"x-f: v\r\n".repeat(101)}content-length: 0\r\n\r\n`,
    why: /more than 100 header fields/,
    at: "head",
  },
  {
    name: "space before colon",
    response: `${H}x-a : b\r\n\r\n`,
    why: /whitespace before a colon/,
    at: "head",
  },
  { name: "obs-fold", response: `${H}x-a: b\r\n c\r\n\r\n`, why: /obs-fold/, at: "head" },
  { name: "bad name", response: `${H}x(a): b\r\n\r\n`, why: /invalid header name/, at: "head" },
  {
    name: "no colon",
    response: `${H}garbage\r\n\r\n`,
    why: /without a name and colon/,
    at: "head",
  },
  {
    name: "control character",
    response: `${H}x-a: b\x01c\r\n\r\n`,
    why: /control character/,
    at: "head",
  },
  { name: "NUL", response: `${H}x-a: b\x00c\r\n\r\n`, why: /control character/, at: "head" },
  { name: "bare CR", response: `${H}x-a: b\rc: d\r\n\r\n`, why: /control character/, at: "head" },
  {
    name: "101",
    response: "HTTP/1.1 101 Switching Protocols\r\n\r\n",
    why: /unexpected 101/,
    at: "head",
  },
  {
    name: "endless 1xx",
    response: "HTTP/1.1 103 Early Hints\r\n\r\n".repeat(40),
    why: /too many 1xx/,
    at: "head",
  },
  {
    name: "short CL body",
    response: `${H}content-length: 10\r\n\r\nabc`,
    why: /connection closed mid-body/,
    at: "head",
  },
  {
    name: "chunk size not hex",
    response: `${H}transfer-encoding: chunked\r\n\r\nzz\r\n`,
    why: /bad chunk size/,
    at: "body",
  },
  {
    name: "chunk size too large",
    response: `${H}transfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n`,
    why: /chunk size too large/,
    at: "body",
  },
  {
    name: "chunk without CRLF",
    response: `${H}transfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n`,
    why: /not followed by CRLF/,
    at: "body",
  },
  {
    name: "bare LF in a chunk line",
    response: `${H}transfer-encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n`,
    why: /bare LF/,
    at: "body",
  },
  {
    name: "chunk extension too long",
    response: `${H}transfer-encoding: chunked\r\n\r\n3;${"x".repeat(5000)}\r\nabc\r\n0\r\n\r\n`,
    why: /chunk size line too long/,
    at: "body",
  },
  {
    name: "trailers too large",
    response: `${H}transfer-encoding: chunked\r\n\r\n0\r\n${
      `x-t: ${"a".repeat(1000)}\r\n`.repeat(20)
    }\r\n`,
    why: /trailers too large/,
    at: "body",
  },
  {
    name: "closed mid-chunk",
    response: `${H}transfer-encoding: chunked\r\n\r\n5\r\nab`,
    why: /closed the connection mid-body/,
    at: "body",
  },
];

/** A backend that answers every request with `response` (in pieces), closing after when asked. */
function answering(response: Uint8Array, random: (() => number) | undefined, close: boolean) {
  return rawServer(async (conn) => {
    (conn as Deno.TcpConn).setNoDelay(true);
    const wire = new Wire(conn);
    while ((await wire.head()) !== null) {
      await writePieces(wire, random === undefined ? [response] : split(response, random, 4));
      if (close) return conn.close();
    }
  });
}

Deno.test("send() fails a malformed answer as maybe-sent, naming why, whole or split at random points", async () => {
  const random = prng(12);
  for (const c of MALFORMED) {
    const bytes = latin1Bytes(c.response);
    const closes = c.name.startsWith("closed") || c.name.startsWith("short");
    for (const pieces of [undefined, random, random, random]) {
      await using server = answering(bytes, pieces, closes);
      await using t = transport();
      const bodyFailures: string[] = [];
      const result = await send(
        t,
        server.url,
        "/",
        request("GET", {}, null, (d) => bodyFailures.push(d)),
      );
      if (c.at === "head") assert.equal(result.ok, false, `${c.name}: a failed attempt`);
      const detail = await malformedDetail(result, bodyFailures);
      assert.match(detail, c.why, c.name);
      assert.equal(t.stats(server.url).open, 0, `${c.name}: connection discarded`);
    }
  }
});

Deno.test("send() parses valid answers split at random points and stays in step", async () => {
  const valid: [string, string][] = [
    [
      `${H}transfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n`,
      "abcde",
    ],
    ["HTTP/1.1 200 OK\ncontent-length: 2\n\nok", "ok"],
    [`${H}content-length: 2\r\ncontent-length: 2, 2\r\n\r\nok`, "ok"],
    ["HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok", "ok"],
    ["HTTP/1.1 103 Early\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", "ok"],
    [`${H}x-a: caf\u00e9\r\ncontent-length: 0\r\n\r\n`, ""],
  ];
  const random = prng(7);
  for (const [response, body] of valid) {
    await using server = answering(latin1Bytes(response), random, false);
    await using t = transport();
    for (let i = 0; i < 4; i++) {
      const answer = ok(await send(t, server.url));
      assert.equal(await answer.text(), body, JSON.stringify(response));
      if (response.includes("x-a")) assert.equal(answer.headers.get("x-a"), "caf\u00e9");
    }
    assert.equal(server.connections(), 1, JSON.stringify(response));
  }
});

Deno.test("send() survives random corruptions of valid answers: a response or a clean failure", async () => {
  const valid = [
    `${H}content-length: 5\r\nx-a: b\r\n\r\nhello`,
    `${H}transfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nt: 1\r\n\r\n`,
    "HTTP/1.1 103 Hints\r\n\r\nHTTP/1.1 204 None\r\n\r\n",
    "HTTP/1.0 200 OK\r\n\r\nuntil close",
  ].map(latin1Bytes);
  const random = prng(2024);
  const special = [0, 9, 10, 13, 32, 44, 48, 58, 59, 127, 255];
  const corrupt = (bytes: Uint8Array): Uint8Array => {
    const out = [...bytes];
    for (let n = 1 + Math.floor(random() * 3); n > 0; n--) {
      const at = Math.floor(random() * out.length);
      const byte = special[Math.floor(random() * special.length)];
      const how = random();
      if (how < 0.4) out[at] = byte;
      else if (how < 0.7) out.splice(at, 0, byte);
      else if (how < 0.85) out.splice(at, 1);
      else out.length = at;
    }
    return new Uint8Array(out);
  };
  const answers: Uint8Array[] = [];
  for (let i = 0; i < 300; i++) answers.push(corrupt(valid[i % valid.length]));
  let next = 0;
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    if ((await wire.head()) === null) return;
    await writePieces(wire, split(answers[next++], random, 2));
    conn.close(); // every answer ends with the connection: nothing can wait for more
  });
  await using t = transport();
  const outcomes = { ok: 0, failed: 0, bodyFailed: 0 };
  for (let i = 0; i < answers.length; i++) {
    const result = await send(t, server.url, "/", request("GET", {}, null, () => {}));
    if (!result.ok) {
      assert.equal(result.failure.kind, "maybe-sent", result.failure.detail);
      outcomes.failed++;
      continue;
    }
    try {
      await asResponse(result.value).arrayBuffer();
      outcomes.ok++;
    } catch {
      outcomes.bodyFailed++;
    }
  }
  assert.equal(outcomes.ok + outcomes.failed + outcomes.bodyFailed, answers.length);
  assert.ok(outcomes.failed > 0 && outcomes.ok > 0, JSON.stringify(outcomes));
  assert.equal(t.stats(server.url).open, 0);
});

// ---------------------------------------------------------------------------------------------
// Timeouts and failures mid-body
// ---------------------------------------------------------------------------------------------

Deno.test("send() errors a stalled body after readTimeout, tells onBodyFailure, and the next request succeeds", async () => {
  await using server = rawServer(async (conn, id) => {
    const wire = new Wire(conn);
    if ((await wire.head()) === null) return;
    if (id === 1) {
      await wire.write(`HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n${"x".repeat(1000)}`);
      return await stall(wire);
    }
    await wire.write(reply("fine"));
    await untilClosed(wire);
  });
  await using t = transport();
  const failures: string[] = [];
  const result = await send(t, server.url, "/", request("GET", {}, null, (d) => failures.push(d)), {
    readTimeout: 200,
  });
  const response = ok(result);
  assert.equal(response.headers.get("content-length"), "100000");
  await assert.rejects(response.arrayBuffer(), /read timeout after 200ms/);
  assert.deepEqual(failures, ["read timeout after 200ms"]);
  assert.equal(t.stats(server.url).open, 0);
  assert.equal(
    await ok(await send(t, server.url, "/", request(), { readTimeout: 200 })).text(),
    "fine",
  );
});

Deno.test("send() fails the attempt when a small body stalls before it is read whole", async () => {
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    if ((await wire.head()) === null) return;
    await wire.write(`HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n${"x".repeat(1000)}`);
    await stall(wire);
  });
  await using t = transport();
  const failures: string[] = [];
  const result = await send(t, server.url, "/", request("GET", {}, null, (d) => failures.push(d)), {
    readTimeout: 200,
  });
  assert.deepEqual(result, {
    ok: false,
    failure: { kind: "maybe-sent", detail: "read timeout after 200ms" },
  });
  assert.deepEqual(failures, [], "a failed attempt, not a failed body");
});

Deno.test("send() errors a body the backend cuts off, and a client cancel blames nobody", async () => {
  await using server = rawServer(async (conn, id) => {
    const wire = new Wire(conn);
    if ((await wire.head()) === null) return;
    await wire.write(`HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n${"x".repeat(70_000)}`);
    if (id === 1) return conn.close();
    await untilClosed(wire);
  });
  await using t = transport();
  const failures: string[] = [];
  const cut = ok(await send(t, server.url, "/", request("GET", {}, null, (d) => failures.push(d))));
  await assert.rejects(cut.arrayBuffer(), /closed the connection mid-body/);
  assert.deepEqual(failures, ["backend closed the connection mid-body"]);
  const cancelled = ok(
    await send(t, server.url, "/", request("GET", {}, null, (d) => failures.push(d))),
  );
  const reader = cancelled.body!.getReader();
  assert.ok((await reader.read()).value!.length > 0);
  await reader.cancel();
  assert.equal(failures.length, 1, "the client's cancel is not the backend's failure");
  assert.equal(t.stats(server.url).open, 0);
});

Deno.test("send() gives up waiting for headers after timeout", async () => {
  await using server = rawServer(async (conn) => await stall(new Wire(conn)));
  await using t = transport();
  const result = await send(t, server.url, "/", request(), { timeout: 150 });
  assert.deepEqual(result, {
    ok: false,
    failure: { kind: "timeout", detail: "no response headers within 150ms" },
  });
  assert.equal(t.stats(server.url).open, 0);
});

Deno.test("send() ends the attempt as client-gone when the client signal aborts", async () => {
  await using server = rawServer(async (conn) => await untilClosed(new Wire(conn)));
  await using t = transport();
  const client = new AbortController();
  const pending = send(t, server.url, "/", request(), {}, client.signal);
  await waitFor(() => server.connections() === 1);
  client.abort();
  assert.deepEqual(await pending, {
    ok: false,
    failure: { kind: "client-gone", detail: "client disconnected" },
  });
  assert.equal(t.stats(server.url).open, 0);
});

Deno.test("send() fails as connect after connectTimeout when the connect hangs", async () => {
  await using hanging = await hangingConnectUrl();
  await using t = transport();
  const result = await send(t, hanging.url, "/", request("POST", {}, "x"), {
    connectTimeout: 200,
    timeout: 10_000,
  });
  assert.deepEqual(result, {
    ok: false,
    failure: { kind: "connect", detail: "connect timeout after 200ms", timedOut: true },
  });
});

Deno.test("send() fails as connect when the backend refuses", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${listener.addr.port}`;
  listener.close();
  await using t = transport();
  assert.deepEqual(await send(t, url), {
    ok: false,
    failure: { kind: "connect", detail: "connection refused" },
  });
});

// ---------------------------------------------------------------------------------------------
// Kept-alive connections the backend closes (the idle-connection race)
// ---------------------------------------------------------------------------------------------

Deno.test("send(): 100 sequential GETs succeed when the backend closes every kept-alive connection after answering", async () => {
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    if ((await wire.head()) === null) return;
    await wire.write(reply("ok")); // keep-alive by default, then closed anyway
    conn.close();
  });
  await using t = transport();
  for (let i = 0; i < 100; i++) {
    assert.equal(await ok(await send(t, server.url, `/${i}`)).text(), "ok", `request ${i}`);
    // Half the time without waiting for the FIN: the request races the close.
    if (i % 2 === 0) await delay(1);
  }
});

Deno.test("send() resends an idempotent request once on a new connection, never a POST or a stream", async () => {
  const seen: string[] = [];
  // The first request on a connection is answered; a second one is read, then the connection
  // closed without an answer: a kept-alive connection the backend dropped as it was reused.
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    for (let n = 0;; n++) {
      const head = await wire.head();
      if (head === null) return;
      const line = head.split("\r\n")[0];
      const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
      if (length > 0) await wire.bytes(length);
      else if (/transfer-encoding: chunked/i.test(head)) await wire.chunked();
      seen.push(line);
      if (n > 0) return conn.close();
      await wire.write(reply("ok"));
    }
  });
  await using t = transport();
  const warm = async () => assert.equal(await ok(await send(t, server.url, "/warm")).text(), "ok");

  await warm();
  const post = await send(t, server.url, "/post", request("POST", {}, "once"));
  assert.deepEqual(post, {
    ok: false,
    failure: {
      kind: "maybe-sent",
      detail: "reused connection closed by the backend before any response",
    },
  });
  await warm();
  const stream = await send(t, server.url, "/put", request("PUT", {}, streamOf(data(10))));
  assert.equal(stream.ok, false, "a stream cannot be replayed");
  await warm();
  assert.equal(await ok(await send(t, server.url, "/get")).text(), "ok");
  assert.deepEqual(seen.filter((l) => l.includes("/post")), ["POST /post HTTP/1.1"]);
  assert.deepEqual(seen.filter((l) => l.includes("/put")), ["PUT /put HTTP/1.1"]);
  assert.deepEqual(seen.filter((l) => l.includes("/get")), [
    "GET /get HTTP/1.1",
    "GET /get HTTP/1.1",
  ]);
});

// ---------------------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------------------

Deno.test("send() streams 5 MiB chunked both ways, checked by SHA-256", async () => {
  const size = 5 * 1024 * 1024;
  const upload = data(size, 3);
  const download = data(size, 4);
  await using backend = await startTestBackend(async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/upload") {
      return new Response(
        `${req.headers.get("transfer-encoding")} ${await sha256(
          new Uint8Array(await req.arrayBuffer()),
        )}`,
      );
    }
    if (path === "/echo") return new Response(req.body);
    return new Response(streamOf(download, 50_000)); // no length: chunked
  });
  await using t = transport();
  const up = ok(await send(t, backend.url, "/upload", request("POST", {}, streamOf(upload))));
  assert.equal(await up.text(), `chunked ${await sha256(upload)}`);
  const down = ok(await send(t, backend.url, "/download"));
  assert.equal(down.headers.get("transfer-encoding"), "chunked");
  assert.equal(await sha256(new Uint8Array(await down.arrayBuffer())), await sha256(download));
  const echo = ok(
    await send(t, backend.url, "/echo", request("POST", {}, streamOf(upload, 30_000))),
  );
  assert.equal(await sha256(new Uint8Array(await echo.arrayBuffer())), await sha256(upload));
});

Deno.test("send() streams a body with its declared Content-Length, and refuses one that does not match it", async () => {
  const received: string[] = [];
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    for (let head = await wire.head(); head !== null; head = await wire.head()) {
      const length = Number(/content-length: (\d+)/.exec(head)![1]);
      try {
        received.push(decoder.decode(await wire.bytes(length)));
        await wire.write(reply("ok"));
      } catch {
        return void received.push("incomplete");
      }
    }
  });
  await using t = transport();
  const body = (text: string) => streamOf(encoder.encode(text), 3);
  const exact = await send(
    t,
    server.url,
    "/",
    request("POST", { "content-length": "10" }, body("0123456789")),
  );
  assert.equal(await ok(exact).text(), "ok");
  for (const text of ["01234", "0123456789abc"]) {
    const result = await send(
      t,
      server.url,
      "/",
      request("POST", { "content-length": "10" }, body(text)),
    );
    assert.equal(result.ok, false);
    if (!result.ok) {
      assert.equal(result.failure.kind, "client-gone");
      assert.match(result.failure.detail, /(shorter|longer) than its Content-Length/);
    }
  }
  await waitFor(() => received.length === 3);
  assert.deepEqual(received, ["0123456789", "incomplete", "incomplete"]);
});

Deno.test("send() with Expect: 100-continue sends the body only after the 100", async () => {
  const early: boolean[] = [];
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    const head = await wire.head();
    if (head === null) return;
    assert.match(head, /expect: 100-continue/i);
    // Watch for body bytes while holding the 100 back for a while.
    let arrived = (await wire.peek(0)) > 0;
    const reading = wire.more().then((more) => (arrived = true, more));
    await delay(300);
    early.push(arrived);
    await wire.write("HTTP/1.1 100 Continue\r\n\r\n");
    await reading;
    const body = await wire.bytes(Number(/content-length: (\d+)/.exec(head)![1]));
    await wire.write(reply(`got ${decoder.decode(body)}`));
    await untilClosed(wire);
  });
  await using t = transport();
  const result = await send(
    t,
    server.url,
    "/",
    request("POST", { expect: "100-continue" }, "payload"),
  );
  assert.equal(await ok(result).text(), "got payload");
  assert.deepEqual(early, [false], "nothing of the body before the 100");
});

Deno.test("send() with Expect: 100-continue sends the body anyway when no 100 comes (after ~1 s, as curl)", async () => {
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    const head = await wire.head();
    if (head === null) return;
    const body = await wire.bytes(Number(/content-length: (\d+)/.exec(head)![1]));
    await wire.write(reply(`got ${decoder.decode(body)}`));
    await untilClosed(wire);
  });
  await using t = transport();
  const result = await send(t, server.url, "/", request("PUT", { expect: "100-continue" }, "late"));
  assert.equal(await ok(result).text(), "got late");
  assert.equal(t.stats(server.url).idle, 1, "a body sent in full leaves the connection usable");
});

Deno.test("send() with Expect: 100-continue relays a final answer and never sends the body", async () => {
  const bodyBytes: number[] = [];
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    if ((await wire.head()) === null) return;
    await wire.write(reply("no", 417));
    let n = await wire.peek(0);
    for (let i = 0; i < 10_000 && (await wire.more()); i++) n = await wire.peek(0);
    bodyBytes.push(n);
  });
  await using t = transport();
  const result = await send(
    t,
    server.url,
    "/",
    request("PUT", { expect: "100-continue" }, streamOf(data(100_000))),
  );
  const response = ok(result);
  assert.equal(response.status, 417);
  assert.equal(await response.text(), "no");
  assert.equal(t.stats(server.url).open, 0, "the unsent body leaves the connection unusable");
  await waitFor(() => bodyBytes.length === 1);
  assert.deepEqual(bodyBytes, [0]);
});

Deno.test("send() relays an early answer while the body is still being written", async () => {
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    if ((await wire.head()) === null) return;
    await wire.write(reply("too big", 413, ["connection: close"]));
    await untilClosed(wire);
  });
  await using t = transport();
  // A body that would never end: only the early answer can end this request.
  let sent = 0;
  const endless = new ReadableStream<Uint8Array>({
    pull(controller) {
      sent++;
      controller.enqueue(new Uint8Array(16 * 1024));
    },
  });
  const response = ok(await send(t, server.url, "/", request("POST", {}, endless)));
  assert.equal(response.status, 413);
  assert.equal(await response.text(), "too big");
  assert.ok(sent > 0);
  assert.equal(t.stats(server.url).open, 0);
});

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

Deno.test("send() reaches an HTTPS backend through a private CA, and refuses it without", async () => {
  await using pki = await Pki.create();
  const ca = await pki.ca("native-ca");
  const leaf = await pki.leaf("native-backend", ca);
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", cert: leaf.cert, key: leaf.key, onListen() {} },
    (req) => new Response(`tls ${new URL(req.url).pathname}`),
  );
  try {
    const origin = `https://127.0.0.1:${server.addr.port}`;
    await using trusting = transport({ tls: { ca: ca.cert } });
    assert.equal(await ok(await send(trusting, origin, "/x")).text(), "tls /x");
    assert.equal(await ok(await send(trusting, origin, "/y")).text(), "tls /y");
    assert.deepEqual(trusting.stats(origin), {
      open: 1,
      idle: 1,
      connects: 1,
      reuses: 1,
      waiting: 0,
    });
    await using doubting = transport();
    const refused = await send(doubting, origin);
    assert.equal(refused.ok, false);
    if (!refused.ok) {
      assert.equal(refused.failure.kind, "connect", "nothing was sent");
      assert.match(refused.failure.detail, /TLS handshake failed: .*(UnknownIssuer|certificate)/i);
    }
  } finally {
    await server.shutdown();
  }
});

/**
 * An HTTPS backend that requires a client certificate signed by `ca`. Deno.listenTls cannot ask
 * for one (its rustls config is built `with_no_client_auth()` on 2.9.6), so this is node:tls
 * with `requestCert`, which Deno runs. It answers every request on a connection with `ok`.
 */
async function mtlsBackend(leaf: { cert: string; key: string }, ca: string) {
  const sockets = new Set<nodeTls.TLSSocket>();
  const server = nodeTls.createServer(
    { key: leaf.key, cert: leaf.cert, ca: [ca], requestCert: true, rejectUnauthorized: true },
    (socket) => {
      sockets.add(socket);
      socket.on(
        "data",
        () => socket.write(reply(`hello ${socket.getPeerCertificate().subject.CN}`)),
      );
      socket.on("error", () => {});
      socket.on("close", () => sockets.delete(socket));
    },
  );
  server.on("tlsClientError", () => {});
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `https://127.0.0.1:${(server.address() as { port: number }).port}`,
    async [Symbol.asyncDispose]() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

Deno.test("send() shows its client certificate to an mTLS backend", async () => {
  await using pki = await Pki.create();
  const ca = await pki.ca("mtls-ca");
  const backendLeaf = await pki.leaf("mtls-backend", ca);
  const clientLeaf = await pki.leaf("mtls-client", ca);
  await using backend = await mtlsBackend(backendLeaf, ca.cert);
  await using withCert = transport({
    tls: { ca: ca.cert, cert: clientLeaf.cert, key: clientLeaf.key },
  });
  assert.equal(await ok(await send(withCert, backend.url)).text(), "hello mtls-client");
  assert.equal(await ok(await send(withCert, backend.url)).text(), "hello mtls-client");
  assert.equal(withCert.stats(backend.url).connects, 1);
  await using without = transport({ tls: { ca: ca.cert } });
  const refused = await send(without, backend.url);
  assert.equal(refused.ok, false);
  if (!refused.ok) assert.match(refused.failure.detail, /certificate/i);
});

// ---------------------------------------------------------------------------------------------
// Pool lifecycle
// ---------------------------------------------------------------------------------------------

Deno.test("retire() closes idle connections now and busy ones when their request finishes, keeping the counts", async () => {
  let closed = 0;
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    for (let head = await wire.head(); head !== null; head = await wire.head()) {
      if (head.startsWith("GET /slow")) {
        await wire.write(`HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n${"x".repeat(70_000)}`);
        await wire.head(); // the rest only when asked again (never): hold the body
        continue;
      }
      await wire.write(reply("ok"));
    }
    closed++;
  });
  await using t = transport();
  await Promise.all([0, 1, 2].map(async () => await ok(await send(t, server.url)).text()));
  assert.equal(t.stats(server.url).idle, 3);
  const slow = ok(await send(t, server.url, "/slow"));
  t.retire(server.url);
  // The counts stay: they are metrics counters, which must not go backwards.
  assert.deepEqual(t.stats(server.url), { open: 0, idle: 0, connects: 3, reuses: 1, waiting: 0 });
  assert.ok(await waitFor(() => closed === 2), "idle connections closed at once");
  const reader = slow.body!.getReader();
  assert.ok((await reader.read()).value!.length > 0, "the busy one still delivers");
  await reader.cancel();
  assert.ok(await waitFor(() => closed === 3), "and is closed when its request ends");
  // The origin starts afresh, on a new connection, counted on.
  assert.equal(await ok(await send(t, server.url)).text(), "ok");
  assert.equal(t.stats(server.url).connects, 4);
});

Deno.test("close() closes every connection, busy ones too, and later attempts fail", async () => {
  await using server = rawServer(async (conn) => {
    const wire = new Wire(conn);
    for (let head = await wire.head(); head !== null; head = await wire.head()) {
      if (head.startsWith("GET /slow")) {
        await wire.write(`HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n`);
      } else await wire.write(reply("ok"));
    }
  });
  const t = createNativeTransport();
  assert.equal(await ok(await send(t, server.url)).text(), "ok");
  const failures: string[] = [];
  const slow = ok(
    await send(t, server.url, "/slow", request("GET", {}, null, (d) => failures.push(d))),
  );
  await t.close();
  await assert.rejects(slow.text());
  assert.deepEqual(failures, [], "a shutdown is not the backend's failure");
  assert.deepEqual(await send(t, server.url), {
    ok: false,
    failure: { kind: "connect", detail: "transport closed" },
  });
});

Deno.test("idleTimeout closes connections left idle, and leaves no timer behind", async () => {
  await using backend = await startTestBackend(() => new Response("ok"));
  await using t = transport({ idleTimeout: 100 });
  assert.equal(await ok(await send(t, backend.url)).text(), "ok");
  assert.equal(t.stats(backend.url).idle, 1);
  assert.ok(await waitFor(() => t.stats(backend.url).open === 0, 3000));
  // The sanitizer fails the test if the sweep left a timer pending.
});

Deno.test("createNativeTransport() refuses bad options, naming the value", () => {
  assert.throws(() => createNativeTransport({ maxIdlePerOrigin: -1 }), /maxIdlePerOrigin.*-1/);
  assert.throws(() => createNativeTransport({ idleTimeout: 0 }), /idleTimeout.*0/);
  assert.throws(() => createNativeTransport({ maxConnsPerOrigin: 0 }), /maxConnsPerOrigin.*0/);
  assert.throws(() => createNativeTransport({ maxConnsPerOrigin: 1.5 }), /maxConnsPerOrigin.*1.5/);
  assert.throws(() => createNativeTransport({ tls: { cert: "x" } }), /cert and key/);
});

Deno.test("send() keeps at most maxConnectingPerOrigin connects in progress; a failed one fails its waiters", async () => {
  // A backend that accepts TCP but never answers the TLS handshake: each connect stays in
  // progress until the connect timeout.
  await using silent = rawServer(async () => {});
  const origin = silent.url.replace("http:", "https:");
  await using t = transport({ maxConnectingPerOrigin: 3 });
  const results = await Promise.all(
    Array.from({ length: 10 }, () => send(t, origin, "/", request(), { connectTimeout: 300 })),
  );
  assert.equal(silent.connections(), 3, "three connects, the other seven waited");
  for (const result of results) {
    assert.ok(!result.ok);
    assert.equal(result.failure.kind, "connect");
    assert.match(result.failure.detail, /connect timeout after 300ms/);
  }
});

Deno.test("send() does not let a connect that succeeded in time lose to its timeout after a long turn", async () => {
  await using backend = await startTestBackend(() => new Response("ok"));
  await using t = transport();
  const sending = send(t, backend.url, "/", request(), { connectTimeout: 50 });
  // A busy event loop: the connect completes during this turn, and its timer is due at its end.
  // (1 s, not just past the 50 ms: on a loaded machine the connect itself may take a while.)
  const until = performance.now() + 1000;
  while (performance.now() < until) { /* busy */ }
  assert.equal(await ok(await sending).text(), "ok");
});

/** A backend that holds every request until `release()`; counts requests in progress. */
async function holdingBackend() {
  const gate = Promise.withResolvers<void>();
  let inProgress = 0;
  let most = 0;
  const backend = await startTestBackend(async () => {
    most = Math.max(most, ++inProgress);
    await gate.promise;
    inProgress--;
    return new Response("ok");
  });
  return Object.assign(backend, {
    release: () => gate.resolve(),
    most: () => most,
    inProgress: () => inProgress,
  });
}

Deno.test("send() opens at most maxConnsPerOrigin connections; further requests wait for a released one", async () => {
  await using backend = await holdingBackend();
  await using t = transport({ maxConnsPerOrigin: 3 });
  const sending = Array.from({ length: 10 }, () => send(t, backend.url));
  assert.ok(await waitFor(() => backend.inProgress() === 3), "three requests reach the backend");
  assert.equal(t.stats(backend.url).waiting, 7, "the other seven wait in the transport");
  backend.release();
  for (const result of await Promise.all(sending)) assert.equal(await ok(result).text(), "ok");
  assert.equal(backend.most(), 3);
  const stats = t.stats(backend.url);
  assert.equal(stats.connects, 3, "released connections were handed to the waiting requests");
  assert.equal(stats.reuses, 7);
  assert.equal(stats.waiting, 0);
});

Deno.test("send() gives up waiting for a connection after the attempt's timeout: a connect failure marked timedOut", async () => {
  await using backend = await holdingBackend();
  await using t = transport({ maxConnsPerOrigin: 1 });
  const first = send(t, backend.url);
  assert.ok(await waitFor(() => backend.inProgress() === 1));
  const second = await send(t, backend.url, "/", request(), { timeout: 200 });
  assert.deepEqual(second, {
    ok: false,
    failure: {
      kind: "connect",
      detail: "no connection free within 200ms (1 open)",
      timedOut: true,
    },
  });
  assert.equal(t.stats(backend.url).waiting, 0, "it left the queue");
  backend.release();
  assert.equal(await ok(await first).text(), "ok");
});

Deno.test("send() waits for a connection in use when its own connect times out while the origin has open ones", async () => {
  // An HTTPS backend behind a TCP front: the first connection is piped through to it, later ones
  // are accepted but never answered, so their TLS handshake (part of the connect) times out, as
  // connects delivered late by a saturated balancer did.
  await using pki = await Pki.create();
  const ca = await pki.ca("queue-ca");
  const leaf = await pki.leaf("queue-backend", ca);
  const gate = Promise.withResolvers<void>();
  let answered = 0;
  const backend = Deno.serve(
    { port: 0, hostname: "127.0.0.1", cert: leaf.cert, key: leaf.key, onListen() {} },
    async (req) => {
      if (new URL(req.url).pathname === "/held") await gate.promise;
      return new Response(`answer ${++answered}`);
    },
  );
  try {
    await using front = rawServer(async (conn, id) => {
      if (id > 1) return; // closed by the front's disposal
      const inner = await Deno.connect({ hostname: "127.0.0.1", port: backend.addr.port });
      try {
        await Promise.allSettled([
          conn.readable.pipeTo(inner.writable),
          inner.readable.pipeTo(conn.writable),
        ]);
      } finally {
        try {
          inner.close();
        } catch { /* closed by its pipe */ }
      }
    });
    const origin = front.url.replace("http:", "https:");
    await using t = transport({ tls: { ca: ca.cert } });
    const held = send(t, origin, "/held");
    assert.ok(await waitFor(() => t.stats(origin).open === 1 && t.stats(origin).idle === 0));
    const waiting = send(t, origin, "/", request(), { connectTimeout: 200 });
    assert.ok(await waitFor(() => t.stats(origin).waiting === 1, 3000), "it joins the queue");
    gate.resolve();
    assert.equal(await ok(await held).text(), "answer 1");
    assert.equal(await ok(await waiting).text(), "answer 2", "served on the released connection");
    assert.equal(front.connections(), 2, "one connect timed out; no other was tried");
    assert.equal(t.stats(origin).connects, 1);
  } finally {
    gate.resolve();
    await backend.shutdown();
  }
});

Deno.test("send() fails the waiting requests when a connect times out and the origin has no connection open", async () => {
  await using silent = rawServer(async () => {});
  const origin = silent.url.replace("http:", "https:");
  await using t = transport({ maxConnectingPerOrigin: 1 });
  const results = await Promise.all(
    Array.from({ length: 4 }, () => send(t, origin, "/", request(), { connectTimeout: 200 })),
  );
  assert.equal(silent.connections(), 1, "a black-holed backend is not tried once per request");
  for (const result of results) {
    assert.ok(!result.ok);
    assert.deepEqual(result.failure, {
      kind: "connect",
      detail: "connect timeout after 200ms",
      timedOut: true,
    });
  }
});
