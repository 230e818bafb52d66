/**
 * @module
 * Experiment (issue 6): an upstream {@linkcode Transport} written on `Deno.connect`, HTTP/1.1
 * with a keep-alive pool, behind the same signature as `sendAttempt` (lib/upstream.ts). It exists
 * to measure how much of the gap to nginx is Deno's `fetch` client itself; it is plugged in only
 * by the benchmark (`bench/raw_balancer.ts`, target `deno-raw`) and is **not** the default.
 *
 * What it does:
 * - One idle list per origin (LIFO, capped). An idle connection always has a read posted into its
 *   buffer: bytes or EOF arriving while it is idle (the backend closed it, or sent garbage)
 *   discard it at once, and when it is reused that read is the first read of the response
 *   (Go's `persistConn` does the same).
 * - The request head is written from the given Headers (Host first, from the headers or the
 *   origin) and the path **exactly as given** (no URL parsing or normalisation). Bodies: none,
 *   bytes (Content-Length), or a stream: with the declared Content-Length when there is one
 *   (enforced), chunked otherwise.
 * - The response head is parsed from the connection's reusable buffer (CRLF lines, 1xx other
 *   than 101 skipped, header names and values validated by `Headers`). Bodies: none (HEAD, 204,
 *   304), Content-Length (read whole before returning when small, else streamed), chunked, or
 *   close-delimited; a Content-Length together with Transfer-Encoding is dropped and the
 *   connection closed after (RFC 9112 §6.3). A connection goes back to the pool only after its
 *   body was read completely, the request was written completely, no byte was left over, and
 *   neither side said `Connection: close`.
 * - Failures are classified like fetch's: refused/unreachable/connect timeout -> `connect`;
 *   no headers within `timeout` -> `timeout`; client signal -> `client-gone`; anything else
 *   before headers -> `maybe-sent`. A reused connection that yields EOF or a reset before any
 *   response byte is retried once on a new connection when the request is idempotent and its
 *   body is not a stream (the idle-connection race; Go's `shouldRetryRequest`).
 *
 * Not done, and needed before it could be the default:
 * - TLS backends (`Deno.connectTls` with the backend CA, client certificate, SNI) and HTTP/2 to
 *   backends (Deno exposes no h2 framing); health checks and WebSockets would stay on fetch.
 * - Limits: header count, chunk size, trailers (read and dropped), a body read timeout and an
 *   idle timeout of its own (today only the backend closing ends an idle or slow connection).
 * - Pool lifecycle: connection caps per origin with queueing, draining the pools of removed
 *   backends, closing them on shutdown.
 * - The idle-connection race beyond the one retry: write failures of an unsent head, an
 *   `Idempotency-Key` opt-in, a load test against a backend with a short keep-alive timeout.
 * - More response-framing hardening (bare LF policy, chunk-extension limits, fuzzing against
 *   hyper's and llhttp's corpora), `Expect: 100-continue`, early responses during an upload,
 *   DNS caching and IPv6, and metrics per connection.
 * - A decoding contract: it decodes gzip/br as fetch would (`decode: "fetch"`) so that
 *   lib/headers.ts stays right; passing compressed bodies through needs the transport to say
 *   whether it decoded.
 */

import type { AttemptOptions, AttemptRequest, AttemptResult, Transport } from "../lib/upstream.ts";
import type { Failure, FailureKind } from "../lib/retry.ts";

/** Tuning of {@linkcode createRawTransport}. */
export interface RawTransportOptions {
  /** Idle connections kept per origin; more are closed when released. @default 128 */
  maxIdlePerOrigin?: number;
  /**
   * Response bodies with a Content-Length up to this many bytes are read whole before the
   * response is returned, so the server writes them in one go (nginx buffers the same way);
   * larger ones stream. @default 65536
   */
  bufferBodyLimit?: number;
  /** Largest response head accepted (bytes); larger is a failed attempt. @default 65536 */
  maxHeadBytes?: number;
  /**
   * `"fetch"`: decode gzip and br bodies exactly when Deno's fetch would (the request's
   * Accept-Encoding is not `identity` and it has no Range), keeping Content-Encoding and
   * Content-Length as fetch does: what lib/proxy.ts's `fetchDecodedBody` assumes today.
   * `"none"`: pass every body through as received, which is what a proxy should do, but the
   * current proxy then drops Content-Encoding from a body that is still encoded. @default "fetch"
   */
  decode?: "fetch" | "none";
}

