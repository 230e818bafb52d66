/**
 * @module
 * Writing HTTP/1.1 responses for the native front end (lib/frontend_native.ts): the head from
 * a `Response`, and its body framed by the front end alone (RFC 9112 §6): the handler's
 * Content-Length when it is valid (enforced: a body that runs longer is cut, one that ends
 * short ends the connection), Content-Length when the whole body is at hand at once, chunked
 * otherwise (close-delimited for HTTP/1.0). The handler's Transfer-Encoding, Connection and
 * Keep-Alive are replaced by the front end's own. Also the seam for tunnels: a handler answers
 * a WebSocket upgrade with {@linkcode switchProtocols}, and the front end relays bytes.
 */

import type { IncomingRequest } from "./incoming.ts";
import { hasToken, type RequestHead } from "./http1_request_head.ts";
import type { BodyPool } from "./body_pool.ts";
import { REASONS } from "./errors.ts";
import { writeAll, type Writer } from "./http1_request.ts";
import { responseSymbol, wireFields } from "./response_fields.ts";

const encoder = new TextEncoder();
const CRLF = new Uint8Array([13, 10]);
const LAST_CHUNK = encoder.encode("0\r\n\r\n");
/** Bodies and chunks up to this size leave in one write with their framing (one copy). */
const COALESCE_BYTES = 16 * 1024;

/** The other end of a tunnel, and bytes it already sent after its 101 head. */
export interface Tunnel {
  conn: Deno.Conn;
  head: Uint8Array;
  /** Called once when the tunnel has ended (both connections closed). */
  onEnd?: () => void;
}

const tunnels = new WeakMap<Response, Tunnel>();

/**
 * A response that switches the client's connection to a byte tunnel with `upstream` (HAProxy's
 * tunnel mode): the front end writes `101 Switching Protocols` with `headers` (as the backend
 * sent them: Upgrade, Connection, Sec-WebSocket-Accept, ...), then `head` (bytes the backend
 * sent after its own 101), then relays both ways until either side closes, closes both and
 * calls `onEnd` (release the backend there). Only the native front end understands it (`new Response`
 * refuses status 101: this one is built as a 200 without a body, and its `status` then reads
 * 101); a drain keeps it open until the drain deadline.
 */
export function switchProtocols(
  headers: HeadersInit,
  upstream: Deno.Conn,
  head: Uint8Array = new Uint8Array(0),
  onEnd?: () => void,
): Response {
  const response = new Response(null, { headers });
  // `new Response` refuses 101; readers (access log, metrics) should still see it.
  Object.defineProperty(response, "status", { value: 101 });
  Object.defineProperty(response, "statusText", { value: "Switching Protocols" });
  tunnels.set(response, { conn: upstream, head, onEnd });
  return response;
}

const tunnelable = new WeakSet<IncomingRequest>();

/** Marks `req` as served by a front end that understands {@linkcode switchProtocols}. */
export function markTunnelable(req: IncomingRequest): void {
  tunnelable.add(req);
}

/**
 * Whether `req` came through a front end that relays {@linkcode switchProtocols} responses
 * (the native one, for requests carrying Upgrade); with Deno.serve use Deno.upgradeWebSocket.
 */
export function canTunnel(req: IncomingRequest): boolean {
  return tunnelable.has(req);
}

/** The tunnel `response` stands for, if it came from {@linkcode switchProtocols}. */
export function tunnelOf(response: Response): Tunnel | undefined {
  return tunnels.get(response);
}

/** The head of an empty response that closes the connection (errors the front end answers). */
export function errorHead(status: number): Uint8Array {
  return encoder.encode(
    `HTTP/1.1 ${status} ${
      REASONS[status] ?? "Error"
    }\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`,
  );
}

let dateText = "";
let dateSecond = -1;

/** The Date header value, recomputed at most once a second. */
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

/**
 * Latin-1 bytes of `text` (header values are byte strings), followed by `body` when given: one
 * buffer, so that a small response leaves in one write with one copy.
 */
