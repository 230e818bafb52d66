/**
 * @module
 * The native front end (lib/frontend_native.ts) on real sockets: the strict parser's refusals,
 * pipelining, keep-alive, bodies both ways, 100-continue, HEAD, the header and idle timeouts,
 * the connection cap, the PROXY protocol, TLS with ALPN, tunnels and drains.
 */

import assert from "node:assert/strict";
import { parseHead, parseResponses, Wire } from "./wire.ts";
import { parseCidr } from "../lib/cidr.ts";
import {
  type FrontendOptions,
  type FrontendServer,
  type NativeHandler,
  type NativeServeInfo,
  serveNative,
  switchProtocols,
} from "../lib/frontend_native.ts";
import { encodeProxyV1, encodeProxyV2 } from "../lib/proxy_protocol.ts";
import { canTunnel, openTunnel } from "../lib/tunnel_upstream.ts";
import { Pki } from "./pki.ts";
import {
  concat,
  delay,
  rawExchange,
  rawServer,
  readHead,
  sha256,
  within,
  writeAll,
} from "./helpers.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A handler's view of one request, recorded. */
interface Seen {
  method: string;
  url: string;
  headers: Headers;
  body: string;
  info: NativeServeInfo;
}

/** A front end on 127.0.0.1:0 whose default handler records requests and answers `ok <path>`. */
function start(
  options: Partial<FrontendOptions> = {},
  handler?: NativeHandler,
): FrontendServer & { seen: Seen[]; port: number } & AsyncDisposable {
  const seen: Seen[] = [];
  const server = serveNative(
    { hostname: "127.0.0.1", port: 0, ...options },
    handler ?? (async (req, info) => {
      const body = req.body === null ? "" : await new Response(req.body).text();
      seen.push({ method: req.method, url: req.url, headers: req.headers, body, info });
      return new Response(`ok ${new URL(req.url).pathname}`);
    }),
  );
  return Object.assign(server, {
    seen,
    port: server.addr.port,
    [Symbol.asyncDispose]: async () => {
      await server.drain(performance.now() + 2000);
    },
  });
}

const WAIT_MS = 3000;

/** Sends `request` raw; returns the responses and whether the server closed the connection. */
async function exchange(port: number, request: string | Uint8Array) {
  const { bytes, closed } = await rawExchange(port, request, WAIT_MS);
  return { responses: parseResponses(bytes), closed, raw: decoder.decode(bytes) };
}

/** Asserts the request was refused with `status` (400 by default), closed, never handled. */
async function assertRefused(request: string, what: string, status = 400) {
  await using server = start();
  const outcome = await exchange(server.port, request);
  assert.deepEqual(outcome.responses.map((r) => r.status), [status], `${what}: ${outcome.raw}`);
  assert.ok(outcome.closed, `${what}: connection left open`);
  assert.deepEqual(server.seen, [], `${what}: reached the handler`);
}

const GET = "GET / HTTP/1.1\r\nHost: ok\r\n";

Deno.test("serveNative() refuses CL with TE, bad or differing Content-Length and TE other than a final chunked", async () => {
  const cases = [
    "POST / HTTP/1.1\r\nHost: ok\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: ok\r\nContent-Length: 5, 6\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: ok\r\nContent-Length: +5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: ok\r\nContent-Length: -1\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nContent-Length: 0x5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: ok\r\nContent-Length: 1234567890123456\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.0\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    // Empty list elements, in one field or as a second one (hyper refuses them too).
    "POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: ,\r\n\r\n0\r\n\r\n",
  ];
  for (const request of cases) await assertRefused(request, JSON.stringify(request));
});

/** Sends `pieces` one write each, `gapMs` apart; returns the responses and who closed. */
async function exchangeInPieces(port: number, pieces: string[], gapMs = 20) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const timer = setTimeout(() => conn.close(), WAIT_MS);
  const chunks: Uint8Array[] = [];
  let closed = false;
  try {
    for (const piece of pieces) {
      await writeAll(conn, encoder.encode(piece));
      await delay(gapMs);
    }
    const buffer = new Uint8Array(16 * 1024);
    for (let i = 0; i < 1000; i++) {
      const n = await conn.read(buffer);
      if (n === null) {
        closed = true;
        break;
      }
      chunks.push(buffer.slice(0, n));
    }
  } catch {
    /* closed by the timer, or reset */
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed already */ }
  }
  return { responses: parseResponses(concat(chunks)), closed };
}

Deno.test("serveNative() judges empty lines before a request line across reads", async () => {
  await using server = start();
  const request = "GET /after HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n";
  // A CR that ends a read waits for the next byte: not an LF, so a bare CR (as in one write).
  const bareCr = await exchangeInPieces(server.port, ["\r", request]);
  assert.deepEqual(bareCr.responses.map((r) => r.status), [400]);
  assert.ok(bareCr.closed);
  // At most four empty lines in all, however many reads bring them.
  const many = await exchangeInPieces(server.port, [...Array(5).fill("\r\n"), request]);
  assert.deepEqual(many.responses.map((r) => r.status), [400]);
  // Up to four, split as they may be, are skipped.
  const few = await exchangeInPieces(server.port, ["\r", "\n\r\n", "\r", "\n", request]);
  assert.deepEqual(few.responses.map((r) => [r.status, r.body]), [[200, "ok /after"]]);
  assert.deepEqual(server.seen.map((r) => new URL(r.url).pathname), ["/after"]);
});

