/**
 * @module
 * Tests of lib/compress.ts: the `compress` check, Accept-Encoding negotiation, every rule that
 * leaves a response alone, Vary and ETag handling, byte-exact round trips of 5 MiB streamed
 * bodies for each coding (in-process and through a Deno.serve on a real socket), and streaming:
 * compressed bytes reach the client while the backend is still sending. Small bodies of known
 * length: compressed whole, byte-exact, with an exact Content-Length (encodeResponse), and a
 * client that hangs up while such a body is read cancels the backend's body.
 */

import assert from "node:assert/strict";
import zlib from "node:zlib";
import {
  checkCompress,
  COMPRESS_SCHEMA,
  compressResponse,
  type CompressSpec,
  DEFAULT_COMPRESS,
  encodeResponse,
  type Encoding,
  ENCODINGS,
  negotiateEncoding,
  typeMatches,
  WHOLE_BODY_LIMIT,
} from "../lib/compress.ts";
import type { Problem } from "../lib/problem.ts";
import { concat, sha256, waitFor, within } from "./helpers.ts";
import { headEnd, rawResponse } from "./wire.ts";
import { staticBody } from "../lib/http1_response.ts";

const SPEC: CompressSpec = structuredClone(DEFAULT_COMPRESS) as CompressSpec;
const MIB = 1024 * 1024;
const encoder = new TextEncoder();

// ---------------------------------------------------------------------------------------------
// Helpers

/** Deterministic JSON-like text, compressible but not trivially (xorshift picks words). */
function textChunk(index: number, size: number): Uint8Array<ArrayBuffer> {
  const words = ["alpha", "beta", "gamma", "delta", "status", "active", "id", "name", "score"];
  let x = (index + 1) * 0x9e3779b1 >>> 0;
  let text = "";
  while (text.length < size) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    text += `{"${words[x % words.length]}":${x % 100000},"i":${index}}\n`;
  }
  return encoder.encode(text.slice(0, size));
}

/** A body of `total` bytes in chunks of `chunkSize`, produced on demand (never held whole). */
function streamedBody(total: number, chunkSize = 64 * 1024): ReadableStream<Uint8Array> {
  let sent = 0;
  let index = 0;
  return new ReadableStream({
    pull(controller) {
      if (sent >= total) return controller.close();
      const chunk = textChunk(index++, Math.min(chunkSize, total - sent));
      sent += chunk.length;
      controller.enqueue(chunk);
    },
  }, { highWaterMark: 0 });
}

async function expectedHash(total: number, chunkSize?: number): Promise<string> {
  const body = streamedBody(total, chunkSize);
  return sha256(new Uint8Array(await new Response(body).arrayBuffer()));
}

/** Decompresses a whole body with an independent decoder for each coding. */
async function decompress(encoding: Encoding, bytes: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  switch (encoding) {
    case "gzip": {
      const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
        .pipeThrough(new DecompressionStream("gzip"));
      return new Uint8Array(await new Response(stream).arrayBuffer());
    }
    case "br":
      return new Uint8Array(zlib.brotliDecompressSync(bytes));
    case "zstd":
      return new Uint8Array(zlib.zstdDecompressSync(bytes));
  }
}

/** A streaming decoder: feed compressed chunks, get what they decode to so far. */
function streamingDecoder(encoding: Encoding) {
  const z = encoding === "gzip"
    ? zlib.createGunzip()
    : encoding === "br"
    ? zlib.createBrotliDecompress()
    : zlib.createZstdDecompress();
  const out: Uint8Array[] = [];
  z.on("data", (chunk: Uint8Array) => out.push(chunk));
  return {
    /** Feeds `chunk` and resolves once the decoder has processed it. */
    feed: (chunk: Uint8Array) =>
      new Promise<void>((resolve, reject) => {
        z.once("error", reject);
        z.write(chunk, () => {
          z.off("error", reject);
          resolve();
        });
      }),
    decoded: () => concat(out).length,
    close: () => z.destroy(),
  };
}

/** A backend body that sends two 4 KiB chunks, then fails with "backend reset". */
function failingBody(): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent++ === 2) return controller.error(new Error("backend reset"));
      controller.enqueue(textChunk(sent, 4096));
    },
  }, { highWaterMark: 0 });
}

function response(body: BodyInit | null, headers: HeadersInit = {}, status = 200): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "application/json", ...Object.fromEntries(new Headers(headers)) },
  });
}