function encodeHead(text: string, body?: Uint8Array, bodies?: BodyPool): Uint8Array {
  const size = text.length + (body?.length ?? 0);
  const out = bodies === undefined ? new Uint8Array(size) : bodies.take(size);
  // One byte a character only when it is ASCII (UTF-8 = Latin-1 there).
  const { read, written } = encoder.encodeInto(text, out);
  if (read !== text.length || written !== text.length) {
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  }
  if (body !== undefined) out.set(body, text.length);
  return out;
}

/** Writes {@linkcode encodeHead}'s bytes; a buffer taken from `bodies` goes back once written. */
function writeHead(
  conn: Writer,
  text: string,
  body?: Uint8Array,
  bodies?: BodyPool,
): Promise<void> {
  const bytes = encodeHead(text, body, bodies);
  if (bodies === undefined) return writeAll(conn, bytes);
  // Not async itself: writeAll's promise, with the buffer given back once it settles.
  return writeAll(conn, bytes).then(() => bodies.giveBack(bytes), (error) => {
    bodies.giveBack(bytes);
    throw error;
  });
}

function joined(a: Uint8Array, b: Uint8Array, c?: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length + (c?.length ?? 0));
  out.set(a);
  out.set(b, a.length);
  if (c !== undefined) out.set(c, a.length + b.length);
  return out;
}

/**
 * Deno keeps the body of `new Response(string)` as a "lazy static body" and that of
 * `new Response(Uint8Array)` as static bytes, and only builds a stream when `.body` is read,
 * which is dear for every response. These symbols let such a body be written as it is. If Deno's
 * internals change shape, {@linkcode staticBody} finds nothing and the stream path is taken
 * (tests/http1_response_test.ts notices).
 */
const RESPONSE_SYMBOLS = {
  inner: responseSymbol("response"),
  lazy: responseSymbol("lazy static body"),
};

/** Deno's record of a body held as bytes (`consumed` says whether it was read). */
interface HeldBody {
  body?: unknown;
  consumed?: boolean;
}

/** The record of `response`'s body when Deno holds it as bytes, unread; else undefined. */
function heldBody(response: Response): HeldBody | undefined {
  const inner = RESPONSE_SYMBOLS.inner;
  if (inner === undefined) return undefined;
  const record = response as unknown as Record<symbol, unknown>;
  const body = (record[inner] as { body?: { streamOrStatic?: unknown } } | undefined)?.body;
  const held = body?.streamOrStatic as HeldBody | undefined;
  if (held === undefined || held instanceof ReadableStream || held.consumed !== false) {
    return undefined;
  }
  return held;
}

/** The whole body of `response` when Deno holds it in memory (see above), else undefined. */
export function staticBody(response: Response): Uint8Array | string | undefined {
  const { inner, lazy } = RESPONSE_SYMBOLS;
  if (inner === undefined || lazy === undefined) return undefined;
  const text = (response as unknown as Record<symbol, unknown>)[lazy];
  if (typeof text === "string") return text;
  const bytes = heldBody(response)?.body;
  return bytes instanceof Uint8Array || typeof bytes === "string" ? bytes : undefined;
}

/** Resolves to `undefined` after a few microtask turns: long enough for an in-memory body. */
async function soon(): Promise<undefined> {
  for (let i = 0; i < 4; i++) await null;
  return undefined;
}

/**
 * A response body that failed before any byte of the response was written (its head waits for
 * the first chunk): the connection may still carry an answer of the front end's own.
 */
export class UnsentResponseError extends Error {
  override name = "UnsentResponseError";
  constructor(cause: unknown) {
    super(`response body failed before anything was sent: ${(cause as Error)?.message ?? cause}`, {
      cause,
    });
  }
}

/**
 * Writes `response` to `conn` for the request `head` (null: the 101 of a tunnel). `keepAlive`
 * says whether the connection may carry another request; returns whether it still may (the
 * handler asked for `Connection: close`, or the body forced a close). Rejects when the client
 * is gone or the body failed: the connection must then close. With `bodies`, heads are encoded
 * into its buffers, and a body held in memory that came from it goes back once written (or
 * abandoned). A body that streams asks `hangUp` for a signal that aborts when the client
 * leaves: it is then cancelled, which ends what feeds it (a backend's connection) rather than
 * waiting for its next bytes.
 */