Deno.test("serveNative() refuses obs-fold, bare CR, control characters and invalid tokens", async () => {
  const cases = [
    `${GET}X-A: 1\r\n  folded\r\n\r\n`,
    `${GET}X-A: 1\r\n\tfolded\r\n\r\n`,
    `${GET}X-A: a\rb\r\n\r\n`,
    "GET / HTTP/1.1\rHost: ok\r\n\r\n",
    `${GET}X-A: a\x00b\r\n\r\n`,
    `${GET}X-A: a\x7fb\r\n\r\n`,
    `${GET}X-A: a\x01b\r\n\r\n`,
    `${GET}X A: 1\r\n\r\n`,
    `${GET}X-A : 1\r\n\r\n`,
    `${GET}X(A): 1\r\n\r\n`,
    `${GET}: 1\r\n\r\n`,
    `${GET}no colon\r\n\r\n`,
    "G(T / HTTP/1.1\r\nHost: ok\r\n\r\n",
    "GET  / HTTP/1.1\r\nHost: ok\r\n\r\n",
    "GET / x HTTP/1.1\r\nHost: ok\r\n\r\n",
    "GET /\x01 HTTP/1.1\r\nHost: ok\r\n\r\n",
    "GET / HTTP/1.1 \r\nHost: ok\r\n\r\n",
    "GET / http/1.1\r\nHost: ok\r\n\r\n",
    "GET x HTTP/1.1\r\nHost: ok\r\n\r\n",
    "GET * HTTP/1.1\r\nHost: ok\r\n\r\n",
    "GET ok:443 HTTP/1.1\r\nHost: ok\r\n\r\n",
    "\r\r\nGET / HTTP/1.1\r\nHost: ok\r\n\r\n",
  ];
  for (const request of cases) await assertRefused(request, JSON.stringify(request));
  await assertRefused("GET / HTTP/2.0\r\nHost: ok\r\n\r\n", "HTTP/2.0", 505);
  // A target in UTF-8 is read as UTF-8 (as Deno.serve); other bytes over 0x7F are refused.
  await using server = start({}, (req) => new Response(req.url));
  const latin1 = concat([
    encoder.encode("GET /caf"),
    new Uint8Array([0xe9]),
    encoder.encode(" HTTP/1.1\r\nHost: ok\r\n\r\n"),
  ]);
  const refused = await exchange(server.port, latin1);
  assert.deepEqual([refused.responses.map((r) => r.status), refused.closed], [[400], true]);
  const utf8 = await exchange(
    server.port,
    "GET /caf\u00e9/../x HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n",
  );
  assert.equal(utf8.responses[0].body, "http://ok/caf\u00e9/../x");
});

Deno.test("serveNative() refuses a missing, repeated or invalid Host and absolute-form naming another host", async () => {
  const cases = [
    "GET / HTTP/1.1\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: ok\r\nHost: ok\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: ok\r\nHost: evil\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: evil/admin?\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: user@ok\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: ok:99999\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: \r\n\r\n",
    "GET http://evil/ HTTP/1.1\r\nHost: ok\r\n\r\n",
    "GET http://ok:8080/ HTTP/1.1\r\nHost: ok\r\n\r\n",
    "GET http://user@ok/ HTTP/1.1\r\nHost: ok\r\n\r\n",
    "GET ftp://ok/ HTTP/1.1\r\nHost: ok\r\n\r\n",
  ];
  for (const request of cases) await assertRefused(request, JSON.stringify(request));
  // The same authority, in either case, is fine; the URL is the target as sent.
  await using server = start();
  const { responses } = await exchange(
    server.port,
    "GET http://OK:80/a?b HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n",
  );
  assert.deepEqual(responses.map((r) => r.status), [200]);
  assert.equal(server.seen[0].url, "http://OK:80/a?b"); // as sent, as Deno.serve
});

Deno.test("serveNative() refuses heads over 64 KiB and over 100 fields; accepts 100 fields", async () => {
  await assertRefused(`${GET}X-Big: ${"a".repeat(70 * 1024)}\r\n\r\n`, "70 KiB header");
  await assertRefused(
    `GET /${"a".repeat(70 * 1024)} HTTP/1.1\r\nHost: ok\r\n\r\n`,
    "70 KiB target",
  );
  const fields = (n: number) => Array.from({ length: n }, (_, i) => `X-${i}: ${i}\r\n`).join("");
  await assertRefused(`GET / HTTP/1.1\r\n${fields(100)}Host: ok\r\n\r\n`, "101 fields");
  await using server = start();
  const { responses } = await exchange(
    server.port,
    `GET / HTTP/1.1\r\n${fields(98)}Host: ok\r\nConnection: close\r\n\r\n`,
  );
  assert.deepEqual(responses.map((r) => r.status), [200]);
});

Deno.test("serveNative() closes the connection on malformed or oversized chunked framing; the body never completes", async () => {
  const bodies = [
    "5\nhello\r\n0\r\n\r\n", // bare LF after a size
    "5\r\nhello\n0\r\n\r\n", // bare LF after data
    "5\r\nhelloX\r\n0\r\n\r\n", // data longer than its size
    "g\r\nhello\r\n0\r\n\r\n", // not hex
    `5;${"e".repeat(5000)}\r\nhello\r\n0\r\n\r\n`, // extension over 4 KiB
    "10000000000000000\r\n", // size over 2^48
    "5;a\x00b\r\nhello\r\n0\r\n\r\n", // control character in an extension
  ];
  for (const body of bodies) {
    let failed = 0;
    await using server = start({}, async (req) => {
      try {
        await new Response(req.body).text();
      } catch {
        failed++;
      }
      return new Response("answered");
    });
    const outcome = await exchange(
      server.port,
      `POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n${body}${GET}\r\n`,
    );
    assert.ok(outcome.closed, JSON.stringify(body));
    assert.equal(failed, 1, JSON.stringify(body));
    // Nothing after the broken body is read as a request.
    assert.ok(outcome.responses.length <= 1, outcome.raw);
  }
});

