/**
 * @module
 * Response compression (nginx `gzip`, Caddy `encode`, Traefik `compress`): the `compress` key of a
 * route or of the top level ({@linkcode checkCompress}), content negotiation on the client's
 * `Accept-Encoding` ({@linkcode negotiateEncoding}) and the response rewrite
 * ({@linkcode encodeResponse}; {@linkcode compressResponse} for callers that cannot wait).
 *
 * Two ways to compress, because setting up a compression stream costs more than one synchronous
 * call on a small body (bench/results/compress):
 * - a body with a `Content-Length` up to {@linkcode WHOLE_BODY_LIMIT} is read whole and
 *   compressed in one call ({@linkcode compressWhole}); `encodeResponse` then sends the exact
 *   compressed `Content-Length`. Its first byte waits for the backend's last.
 * - larger bodies and bodies of unknown length stream ({@linkcode compressor}): each chunk from the
 *   backend is compressed and flushed as it arrives, so server-sent events still flow.
 *
 * Encodings and levels, chosen for on-the-fly compression (CPU per request matters more than the
 * last percent of ratio, as in nginx and Caddy):
 * - `zstd`: level 3 (zstd's default, Caddy's `encode zstd`). Browsers since Chrome 123 and
 *   Firefox 126 send it; offered last by default (see {@linkcode ENCODINGS}).
 * - `br`: quality 4 with a 512 KiB window (lgwin 19, ngx_brotli's default window): quality 4 is
 *   where brotli beats gzip 6 on both size and CPU; 11 (the library default) is for static files.
 * - `gzip`: level 6 (`CompressionStream`, zlib's default; set nginx `gzip_comp_level 6` to compare).
 *
 * Default types: `text/*`, JSON and XML (also `+json`/`+xml` such as `application/ld+json`,
 * `application/rss+xml`), JavaScript, SVG and WebAssembly (compresses 3-4x), as Caddy's defaults.
 * Images other than SVG, fonts as WOFF, video and archives are compressed already.
 *
 * Left untouched: HEAD, 204/304/1xx, 206 and requests with `Range` (ranges of a compressed body
 * are not supported), `Cache-Control: no-transform`, bodies the backend encoded (never twice),
 * other types, and a `Content-Length` below `minSize`. A compressed response loses
 * `Accept-Ranges` and digests of the uncompressed bytes (and `Content-Length` when streamed), and
 * a strong ETag becomes weak (`W/`), as nginx does, since the bytes differ from the backend's.
 */

import { nodeZlib } from "./node_builtins.ts";
import { childPath } from "./jsonc.ts";
import { isToken, TCHAR } from "./http_token.ts";
import { type Problem, show } from "./problem.ts";
import { staticBody } from "./http1_response.ts";

/** What the compressors emit: bytes in an ordinary (not shared) buffer. */
type Bytes = Uint8Array<ArrayBuffer>;

/** A content coding this module produces. */
export type Encoding = "zstd" | "br" | "gzip";

/** The `compress` setting once checked. */
export interface CompressSpec {
  /**
   * Codings offered, in the server's order of preference (it breaks ties between codings the
   * client weighs equally). @default ["br", "gzip", "zstd"]
   */
  encodings: Encoding[];
  /** Bodies with a `Content-Length` below this many bytes are sent as they are. @default 1024 */
  minSize: number;
  /**
   * Media types to compress, lower-case: `type/subtype`, `type/*` or `type/*+suffix`.
   * @default DEFAULT_TYPES
   */
  types: string[];
}

/**
 * Every coding, in the default order of preference: br gave the fewest bytes; zstd costs the
 * least CPU but few clients send it yet (bench/results/compress).
 */
export const ENCODINGS: readonly Encoding[] = ["br", "gzip", "zstd"];

/** The media types compressed when `types` is not given. */
export const DEFAULT_TYPES: readonly string[] = [
  "text/*",
  "application/json",
  "application/*+json",
  "application/javascript",
  "application/xml",
  "application/*+xml",
  "image/svg+xml",
  "application/wasm",
];

/** The defaults `"compress": true` stands for. */
export const DEFAULT_COMPRESS: Readonly<CompressSpec> = Object.freeze({
  encodings: [...ENCODINGS],
  minSize: 1024,
  types: [...DEFAULT_TYPES],
});