/** A transport plus what the tests and the benchmark want to see of it. */
export interface RawTransport {
  /** The {@linkcode Transport} to plug into `startBalancer(..., { transport })`. */
  send: Transport;
  /** Connections opened and requests that reused an idle connection, since creation. */
  readonly stats: { opened: number; reused: number; retriedStale: number };
  /** Idle connections per origin right now. */
  idleCount(origin: string): number;
  /** Closes every idle connection; resolves when their posted reads have settled. */
  close(): Promise<void>;
}

const encoder = new TextEncoder();
const READ_SIZE = 16 * 1024;
const STREAM_READ_SIZE = 64 * 1024;
const HEADER_TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Request targets as hyper accepts them: visible characters only (no space, CR, LF, NUL). */
// deno-lint-ignore no-control-regex -- control characters are exactly what is refused
const UNSAFE_TARGET = /[\x00-\x20\x7f]/;
/** Anything beyond printable ASCII takes the byte-by-byte encoder. */
const NON_ASCII = /[^ -~\t\r\n]/;
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);

/** Why an attempt stopped; carries the failure kind and whether a stale-connection retry fits. */
class AttemptError extends Error {
  constructor(
    readonly kind: FailureKind,
    message: string,
    /** Nothing of a response arrived (EOF or reset before the first byte). */
    readonly nothingReceived = false,
  ) {
    super(message);
  }
}

/** One backend connection with its reusable read buffer (unread bytes are `buf[start, end)`). */
class Connection {
  buf = new Uint8Array(READ_SIZE);
  start = 0;
  end = 0;
  /** The read posted while idle, consumed by the next {@linkcode fill}. */
  posted: Promise<number | null> | undefined;
  idle = false;
  closed = false;
  /** Requests this connection has carried (more than 1 = reused). */
  uses = 0;

  constructor(readonly conn: Deno.TcpConn) {}