Deno.test("serveNative() answers pipelined requests in order, reading each body exactly", async () => {
  await using server = start();
  const request = `GET /1 HTTP/1.1\r\nHost: ok\r\n\r\n` +
    `POST /2 HTTP/1.1\r\nHost: ok\r\nContent-Length: 5\r\n\r\nhello` +
    `POST /3 HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n` +
    `GET /4 HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n`;
  const outcome = await exchange(server.port, request);
  assert.deepEqual(outcome.responses.map((r) => r.body), ["ok /1", "ok /2", "ok /3", "ok /4"]);
  assert.deepEqual(server.seen.map((s) => s.body), ["", "hello", "abc", ""]);
  assert.ok(outcome.closed);
});

Deno.test("serveNative() keeps HTTP/1.1 alive, closes HTTP/1.0 unless asked, and honours Connection: close", async () => {
  await using server = start();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  try {
    for (let i = 0; i < 3; i++) {
      await writeAll(conn, encoder.encode(`GET /k${i} HTTP/1.1\r\nHost: ok\r\n\r\n`));
      const head = await readHead(conn);
      assert.match(head, /^HTTP\/1\.1 200 OK\r\n/);
      assert.doesNotMatch(head, /connection: close/i);
    }
  } finally {
    conn.close();
  }
  // A long head, then a short one: the second is found wherever the buffer holds it.
  const mixed = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  try {
    for (const filler of ["x".repeat(300), "", "y".repeat(3000), "z"]) {
      await writeAll(
        mixed,
        encoder.encode(`GET /m HTTP/1.1\r\nHost: ok\r\nX-F: ${filler}\r\n\r\n`),
      );
      assert.match(await readHead(mixed), /^HTTP\/1\.1 200 OK\r\n/);
    }
  } finally {
    mixed.close();
  }
  const plain10 = await exchange(server.port, "GET /a HTTP/1.0\r\n\r\n");
  assert.ok(plain10.closed);
  assert.equal(plain10.responses[0].headers.get("connection"), "close");
  assert.equal(server.seen.at(-1)!.url, `http://localhost:${server.port}/a`);
  const kept10 = await exchange(
    server.port,
    "GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /c HTTP/1.0\r\n\r\n",
  );
  assert.deepEqual(kept10.responses.map((r) => r.body), ["ok /b", "ok /c"]);
  assert.equal(kept10.responses[0].headers.get("connection"), "keep-alive");
  const closing = await exchange(server.port, `${GET}Connection: close\r\n\r\n${GET}\r\n`);
  assert.equal(closing.responses.length, 1);
  assert.ok(closing.closed);
});

Deno.test("serveNative() drops a small unread request body after the response and reads on from its end", async () => {
  await using server = start({}, (req) => {
    if (new URL(req.url).pathname === "/sentinel") return new Response("sentinel");
    return new Response("early", { status: 413 });
  });
  const hidden = "GET /hidden HTTP/1.1\r\nHost: ok\r\n\r\n";
  const sentinel = "GET /sentinel HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n";
  const chunked = `${hidden.length.toString(16)}\r\n${hidden}\r\n0\r\n\r\n`;
  for (
    const request of [
      `POST / HTTP/1.1\r\nHost: ok\r\nContent-Length: ${hidden.length}\r\n\r\n${hidden}`,
      `POST / HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n${chunked}`,
      // A GET body never reaches the handler (a Request cannot carry one) but frames the same.
      `GET / HTTP/1.1\r\nHost: ok\r\nContent-Length: ${hidden.length}\r\n\r\n${hidden}`,
    ]
  ) {
    const outcome = await exchange(server.port, request + sentinel);
    assert.deepEqual(outcome.responses.map((r) => r.body), ["early", "sentinel"], request);
    assert.ok(outcome.closed);
  }
});

Deno.test("serveNative() closes after the response when the unread body is over 64 KiB or was never asked for", async () => {
  await using server = start({}, () => new Response("early", { status: 413 }));
  for (
    const request of [
      `POST / HTTP/1.1\r\nHost: ok\r\nContent-Length: ${70 * 1024}\r\n\r\n`,
      `POST / HTTP/1.1\r\nHost: ok\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`,
    ]
  ) {
    const outcome = await exchange(server.port, request);
    assert.deepEqual(outcome.responses.map((r) => r.status), [413]);
    assert.equal(outcome.responses[0].headers.get("connection"), "close");
    assert.ok(outcome.closed);
  }
});

Deno.test("serveNative() hands the handler the method and target as sent (no case folding, no dot-segment resolution)", async () => {
  await using server = start({}, (req) => new Response(`${req.method} ${req.url}`));
  const outcome = await exchange(
    server.port,
    "get /a/../b HTTP/1.1\r\nHost: ok\r\n\r\nTRACE /%2e%2e/x HTTP/1.1\r\nHost: ok\r\n\r\n" +
      "CONNECT ok:443 HTTP/1.1\r\nHost: ok:443\r\nConnection: close\r\n\r\n",
  );
  assert.deepEqual(outcome.responses.map((r) => r.body), [
    "get http://ok/a/../b",
    "TRACE http://ok/%2e%2e/x",
    "CONNECT http://ok:443/",
  ]);
});