const big = () => "x".repeat(4096);
const accepting = (value: string) => new Headers({ "accept-encoding": value });

/** `method /` with `Accept-Encoding: acceptEncoding` over a raw socket, read to the close. */
function askRaw(port: number, method: string, acceptEncoding: string, timeoutMs = 10_000) {
  return rawResponse(
    port,
    `${method} / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: ${acceptEncoding}\r\nConnection: close\r\n\r\n`,
    timeoutMs,
  );
}

/**
 * A Deno.serve on 127.0.0.1:0 answering with `make(req)` run through compressResponse, or
 * (`whole`) through encodeResponse with the request's signal.
 */
function compressingServer(
  spec: CompressSpec,
  make: (req: Request) => Response,
  whole = false,
) {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) =>
      whole
        ? encodeResponse(spec, req.method, req.headers, make(req), req.signal)
        : compressResponse(spec, req.method, req.headers, make(req)),
  );
  return {
    port: server.addr.port,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

// ---------------------------------------------------------------------------------------------
// checkCompress

Deno.test("checkCompress() accepts true as the defaults, false as off", () => {
  const problems: Problem[] = [];
  assert.deepEqual(checkCompress(true, "compress", problems), SPEC);
  assert.equal(checkCompress(false, "compress", problems), false);
  assert.deepEqual(problems, []);
  assert.deepEqual(SPEC.encodings, ["br", "gzip", "zstd"]);
  assert.equal(SPEC.minSize, 1024);
});

Deno.test("checkCompress() fills what an object leaves out with the defaults", () => {
  const problems: Problem[] = [];
  const spec = checkCompress(
    { encodings: ["gzip"], types: ["Text/HTML", "application/*+json"] },
    "routes[0].compress",
    problems,
  );
  assert.deepEqual(problems, []);
  assert.deepEqual(spec, {
    encodings: ["gzip"],
    minSize: 1024,
    types: ["text/html", "application/*+json"],
  });
  assert.deepEqual(checkCompress({ minSize: 0 }, "compress", problems), { ...SPEC, minSize: 0 });
});

Deno.test("checkCompress() reports each mistake at its path", () => {
  const cases: [unknown, [string, RegExp][]][] = [
    ["yes", [["compress", /"yes" is not true, false or an object/]]],
    [null, [["compress", /null is not true, false or an object/]]],
    [["gzip"], [["compress", /a list is not true, false or an object/]]],
    [{ level: 5 }, [["compress.level", /unknown key/]]],
    [{ encodings: [] }, [["compress.encodings", /not a non-empty list of encodings/]]],
    [{ encodings: "gzip" }, [["compress.encodings", /not a non-empty list/]]],
    [{ encodings: ["gzip", "deflate"] }, [["compress.encodings[1]", /"deflate" is not one of/]]],
    [{ encodings: ["br", "br"] }, [["compress.encodings[1]", /"br" is listed twice/]]],
    [{ minSize: -1 }, [["compress.minSize", /-1 is not a whole number of bytes/]]],
    [{ minSize: "1KiB" }, [["compress.minSize", /"1KiB" is not a whole number/]]],
    [{ minSize: 1.5 }, [["compress.minSize", /1.5 is not a whole number/]]],
    [{ types: [] }, [["compress.types", /not a non-empty list of media types/]]],
    [{ types: ["text/html; charset=utf-8"] }, [["compress.types[0]", /is not a media type/]]],
    [{ types: ["html"] }, [["compress.types[0]", /"html" is not a media type/]]],
    [{ types: ["*/*"] }, [["compress.types[0]", /compressed already/]]],
    [{ types: [7] }, [["compress.types[0]", /7 is not a string/]]],
    [
      { encodings: ["lz4"], minSize: "big", colour: 1 },
      [
        ["compress.colour", /unknown key/],
        ["compress.encodings[0]", /"lz4"/],
        ["compress.minSize", /"big"/],
      ],
    ],
  ];
  for (const [value, expected] of cases) {
    const problems: Problem[] = [];
    assert.equal(checkCompress(value, "compress", problems), undefined, JSON.stringify(value));
    const got = problems.map((p) => p.path).sort();
    assert.deepEqual(got, expected.map(([path]) => path).sort(), JSON.stringify(value));
    for (const [path, message] of expected) {
      const problem = problems.find((p) => p.path === path)!;
      assert.match(problem.message, message, JSON.stringify(value));
    }
  }
});

Deno.test("COMPRESS_SCHEMA allows a boolean or an object of the three keys", () => {
  const schema = COMPRESS_SCHEMA as { oneOf: { type: string; properties?: object }[] };
  assert.equal(schema.oneOf[0].type, "boolean");
  assert.deepEqual(Object.keys(schema.oneOf[1].properties!), ["encodings", "minSize", "types"]);
});

// ---------------------------------------------------------------------------------------------
// Negotiation

Deno.test("negotiateEncoding() follows q-values, identity and * (RFC 9110 §12.5.3)", () => {
  const table: [string | null, Encoding | undefined, (readonly Encoding[])?][] = [
    [null, undefined],
    ["", undefined],
    ["identity", undefined],
    ["gzip", "gzip"],
    ["GZip", "gzip"],
    ["x-gzip", "gzip"],
    ["gzip, deflate, br", "br"],
    ["gzip, deflate, br, zstd", "br"],
    ["gzip, zstd", "gzip"],
    ["zstd", "zstd"],
    ["gzip, deflate, br, zstd", "zstd", ["zstd", "gzip"]],
    ["br;q=0.5, gzip", "gzip"],
    ["br;q=1.0, gzip;q=0.999", "br"],
    ["gzip;q=0", undefined],
    ["gzip;q=0, br;q=0.1", "br"],
    ["br;q=0.001", "br"],
    ["identity;q=0.5, gzip;q=0.2", undefined],
    ["deflate", undefined],
    ["compress, deflate", undefined],
    ["*", "br"],
    ["*;q=0.5, gzip;q=0.8", "gzip"],
    ["*;q=0.5, gzip;q=0.2", "br"],
    ["*, br;q=0", "gzip"],
    ["*;q=0", undefined],
    ["*;q=0, identity", undefined],
    ["gzip;q=0.5, identity", undefined],
    ["gzip;q=0.5, identity;q=0.5", "gzip"],
    ["gzip;q=0.2, identity;q=0", "gzip"],
    ["br, gzip", "gzip", ["gzip", "br"]],
    ["gzip;q=2", undefined],
    ["gzip;q=abc, br", "br"],
    ["gzip ; q=0.8 , br ; q=0.9", "br"],
    [" , gzip", "gzip"],
    ["gzip;level=1", "gzip"],
  ];
  for (const [header, expected, offered = ENCODINGS] of table) {
    assert.equal(
      negotiateEncoding(header, offered),
      expected,
      `Accept-Encoding ${JSON.stringify(header)} offering ${offered.join(",")}`,
    );
  }
});

Deno.test("typeMatches() handles parameters, case, type/* and type/*+suffix", () => {
  const types = ["text/*", "application/json", "application/*+xml"];
  assert.ok(typeMatches("text/html; charset=utf-8", types));
  assert.ok(typeMatches("Application/JSON", types));
  assert.ok(typeMatches("application/rss+xml", types));
  assert.ok(!typeMatches("application/xml", types));
  assert.ok(!typeMatches("application/jsonx", types));
  assert.ok(!typeMatches("image/png", types));
  assert.ok(!typeMatches(null, types));
  assert.ok(!typeMatches("garbage", types));
  assert.ok(typeMatches("image/svg+xml", DEFAULT_COMPRESS.types));
  assert.ok(typeMatches("application/wasm", DEFAULT_COMPRESS.types));
  assert.ok(!typeMatches("image/jpeg", DEFAULT_COMPRESS.types));
  assert.ok(!typeMatches("application/zip", DEFAULT_COMPRESS.types));
});

// ---------------------------------------------------------------------------------------------
// compressResponse: rules

Deno.test("compressResponse() compresses and adjusts the headers", async () => {
  const original = response(big(), {
    "content-length": "4096",
    etag: '"abc"',
    "accept-ranges": "bytes",
    "x-kept": "1",
  });
  const result = compressResponse(SPEC, "GET", accepting("gzip"), original);
  assert.notEqual(result, original);
  assert.equal(result.status, 200);
  assert.equal(result.headers.get("content-encoding"), "gzip");
  // compressResponse() cannot wait for the compressed length: the body goes chunked.
  assert.equal(result.headers.get("content-length"), null);
  assert.equal(result.headers.get("accept-ranges"), null);
  assert.equal(result.headers.get("etag"), 'W/"abc"');
  assert.equal(result.headers.get("vary"), "Accept-Encoding");
  assert.equal(result.headers.get("x-kept"), "1");
  assert.equal(result.headers.get("content-type"), "application/json");
  const bytes = new Uint8Array(await result.arrayBuffer());
  assert.ok(bytes.length < 4096);
  assert.equal(new TextDecoder().decode(await decompress("gzip", bytes)), big());
});

Deno.test("compressResponse() keeps a weak ETag and a status other than 200", async () => {
  const original = response(big(), { etag: 'W/"abc"' }, 404);
  const result = compressResponse(SPEC, "GET", accepting("br"), original);
  assert.equal(result.status, 404);
  assert.equal(result.headers.get("etag"), 'W/"abc"');
  assert.equal(result.headers.get("content-encoding"), "br");
  assert.equal(new TextDecoder().decode(await decompress("br", await bytesOf(result))), big());
});

async function bytesOf(r: Response): Promise<Uint8Array<ArrayBuffer>> {
  return new Uint8Array(await r.arrayBuffer());
}

Deno.test("compressResponse() leaves alone what it must not compress", async (t) => {
  const gz = new Uint8Array(zlib.gzipSync(big()));
  const cases: [string, () => Response, string?, Headers?][] = [
    ["a backend-encoded body", () => response(gz, { "content-encoding": "gzip" })],
    ["a backend-encoded body (br, odd case)", () => response(gz, { "content-encoding": "BR" })],
    [
      "Cache-Control: no-transform",
      () => response(big(), { "cache-control": "public, No-Transform" }),
    ],
    ["a type not listed", () => response(big(), { "content-type": "image/png" })],
    ["no Content-Type", () => new Response(big(), { headers: { "content-type": "" } })],
    [
      "Content-Length below minSize",
      () => response("x".repeat(1023), { "content-length": "1023" }),
    ],
    ["206", () => response(big(), { "content-range": "bytes 0-4095/9999" }, 206)],
    ["204", () => response(null, {}, 204)],
    ["304", () => response(null, { etag: '"a"' }, 304)],
    ["no body", () => response(null)],
  ];
  for (const [name, make] of cases) {
    await t.step(`${name}: untouched`, async () => {
      const original = make();
      const result = compressResponse(SPEC, "GET", accepting("gzip, br, zstd"), original);
      assert.equal(result, original);
      assert.equal(result.headers.get("vary"), null);
      await result.body?.cancel();
    });
  }
});

Deno.test("compressResponse() does not compress for HEAD, Range or a refusing client, but adds Vary", async (t) => {
  const cases: [string, string, Headers][] = [
    ["HEAD", "HEAD", accepting("gzip")],
    ["Range", "GET", new Headers({ "accept-encoding": "gzip", range: "bytes=0-10" })],
    ["no Accept-Encoding", "GET", new Headers()],
    ["identity only", "GET", accepting("identity")],
    ["gzip;q=0", "GET", accepting("gzip;q=0, deflate")],
    ["codings not offered", "GET", accepting("br")],
  ];
  const spec = { ...SPEC, encodings: ["gzip" as const] };
  for (const [name, method, headers] of cases) {
    await t.step(name, async () => {
      const original = response(big(), { "content-length": "4096", etag: '"e"' });
      const result = compressResponse(spec, method, headers, original);
      assert.equal(result.headers.get("content-encoding"), null);
      assert.equal(result.headers.get("content-length"), "4096");
      assert.equal(result.headers.get("etag"), '"e"');
      assert.equal(result.headers.get("vary"), "Accept-Encoding");
      assert.equal(await result.text(), big());
    });
  }
});

Deno.test("compressResponse() compresses a body of unknown length and one of exactly minSize", async () => {
  const unknown = response(streamedBody(10));
  const r1 = compressResponse(SPEC, "GET", accepting("gzip"), unknown);
  assert.equal(r1.headers.get("content-encoding"), "gzip");
  await r1.body!.cancel();
  const exact = response("y".repeat(1024), { "content-length": "1024" });
  const r2 = compressResponse(SPEC, "GET", accepting("gzip"), exact);
  assert.equal(r2.headers.get("content-encoding"), "gzip");
  await r2.body!.cancel();
  const identity = response(big(), { "content-encoding": "identity" });
  const r3 = compressResponse(SPEC, "GET", accepting("zstd"), identity);
  assert.equal(r3.headers.get("content-encoding"), "zstd");
  await r3.body!.cancel();
});

Deno.test("compressResponse() sizes a body held in memory without Content-Length against minSize", async () => {
  // The balancer's own answers: a short text, no Content-Length header.
  const short = compressResponse(SPEC, "GET", accepting("gzip"), response("Bad Gateway\n"));
  assert.equal(short.headers.get("content-encoding"), null);
  assert.equal(await short.text(), "Bad Gateway\n");
  // 400 three-byte characters: 400 UTF-16 units, 1,200 bytes, over minSize (1,024).
  const wide = compressResponse(SPEC, "GET", accepting("gzip"), response("€".repeat(400)));
  assert.equal(wide.headers.get("content-encoding"), "gzip");
  await wide.body!.cancel();
  const bytes = compressResponse(SPEC, "GET", accepting("gzip"), response(new Uint8Array(2000)));
  assert.equal(bytes.headers.get("content-encoding"), "gzip");
  await bytes.body!.cancel();
});

Deno.test("compressResponse() appends to Vary without duplicating it", async () => {
  const cases: [string, string][] = [
    ["Origin", "Origin, Accept-Encoding"],
    ["origin, accept-encoding", "origin, accept-encoding"],
    ["Accept-Encoding", "Accept-Encoding"],
    ["*", "*"],
  ];
  for (const [vary, expected] of cases) {
    for (const accept of ["gzip", "identity"]) {
      const result = compressResponse(SPEC, "GET", accepting(accept), response(big(), { vary }));
      assert.equal(result.headers.get("vary"), expected, `Vary ${vary}, ${accept}`);
      await result.body!.cancel();
    }
  }
});

Deno.test("compressResponse() never compresses twice", async () => {
  const once = compressResponse(SPEC, "GET", accepting("gzip, br"), response(big()));
  assert.equal(once.headers.get("content-encoding"), "br");
  const twice = compressResponse(SPEC, "GET", accepting("gzip, br"), once);
  assert.equal(twice, once);
  assert.equal(new TextDecoder().decode(await decompress("br", await bytesOf(twice))), big());
});

// ---------------------------------------------------------------------------------------------
// Round trips and streaming

for (const encoding of ENCODINGS) {
  Deno.test(`compressResponse() round-trips 5 MiB streamed byte-exact with ${encoding}`, async () => {
    const result = compressResponse(
      SPEC,
      "GET",
      accepting(encoding),
      response(streamedBody(5 * MIB)),
    );
    assert.equal(result.headers.get("content-encoding"), encoding);
    const compressed = await bytesOf(result);
    assert.ok(compressed.length < 2 * MIB, `${encoding}: ${compressed.length} bytes`);
    assert.equal(await sha256(await decompress(encoding, compressed)), await expectedHash(5 * MIB));
  });

  Deno.test(`compressResponse() sends ${encoding} bytes before the backend has finished`, async () => {
    const first = textChunk(0, 8192);
    let release!: () => void;
    const released = new Promise<void>((resolve) => release = resolve);
    let finished = false;
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(first);
        await released;
        controller.enqueue(textChunk(1, 8192));
        finished = true;
        controller.close();
      },
    });
    const result = compressResponse(SPEC, "GET", accepting(encoding), response(body));
    const reader = result.body!.getReader();
    const decoder = streamingDecoder(encoding);
    try {
      // The first chunk decodes whole from what arrived while the backend still holds the rest.
      for (let i = 0; i < 100 && decoder.decoded() < first.length; i++) {
        const { value, done } = await within(reader.read(), 10_000, "first compressed bytes");
        assert.ok(!done, "the body ended before the backend finished");
        await decoder.feed(value!);
      }
      assert.equal(decoder.decoded(), first.length);
      assert.equal(finished, false);
      release();
      const rest: Uint8Array[] = [];
      for (let i = 0; i < 1000; i++) {
        const { value, done } = await within(reader.read(), 10_000, "the rest");
        if (done) break;
        rest.push(value!);
      }
      assert.ok(finished);
      assert.ok(rest.length > 0);
    } finally {
      release();
      decoder.close();
      reader.releaseLock();
    }
  });
}