  /** Reads more bytes after `end`; false on EOF. Compacts or grows the buffer up to `max`. */
  async fill(max: number): Promise<boolean> {
    if (this.start === this.end) this.start = this.end = 0;
    if (this.end === this.buf.length) {
      if (this.start > 0) {
        this.buf.copyWithin(0, this.start, this.end);
        this.end -= this.start;
        this.start = 0;
      } else {
        if (this.buf.length >= max) throw new AttemptError("maybe-sent", "response head too large");
        const bigger = new Uint8Array(Math.min(max, this.buf.length * 2));
        bigger.set(this.buf);
        this.buf = bigger;
      }
    }
    let n: number | null;
    if (this.posted !== undefined) {
      const posted = this.posted;
      this.posted = undefined;
      n = await posted;
    } else {
      n = await this.conn.read(this.buf.subarray(this.end));
    }
    if (n === null) return false;
    this.end += n;
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}

/** The idle connections of one origin. */
interface OriginPool {
  hostname: string;
  port: number;
  /** `host[:port]` for a request without Host. */
  authority: string;
  tls: boolean;
  idle: Connection[];
}

/** A parsed response head. */
interface Head {
  status: number;
  statusText: string;
  headers: Headers;
  /** How the body is delimited. */
  framing: "none" | "length" | "chunked" | "close";
  length: number;
  /** Whether the connection may carry another request after this response. */
  keepAlive: boolean;
}

/** Creates a transport with its own connection pools. */
export function createRawTransport(options: RawTransportOptions = {}): RawTransport {
  const maxIdle = options.maxIdlePerOrigin ?? 128;
  const bufferLimit = options.bufferBodyLimit ?? 64 * 1024;
  const maxHead = options.maxHeadBytes ?? 64 * 1024;
  const decodeLikeFetch = (options.decode ?? "fetch") === "fetch";
  if (!Number.isInteger(maxIdle) || maxIdle < 0) {
    throw new RangeError(`maxIdlePerOrigin: expected a whole number >= 0, got ${maxIdle}`);
  }
  const pools = new Map<string, OriginPool>();
  const stats = { opened: 0, reused: 0, retriedStale: 0 };
  /** Reads posted on idle connections, so close() can wait for them to settle. */
  const postedReads = new Set<Promise<unknown>>();

  function poolOf(origin: string): OriginPool {
    let pool = pools.get(origin);
    if (pool === undefined) {
      const url = new URL(origin);
      const tls = url.protocol === "https:";
      pool = {
        hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
        port: Number(url.port || (tls ? 443 : 80)),
        authority: url.host,
        tls,
        idle: [],
      };
      pools.set(origin, pool);
    }
    return pool;
  }

  /** Puts `c` back in its pool with a read posted, or closes it when the pool is full. */
  function release(pool: OriginPool, c: Connection): void {
    if (c.closed || pool.idle.length >= maxIdle || c.start !== c.end) return c.close();
    c.start = c.end = 0;
    c.idle = true;
    const posted = c.conn.read(c.buf);
    c.posted = posted;
    const settled = posted.then(
      () => {
        // Bytes or EOF while nobody asked: the backend closed it or broke the protocol.
        if (c.idle) discard(pool, c);
      },
      () => {
        if (c.idle) discard(pool, c);
      },
    ).finally(() => postedReads.delete(settled));
    postedReads.add(settled);
    pool.idle.push(c);
  }

  function discard(pool: OriginPool, c: Connection): void {
    c.idle = false;
    const index = pool.idle.indexOf(c);
    if (index !== -1) pool.idle.splice(index, 1);
    c.close();
  }

  async function connect(pool: OriginPool, connectTimeout: number, signal: AbortSignal) {
    const timeout = AbortSignal.timeout(connectTimeout);
    try {
      const conn = await Deno.connect({
        hostname: pool.hostname,
        port: pool.port,
        signal: AbortSignal.any([signal, timeout]),
      });
      conn.setNoDelay(true);
      stats.opened++;
      return new Connection(conn);
    } catch (error) {
      if (signal.aborted) throw new AttemptError("client-gone", "client disconnected");
      if (timeout.aborted) {
        throw new AttemptError("connect", `connect timeout after ${connectTimeout}ms`);
      }
      throw new AttemptError("connect", describe(error));
    }
  }

  const send: Transport = async (origin, url, request, clientSignal, attemptOptions) => {
    if (clientSignal.aborted) return failed("client-gone", "client disconnected");
    const pool = poolOf(origin);
    if (pool.tls) return failed("connect", "the raw transport does not speak TLS");
    const path = url.startsWith(origin) ? url.slice(origin.length) : pathOf(url);
    if (path === "" || UNSAFE_TARGET.test(path)) {
      // parseTarget() never produces one; refuse rather than write a broken request line.
      throw new TypeError("request target with control characters or spaces");
    }
    const body = normaliseBody(request.body);
    const replayable = !(body instanceof ReadableStream);
    try {
      return await attempt(pool, path, request, body, clientSignal, attemptOptions, false);
    } catch (error) {
      if (
        error instanceof StaleConnection && replayable && IDEMPOTENT.has(request.method) &&
        !clientSignal.aborted
      ) {
        stats.retriedStale++;
        try {
          return await attempt(pool, path, request, body, clientSignal, attemptOptions, true);
        } catch (again) {
          return toFailure(again);
        }
      }
      return toFailure(error);
    }
  };

  /**
   * One try on one connection (idle or, with `fresh`, a new one). Throws {@linkcode StaleConnection}
   * when a reused connection gave nothing back, so the caller may try a new one.
   */
  async function attempt(
    pool: OriginPool,
    path: string,
    request: AttemptRequest,
    body: Uint8Array | ReadableStream<Uint8Array> | null,
    clientSignal: AbortSignal,
    options: AttemptOptions,
    fresh: boolean,
  ): Promise<AttemptResult> {
    let c = fresh ? undefined : pool.idle.pop();
    if (c !== undefined) {
      c.idle = false;
      stats.reused++;
    } else {
      c = await connect(pool, options.connectTimeout, clientSignal);
    }
    const conn = c;
    conn.uses++;
    let abandoned: Failure | undefined;
    const abandon = (failure: Failure) => {
      abandoned ??= failure;
      conn.close();
    };
    const onClientAbort = () => abandon({ kind: "client-gone", detail: "client disconnected" });
    clientSignal.addEventListener("abort", onClientAbort);
    const timer = setTimeout(
      () => abandon({ kind: "timeout", detail: `no response headers within ${options.timeout}ms` }),
      options.timeout,
    );
    const writing = { done: false, failed: false };
    try {
      const { head, streamed } = requestHead(pool, path, request, body);
      if (streamed === null) {
        await writeAll(conn.conn, body === null ? head : joinBytes(head, body as Uint8Array))
          .catch((error) => {
            throw conn.uses > 1
              ? new StaleConnection(describe(error))
              : new AttemptError("maybe-sent", describe(error));
          });
        writing.done = true;
      } else {
        writeStreamed(conn, head, streamed.stream, streamed.length).then(
          () => (writing.done = true),
          () => (writing.failed = true),
        );
      }
      let head2: Head;
      try {
        head2 = await readHead(conn, request.method, maxHead);
      } catch (error) {
        if (
          conn.uses > 1 && error instanceof AttemptError && error.nothingReceived &&
          abandoned === undefined
        ) {
          throw new StaleConnection(error.message);
        }
        throw error;
      }
      const response = await buildResponse(pool, conn, head2, writing, request, () => abandoned);
      if (abandoned !== undefined) {
        await response.body?.cancel().catch(() => {});
        return { ok: false, failure: abandoned };
      }
      return { ok: true, response };
    } catch (error) {
      conn.close();
      if (abandoned !== undefined) return { ok: false, failure: abandoned };
      throw error;
    } finally {
      clearTimeout(timer);
      clientSignal.removeEventListener("abort", onClientAbort);
    }
  }

  /** The response with its body wired so the connection is released once the body is read. */
  async function buildResponse(
    pool: OriginPool,
    c: Connection,
    head: Head,
    writing: { done: boolean; failed: boolean },
    request: AttemptRequest,
    abandoned: () => Failure | undefined,
  ): Promise<Response> {
    let done = false;
    const finish = (complete: boolean) => {
      if (done) return;
      done = true;
      if (complete && head.keepAlive && writing.done && !writing.failed) release(pool, c);
      else c.close();
    };
    let body: BodyInit | null = null;
    if (head.framing === "none") {
      finish(true);
    } else if (head.framing === "length" && head.length <= bufferLimit) {
      body = await readExactly(c, head.length);
      if (abandoned() === undefined) finish(true);
    } else {
      body = bodyStream(c, head, finish);
    }
    if (head.status === 205 && body !== null) {
      // A Response with status 205 cannot have a body, not even an empty one.
      if (body instanceof ReadableStream) await body.cancel();
      body = null;
    }
    if (decodeLikeFetch && body !== null) {
      const coding = fetchDecodes(request.headers, head.headers);
      if (coding !== undefined) {
        const source = body instanceof ReadableStream
          ? body as ReadableStream<Uint8Array<ArrayBuffer>>
          : ReadableStream.from([body as Uint8Array<ArrayBuffer>]);
        body = source.pipeThrough(new DecompressionStream(coding));
      }
    }
    return new Response(body, {
      status: head.status,
      statusText: head.statusText,
      headers: head.headers,
    });
  }

  return {
    send,
    stats,
    idleCount: (origin) => pools.get(origin)?.idle.length ?? 0,
    async close() {
      for (const pool of pools.values()) {
        for (const c of pool.idle.splice(0)) {
          c.idle = false;
          c.close();
        }
      }
      await Promise.allSettled([...postedReads]);
    },
  };
}

/** A reused connection failed before any response byte: the backend had closed it. */
class StaleConnection extends AttemptError {
  constructor(message: string) {
    super("maybe-sent", `reused connection closed by the backend (${message})`, true);
  }
}

function failed(kind: FailureKind, detail: string): AttemptResult {
  return { ok: false, failure: { kind, detail } };
}

function toFailure(error: unknown): AttemptResult {
  if (error instanceof AttemptError) return failed(error.kind, error.message);
  return failed("maybe-sent", describe(error));
}

function describe(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  const single = text.replace(/\s+/g, " ").trim();
  return single.length > 160 ? `${single.slice(0, 157)}...` : single;
}

/** Path and query of an absolute URL, without parsing (so nothing is normalised). */
function pathOf(url: string): string {
  const start = url.indexOf("/", url.indexOf("://") + 3);
  return start === -1 ? "/" : url.slice(start);
}

/** The request body as bytes, a stream, or nothing. */
function normaliseBody(body: BodyInit | null): Uint8Array | ReadableStream<Uint8Array> | null {
  if (body === null || body === undefined) return null;
  if (body instanceof Uint8Array) return body;
  if (typeof body === "string") return encoder.encode(body);
  if (body instanceof ReadableStream) return body as ReadableStream<Uint8Array>;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) {
    return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  }
  if (body instanceof Blob) return body.stream();
  throw new TypeError(`the raw transport cannot send a ${body.constructor.name} body`);
}