/** gzip level (zlib's default, and `CompressionStream`'s). */
export const GZIP_LEVEL = 6;
/** zstd level (zstd's own default, as Caddy). */
export const ZSTD_LEVEL = 3;
/** Brotli quality for on-the-fly compression. */
export const BROTLI_QUALITY = 4;
/** Brotli window, log2 bytes: 512 KiB bounds the memory of each response being compressed. */
export const BROTLI_WINDOW_BITS = 19;

/**
 * Bodies with a `Content-Length` up to this many bytes are compressed whole, in one synchronous
 * call: above it a stream's set-up cost matters little, and one call holds the event loop for
 * about a millisecond at most (bench/results/compress).
 */
export const WHOLE_BODY_LIMIT = 256 * 1024;

const KEYS = ["encodings", "minSize", "types"];
/** `type/subtype`, `type/*` or `type/*+suffix` (RFC 6838 names are tokens). */
const TYPE_SOURCE = `^${TCHAR}+/(\\*|\\*\\+${TCHAR}+|${TCHAR}+)$`;
const TYPE_PATTERN = new RegExp(TYPE_SOURCE);

// ---------------------------------------------------------------------------------------------
// Check

function fail(problems: Problem[], path: string, message: string): undefined {
  problems.push({ path, message });
  return undefined;
}

/**
 * Checks a `compress` value: `true` gives {@linkcode DEFAULT_COMPRESS}, `false` turns compression
 * off (overriding a top-level default), an object overrides some defaults. Pushes one problem per
 * mistake at its JSON path under `path` and returns undefined when the value is unusable.
 */
export function checkCompress(
  value: unknown,
  path: string,
  problems: Problem[],
): CompressSpec | false | undefined {
  if (value === false) return false;
  if (value === true) return structuredClone(DEFAULT_COMPRESS) as CompressSpec;
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return fail(problems, path, `${show(value)} is not true, false or an object`);
  }
  const object = value as Record<string, unknown>;
  const before = problems.length;
  for (const key of Object.keys(object)) {
    if (!KEYS.includes(key)) {
      fail(problems, childPath(path, key), `unknown key (expected one of ${KEYS.join(", ")})`);
    }
  }
  const spec = structuredClone(DEFAULT_COMPRESS) as CompressSpec;
  if (Object.hasOwn(object, "encodings")) {
    const encodings = checkEncodings(object.encodings, childPath(path, "encodings"), problems);
    if (encodings) spec.encodings = encodings;
  }
  if (Object.hasOwn(object, "minSize")) {
    const at = childPath(path, "minSize");
    const size = object.minSize;
    if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
      fail(problems, at, `${show(size)} is not a whole number of bytes (0 or more)`);
    } else spec.minSize = size;
  }
  if (Object.hasOwn(object, "types")) {
    const types = checkTypes(object.types, childPath(path, "types"), problems);
    if (types) spec.types = types;
  }
  return problems.length > before ? undefined : spec;
}

function checkEncodings(value: unknown, path: string, problems: Problem[]) {
  if (!Array.isArray(value) || value.length === 0) {
    return fail(problems, path, `${show(value)} is not a non-empty list of encodings`);
  }
  const before = problems.length;
  value.forEach((item, i) => {
    const at = childPath(path, i);
    if (!ENCODINGS.includes(item as Encoding)) {
      fail(problems, at, `${show(item)} is not one of ${ENCODINGS.map(show).join(", ")}`);
    } else if (value.indexOf(item) !== i) fail(problems, at, `${show(item)} is listed twice`);
  });
  return problems.length > before ? undefined : value as Encoding[];
}

function checkTypes(value: unknown, path: string, problems: Problem[]) {
  if (!Array.isArray(value) || value.length === 0) {
    return fail(problems, path, `${show(value)} is not a non-empty list of media types`);
  }
  const before = problems.length;
  const types = value.map((item, i) => {
    const at = childPath(path, i);
    if (typeof item !== "string") return fail(problems, at, `${show(item)} is not a string`);
    const type = item.toLowerCase();
    if (type === "*/*" || type === "*") {
      return fail(
        problems,
        at,
        `${show(item)} would compress images and archives that are compressed already: ` +
          "list the types",
      );
    }
    if (!TYPE_PATTERN.test(type)) {
      return fail(
        problems,
        at,
        `${show(item)} is not a media type (type/subtype, type/* or type/*+suffix, ` +
          "without parameters)",
      );
    }
    return type;
  });
  return problems.length > before ? undefined : types as string[];
}

