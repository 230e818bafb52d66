/**
 * @module
 * Writing HTTP/1.1 requests for the native transport (lib/upstream_native.ts): the head from
 * the caller's method, target and Headers (byte-exact, Host first, the transport's own
 * framing), its bytes, and bodies streamed with their declared length (enforced) or chunked.
 */

import type { HeaderPairs } from "./headers.ts";
import { isToken } from "./http_token.ts";

const encoder = new TextEncoder();
const CRLF = new Uint8Array([13, 10]);
const LAST_CHUNK = encoder.encode("0\r\n\r\n");

/** A request body as the transport writes it. */
export type RequestBody = Uint8Array | ReadableStream<Uint8Array> | null;

/** The serialised request head and how its body is framed. */
export interface RequestHead {
  text: string;
  /** Characters of `text` that are the request line (UTF-8); the rest is Latin-1. */
  lineLength: number;
  /** Whether `text` is all ASCII (then UTF-8 and Latin-1 agree: one encodeInto). */
  ascii: boolean;
  /** Body bytes announced by Content-Length, or -1 for chunked (a stream of unknown length). */
  length: number;
  /** The request carries `Expect: 100-continue` and a body. */
  expectContinue: boolean;
}

/** The request body as bytes, a stream, or nothing. */
export function requestBody(body: BodyInit | null | undefined): RequestBody {
  if (body === null || body === undefined) return null;
  if (body instanceof Uint8Array) return body;
  if (body instanceof ReadableStream) return body as ReadableStream<Uint8Array>;
  if (typeof body === "string") return encoder.encode(body);
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) {
    return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  }
  if (body instanceof Blob) return body.stream();
  throw new TypeError(`cannot send a ${body.constructor.name} body`);
}

/** What follows the origin in `url`: the target exactly as the client sent it. */
export function targetOf(origin: string, url: string): string {
  let target: string;
  if (url.startsWith(origin)) target = url.slice(origin.length);
  else {
    const start = url.indexOf("/", url.indexOf("://") + 3);
    target = start === -1 ? "" : url.slice(start);
  }
  return target === "" ? "/" : target;
}

/** Accumulates header lines (one instance: building is synchronous). */
class HeadBuilder {
  lines = "";
  host: string | null = null;
  contentLength: string | null = null;
  expectContinue = false;
  ascii = true;
  bad: string | null = null;
}

const builder = new HeadBuilder();

/** Adds one field to `b`, or notes it when the transport writes it itself. */
function addHeader(b: HeadBuilder, field: string, value: string): void {
  // Pairs, unlike a Headers object, guarantee neither a valid name nor its case: nothing else
  // stands between them and the wire.
  if (!isToken(field)) b.bad ??= "invalid header name";
  const name = field.toLowerCase();
  for (let i = 0; i < value.length; i++) {
    const ch = value.charCodeAt(i);
    if (ch < 32 || ch > 126) {
      if (ch === 0 || ch === 10 || ch === 13) b.bad ??= `CR, LF or NUL in ${name}`;
      else if (ch > 126) b.ascii = false;
    }
  }
  switch (name.length) {
    case 4:
      if (name === "host") {
        b.host = value;
        return;
      }
      break;
    case 6:
      if (name === "expect" && value.toLowerCase() === "100-continue") b.expectContinue = true;
      break;
    case 10:
      // The transport frames and keeps connections itself.
      if (name === "connection" || name === "keep-alive") return;
      break;
    case 14:
      if (name === "content-length") {
        b.contentLength = value;
        return;
      }
      break;
    case 17:
      if (name === "transfer-encoding") return;
      break;
  }
  b.lines += `${name}: ${value}\r\n`;
}

/**
 * The request head: method and target as given, Host first, the caller's headers without
 * framing and connection fields, then this transport's framing. Returns a string naming the
 * problem for a request that cannot be written (control characters, a method or header name
 * that is not a token): nothing is sent.
 */