/**
 * Serialises the request head. Host goes first (RFC 9112 §3.2); framing headers are the
 * transport's own; hop-by-hop headers were already removed by the proxy, and `connection`,
 * `keep-alive`, `transfer-encoding` and `content-length` from the caller are never copied.
 */
function requestHead(
  pool: OriginPool,
  path: string,
  request: AttemptRequest,
  body: Uint8Array | ReadableStream<Uint8Array> | null,
): { head: Uint8Array; streamed: { stream: ReadableStream<Uint8Array>; length: number } | null } {
  const headers = request.headers;
  let text = `${request.method} ${path} HTTP/1.1\r\nhost: ${
    headers.get("host") ?? pool.authority
  }\r\n`;
  let declared: string | null = null;
  headers.forEach((value, name) => {
    switch (name) {
      case "host":
      case "connection":
      case "keep-alive":
      case "transfer-encoding":
        return;
      case "content-length":
        declared = value;
        return;
      default:
        text += `${name}: ${value}\r\n`;
    }
  });
  let streamed = null;
  if (body === null) {
    // fetch sends an explicit zero length for a bodiless POST or PUT; so does this.
    if (request.method === "POST" || request.method === "PUT") text += "content-length: 0\r\n";
  } else if (body instanceof Uint8Array) {
    text += `content-length: ${body.length}\r\n`;
  } else {
    const length = declared === null ? -1 : Number(declared);
    if (Number.isSafeInteger(length) && length >= 0) {
      text += `content-length: ${length}\r\n`;
      streamed = { stream: body, length };
    } else {
      text += "transfer-encoding: chunked\r\n";
      streamed = { stream: body, length: -1 };
    }
  }
  text += "\r\n";
  return { head: latin1Bytes(text), streamed };
}