for (const encoding of ENCODINGS) {
  Deno.test(`compressResponse() with ${encoding} cancels the backend body when the client goes`, async () => {
    let cancelled: unknown = "not cancelled";
    const body = new ReadableStream<Uint8Array>({
      pull: (controller) => controller.enqueue(textChunk(0, 4096)),
      cancel: (reason) => {
        cancelled = reason;
      },
    }, { highWaterMark: 0 });
    const result = compressResponse(SPEC, "GET", accepting(encoding), response(body));
    const reader = result.body!.getReader();
    for (let i = 0; i < 3; i++) await within(reader.read(), 10_000, "compressed bytes");
    await within(reader.cancel("client gone"), 10_000, "cancel");
    // The pipe from the backend cancels it a few event-loop turns later.
    await waitFor(() => cancelled !== "not cancelled", 10_000);
    assert.equal(cancelled, "client gone");
  });

  Deno.test(`compressResponse() with ${encoding} fails the body when the backend's fails`, async () => {
    const body = failingBody();
    const result = compressResponse(SPEC, "GET", accepting(encoding), response(body));
    await assert.rejects(within(result.arrayBuffer(), 10_000, "the body"), /backend reset/);
  });
}

/** Whether the zstd command-line tool runs here (Debian package zstd). */
const HAS_ZSTD_CLI = await new Deno.Command("zstd", {
  args: ["--version"],
  stdout: "null",
  stderr: "null",
}).output().then((o) => o.success, () => false);