Deno.test("serveNative() streams a 5 MiB chunked body both ways intact (SHA-256)", async () => {
  await using server = start({}, (req) => new Response(req.body));
  const body = crypto.getRandomValues(new Uint8Array(64 * 1024));
  const parts = 80; // 5 MiB
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      // Each part differs, so reordering shows in the digest.
      const part = body.slice();
      part[0] = parts;
      controller.enqueue(part);
      if (--sent === 0) controller.close();
    },
  });
  let sent = parts;
  const expected = new Uint8Array(parts * body.length);
  for (let i = 0; i < parts; i++) {
    expected.set(body, i * body.length);
    expected[i * body.length] = parts;
  }
  const client = Deno.createHttpClient({});
  try {
    const response = await fetch(`http://127.0.0.1:${server.port}/echo`, {
      method: "POST",
      body: stream,
      client,
    });
    assert.equal(response.headers.get("transfer-encoding"), "chunked");
    const got = new Uint8Array(await response.arrayBuffer());
    assert.equal(got.length, expected.length);
    assert.equal(await sha256(got), await sha256(expected));
  } finally {
    client.close();
  }
});

Deno.test("serveNative() frames a body known at once with Content-Length and a stream as chunked", async () => {
  await using server = start({}, (req) => {
    if (req.url.endsWith("/fixed")) return new Response("fixed body");
    return new Response(
      new ReadableStream({
        async start(controller) {
          controller.enqueue(encoder.encode("part1 "));
          await delay(5);
          controller.enqueue(encoder.encode("part2"));
          controller.close();
        },
      }),
    );
  });
  const outcome = await exchange(
    server.port,
    `GET /fixed HTTP/1.1\r\nHost: ok\r\n\r\nGET /stream HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n`,
  );
  const [fixed, streamed] = outcome.responses;
  assert.equal(fixed.headers.get("content-length"), "10");
  assert.equal(fixed.body, "fixed body");
  assert.equal(streamed.headers.get("transfer-encoding"), "chunked");
  assert.equal(streamed.body, "part1 part2");
  // HTTP/1.0 gets no chunked coding: the body ends with the connection.
  const old = await rawExchange(server.port, "GET /stream HTTP/1.0\r\n\r\n", WAIT_MS);
  const text = decoder.decode(old.bytes);
  assert.ok(old.closed);
  assert.doesNotMatch(text, /transfer-encoding/i);
  assert.ok(text.endsWith("\r\n\r\npart1 part2"), text);
});

Deno.test("serveNative() sends 100 Continue only when the handler reads the body", async () => {
  await using server = start();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  try {
    await writeAll(
      conn,
      encoder.encode(
        `POST /c HTTP/1.1\r\nHost: ok\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`,
      ),
    );
    assert.equal(await readHead(conn), "HTTP/1.1 100 Continue\r\n\r\n");
    await writeAll(conn, encoder.encode("hello"));
    assert.match(await readHead(conn), /^HTTP\/1\.1 200 OK/);
    assert.equal(server.seen[0].body, "hello");
  } finally {
    conn.close();
  }
  await using refusing = start({}, () => new Response("no", { status: 413 }));
  const outcome = await exchange(
    refusing.port,
    `POST / HTTP/1.1\r\nHost: ok\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`,
  );
  assert.deepEqual(outcome.responses.map((r) => r.status), [413]);
  assert.ok(outcome.closed);
});

Deno.test("serveNative() answers HEAD with the length but no body, and keeps the connection in step", async () => {
  await using server = start(
    {},
    (req) =>
      new Response(req.method === "HEAD" ? null : "twelve bytes", {
        headers: { "content-length": "12" },
      }),
  );
  const outcome = await exchange(
    server.port,
    `HEAD / HTTP/1.1\r\nHost: ok\r\n\r\nGET / HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n`,
  );
  assert.match(
    outcome.raw,
    /^HTTP\/1\.1 200 OK\r\n[^]*?content-length: 12\r\n\r\nHTTP\/1\.1 200/,
  );
  assert.ok(outcome.raw.endsWith("\r\n\r\ntwelve bytes"));
});

Deno.test("serveNative() cuts a body longer than its Content-Length and closes", async () => {
  await using server = start(
    {},
    () => new Response("far more than five", { headers: { "content-length": "5" } }),
  );
  const outcome = await exchange(server.port, `${GET}\r\n${GET}\r\n`);
  assert.ok(outcome.raw.endsWith("\r\n\r\nfar m"), outcome.raw);
  assert.ok(outcome.closed);
});

Deno.test("serveNative() answers 502 when a body fails before any byte went out, and cuts it after", async () => {
  const failing = (chunks: string[], length?: number) => () => {
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent < chunks.length) controller.enqueue(encoder.encode(chunks[sent++]));
        else controller.error(new Error("backend went away"));
      },
    });
    const headers: Record<string, string> = length === undefined
      ? {}
      : { "content-length": String(length) };
    return new Response(body, { headers });
  };
  // Nothing sent yet, streamed or with a length: the head waits for the first bytes (without a
  // length, for a second read too), so the client can still be told.
  for (const [chunks, length] of [[[], undefined], [["partial"], undefined], [[], 10]] as const) {
    await using server = start({}, failing([...chunks], length));
    const outcome = await exchange(server.port, `${GET}\r\n${GET}\r\n`);
    assert.deepEqual(outcome.responses.map((r) => r.status), [502], outcome.raw);
    assert.ok(outcome.closed);
  }
  // After some bytes went out, the connection ends without a last chunk: never complete.
  await using late = start({}, failing(["partial", "more"]));
  const cut = await exchange(late.port, `${GET}\r\n${GET}\r\n`);
  assert.ok(cut.raw.startsWith("HTTP/1.1 200 OK\r\n"), cut.raw);
  assert.ok(cut.raw.includes("partial") && !cut.raw.endsWith("0\r\n\r\n"), cut.raw);
  assert.ok(cut.closed);
});