/** JSON Schema of the `compress` key, for `lb.schema.json`. */
export const COMPRESS_SCHEMA: object = {
  description: "Compress responses (gzip, br, zstd) for clients that accept it. true: the " +
    "defaults; false: off (overrides a top-level default); an object: some defaults replaced.",
  oneOf: [
    { type: "boolean" },
    {
      type: "object",
      additionalProperties: false,
      properties: {
        encodings: {
          type: "array",
          minItems: 1,
          uniqueItems: true,
          items: { enum: [...ENCODINGS] },
          default: [...ENCODINGS],
          description: "Codings offered, preferred first (breaks ties in Accept-Encoding).",
        },
        minSize: {
          type: "integer",
          minimum: 0,
          default: DEFAULT_COMPRESS.minSize,
          description: "Bodies whose Content-Length is below this (bytes) are not compressed.",
        },
        types: {
          type: "array",
          minItems: 1,
          items: {
            type: "string",
            pattern: TYPE_SOURCE,
          },
          default: [...DEFAULT_TYPES],
          description: "Media types to compress: type/subtype, type/* or type/*+suffix.",
        },
      },
    },
  ],
};

// ---------------------------------------------------------------------------------------------
// Negotiation

/**
 * The coding to answer with, from `offered` (server preference first), for a request's
 * `Accept-Encoding` (RFC 9110 §12.5.3), or undefined for none (identity). A coding the client does
 * not list is acceptable only through `*`; `q=0` refuses it. Identity, when not listed, is the
 * least preferred choice; listed (or through `*`) with a weight above every offered coding's, it
 * wins. When nothing is acceptable, not even identity, the body goes as it is (no 406, as nginx).
 * Without the header nothing is compressed (as nginx and Caddy: old clients send none). `x-gzip`
 * is gzip (RFC 9110 §8.4.1.3). Malformed members are ignored.
 */
export function negotiateEncoding(
  acceptEncoding: string | null,
  offered: readonly Encoding[],
): Encoding | undefined {
  if (acceptEncoding === null) return undefined;
  const weights = parseAcceptEncoding(acceptEncoding);
  const star = weights.get("*");
  // Unlisted, identity is acceptable but least preferred: "br;q=0.1" alone still asks for br.
  const identity = weights.get("identity") ?? star ?? 0;
  let best: Encoding | undefined;
  let bestWeight = 0;
  for (const coding of offered) {
    const weight = weights.get(coding) ?? star ?? 0;
    if (weight > bestWeight) [best, bestWeight] = [coding, weight];
  }
  // Equal weights: compressing is what a client listing both asked for.
  return bestWeight >= identity ? best : undefined;
}

