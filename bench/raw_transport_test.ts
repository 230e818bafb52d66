/**
 * @module
 * Wire tests of the experimental Deno.connect transport (bench/raw_transport.ts) against
 * scripted backends on real sockets (127.0.0.1, ports from the OS). Every server and transport is
 * closed, every body consumed. Run with
 * `deno test --allow-net --sanitize-ops --sanitize-resources bench/raw_transport_test.ts`.
 */

import assert from "node:assert/strict";
import { createRawTransport, type RawTransport } from "./raw_transport.ts";
import type { AttemptRequest, AttemptResult } from "../lib/upstream.ts";
import { concat } from "../tests/helpers.ts";
import { Wire } from "../tests/wire.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Backend {
  origin: string;
  port: number;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Request heads seen, in order. */
  heads: string[];
  close(): Promise<void>;
}

/** A backend that runs `script` for every accepted connection. */
function backend(script: (wire: Wire, backend: Backend) => Promise<void>): Backend {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.TcpConn>();
  const running: Promise<void>[] = [];
  let connections = 0;
  const self: Backend = {
    origin: `http://127.0.0.1:${listener.addr.port}`,
    port: listener.addr.port,
    get connections() {
      return connections;
    },
    heads: [],
    async close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed by the script */ }
      }
      await accepting;
      await Promise.allSettled(running);
    },
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      connections++;
      conns.add(conn);
      running.push(
        script(new Wire(conn), self).catch(() => {}).finally(() => {
          conns.delete(conn);
          try {
            conn.close();
          } catch { /* already closed */ }
        }),
      );
    }
  })().catch(() => {});
  return self;
}

/** Answers every request on a connection with `respond(head)` until the peer closes. */
function serving(respond: (head: string, wire: Wire) => Promise<string | Uint8Array | null>) {
  return async (wire: Wire, self: Backend) => {
    for (let head = await wire.head(); head !== null; head = await wire.head()) {
      self.heads.push(head);
      const answer = await respond(head, wire);
      if (answer === null) return;
      await wire.write(answer);
    }
  };
}

const OPTIONS = {
  client: undefined as unknown as Deno.HttpClient,
  timeout: 5000,
  connectTimeout: 2000,
};
const NEVER = new AbortController().signal;

function get(headers: HeadersInit = { host: "example.test" }): AttemptRequest {
  return { method: "GET", headers: new Headers(headers), body: null };
}

async function send(
  transport: RawTransport,
  server: Backend,
  request: AttemptRequest,
  path = "/",
  signal = NEVER,
  options = OPTIONS,
): Promise<AttemptResult> {
  return await transport.send(server.origin, server.origin + path, request, signal, options);
}

async function text(result: AttemptResult): Promise<string> {
  assert.ok(result.ok, result.ok ? "" : `${result.failure.kind}: ${result.failure.detail}`);
  return await result.response.text();
}

/** Runs `body` with a fresh transport and closes it (and its idle connections) after. */
async function withTransport(
  body: (transport: RawTransport) => Promise<void>,
  options: Parameters<typeof createRawTransport>[0] = {},
): Promise<void> {
  const transport = createRawTransport(options);
  try {
    await body(transport);
  } finally {
    await transport.close();
  }
}