Deno.test("serveNative() answers a throwing handler with onError, or an empty 500", async () => {
  await using plain = start({}, () => {
    throw new Error("boom");
  });
  const outcome = await exchange(plain.port, `${GET}Connection: close\r\n\r\n`);
  assert.deepEqual(outcome.responses.map((r) => [r.status, r.body]), [[500, ""]]);
  await using custom = start({ onError: () => new Response("sorry", { status: 503 }) }, () => {
    throw new Error("boom");
  });
  const mapped = await exchange(custom.port, `${GET}Connection: close\r\n\r\n`);
  assert.deepEqual(mapped.responses.map((r) => [r.status, r.body]), [[503, "sorry"]]);
});

Deno.test("serveNative() aborts the request's signal when the client hangs up", async () => {
  let aborted!: () => void;
  const abortSeen = new Promise<void>((resolve) => (aborted = resolve));
  let handlerDone!: () => void;
  const handlerFinished = new Promise<void>((resolve) => (handlerDone = resolve));
  await using server = start({}, async (req) => {
    req.signal.addEventListener("abort", () => aborted());
    await abortSeen;
    handlerDone();
    return new Response("too late");
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  await writeAll(conn, encoder.encode(`${GET}\r\n`));
  await delay(50); // let the request reach the handler before hanging up
  conn.close();
  await handlerFinished;
});

for (const framing of ["chunked", "content-length"] as const) {
  Deno.test(`serveNative() cancels a stalled streamed body (${framing}) when the client hangs up during it`, async () => {
    let cancelled!: (reason: unknown) => void;
    const cancelSeen = new Promise<unknown>((resolve) => (cancelled = resolve));
    await using server = start({}, () => {
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(encoder.encode("first part "));
          controller.enqueue(encoder.encode("second part"));
          // Then nothing: a backend that stalls mid-body.
        },
        cancel: (reason) => cancelled(reason),
      });
      const headers: HeadersInit = framing === "content-length"
        ? { "content-length": "100000" }
        : {};
      return new Response(body, { headers });
    });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    await writeAll(conn, encoder.encode(`${GET}\r\n`));
    const buf = new Uint8Array(4096);
    let text = "";
    for (let i = 0; i < 20 && !text.includes("second part"); i++) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += decoder.decode(buf.subarray(0, n));
    }
    assert.ok(
      text.includes("second part"),
      `the body's first bytes arrived: ${JSON.stringify(text)}`,
    );
    conn.close();
    const reason = await within(cancelSeen, 5000, "the body's cancel after the client left");
    assert.equal((reason as DOMException).name, "AbortError");
  });
}

Deno.test("serveNative() closes a client that stops reading its response for the idle timeout", async () => {
  let cancelled!: () => void;
  const cancelSeen = new Promise<void>((resolve) => (cancelled = resolve));
  const piece = new Uint8Array(256 * 1024);
  let sent = 0;
  await using server = start({ idleTimeoutMs: 500 }, () =>
    new Response(
      new ReadableStream<Uint8Array>({
        pull(controller) {
          // 256 MiB at most: far more than the socket buffers hold.
          if (sent >= 1024) return controller.close();
          sent++;
          controller.enqueue(piece);
        },
        cancel: () => cancelled(),
      }),
    ));
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  try {
    await writeAll(conn, encoder.encode(`${GET}\r\n`));
    // Reads nothing: once the buffers are full, the write waits on this client for ever.
    await within(cancelSeen, 10_000, "the body cancelled after the client stopped reading");
    assert.ok(sent < 1024, `stopped after ${sent} pieces, not at the end`);
  } finally {
    conn.close();
  }
});

Deno.test("serveNative() closes a client sending one header byte every 200 ms at the 1 s header timeout, with 408", async () => {
  await using server = start({ headerTimeoutMs: 1000 });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  const request = encoder.encode(`${GET}X-Slow: ${"s".repeat(100)}\r\n\r\n`);
  let sent = 0;
  let closed = false;
  const reading = (async () => {
    const buf = new Uint8Array(1024);
    let text = "";
    for (let i = 0; i < 100; i++) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      text += decoder.decode(buf.subarray(0, n));
    }
    closed = true;
    return text;
  })();
  // At most 60 bytes (12 s): the test fails rather than hangs if the timeout never fires.
  for (; sent < 60 && !closed; sent++) {
    await conn.write(request.subarray(sent, sent + 1)).catch(() => {});
    await delay(200);
  }
  const text = await reading;
  conn.close();
  assert.ok(closed && sent < 60, `still open after ${sent} bytes`);
  assert.match(text, /^HTTP\/1\.1 408 Request Timeout\r\n/);
  assert.deepEqual(server.seen, []);
});

Deno.test("serveNative() closes a connection that sends nothing at the header timeout, and an idle keep-alive one at the idle timeout", async () => {
  await using server = start({ headerTimeoutMs: 300, idleTimeoutMs: 300 });
  const silent = await rawExchange(server.port, new Uint8Array(0), 5000);
  assert.ok(silent.closed);
  assert.equal(silent.bytes.length, 0);
  const kept = await rawExchange(server.port, `${GET}\r\n`, 5000);
  assert.ok(kept.closed, "idle keep-alive connection left open");
  assert.deepEqual(parseResponses(kept.bytes).map((r) => r.status), [200]);
});

Deno.test("serveNative() stops accepting at maxConnections and serves the waiting connection when one closes", async () => {
  await using server = start({ maxConnections: 2 });
  const first = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  const second = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  const third = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  try {
    await writeAll(third, encoder.encode(`${GET}Connection: close\r\n\r\n`));
    const buf = new Uint8Array(4096);
    const answer = third.read(buf);
    const early = await Promise.race([answer, delay(300).then(() => "waiting")]);
    assert.equal(early, "waiting", "the third connection was served while two were open");
    assert.equal(server.connections, 2);
    first.close();
    const n = await answer;
    assert.ok(n !== null);
    assert.match(decoder.decode(buf.subarray(0, n)), /^HTTP\/1\.1 200 OK/);
  } finally {
    second.close();
    third.close();
  }
});