export async function writeResponse(
  conn: Writer,
  response: Response,
  head: RequestHead | null,
  keepAlive: boolean,
  bodies?: BodyPool,
  watchHangUp?: () => AbortSignal | undefined,
): Promise<boolean> {
  const status = head === null ? 101 : response.status;
  let text = `HTTP/1.1 ${status} ${REASONS[status] ?? (response.statusText || "Unknown")}\r\n`;
  let declared = -1;
  /** Content-Length fields seen (repeats that differ: framed as if there were none). */
  let lengths = 0;
  let hasDate = false;
  // Before the headers are read: reading them makes Deno move a lazy body into a stream.
  const held = head === null ? undefined : staticBody(response);
  // In the order Deno.serve writes them, without the iterator (lib/response_fields.ts).
  const fields = wireFields(response);
  for (let i = 0; i < fields.length; i++) {
    const name = fields[i][0].toLowerCase();
    const value = fields[i][1];
    switch (name) {
      case "content-length": {
        // Not digits (a list, say), or repeats that differ: framed as if absent.
        const length = /^\d{1,15}$/.test(value) ? Number(value) : -1;
        declared = lengths++ === 0 || length === declared ? length : -1;
        continue;
      }
      case "transfer-encoding":
      case "keep-alive":
        continue;
      case "connection":
        if (head === null) break;
        if (hasToken(value, "close")) keepAlive = false;
        continue;
      case "date":
        hasDate = true;
    }
    text += `${name}: ${value}\r\n`;
  }
  if (!hasDate) text += `date: ${httpDate()}\r\n`;
  if (head === null) {
    await writeHead(conn, text + "\r\n", undefined, bodies);
    return false;
  }
  const http10 = head.http10;
  const connection = () =>
    keepAlive ? (http10 ? "connection: keep-alive\r\n" : "") : "connection: close\r\n";
  if (head.method === "HEAD" || status === 204 || status === 304 || status < 200) {
    // RFC 9110 §8.6: a HEAD or 304 response may announce the length a GET would have.
    if (declared >= 0 && status !== 204 && status >= 200) text += `content-length: ${declared}\r\n`;
    await response.body?.cancel().catch(() => {});
    await writeHead(conn, text + connection() + "\r\n", undefined, bodies);
    return keepAlive;
  }
  if (held !== undefined) {
    const bytes = typeof held === "string" ? encoder.encode(held) : held;
    const length = declared === -1 ? bytes.length : declared;
    const headText = `${text}content-length: ${length}\r\n${connection()}\r\n`;
    // A declared length is kept to, as for streamed bodies: a longer body is cut (and the
    // connection closed), a shorter one ends the connection.
    try {
      const body = bytes.length > length ? bytes.subarray(0, length) : bytes;
      await writeBody(conn, headText, body, bodies);
    } finally {
      // Read, as Deno.serve marks a body it writes: a later reader gets an error, not the
      // bytes of a buffer that has gone back to the pool for another response.
      const record = heldBody(response);
      if (record !== undefined) record.consumed = true;
      bodies?.giveBack(bytes);
    }
    if (bytes.length < length) throw new Error("response body shorter than its Content-Length");
    return keepAlive && bytes.length === length;
  }
  const reader = response.body?.getReader();
  if (reader === undefined) {
    await writeHead(conn, `${text}content-length: 0\r\n${connection()}\r\n`, undefined, bodies);
    return keepAlive;
  }
  const hangUp = watchHangUp?.();
  const cancel = () => reader.cancel(hangUp!.reason).catch(() => {});
  if (hangUp?.aborted) cancel();
  else hangUp?.addEventListener("abort", cancel, { once: true });
  // A body that ended because the client left is not written as complete.
  const ended = () => {
    if (hangUp?.aborted) throw hangUp.reason;
  };
  try {
    if (declared >= 0) {
      return await writeLength(conn, reader, text, declared, connection(), bodies, ended) &&
        keepAlive;
    }
    const first = await reader.read().catch(unsent);
    ended();
    if (first.done) {
      await writeHead(conn, `${text}content-length: 0\r\n${connection()}\r\n`, undefined, bodies);
      return keepAlive;
    }
    const next = reader.read();
    const second = await Promise.race([next, soon()]).catch(unsent);
    ended();
    if (second?.done === true) {
      // The whole body was at hand: its length is known.
      const headText = `${text}content-length: ${first.value.length}\r\n${connection()}\r\n`;
      await writeBody(conn, headText, first.value, bodies);
      return keepAlive;
    }
    if (http10) {
      // No chunked coding in HTTP/1.0: the body ends with the connection.
      keepAlive = false;
      await writeBody(conn, `${text}${connection()}\r\n`, first.value, bodies);
      for (let r = await next; !r.done; r = await reader.read()) await writeAll(conn, r.value);
      return false;
    }
    await writeChunk(
      conn,
      encodeHead(`${text}transfer-encoding: chunked\r\n${connection()}\r\n`),
      first.value,
    );
    for (let r = await next; !r.done; r = await reader.read()) {
      await writeChunk(conn, null, r.value);
    }
    ended();
    await writeAll(conn, LAST_CHUNK);
    return keepAlive;
  } catch (error) {
    await reader.cancel().catch(() => {});
    throw error;
  } finally {
    hangUp?.removeEventListener("abort", cancel);
  }
}