Deno.test({
  name: "compressResponse() output decodes with the zstd command-line tool",
  ignore: !HAS_ZSTD_CLI,
}, async () => {
  const result = compressResponse(SPEC, "GET", accepting("zstd"), response(streamedBody(MIB)));
  const compressed = await bytesOf(result);
  const child = new Deno.Command("zstd", { args: ["-d", "-c"], stdin: "piped", stdout: "piped" })
    .spawn();
  const writer = child.stdin.getWriter();
  const [output] = await Promise.all([
    child.output(),
    writer.write(compressed).then(() => writer.close()),
  ]);
  assert.ok(output.success);
  assert.equal(await sha256(new Uint8Array(output.stdout)), await expectedHash(MIB));
});

// ---------------------------------------------------------------------------------------------
// Real sockets

for (const encoding of ENCODINGS) {
  Deno.test(`a Deno.serve using compressResponse() sends 5 MiB of ${encoding} that decodes byte-exact`, async () => {
    await using server = compressingServer(SPEC, () => response(streamedBody(5 * MIB)));
    const { statusLine: head, headers, body } = await askRaw(server.port, "GET", encoding, 30_000);
    assert.match(head, /^HTTP\/1\.1 200/);
    assert.equal(headers.get("content-encoding"), encoding);
    assert.equal(headers.get("content-length"), null);
    assert.equal(headers.get("vary"), "Accept-Encoding");
    assert.equal(await sha256(await decompress(encoding, body)), await expectedHash(5 * MIB));
  });
}