/** Header values are byte strings: each code unit is one byte. The path may hold UTF-8. */
function latin1Bytes(text: string): Uint8Array {
  if (!NON_ASCII.test(text)) return encoder.encode(text);
  const bytes: number[] = [];
  for (const char of text) {
    const code = char.codePointAt(0)!;
    if (code <= 0xff) bytes.push(code);
    else bytes.push(...encoder.encode(char));
  }
  return new Uint8Array(bytes);
}

function joinBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (b.length === 0) return a;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
}

/**
 * Writes the head then the streamed body: raw with a declared length (which must match
 * exactly), chunked without. Any failure closes the connection, so the backend sees an
 * incomplete request rather than a complete wrong one.
 */
async function writeStreamed(
  c: Connection,
  head: Uint8Array,
  stream: ReadableStream<Uint8Array>,
  length: number,
): Promise<void> {
  const reader = stream.getReader();
  try {
    await writeAll(c.conn, head);
    let sent = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (value.length === 0) continue;
      sent += value.length;
      if (length >= 0) {
        if (sent > length) throw new Error("request body longer than its Content-Length");
        await writeAll(c.conn, value);
      } else {
        const size = encoder.encode(`${value.length.toString(16)}\r\n`);
        const frame = new Uint8Array(size.length + value.length + 2);
        frame.set(size);
        frame.set(value, size.length);
        frame.set(CRLF, size.length + value.length);
        await writeAll(c.conn, frame);
      }
    }
    if (length >= 0 && sent !== length) throw new Error("request body shorter than its length");
    if (length < 0) await writeAll(c.conn, LAST_CHUNK);
  } catch (error) {
    c.close();
    await reader.cancel().catch(() => {});
    throw error;
  } finally {
    reader.releaseLock();
  }
}