/**
 * A body of `declared` bytes. False when it ran longer and was cut: the connection must close.
 */
async function writeLength(
  conn: Writer,
  reader: ReadableStreamDefaultReader<Uint8Array>,
  text: string,
  declared: number,
  connection: string,
  bodies: BodyPool | undefined,
  ended: () => void,
): Promise<boolean> {
  let left = declared;
  let pendingHead: string | null = `${text}content-length: ${declared}\r\n${connection}\r\n`;
  // Until the head is out, a failed read leaves the client nothing: an answer can still go.
  const read = () => pendingHead === null ? reader.read() : reader.read().catch(unsent);
  for (let r = await read(); !r.done; r = await read()) {
    if (r.value.length === 0) continue;
    const part = r.value.length > left ? r.value.subarray(0, left) : r.value;
    await writeBody(conn, pendingHead, part, bodies);
    pendingHead = null;
    left -= part.length;
    if (r.value.length > part.length) {
      // Longer than announced: what went out is all the client may read.
      await reader.cancel().catch(() => {});
      return false;
    }
  }
  ended();
  if (pendingHead !== null) await writeHead(conn, pendingHead, undefined, bodies);
  if (left > 0) throw new Error(`response body ended ${left} bytes short of its Content-Length`);
  return true;
}

function unsent(error: unknown): never {
  throw new UnsentResponseError(error);
}

/** Writes `data` after the head `head` (null: sent already). */
function writeBody(
  conn: Writer,
  head: string | null,
  data: Uint8Array,
  bodies: BodyPool | undefined,
): Promise<void> {
  // Not async itself: the common cases hand on a single write's promise.
  if (head === null) return writeAll(conn, data);
  if (data.length <= COALESCE_BYTES) return writeHead(conn, head, data, bodies);
  return writeHeadThenBody(conn, head, data, bodies);
}

async function writeHeadThenBody(
  conn: Writer,
  head: string,
  data: Uint8Array,
  bodies: BodyPool | undefined,
): Promise<void> {
  await writeHead(conn, head, undefined, bodies);
  await writeAll(conn, data);
}

async function writeChunk(
  conn: Writer,
  headBytes: Uint8Array | null,
  data: Uint8Array,
): Promise<void> {
  // An empty chunk would end the body.
  if (data.length === 0) {
    if (headBytes !== null) await writeAll(conn, headBytes);
    return;
  }
  const size = encoder.encode(`${data.length.toString(16)}\r\n`);
  const framing = headBytes === null ? size : joined(headBytes, size);
  if (data.length <= COALESCE_BYTES) return await writeAll(conn, joined(framing, data, CRLF));
  await writeAll(conn, framing);
  await writeAll(conn, data);
  await writeAll(conn, CRLF);
}