Deno.test("a Deno.serve using compressResponse() passes a backend-encoded body byte-identical", async () => {
  const encoded = zlib.gzipSync(textChunk(7, 20_000));
  await using server = compressingServer(
    SPEC,
    () => response(encoded.slice(), { "content-encoding": "gzip", etag: '"s"' }),
  );
  const { headers, body } = await askRaw(server.port, "GET", "gzip, br, zstd");
  assert.equal(headers.get("content-encoding"), "gzip");
  assert.equal(headers.get("etag"), '"s"');
  assert.equal(headers.get("vary"), null);
  assert.deepEqual(body, new Uint8Array(encoded));
});

Deno.test("a Deno.serve using compressResponse() answers HEAD uncompressed with Vary", async () => {
  await using server = compressingServer(SPEC, () => response(big()));
  const { headers, body } = await askRaw(server.port, "HEAD", "gzip");
  assert.equal(headers.get("content-encoding"), null);
  assert.equal(headers.get("vary"), "Accept-Encoding");
  assert.equal(body.length, 0);
});

Deno.test("a Deno.serve using compressResponse() streams: compressed bytes arrive before the backend finishes", async () => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  let finished = false;
  await using server = compressingServer(SPEC, () =>
    response(
      new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(textChunk(0, 8192));
          await released;
          controller.enqueue(textChunk(1, 8192));
          finished = true;
          controller.close();
        },
      }),
    ));
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  try {
    await conn.write(
      encoder.encode(
        "GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
      ),
    );
    const buffer = new Uint8Array(65536);
    let received = new Uint8Array(0);
    const end = () => headEnd(received);
    // Until the head and some body (a chunk-size line and gzip bytes) have arrived.
    for (let i = 0; i < 100 && (end() < 0 || received.length < end() + 4 + 20); i++) {
      const n = await within(conn.read(buffer), 10_000, "compressed bytes");
      if (n === null) break;
      received = concat([received, buffer.slice(0, n)]);
    }
    assert.ok(end() > 0);
    assert.ok(received.length >= end() + 24, "no compressed bytes before the backend ended");
    assert.equal(finished, false);
    assert.match(new TextDecoder().decode(received), /content-encoding: gzip/i);
    release();
    for (let i = 0; i < 1000; i++) {
      const n = await within(conn.read(buffer), 10_000, "the end of the response");
      if (n === null) break;
    }
    assert.ok(finished);
  } finally {
    release();
    conn.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Whole bodies (Content-Length up to WHOLE_BODY_LIMIT)

/** A body of `total` bytes with its Content-Length, in 64 KiB chunks. */
function lengthed(total: number): Response {
  return response(streamedBody(total), { "content-length": String(total), etag: '"w"' });
}

for (const encoding of ENCODINGS) {
  Deno.test(`encodeResponse() compresses a ${encoding} body of known length whole, with its exact Content-Length`, async () => {
    const total = 200 * 1024;
    const result = await encodeResponse(SPEC, "GET", accepting(encoding), lengthed(total));
    assert.equal(result.headers.get("content-encoding"), encoding);
    assert.equal(result.headers.get("etag"), 'W/"w"');
    assert.equal(result.headers.get("vary"), "Accept-Encoding");
    const compressed = await bytesOf(result);
    assert.ok(compressed.length < total / 2, `${encoding}: ${compressed.length} bytes`);
    assert.equal(result.headers.get("content-length"), String(compressed.length));
    assert.equal(await sha256(await decompress(encoding, compressed)), await expectedHash(total));
  });

  Deno.test(`a Deno.serve using encodeResponse() sends ${encoding} with an exact Content-Length, byte-exact`, async () => {
    const total = WHOLE_BODY_LIMIT;
    await using server = compressingServer(SPEC, () => lengthed(total), true);
    const { statusLine: head, headers, body } = await askRaw(server.port, "GET", encoding);
    assert.match(head, /^HTTP\/1\.1 200/);
    assert.equal(headers.get("transfer-encoding"), null);
    assert.equal(headers.get("content-encoding"), encoding);
    assert.equal(headers.get("content-length"), String(body.length));
    assert.equal(await sha256(await decompress(encoding, body)), await expectedHash(total));
  });
}

Deno.test("encodeResponse() streams bodies above WHOLE_BODY_LIMIT or of unknown length", async (t) => {
  const cases: [string, () => Response, number][] = [
    ["WHOLE_BODY_LIMIT + 1 bytes", () => lengthed(WHOLE_BODY_LIMIT + 1), WHOLE_BODY_LIMIT + 1],
    ["unknown length", () => response(streamedBody(100_000)), 100_000],
    ["a Content-Length that is not a number", () => {
      const r = response(streamedBody(5000));
      r.headers.set("content-length", "5e3");
      return r;
    }, 5000],
  ];
  for (const [name, make, total] of cases) {
    await t.step(name, async () => {
      const result = await encodeResponse(SPEC, "GET", accepting("gzip"), make());
      assert.equal(result.headers.get("content-encoding"), "gzip");
      assert.equal(result.headers.get("content-length"), null);
      const bytes = await decompress("gzip", await bytesOf(result));
      assert.equal(await sha256(bytes), await expectedHash(total));
    });
  }
});

Deno.test("encodeResponse() leaves alone what compressResponse() leaves alone", async () => {
  const small = response("x".repeat(1023), { "content-length": "1023" });
  assert.equal(await encodeResponse(SPEC, "GET", accepting("gzip"), small), small);
  await small.body!.cancel();
  const head = await encodeResponse(SPEC, "HEAD", accepting("gzip"), lengthed(4096));
  assert.equal(head.headers.get("content-encoding"), null);
  assert.equal(head.headers.get("content-length"), "4096");
  assert.equal(head.headers.get("vary"), "Accept-Encoding");
  await head.body!.cancel();
});

Deno.test("encodeResponse() compresses a body shorter or longer than its Content-Length whole", async () => {
  for (const declared of [1024, 100_000]) {
    const r = response(streamedBody(50_000, 4096), { "content-length": String(declared) });
    const result = await encodeResponse(SPEC, "GET", accepting("br"), r);
    const compressed = await bytesOf(result);
    assert.equal(result.headers.get("content-length"), String(compressed.length));
    const expected = await expectedHash(50_000, 4096);
    assert.equal(await sha256(await decompress("br", compressed)), expected);
  }
});

/** A backend body that sends one chunk, then waits until cancelled; records the reason. */
function stalledBody() {
  const state = { pulls: 0, cancelled: "not cancelled" as unknown };
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      // The second pull means the first chunk was taken: it never settles (a stalled backend).
      if (state.pulls++ === 0) return controller.enqueue(textChunk(0, 4096));
      return new Promise<void>(() => {});
    },
    cancel(reason) {
      state.cancelled = reason;
    },
  }, { highWaterMark: 0 });
  return { state, body };
}