/** Coding (lower-case) to weight; a coding listed twice keeps its first weight. */
function parseAcceptEncoding(text: string): Map<string, number> {
  const weights = new Map<string, number>();
  for (const member of text.split(",")) {
    const [name, ...params] = member.split(";").map((part) => part.trim());
    if (!isToken(name)) continue;
    let weight = 1;
    let valid = true;
    for (const param of params) {
      const match = /^[qQ]\s*=\s*(0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$/.exec(param);
      if (match) weight = Number(match[1]);
      else if (/^[qQ]\s*=/.test(param)) valid = false;
    }
    const coding = name.toLowerCase() === "x-gzip" ? "gzip" : name.toLowerCase();
    if (valid && !weights.has(coding)) weights.set(coding, weight);
  }
  return weights;
}

// ---------------------------------------------------------------------------------------------
// Response

/** Whether `contentType` (a Content-Type value, parameters allowed) is one of `types`. */
export function typeMatches(contentType: string | null, types: readonly string[]): boolean {
  if (contentType === null) return false;
  const media = contentType.split(";", 1)[0].trim().toLowerCase();
  const slash = media.indexOf("/");
  if (slash <= 0) return false;
  const top = media.slice(0, slash);
  const sub = media.slice(slash + 1);
  for (const pattern of types) {
    if (pattern === media) return true;
    const [patternTop, patternSub] = pattern.split("/");
    if (patternTop !== top) continue;
    if (patternSub === "*") return true;
    if (patternSub.startsWith("*+") && sub.endsWith(patternSub.slice(1))) return true;
  }
  return false;
}

/**
 * Whether the response's form depends on the client's Accept-Encoding: it is a body this
 * module would compress for a client that accepts a coding (status, type, size, not encoded,
 * transforms allowed).
 */
function compressible(spec: CompressSpec, response: Response): boolean {
  const status = response.status;
  if (status < 200 || status === 204 || status === 206 || status === 304) return false;
  // A body held in memory is not null, and `.body` would turn it into a stream (a copy, and
  // the native front end's buffer not reused) even when the answer is not compressed.
  const held = staticBody(response);
  if (held === undefined && response.body === null) return false;
  const headers = response.headers;
  const encoding = headers.get("content-encoding");
  if (encoding !== null && encoding.trim().toLowerCase() !== "identity") return false;
  if (/(?:^|,)\s*no-transform\s*(?:,|$)/i.test(headers.get("cache-control") ?? "")) return false;
  if (!typeMatches(headers.get("content-type"), spec.types)) return false;
  const length = headers.get("content-length");
  if (length !== null && /^\d+$/.test(length.trim())) return Number(length) >= spec.minSize;
  // Without the header, a body held in memory (the balancer's own answers) still has a size.
  return held === undefined || heldSize(held, spec.minSize) >= spec.minSize;
}

/** The byte size of a held body, or `atLeast` once it is known to reach it. */
function heldSize(held: Uint8Array | string, atLeast: number): number {
  if (typeof held !== "string") return held.length;
  // UTF-8 takes 1 to 3 bytes per UTF-16 unit: encode only when the bounds straddle `atLeast`.
  if (held.length >= atLeast) return atLeast;
  if (held.length * 3 < atLeast) return held.length;
  return new TextEncoder().encode(held).length;
}

/** `vary` with `Accept-Encoding` added, unless it is there already or is `*`. */
export function addVary(vary: string | null): string {
  if (vary === null || vary.trim() === "") return "Accept-Encoding";
  const names = vary.split(",").map((name) => name.trim().toLowerCase());
  if (names.includes("accept-encoding") || names.includes("*")) return vary;
  return `${vary}, Accept-Encoding`;
}

/** A copy of `response` with other headers and the same (unread) body. */
function withHeaders(
  response: Response,
  headers: Headers,
  body: BodyInit | null = response.body,
): Response {
  return new Response(body, { status: response.status, statusText: response.statusText, headers });
}

/** What {@linkcode plan} decided: leave the response (maybe with Vary), or compress it. */
type Plan =
  | { kind: "keep"; response: Response }
  | { kind: "compress"; encoding: Encoding; headers: Headers; length: number | undefined };

/** The shared decision of {@linkcode compressResponse} and {@linkcode encodeResponse}. */
function plan(
  spec: CompressSpec,
  method: string,
  requestHeaders: Headers,
  response: Response,
): Plan {
  if (!compressible(spec, response)) return { kind: "keep", response };
  const headers = new Headers(response.headers);
  const vary = addVary(headers.get("vary"));
  const varyChanged = vary !== headers.get("vary");
  if (varyChanged) headers.set("vary", vary);
  const encoding = method === "HEAD" || requestHeaders.has("range")
    ? undefined
    : negotiateEncoding(requestHeaders.get("accept-encoding"), spec.encodings);
  if (encoding === undefined) {
    return { kind: "keep", response: varyChanged ? withHeaders(response, headers) : response };
  }
  const lengthText = headers.get("content-length")?.trim() ?? "";
  const length = /^\d+$/.test(lengthText) ? Number(lengthText) : undefined;
  headers.delete("content-length");
  headers.delete("content-encoding");
  headers.set("content-encoding", encoding);
  // A range of the compressed bytes is not something we can serve (nginx clears it too).
  headers.delete("accept-ranges");
  // Digests of the backend's bytes would not match the compressed ones (RFC 9530).
  headers.delete("content-digest");
  headers.delete("repr-digest");
  headers.delete("content-md5");
  const etag = headers.get("etag");
  if (etag !== null && etag.startsWith('"')) headers.set("etag", `W/${etag}`);
  const safe = length !== undefined && Number.isSafeInteger(length) ? length : undefined;
  return { kind: "compress", encoding, headers, length: safe };
}

/** Whether a body of `length` bytes is compressed whole, in one call, rather than streamed. */
function isWhole(length: number | undefined): length is number {
  return length !== undefined && length <= WHOLE_BODY_LIMIT;
}

/**
 * The response to send, for callers that cannot wait: `response` itself when it must not be
 * compressed (Vary may still be added), else a new Response with adjusted headers and no
 * `Content-Length`. A body with a `Content-Length` up to {@linkcode WHOLE_BODY_LIMIT} is read
 * whole and compressed in one call inside the body stream (cheap, but its length is not known
 * when the head goes); others stream through {@linkcode compressor}. Prefer
 * {@linkcode encodeResponse}, which also sends the exact `Content-Length`.
 */
export function compressResponse(
  spec: CompressSpec,
  method: string,
  requestHeaders: Headers,
  response: Response,
): Response {
  const decided = plan(spec, method, requestHeaders, response);
  if (decided.kind === "keep") return decided.response;
  const { encoding, headers, length } = decided;
  const body = isWhole(length)
    ? wholeBodyStream(response.body!, encoding, length)
    : response.body!.pipeThrough(compressor(encoding, length));
  return withHeaders(response, headers, body);
}

/**
 * The response to send: `response` itself when it must not be compressed (Vary may still be
 * added), else a new Response with adjusted headers. A body with a `Content-Length` up to
 * {@linkcode WHOLE_BODY_LIMIT} is read whole, compressed in one synchronous call and answered
 * with the exact compressed `Content-Length` (its first byte waits for the backend's last);
 * larger bodies and bodies of unknown length stream through {@linkcode compressor}, without
 * `Content-Length`. Never rejects: when the body fails while it is read, the answer's body fails
 * with that error, as a streamed one would; when `signal` fires first (pass the request's: the
 * client went), the backend's body is cancelled and the answer has no body.
 */
export async function encodeResponse(
  spec: CompressSpec,
  method: string,
  requestHeaders: Headers,
  response: Response,
  signal?: AbortSignal,
): Promise<Response> {
  const decided = plan(spec, method, requestHeaders, response);
  if (decided.kind === "keep") return decided.response;
  const { encoding, headers, length } = decided;
  if (!isWhole(length)) {
    return withHeaders(response, headers, response.body!.pipeThrough(compressor(encoding, length)));
  }
  let compressed: Bytes;
  try {
    compressed = compressWhole(encoding, await readWhole(response.body!, length, signal));
  } catch (error) {
    // The client went: nobody reads this answer, and a failing body would only be logged.
    if (signal?.aborted) return withHeaders(response, headers, null);
    return withHeaders(response, headers, failedBody(error));
  }
  headers.set("content-length", String(compressed.length));
  return withHeaders(response, headers, compressed);
}

/** A body that fails with `error` when read. */
function failedBody(error: unknown): ReadableStream<Bytes> {
  return new ReadableStream({ start: (controller) => controller.error(error) });
}

// ---------------------------------------------------------------------------------------------
// Whole bodies

/**
 * Reads `body` to its end (`length` sizes the buffer; a body longer or shorter is still read
 * whole). When `signal` fires first, the body is cancelled with its reason and that is thrown.
 */
export async function readWhole(
  body: ReadableStream<Uint8Array>,
  length: number,
  signal?: AbortSignal,
): Promise<Uint8Array<ArrayBuffer>> {
  const reader = body.getReader();
  let aborted = false;
  const onAbort = () => {
    aborted = true;
    reader.cancel(signal!.reason).catch(() => {});
  };
  if (signal?.aborted) onAbort();
  else signal?.addEventListener("abort", onAbort, { once: true });
  try {
    let buffer = new Uint8Array(length);
    let filled = 0;
    // Bounded by the body: each round consumes one chunk, and a cancel ends the reads.
    for (;;) {
      const { value, done } = await reader.read();
      if (aborted) throw signal!.reason;
      if (done) break;
      if (filled + value.length > buffer.length) {
        const grown = new Uint8Array(Math.max(buffer.length * 2, filled + value.length));
        grown.set(buffer.subarray(0, filled));
        buffer = grown;
      }
      buffer.set(value, filled);
      filled += value.length;
    }
    return filled === buffer.length ? buffer : buffer.slice(0, filled);
  } catch (error) {
    if (!aborted) reader.cancel(error).catch(() => {});
    throw error;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    reader.releaseLock();
  }
}

/** `bytes` compressed with `encoding` in one synchronous call, at the levels of the streams. */
export function compressWhole(encoding: Encoding, bytes: Uint8Array): Bytes {
  const zlib = nodeZlib();
  const c = zlib.constants;
  let out: Uint8Array;
  switch (encoding) {
    case "gzip":
      out = zlib.gzipSync(bytes, { level: GZIP_LEVEL });
      break;
    case "br":
      out = zlib.brotliCompressSync(bytes, {
        params: {
          [c.BROTLI_PARAM_QUALITY]: BROTLI_QUALITY,
          [c.BROTLI_PARAM_LGWIN]: BROTLI_WINDOW_BITS,
          [c.BROTLI_PARAM_SIZE_HINT]: bytes.length,
        },
      });
      break;
    case "zstd":
      out = zlib.zstdCompressSync(bytes, { params: { [c.ZSTD_c_compressionLevel]: ZSTD_LEVEL } });
      break;
  }
  // A plain view of node's Buffer (same memory), as the Response and stream types expect.
  return new Uint8Array(out.buffer as ArrayBuffer, out.byteOffset, out.byteLength);
}

/**
 * A body stream that reads `body` whole when first pulled and yields it compressed in one chunk;
 * cancelling it cancels `body`.
 */
function wholeBodyStream(
  body: ReadableStream<Uint8Array>,
  encoding: Encoding,
  length: number,
): ReadableStream<Bytes> {
  const cancel = new AbortController();
  return new ReadableStream<Bytes>({
    async pull(controller) {
      const bytes = await readWhole(body, length, cancel.signal);
      controller.enqueue(compressWhole(encoding, bytes));
      controller.close();
    },
    cancel(reason) {
      // Before the first pull the body is not locked yet: cancel it directly.
      if (!body.locked) return body.cancel(reason);
      cancel.abort(reason);
      return Promise.resolve();
    },
  }, { highWaterMark: 0 });
}

// ---------------------------------------------------------------------------------------------
// Streams

/**
 * A stream that compresses with `encoding`, flushing after each chunk so that what the backend
 * sent so far reaches the client (the window is kept across flushes: the cost is a few bytes per
 * chunk). `sizeHint` is the body's length when known (brotli sizes its buffers by it).
 */
export function compressor(
  encoding: Encoding,
  sizeHint?: number,
): TransformStream<Uint8Array, Bytes> {
  const zlib = nodeZlib();
  const c = zlib.constants;
  switch (encoding) {
    // Deno's CompressionStream flushes after every chunk already; level 6.
    case "gzip":
      return new CompressionStream("gzip") as TransformStream<Uint8Array, Bytes>;
    case "br":
      return nodeZlibStream(() =>
        zlib.createBrotliCompress({
          params: {
            [c.BROTLI_PARAM_QUALITY]: BROTLI_QUALITY,
            [c.BROTLI_PARAM_LGWIN]: BROTLI_WINDOW_BITS,
            ...(sizeHint === undefined ? {} : { [c.BROTLI_PARAM_SIZE_HINT]: sizeHint }),
          },
        }), c.BROTLI_OPERATION_FLUSH);
    case "zstd":
      return nodeZlibStream(
        () => zlib.createZstdCompress({ params: { [c.ZSTD_c_compressionLevel]: ZSTD_LEVEL } }),
        c.ZSTD_e_flush,
      );
  }
}

/** The part of a node:zlib compressor this module uses. */
interface NodeCompressor {
  on(event: "data", listener: (chunk: Bytes) => void): unknown;
  on(event: "error", listener: (error: Error) => void): unknown;
  once(event: "end", listener: () => void): unknown;
  write(chunk: Uint8Array): boolean;
  flush(kind: number, callback: () => void): void;
  end(): void;
  destroy(): void;
}

/** A web TransformStream over a node:zlib compressor, flushed with `flushKind` after each chunk. */
function nodeZlibStream(
  create: () => unknown,
  flushKind: number,
): TransformStream<Uint8Array, Bytes> {
  let z: NodeCompressor;
  let done = false;
  // The write or end in progress: an error of the compressor settles it.
  let pending: { resolve(): void; reject(error: Error): void } | undefined;
  const step = (run: (resolve: () => void) => void) =>
    new Promise<void>((resolve, reject) => {
      pending = { resolve, reject };
      run(() => {
        pending = undefined;
        resolve();
      });
    });
  return new TransformStream<Uint8Array, Bytes>({
    start(controller) {
      z = create() as NodeCompressor;
      z.on("data", (chunk) => {
        if (!done) controller.enqueue(chunk);
      });
      z.on("error", (error) => {
        done = true;
        if (pending) pending.reject(error);
        else controller.error(error);
      });
    },
    transform(chunk) {
      return step((resolve) => {
        z.write(chunk);
        z.flush(flushKind, resolve);
      });
    },
    flush() {
      return step((resolve) => {
        z.once("end", () => {
          done = true;
          resolve();
        });
        z.end();
      });
    },
    cancel() {
      done = true;
      z.destroy();
      // A destroyed compressor never calls back: settle the write in progress, or the pipe from
      // the backend would wait on it forever instead of cancelling the backend's body.
      pending?.resolve();
    },
  });
}