export function buildHead(
  method: string,
  target: string,
  headers: HeaderPairs,
  body: RequestBody,
  authority: string,
): RequestHead | string {
  if (!isToken(method)) return "method is not a token";
  let ascii = true;
  for (let i = 0; i < target.length; i++) {
    const ch = target.charCodeAt(i);
    if (ch <= 32 || ch === 127) return "space or control character in the request target";
    if (ch > 127) ascii = false;
  }
  const b = builder;
  b.lines = "";
  b.host = b.contentLength = b.bad = null;
  b.expectContinue = false;
  b.ascii = true;
  for (let i = 0; i < headers.length; i++) addHeader(b, headers[i][0], headers[i][1]);
  if (b.bad !== null) return b.bad;
  let length = 0;
  let framing: string;
  if (body === null) {
    // As fetch: an explicit zero for methods that normally carry a body, or when the caller
    // declared one (its length described a body this request does not have).
    framing = b.contentLength !== null || method === "POST" || method === "PUT" ||
        method === "PATCH"
      ? "content-length: 0\r\n"
      : "";
  } else if (body instanceof Uint8Array) {
    length = body.length;
    framing = `content-length: ${length}\r\n`;
  } else {
    length = declaredLength(b.contentLength);
    framing = length >= 0 ? `content-length: ${length}\r\n` : "transfer-encoding: chunked\r\n";
  }
  const line = `${method} ${target} HTTP/1.1\r\n`;
  const host = b.host ?? authority;
  return {
    text: `${line}host: ${host}\r\n${b.lines}${framing}\r\n`,
    lineLength: line.length,
    ascii: ascii && b.ascii && isAscii(host),
    length,
    expectContinue: b.expectContinue && body !== null,
  };
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 127) return false;
  return true;
}

/** A declared Content-Length (`5` or a list of equal values), or -1 when absent or unusable. */
function declaredLength(value: string | null): number {
  if (value === null) return -1;
  const first = value.split(",")[0].trim();
  if (!/^\d{1,15}$/.test(first)) return -1;
  return Number(first);
}

/**
 * The head as bytes, followed by `body` when given, in `scratch` (a buffer reused per
 * connection) when they fit. ASCII heads take one `encodeInto`; otherwise the request line is
 * UTF-8 and the header section Latin-1 (header values are byte strings).
 */
export function encodeHead(
  head: RequestHead,
  body: Uint8Array | null,
  scratch: Uint8Array,
): Uint8Array {
  const bodyLength = body === null ? 0 : body.length;
  if (head.ascii) {
    const size = head.text.length + bodyLength;
    const out = size <= scratch.length ? scratch : new Uint8Array(size);
    encoder.encodeInto(head.text, out);
    if (body !== null) out.set(body, head.text.length);
    return out.subarray(0, size);
  }
  const line = encoder.encode(head.text.slice(0, head.lineLength));
  const rest = head.text.length - head.lineLength;
  const out = new Uint8Array(line.length + rest + bodyLength);
  out.set(line);
  for (let i = 0; i < rest; i++) out[line.length + i] = head.text.charCodeAt(head.lineLength + i);
  if (body !== null) out.set(body, line.length + rest);
  return out;
}

/** What bytes are written to: a connection, or a wrapper of its writes. */
export type Writer = Pick<Deno.Conn, "write">;

/** Writes all of `bytes` (a single write may take only part of it). */
export async function writeAll(conn: Writer, bytes: Uint8Array): Promise<void> {
  if (bytes.length === 0) return;
  // Most writes take everything at once: no view for them.
  let offset = await conn.write(bytes);
  while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
}

/** A failure of the request body's source, not of the backend. */
export class SourceError extends Error {}

/**
 * Streams `reader` raw with a declared `length` (enforced), or chunked when `length` < 0, each
 * piece through `write` (by default all of it to `conn`).
 */
export async function writeStream(
  conn: Deno.Conn,
  reader: ReadableStreamDefaultReader<Uint8Array>,
  length: number,
  write: (bytes: Uint8Array) => Promise<void> = (bytes) => writeAll(conn, bytes),
): Promise<void> {
  let sent = 0;
  let frame: Uint8Array | undefined;
  for (;;) {
    let result: ReadableStreamReadResult<Uint8Array>;
    try {
      result = await reader.read();
    } catch (error) {
      throw new SourceError(
        `request body failed: ${error instanceof Error ? error.message : String(error)}`,
      );
    }
    if (result.done) break;
    const chunk = result.value;
    if (chunk.length === 0) continue;
    sent += chunk.length;
    if (length >= 0) {
      if (sent > length) throw new SourceError("request body longer than its Content-Length");
      await write(chunk);
      continue;
    }
    // size CRLF data CRLF in one write; the frame buffer is reused while it is big enough.
    const size = chunk.length.toString(16);
    const total = size.length + 2 + chunk.length + 2;
    if (frame === undefined || frame.length < total) frame = new Uint8Array(Math.max(total, 16384));
    for (let i = 0; i < size.length; i++) frame[i] = size.charCodeAt(i);
    frame[size.length] = 13;
    frame[size.length + 1] = 10;
    frame.set(chunk, size.length + 2);
    frame.set(CRLF, size.length + 2 + chunk.length);
    await write(frame.subarray(0, total));
  }
  if (length >= 0 && sent !== length) {
    throw new SourceError("request body shorter than its Content-Length");
  }
  if (length < 0) await write(LAST_CHUNK);
}