Deno.test("encodeResponse() cancels the backend body when the signal fires while it is read", async () => {
  const { state, body } = stalledBody();
  const aborter = new AbortController();
  const pending = encodeResponse(
    SPEC,
    "GET",
    accepting("gzip"),
    response(body, { "content-length": "100000" }),
    aborter.signal,
  );
  assert.ok(await waitFor(() => state.pulls >= 2, 10_000), "the body is being read");
  aborter.abort(new Error("client gone"));
  const result = await within(pending, 10_000, "encodeResponse");
  assert.equal((state.cancelled as Error).message, "client gone");
  assert.equal(result.body, null, "nobody is there to read a body");
});

Deno.test("encodeResponse() answers with a failing body when the backend's fails while read", async () => {
  const body = failingBody();
  const r = response(body, { "content-length": "100000" });
  const result = await encodeResponse(SPEC, "GET", accepting("zstd"), r);
  assert.equal(result.headers.get("content-length"), null);
  await assert.rejects(within(result.arrayBuffer(), 10_000, "the body"), /backend reset/);
});

Deno.test("compressResponse() compresses a body of known length whole and cancels it with the client", async () => {
  const total = 100_000;
  const result = compressResponse(SPEC, "GET", accepting("zstd"), lengthed(total));
  assert.equal(result.headers.get("content-length"), null);
  const chunks: Uint8Array[] = [];
  for await (const chunk of result.body!) chunks.push(chunk);
  assert.equal(chunks.length, 1, "one compressed chunk");
  assert.equal(await sha256(await decompress("zstd", chunks[0])), await expectedHash(total));

  for (const readFirst of [false, true]) {
    const { state, body } = stalledBody();
    const r = response(body, { "content-length": "100000" });
    const stream = compressResponse(SPEC, "GET", accepting("gzip"), r).body!;
    const reader = stream.getReader();
    const read = reader.read().catch(() => undefined);
    if (readFirst) assert.ok(await waitFor(() => state.pulls >= 2, 10_000), "body read");
    await within(reader.cancel("client gone"), 10_000, "cancel");
    await read;
    assert.ok(await waitFor(() => state.cancelled !== "not cancelled", 10_000));
    assert.equal(state.cancelled, "client gone");
  }
});