const CRLF = new Uint8Array([13, 10]);
const LAST_CHUNK = encoder.encode("0\r\n\r\n");

/** Reads and parses the response head, skipping interim 1xx responses (not 101). */
async function readHead(c: Connection, method: string, maxHead: number): Promise<Head> {
  for (;;) {
    const end = await headEnd(c, maxHead);
    const text = latin1String(c.buf, c.start, end - 4);
    c.start = end;
    const head = parseHead(text, method);
    if (head !== "interim") return head;
  }
}

/** Index just past the head's final CRLF CRLF, reading as needed. */
async function headEnd(c: Connection, maxHead: number): Promise<number> {
  let scanned = c.start;
  for (;;) {
    let lf = c.buf.indexOf(10, scanned);
    while (lf !== -1 && lf < c.end) {
      if (
        lf - 3 >= c.start && c.buf[lf - 1] === 13 && c.buf[lf - 2] === 10 && c.buf[lf - 3] === 13
      ) {
        return lf + 1;
      }
      lf = c.buf.indexOf(10, lf + 1);
    }
    if (c.end - c.start > maxHead) throw new AttemptError("maybe-sent", "response head too large");
    const received = c.end - c.start;
    let more: boolean;
    try {
      more = await c.fill(maxHead + 4);
    } catch (error) {
      if (error instanceof AttemptError) throw error;
      throw new AttemptError("maybe-sent", describe(error), received === 0);
    }
    if (!more) {
      throw new AttemptError(
        "maybe-sent",
        received === 0 ? "connection closed before any response" : "connection closed mid-head",
        received === 0,
      );
    }
    // fill() may have moved the unread bytes to the front: rescan only the last 3 seen.
    scanned = c.start + Math.max(0, received - 3);
  }
}

/** Latin-1 text of `buf[from, to)`: one character per byte, as header byte strings are. */
function latin1String(buf: Uint8Array, from: number, to: number): string {
  let out = "";
  for (let i = from; i < to; i += 8192) {
    out += String.fromCharCode.apply(
      null,
      buf.subarray(i, Math.min(to, i + 8192)) as unknown as number[],
    );
  }
  return out;
}

const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: ([^\r\n]*))?$/;