Deno.test("raw transport: Content-Length bodies, small and streamed, reuse one connection", async () => {
  const big = new Uint8Array(200 * 1024).map((_, i) => i % 251);
  const server = backend(serving((head) =>
    Promise.resolve(
      head.startsWith("GET /big ")
        ? concat([encoder.encode(`HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n`), big])
        : "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: a\r\n\r\nhello",
    )
  ));
  try {
    await withTransport(async (transport) => {
      const first = await send(transport, server, get());
      assert.ok(first.ok);
      assert.equal(first.response.status, 200);
      assert.equal(first.response.headers.get("x-test"), "a");
      assert.equal(await first.response.text(), "hello");
      const large = await send(transport, server, get(), "/big");
      assert.ok(large.ok);
      assert.deepEqual(new Uint8Array(await large.response.arrayBuffer()), big);
      assert.equal(await text(await send(transport, server, get())), "hello");
      assert.equal(server.connections, 1);
      assert.equal(transport.stats.reused, 2);
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: chunked bodies are decoded, trailers dropped, the connection reused", async () => {
  const server = backend(serving(() =>
    Promise.resolve(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
        "5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
  ));
  try {
    await withTransport(async (transport) => {
      for (let i = 0; i < 3; i++) {
        const result = await send(transport, server, get());
        assert.ok(result.ok);
        assert.equal(result.response.headers.get("transfer-encoding"), "chunked");
        assert.equal(await result.response.text(), "hello world!");
      }
      assert.equal(server.connections, 1);
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: a close-delimited body ends at EOF and its connection is not reused", async () => {
  const server = backend(async (wire, self) => {
    const head = await wire.head();
    if (head === null) return;
    self.heads.push(head);
    await wire.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end");
    wire.conn.close();
  });
  try {
    await withTransport(async (transport) => {
      assert.equal(await text(await send(transport, server, get())), "until the end");
      assert.equal(await text(await send(transport, server, get())), "until the end");
      assert.equal(server.connections, 2);
      assert.equal(transport.idleCount(server.origin), 0);
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: 20 sequential requests use one backend connection", async () => {
  const server = backend(
    serving(() => Promise.resolve("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")),
  );
  try {
    await withTransport(async (transport) => {
      for (let i = 0; i < 20; i++) {
        const result = await send(transport, server, get());
        assert.ok(result.ok);
        assert.equal(result.response.status, 204);
        assert.equal(result.response.body, null);
      }
      assert.equal(server.connections, 1);
      assert.equal(transport.stats.opened, 1);
      assert.equal(transport.stats.reused, 19);
      assert.equal(transport.idleCount(server.origin), 1);
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: an upload streams (first bytes reach the backend before the body ends)", async () => {
  let received: Uint8Array | undefined;
  let seenFirst: () => void = () => {};
  const firstSeen = new Promise<void>((resolve) => (seenFirst = resolve));
  const server = backend(serving(async (head, wire) => {
    const length = /content-length: (\d+)/i.exec(head);
    if (length !== null) {
      await wire.peek(4);
      seenFirst();
      received = await wire.bytes(Number(length[1]));
    } else {
      assert.match(head, /transfer-encoding: chunked/i);
      received = await wire.chunked();
    }
    return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  }));
  try {
    await withTransport(async (transport) => {
      let push!: ReadableStreamDefaultController<Uint8Array>;
      const stream = new ReadableStream<Uint8Array>({ start: (c) => void (push = c) });
      push.enqueue(encoder.encode("part"));
      const pending = send(transport, server, {
        method: "POST",
        headers: new Headers({ host: "h", "content-length": "9" }),
        body: stream,
      });
      await firstSeen;
      push.enqueue(encoder.encode(" two!"));
      push.close();
      assert.equal(await text(await pending), "ok");
      assert.equal(decoder.decode(received), "part two!");
      assert.match(server.heads[0], /^POST \/ HTTP\/1\.1\r\nhost: h\r\n/);

      // Without a declared length the body goes chunked.
      const chunked = send(transport, server, {
        method: "POST",
        headers: new Headers({ host: "h" }),
        body: ReadableStream.from([encoder.encode("a"), encoder.encode("bc")]),
      });
      assert.equal(await text(await chunked), "ok");
      assert.equal(decoder.decode(received), "abc");
      assert.equal(server.connections, 1);
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: HEAD has no body whatever Content-Length says, and the connection stays in sync", async () => {
  const server = backend(serving((head) =>
    Promise.resolve(
      head.startsWith("HEAD ")
        ? "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        : "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget",
    )
  ));
  try {
    await withTransport(async (transport) => {
      const head = await send(transport, server, { ...get(), method: "HEAD" });
      assert.ok(head.ok);
      assert.equal(head.response.headers.get("content-length"), "1000");
      assert.equal(head.response.body, null);
      assert.equal(await text(await send(transport, server, get())), "get");
      assert.equal(server.connections, 1);
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: paths reach the backend byte for byte (`..`, `%2e%2e`), unlike fetch", async () => {
  const server = backend(
    serving(() => Promise.resolve("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")),
  );
  try {
    await withTransport(async (transport) => {
      for (const path of ["/a/../b", "/%2e%2e/x", "/a/./b/%2F..?q=../..#"]) {
        await text(await send(transport, server, get(), path));
      }
    });
    assert.deepEqual(server.heads.map((h) => h.split("\r\n")[0]), [
      "GET /a/../b HTTP/1.1",
      "GET /%2e%2e/x HTTP/1.1",
      "GET /a/./b/%2F..?q=../..# HTTP/1.1",
    ]);
    // For contrast: fetch parses the URL, so dot segments are resolved before sending.
    const client = Deno.createHttpClient({});
    try {
      const response = await fetch(`${server.origin}/a/../b`, { client });
      await response.body?.cancel();
      assert.equal(server.heads.at(-1)!.split("\r\n")[0], "GET /b HTTP/1.1");
    } finally {
      client.close();
    }
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: no response headers in time is a `timeout`", async () => {
  const server = backend(async (wire) => {
    await wire.head();
    await wire.peek(Infinity); // never answers; returns when the transport closes
  });
  try {
    await withTransport(async (transport) => {
      const started = performance.now();
      const result = await send(transport, server, get(), "/", NEVER, { ...OPTIONS, timeout: 150 });
      assert.ok(!result.ok);
      assert.equal(result.failure.kind, "timeout");
      assert.ok(performance.now() - started < 2000);
      assert.equal(transport.idleCount(server.origin), 0);
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: a refused connection is a `connect` failure", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const origin = `http://127.0.0.1:${listener.addr.port}`;
  listener.close();
  await withTransport(async (transport) => {
    const result = await transport.send(origin, `${origin}/`, get(), NEVER, OPTIONS);
    assert.ok(!result.ok);
    assert.equal(result.failure.kind, "connect");
    assert.match(result.failure.detail, /refused/i);
  });
});

Deno.test("raw transport: the client hanging up is `client-gone`, before or while waiting", async () => {
  const server = backend(async (wire) => {
    await wire.head();
    await wire.peek(Infinity);
  });
  try {
    await withTransport(async (transport) => {
      const gone = new AbortController();
      gone.abort();
      const before = await send(transport, server, get(), "/", gone.signal);
      assert.ok(!before.ok);
      assert.equal(before.failure.kind, "client-gone");

      const hangUp = new AbortController();
      const pending = send(transport, server, get(), "/", hangUp.signal);
      setTimeout(() => hangUp.abort(), 50);
      const during = await pending;
      assert.ok(!during.ok);
      assert.equal(during.failure.kind, "client-gone");
      assert.equal(transport.idleCount(server.origin), 0);
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: a cancelled streaming body closes the connection instead of pooling it", async () => {
  const server = backend(serving(() =>
    Promise.resolve(
      concat([
        encoder.encode("HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"),
        new Uint8Array(100 * 1024),
      ]),
    )
  ));
  try {
    await withTransport(async (transport) => {
      const result = await send(transport, server, get());
      assert.ok(result.ok);
      const reader = result.response.body!.getReader();
      await reader.read();
      await reader.cancel();
      assert.equal(transport.idleCount(server.origin), 0);
      assert.equal(transport.stats.opened, 1);
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: an idle connection the backend closed is dropped; a GET racing a close is retried once", async () => {
  let closeAfterRequest = 0;
  const server = backend(async (wire, self) => {
    for (let head = await wire.head(); head !== null; head = await wire.head()) {
      self.heads.push(head);
      if (self.heads.length === closeAfterRequest) return; // read the request, answer nothing
      await wire.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      if (self.heads.length === 1) return; // close the idle connection after the first answer
    }
  });
  try {
    await withTransport(async (transport) => {
      assert.equal(await text(await send(transport, server, get())), "ok");
      // The posted read sees the EOF and drops the connection before it is reused.
      for (let i = 0; i < 100 && transport.idleCount(server.origin) > 0; i++) {
        await new Promise((r) => setTimeout(r, 5));
      }
      assert.equal(transport.idleCount(server.origin), 0);
      assert.equal(await text(await send(transport, server, get())), "ok");
      assert.equal(server.connections, 2);

      // Request 3 is read and the connection closed without an answer: an idempotent request
      // on a reused connection is retried once on a new one; a POST is not.
      closeAfterRequest = 3;
      assert.equal(await text(await send(transport, server, get())), "ok");
      assert.equal(transport.stats.retriedStale, 1);
      assert.equal(server.connections, 3);
      closeAfterRequest = 5;
      const post = await send(transport, server, {
        method: "POST",
        headers: new Headers({ host: "h" }),
        body: encoder.encode("x"),
      });
      assert.ok(!post.ok);
      assert.equal(post.failure.kind, "maybe-sent");
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: framing attacks in responses fail the attempt or retire the connection", async () => {
  const answers = [
    // Conflicting lengths: refused.
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    // Transfer-Encoding wins over Content-Length; the connection is not reused after.
    "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    // Bytes beyond the declared length: the connection is not reused.
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    // obs-fold and a space before the colon: refused.
    "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
  ];
  const server = backend(async (wire, self) => {
    const head = await wire.head();
    if (head === null) return;
    self.heads.push(head);
    await wire.write(answers[self.heads.length - 1]);
    await wire.head(); // keep the connection open until the transport closes or reuses it
  });
  try {
    await withTransport(async (transport) => {
      const conflicting = await send(transport, server, get());
      assert.ok(!conflicting.ok);
      assert.match(conflicting.failure.detail, /Content-Length/);

      const both = await send(transport, server, get());
      assert.ok(both.ok);
      assert.equal(both.response.headers.get("content-length"), null);
      assert.equal(await both.response.text(), "ok");
      assert.equal(transport.idleCount(server.origin), 0);

      assert.equal(await text(await send(transport, server, get())), "ok");
      assert.equal(transport.idleCount(server.origin), 0);

      for (let i = 0; i < 2; i++) {
        const malformed = await send(transport, server, get());
        assert.ok(!malformed.ok);
        assert.equal(malformed.failure.kind, "maybe-sent");
      }
      assert.equal(server.connections, 5);
    });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: gzip is decoded only where fetch would decode it (decode: fetch), never with decode: none", async () => {
  const plain = "compressible ".repeat(200);
  const gz = new Uint8Array(
    await new Response(
      new Blob([plain]).stream().pipeThrough(new CompressionStream("gzip")),
    ).arrayBuffer(),
  );
  const server = backend(serving(() =>
    Promise.resolve(
      concat([
        encoder.encode(
          `HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: ${gz.length}\r\n\r\n`,
        ),
        gz,
      ]),
    )
  ));
  try {
    await withTransport(async (transport) => {
      const asked = await send(transport, server, get({ "accept-encoding": "gzip" }));
      assert.ok(asked.ok);
      // Like fetch: decoded, with Content-Encoding and the compressed length left in place.
      assert.equal(asked.response.headers.get("content-encoding"), "gzip");
      assert.equal(await asked.response.text(), plain);
      const identity = await send(transport, server, get({ "accept-encoding": "identity" }));
      assert.ok(identity.ok);
      assert.deepEqual(new Uint8Array(await identity.response.arrayBuffer()), gz);
    });
    await withTransport(async (transport) => {
      const raw = await send(transport, server, get({ "accept-encoding": "gzip" }));
      assert.ok(raw.ok);
      assert.deepEqual(new Uint8Array(await raw.response.arrayBuffer()), gz);
    }, { decode: "none" });
  } finally {
    await server.close();
  }
});

Deno.test("raw transport: 100 Continue and 103 Early Hints are skipped; 101 is a failure", async () => {
  const server = backend(serving((head) =>
    Promise.resolve(
      head.startsWith("GET /upgrade ")
        ? "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"
        : "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" +
          "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody",
    )
  ));
  try {
    await withTransport(async (transport) => {
      const result = await send(transport, server, get());
      assert.ok(result.ok);
      assert.equal(result.response.headers.get("link"), null);
      assert.equal(await result.response.text(), "body");
      const upgrade = await send(transport, server, get(), "/upgrade");
      assert.ok(!upgrade.ok);
      assert.match(upgrade.failure.detail, /101/);
    });
  } finally {
    await server.close();
  }
});