Deno.test("serveNative() takes the client address from PROXY v1 and v2 headers of a trusted peer", async () => {
  const trusted = [parseCidr("127.0.0.0/8")!];
  await using server = start({ proxyProtocol: { trusted: () => trusted } });
  const client = { hostname: "203.0.113.9", port: 40000 };
  const v6client = { hostname: "2001:db8::9", port: 40001 };
  const to = { hostname: "127.0.0.1", port: server.port };
  const request = encoder.encode(`${GET}Connection: close\r\n\r\n`);
  for (
    const header of [
      encodeProxyV1(client, to),
      encodeProxyV2(client, to),
      encodeProxyV2(v6client, { hostname: "::1", port: 1 }),
    ]
  ) {
    const outcome = await exchange(server.port, concat([header, request]));
    assert.deepEqual(outcome.responses.map((r) => r.status), [200]);
  }
  const infos = server.seen.map((s) => [s.info.clientAddress, s.info.remoteAddr.hostname]);
  assert.deepEqual(infos, [
    ["203.0.113.9", "203.0.113.9"],
    ["203.0.113.9", "203.0.113.9"],
    ["2001:db8::9", "2001:db8::9"],
  ]);
  assert.equal(server.seen[0].info.remoteAddr.port, 40000);
  assert.equal(server.seen[0].info.proxyAddr?.hostname, "127.0.0.1");
});

Deno.test("serveNative() closes PROXY connections from untrusted peers and with malformed or missing headers", async () => {
  const request = encoder.encode(`${GET}Connection: close\r\n\r\n`);
  const header = encodeProxyV1({ hostname: "203.0.113.9", port: 1 }, {
    hostname: "127.0.0.1",
    port: 2,
  });
  await using untrusting = start({ proxyProtocol: { trusted: () => [parseCidr("10.0.0.0/8")!] } });
  const refused = await exchange(untrusting.port, concat([header, request]));
  assert.ok(refused.closed);
  assert.equal(refused.raw, "");
  await using server = start({ proxyProtocol: { trusted: () => [parseCidr("127.0.0.1")!] } });
  const malformed = [
    encoder.encode("PROXY TCP4 203.0.113.999 127.0.0.1 1 2\r\n"),
    encoder.encode("PROXY TCP4 203.0.113.9 127.0.0.1 1 2\n"),
    new Uint8Array(0), // no header at all: the request itself
  ];
  for (const bad of malformed) {
    const outcome = await exchange(server.port, concat([bad, request]));
    assert.ok(outcome.closed);
    assert.equal(outcome.raw, "");
  }
  assert.deepEqual([untrusting.seen, server.seen], [[], []]);
  // A trusted peer that stops partway through its header: closed at the header timeout, with
  // no HTTP answer (none was asked for yet).
  await using quick = start({
    proxyProtocol: { trusted: () => [parseCidr("127.0.0.1")!] },
    headerTimeoutMs: 200,
  });
  const stalled = await exchangeInPieces(quick.port, ["PROXY TCP4 203.0.113.9"], 0);
  assert.ok(stalled.closed);
  assert.deepEqual(stalled.responses, []);
});

Deno.test("serveNative() serves HTTP/1.1 over TLS, negotiating ALPN http/1.1, and replaces its certificate", async () => {
  await using pki = await Pki.create();
  const ca = await pki.ca("ca");
  const leaf = await pki.leaf("server", ca);
  const second = await pki.leaf("server2", ca);
  await using server = start({ tls: { cert: leaf.cert, key: leaf.key } });
  async function get(): Promise<{ alpn: string | null; text: string }> {
    const conn = await Deno.connectTls({
      hostname: "127.0.0.1",
      port: server.port,
      caCerts: [ca.cert],
      alpnProtocols: ["h2", "http/1.1"],
    });
    try {
      const { alpnProtocol } = await conn.handshake();
      await writeAll(conn, encoder.encode(`${GET}Connection: close\r\n\r\n`));
      const chunks: Uint8Array[] = [];
      const buf = new Uint8Array(4096);
      for (let i = 0; i < 100; i++) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) break;
        chunks.push(buf.slice(0, n));
      }
      return { alpn: alpnProtocol, text: decoder.decode(concat(chunks)) };
    } finally {
      conn.close();
    }
  }
  const before = await get();
  assert.equal(before.alpn, "http/1.1");
  assert.match(before.text, /^HTTP\/1\.1 200 OK[^]*ok \/$/);
  assert.equal(new URL(server.seen[0].url).protocol, "https:");
  server.replaceCertificate({ cert: second.cert, key: second.key });
  // The old listener closes one event-loop turn later; a connection in that turn is reset.
  await delay(10);
  const after = await get();
  assert.match(after.text, /^HTTP\/1\.1 200 OK/);
});

/** An upstream that echoes whatever it reads, prefixed with `echo:`. */
function echoUpstream() {
  return rawServer(async (conn) => {
    const buf = new Uint8Array(1024);
    for (let i = 0; i < 100; i++) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      await writeAll(conn, concat([encoder.encode("echo:"), buf.subarray(0, n)]));
    }
    conn.close();
  });
}