/** Parses a head (without its final CRLF CRLF); "interim" for a 1xx to skip. */
function parseHead(text: string, method: string): Head | "interim" {
  const lines = text.split("\r\n");
  const status = STATUS_LINE.exec(lines[0]);
  if (status === null) throw new AttemptError("maybe-sent", "malformed status line");
  const code = Number(status[2]);
  if (code >= 100 && code < 200) {
    // 100 Continue and 103 Early Hints are not relayed (fetch drops them too); 101 means the
    // backend switched protocols, which was never asked for: the Upgrade header is stripped.
    if (code === 101) throw new AttemptError("maybe-sent", "unexpected 101 Switching Protocols");
    return "interim";
  }
  if (code > 599) throw new AttemptError("maybe-sent", `invalid status ${code}`);
  const headers = new Headers();
  let lengths: string[] | undefined;
  let transferEncoding: string | undefined;
  let close = status[1] === "0";
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(":");
    // No obs-fold (a line starting with whitespace), no space before the colon (RFC 9112 §5).
    if (colon <= 0 || !HEADER_TOKEN.test(line.slice(0, colon))) {
      throw new AttemptError("maybe-sent", "malformed response header line");
    }
    const name = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    try {
      headers.append(name, value);
    } catch {
      throw new AttemptError("maybe-sent", "invalid response header value");
    }
    switch (name.length) {
      case 10:
        if (name.toLowerCase() === "connection") {
          if (/(?:^|,)\s*close\s*(?:,|$)/i.test(value)) close = true;
          else if (status[1] === "0" && /(?:^|,)\s*keep-alive\s*(?:,|$)/i.test(value)) {
            close = false;
          }
        }
        break;
      case 14:
        if (name.toLowerCase() === "content-length") (lengths ??= []).push(value);
        break;
      case 17:
        if (name.toLowerCase() === "transfer-encoding") {
          transferEncoding = transferEncoding === undefined
            ? value
            : `${transferEncoding}, ${value}`;
        }
        break;
    }
  }
  const head: Head = {
    status: code,
    statusText: status[3] ?? "",
    headers,
    framing: "close",
    length: -1,
    keepAlive: !close,
  };
  if (method === "HEAD" || code === 204 || code === 304) {
    head.framing = "none";
    head.length = 0;
    return head;
  }
  if (transferEncoding !== undefined) {
    // Transfer-Encoding wins over Content-Length, and a response that sent both may be an
    // attempt at smuggling: drop the length and never reuse the connection (RFC 9112 §6.3).
    if (lengths !== undefined) {
      headers.delete("content-length");
      head.keepAlive = false;
    }
    const codings = transferEncoding.toLowerCase().split(",").map((s) => s.trim());
    if (codings[codings.length - 1] === "chunked" && status[1] === "1") {
      head.framing = "chunked";
    } else {
      head.framing = "close";
      head.keepAlive = false;
    }
    return head;
  }
  if (lengths !== undefined) {
    const values = new Set(lengths.flatMap((v) => v.split(",")).map((v) => v.trim()));
    const only = values.size === 1 ? [...values][0] : "";
    if (!/^\d{1,15}$/.test(only)) {
      throw new AttemptError("maybe-sent", "invalid or conflicting response Content-Length");
    }
    head.framing = "length";
    head.length = Number(only);
    if (lengths.length > 1 || lengths[0] !== only) headers.set("content-length", only);
    return head;
  }
  head.keepAlive = false;
  return head;
}

/** Exactly `n` body bytes, from the buffer first, then read straight into the result. */
async function readExactly(c: Connection, n: number): Promise<Uint8Array<ArrayBuffer>> {
  const out = new Uint8Array(n);
  const take = Math.min(n, c.end - c.start);
  out.set(c.buf.subarray(c.start, c.start + take));
  c.start += take;
  let got = take;
  while (got < n) {
    const read = await c.conn.read(out.subarray(got));
    if (read === null) throw new AttemptError("maybe-sent", "connection closed mid-body");
    got += read;
  }
  return out;
}