Deno.test("a Deno.serve using encodeResponse() cancels the backend body when the client hangs up during the read", async () => {
  const { state, body } = stalledBody();
  await using server = compressingServer(
    SPEC,
    () => response(body, { "content-length": "100000" }),
    true,
  );
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  try {
    await conn.write(
      encoder.encode("GET / HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br\r\n\r\n"),
    );
    assert.ok(await waitFor(() => state.pulls >= 2, 10_000), "the body is being read");
  } finally {
    conn.close();
  }
  assert.ok(await waitFor(() => state.cancelled !== "not cancelled", 10_000), "body cancelled");
});

Deno.test("encodeResponse() leaves a body held in memory unread when it does not compress it", async () => {
  // An image type (not compressed), and a body too small to be worth it: both kept as they are,
  // their bytes still held (the native front end writes them from its pooled buffer).
  const image = new Response(new Uint8Array(4096), { headers: { "content-type": "image/png" } });
  assert.equal(await encodeResponse(SPEC, "GET", accepting("gzip"), image), image);
  const tiny = new Response(encoder.encode("ok"), {
    headers: { "content-type": "text/plain", "content-length": "2" },
  });
  assert.equal(await encodeResponse(SPEC, "GET", accepting("gzip"), tiny), tiny);
  for (const response of [image, tiny]) {
    assert.notEqual(staticBody(response), undefined, "the body was turned into a stream");
  }
});