Deno.test("serveNative() tunnels bytes both ways after switchProtocols(), and a drain keeps the tunnel until its deadline", async () => {
  await using upstream = echoUpstream();
  const port = Number(new URL(upstream.url).port);
  const server = serveNative({ hostname: "127.0.0.1", port: 0 }, async () => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    return switchProtocols({ upgrade: "test", connection: "upgrade" }, conn, encoder.encode("hi:"));
  });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  try {
    await writeAll(
      client,
      encoder.encode(`GET / HTTP/1.1\r\nHost: ok\r\nUpgrade: test\r\nConnection: upgrade\r\n\r\n`),
    );
    const wire = new Wire(client);
    const { line, fields } = parseHead((await wire.head()) ?? "");
    assert.equal(line, "HTTP/1.1 101 Switching Protocols");
    assert.deepEqual(fields.filter(([name]) => name === "upgrade"), [["upgrade", "test"]]);
    await wire.write("ping");
    assert.equal(decoder.decode(await wire.bytes("hi:echo:ping".length)), "hi:echo:ping");
    assert.equal(await wire.peek(0), 0, "nothing after the echo");
    const buf = new Uint8Array(1024);
    assert.equal(server.active, 1);
    // The drain waits for the tunnel, which still carries bytes, then closes it at the deadline.
    const drained = server.drain(performance.now() + 500);
    await writeAll(client, encoder.encode("during drain"));
    const n = await client.read(buf);
    assert.equal(decoder.decode(buf.subarray(0, n!)), "echo:during drain");
    assert.equal(await drained, 1);
    assert.equal(await client.read(buf).catch(() => null), null);
  } finally {
    client.close();
    await server.drain(performance.now());
  }
});

Deno.test("serveNative() relays bytes sent with the upgrade request at once, before any more come", async () => {
  await using upstream = echoUpstream();
  const port = Number(new URL(upstream.url).port);
  await using server = start({}, async (req) => {
    // Watching for a hang-up (as the proxy does) starts a read that more bytes would end.
    req.signal.addEventListener("abort", () => {});
    await delay(20);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    return switchProtocols({ upgrade: "test", connection: "upgrade" }, conn, new Uint8Array());
  });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  try {
    // One write: the head and the first bytes of the new protocol; then the client waits.
    await writeAll(
      client,
      encoder.encode(
        `GET / HTTP/1.1\r\nHost: ok\r\nUpgrade: test\r\nConnection: upgrade\r\n\r\nearly`,
      ),
    );
    const wire = new Wire(client);
    assert.equal(parseHead((await wire.head()) ?? "").line, "HTTP/1.1 101 Switching Protocols");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const echoed = await Promise.race([
      wire.bytes("echo:early".length).then((bytes) => decoder.decode(bytes)),
      new Promise<string>((resolve) => timer = setTimeout(() => resolve("nothing in 2 s"), 2000)),
    ]);
    clearTimeout(timer);
    assert.equal(echoed, "echo:early");
  } finally {
    client.close();
  }
});

Deno.test("openTunnel() + switchProtocols() relay a real WebSocket end to end: the backend's handshake reaches the client", async () => {
  // A WebSocket echo backend on Deno.serve.
  const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req, { protocol: "chat" });
    socket.onmessage = (event) => socket.send(`echo ${event.data}`);
    response.headers.set("set-cookie", "backend=1");
    return response;
  });
  let ended!: () => void;
  const tunnelEnded = new Promise<void>((resolve) => (ended = resolve));
  const refused: unknown[] = [];
  await using server = start({}, async (req) => {
    // What the balancer's WebSocket path would do for the native front end.
    assert.ok(canTunnel(req));
    const forwarded = [...req.headers].filter(([name]) => name.startsWith("sec-websocket-"));
    const path = new URL(req.url).pathname;
    const opened = await openTunnel(
      `http://127.0.0.1:${backend.addr.port}`,
      path,
      "websocket",
      forwarded,
      { signal: req.signal },
    );
    if (!opened.ok) {
      refused.push(opened);
      return new Response(null, { status: 502 });
    }
    return switchProtocols(opened.headers, opened.conn, opened.head, ended);
  });
  try {
    const socket = new WebSocket(`ws://127.0.0.1:${server.port}/chat`, ["chat"]);
    const opened = new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = reject;
    });
    await opened;
    assert.equal(socket.protocol, "chat");
    const reply = new Promise<string>((resolve) => (socket.onmessage = (e) => resolve(e.data)));
    socket.send("hello");
    assert.equal(await reply, "echo hello");
    const closed = new Promise((resolve) => (socket.onclose = resolve));
    socket.close(4000, "custom code passes");
    await closed;
    await tunnelEnded;
    assert.deepEqual(refused, []);
  } finally {
    await backend.shutdown();
  }
});

/** The body of the next response on `conn` (its Content-Length), or null when it closed first. */
async function nextBody(conn: Deno.Conn): Promise<string | null> {
  const wire = new Wire(conn);
  const head = await wire.head();
  if (head === null) return null;
  const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? "0");
  return decoder.decode(await wire.bytes(length));
}

Deno.test("serveNative() with admission: a new connection asks for a place once its first head is in, a kept-alive one before it reads; the place goes back after the response; a slow head takes none; a drain ends the wait", async () => {
  const calls: string[] = [];
  const admits: ((ticket: number) => void)[] = [];
  const admission = {
    enter: () => {
      calls.push("enter");
      return new Promise<number>((resolve) => admits.push(resolve));
    },
    leave: (ticket: number) => void calls.push(`leave ${ticket}`),
  };
  await using server = start({ admission });
  const paths = () => server.seen.map((r) => new URL(r.url).pathname);
  const waitForCalls = async (n: number) => {
    for (let i = 0; i < 100 && calls.length < n; i++) await delay(10);
  };
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  const slow = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  try {
    await writeAll(slow, encoder.encode("GET /slow HTTP/1.1\r\nHo"));
    // A first request: read, then held until its place is given.
    await writeAll(conn, encoder.encode(`GET /a HTTP/1.1\r\nHost: ok\r\n\r\n`));
    await waitForCalls(1);
    await delay(50);
    assert.deepEqual([calls, paths()], [["enter"], []]);
    admits[0](5);
    assert.equal(await nextBody(conn), "ok /a");
    await waitForCalls(3);
    assert.deepEqual(calls, ["enter", "leave 5", "enter"], "kept alive, it asks again at once");
    // The next request waits in the socket until the place is given.
    await writeAll(conn, encoder.encode(`GET /b HTTP/1.1\r\nHost: ok\r\n\r\n`));
    await delay(150);
    assert.deepEqual(paths(), ["/a"]);
    admits[1](7);
    assert.equal(await nextBody(conn), "ok /b");
    await waitForCalls(5);
    assert.deepEqual(calls, ["enter", "leave 5", "enter", "leave 7", "enter"]);
    // The slow head never asked for a place. A drain closes the connection waiting for one: no
    // wait on the gate, and the place, once given, goes straight back.
    assert.equal(await server.drain(performance.now() + WAIT_MS), 0);
    admits[2](9);
    await delay(10);
    assert.deepEqual(calls, ["enter", "leave 5", "enter", "leave 7", "enter", "leave 9"]);
  } finally {
    conn.close();
    slow.close();
  }
});