/** The body as a stream; `finish(true)` runs once it was read to its end. */
function bodyStream(
  c: Connection,
  head: Head,
  finish: (complete: boolean) => void,
): ReadableStream<Uint8Array> {
  let remaining = head.length;
  /** Bytes left in the current chunk; -1 before the first size line. */
  let chunkLeft = -1;
  const fail = (message: string) => {
    finish(false);
    throw new Error(message);
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        if (head.framing === "length") {
          const chunk = await takeOrRead(c, remaining);
          if (chunk === null) return fail("backend closed the connection mid-body");
          remaining -= chunk.length;
          controller.enqueue(chunk);
          if (remaining === 0) {
            finish(true);
            controller.close();
          }
        } else if (head.framing === "close") {
          const chunk = await takeOrRead(c, STREAM_READ_SIZE);
          if (chunk === null) {
            finish(false);
            controller.close();
          } else {
            controller.enqueue(chunk);
          }
        } else {
          if (chunkLeft <= 0) {
            if (chunkLeft === 0 && (await readLine(c)) !== "") fail("malformed chunk end");
            const sizeLine = await readLine(c);
            const match = /^([0-9a-fA-F]{1,12})[ \t]*(?:;.*)?$/.exec(sizeLine ?? "");
            if (match === null) return fail("malformed chunk size");
            chunkLeft = parseInt(match[1], 16);
            if (chunkLeft === 0) {
              // Trailers are read and dropped: the proxy has no way to relay them.
              for (let line = await readLine(c); line !== ""; line = await readLine(c)) {
                if (line === null) return fail("connection closed in trailers");
              }
              finish(true);
              return controller.close();
            }
          }
          if (c.start === c.end && !(await c.fill(c.buf.length))) {
            return fail("connection closed mid-chunk");
          }
          const take = Math.min(chunkLeft, c.end - c.start);
          controller.enqueue(c.buf.slice(c.start, c.start + take));
          c.start += take;
          chunkLeft -= take;
        }
      } catch (error) {
        finish(false);
        throw error;
      }
    },
    cancel() {
      finish(false);
    },
  }, { highWaterMark: 0 });
}

/** Up to `max` bytes: what the buffer holds, else one read into a fresh array; null on EOF. */
async function takeOrRead(c: Connection, max: number): Promise<Uint8Array | null> {
  if (c.start < c.end) {
    const take = Math.min(max, c.end - c.start);
    const chunk = c.buf.slice(c.start, c.start + take);
    c.start += take;
    return chunk;
  }
  const out = new Uint8Array(Math.min(max, STREAM_READ_SIZE));
  const n = await c.conn.read(out);
  return n === null ? null : out.subarray(0, n);
}

/** One CRLF-terminated line (at most 8 KiB) from the buffer, without its CRLF; null on EOF. */
async function readLine(c: Connection): Promise<string | null> {
  for (;;) {
    const lf = c.buf.subarray(c.start, c.end).indexOf(10);
    if (lf !== -1) {
      const end = c.start + lf;
      if (lf === 0 || c.buf[end - 1] !== 13) throw new Error("bare LF in chunked framing");
      const line = latin1String(c.buf, c.start, end - 1);
      c.start = end + 1;
      return line;
    }
    if (c.end - c.start > 8192) throw new Error("chunked framing line too long");
    if (!(await c.fill(Math.max(c.buf.length, 16 * 1024)))) return null;
  }
}

/**
 * The coding Deno's fetch would have decoded (verified on 2.9.6: gzip and br, unless the
 * request asked for `identity` or carried Range), as a DecompressionStream format.
 */
function fetchDecodes(request: Headers, response: Headers): CompressionFormat | undefined {
  const coding = response.get("content-encoding")?.trim().toLowerCase();
  if (coding !== "gzip" && coding !== "br") return undefined;
  if (request.get("accept-encoding")?.trim().toLowerCase() === "identity") return undefined;
  if (request.has("range")) return undefined;
  return coding === "gzip" ? "gzip" : "brotli" as CompressionFormat;
}