Deno.test("drain() lets a request in flight finish with Connection: close and closes idle connections at once", async () => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const server = serveNative({ hostname: "127.0.0.1", port: 0 }, async () => {
    await released;
    return new Response("finished");
  });
  const idle = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  const busy = rawExchange(server.addr.port, `${GET}\r\n`, WAIT_MS);
  await delay(100); // the busy request reaches the handler
  const drained = server.drain(performance.now() + WAIT_MS);
  const buf = new Uint8Array(16);
  assert.equal(await idle.read(buf).catch(() => null), null, "idle connection left open");
  idle.close();
  release();
  const outcome = await busy;
  const [response] = parseResponses(outcome.bytes);
  assert.equal(response.body, "finished");
  assert.equal(response.headers.get("connection"), "close");
  assert.ok(outcome.closed);
  assert.equal(await drained, 0);
});

Deno.test("serveNative() writes the fields a Response has when written, as Deno.serve does: in order, repeats on their own lines, changes after construction included", async () => {
  const bytes = encoder.encode("abc");
  await using server = start({}, () => {
    // Built as the proxy's relay builds a response, then changed as route rules change one.
    const response = new Response(bytes, { status: 200 });
    for (const [name, value] of [["Server", "b"], ["x-b", "1"], ["Set-Cookie", "s=2"]]) {
      response.headers.append(name, value);
    }
    response.headers.append("X-B", "2");
    response.headers.append("set-cookie", "s=1");
    response.headers.append("date", "Mon, 07 Dec 2026 06:00:00 GMT");
    response.headers.append("x-gone", "1");
    response.headers.delete("x-gone");
    response.headers.set("server", "changed");
    return response;
  });
  const { raw } = await exchange(server.port, `${GET}Connection: close\r\n\r\n`);
  assert.equal(
    raw,
    "HTTP/1.1 200 OK\r\n" +
      "server: changed\r\n" +
      "x-b: 1\r\n" +
      "set-cookie: s=2\r\n" +
      "x-b: 2\r\n" +
      "set-cookie: s=1\r\n" +
      "date: Mon, 07 Dec 2026 06:00:00 GMT\r\n" +
      "content-length: 3\r\n" +
      "connection: close\r\n\r\nabc",
  );
});

Deno.test("serveNative() gives each request one signal of its own, the same on every read, never aborted after delivery", async () => {
  const signals: AbortSignal[] = [];
  await using server = start({}, (req) => {
    signals.push(req.signal, req.signal);
    // Not a Fetch Request (lib/incoming.ts): none is built per request.
    assert.ok(!(req instanceof Request));
    return new Response("ok");
  });
  const { responses } = await exchange(server.port, `${GET}\r\n${GET}Connection: close\r\n\r\n`);
  assert.deepEqual(responses.map((r) => r.status), [200, 200]);
  assert.equal(signals.length, 4);
  assert.equal(signals[0], signals[1]);
  assert.notEqual(signals[0], signals[2]);
  // Both responses were delivered: neither request's signal was aborted.
  assert.deepEqual(signals.map((s) => s.aborted), [false, false, false, false]);
});

Deno.test("serveNative() writes a Latin-1 header value as one byte a character, with the body after it", async () => {
  await using server = start({}, () =>
    new Response(encoder.encode("abc"), {
      headers: { "x-latin": "caf\u00e9", date: "Mon, 07 Dec 2026 06:00:00 GMT" },
    }));
  const { bytes } = await rawExchange(server.port, `${GET}Connection: close\r\n\r\n`, WAIT_MS);
  const expected =
    "HTTP/1.1 200 OK\r\nx-latin: caf\u00e9\r\ndate: Mon, 07 Dec 2026 06:00:00 GMT\r\n" +
    "content-length: 3\r\nconnection: close\r\n\r\nabc";
  assert.deepEqual(bytes, Uint8Array.from(expected, (ch) => ch.charCodeAt(0)));
});

Deno.test("serveNative() frames a body by its bytes when a handler's Content-Length fields differ, and keeps the connection", async () => {
  const lengths = [["3", "5"], ["3", "3"], ["x", "3"]];
  let next = 0;
  await using server = start({}, () => {
    const response = new Response(encoder.encode("abc"));
    for (const value of lengths[next++]) response.headers.append("content-length", value);
    return response;
  });
  const { responses, closed } = await exchange(
    server.port,
    `${GET}\r\n${GET}\r\n${GET}Connection: close\r\n\r\n`,
  );
  assert.deepEqual(responses.map((r) => [r.headers.get("content-length"), r.body]), [
    ["3", "abc"],
    ["3", "abc"],
    ["3", "abc"],
  ]);
  assert.ok(closed);
});
