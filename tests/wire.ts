/**
 * @module
 * HTTP/1.1 by hand, for tests: buffered reads and writes on one raw connection (request heads,
 * bodies by length or chunked) for backends that speak it themselves, and the one parser of raw
 * responses that clients read off a socket. Every loop is bounded, so a peer that misbehaves ends
 * a test instead of hanging it.
 */

import { concat, rawExchangeBytes, writeAll } from "./helpers.ts";

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Where the blank line ending a head starts in `bytes` (a byte offset), or -1. */
export function headEnd(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
      return i;
    }
  }
  return -1;
}

/** One connection's bytes, read as far as a test needs them. */
export class Wire {
  #buf: Uint8Array = new Uint8Array(0);
  constructor(readonly conn: Deno.Conn) {}

  /** Reads once more; false when the peer closed (or reset) the connection. */
  async more(): Promise<boolean> {
    const chunk = new Uint8Array(64 * 1024);
    const n = await this.conn.read(chunk).catch(() => null);
    if (n === null) return false;
    this.#buf = concat([this.#buf, chunk.subarray(0, n)]);
    return true;
  }

  /** The next head (without the blank line), or null when the peer closed first. */
  async head(): Promise<string | null> {
    for (let i = 0; i < 10_000; i++) {
      const end = headEnd(this.#buf);
      if (end !== -1) {
        const text = decoder.decode(this.#buf.subarray(0, end));
        this.#buf = this.#buf.subarray(end + 4);
        return text;
      }
      if (!(await this.more())) return null;
    }
    return null;
  }

  /** The next `n` bytes; throws when the peer closes before they arrive. */
  async bytes(n: number): Promise<Uint8Array> {
    for (let i = 0; i < 100_000 && this.#buf.length < n; i++) {
      if (!(await this.more())) throw new Error("peer closed mid-body");
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** How many unread bytes there are, after waiting for at least `min` (or the peer closing). */
  async peek(min: number): Promise<number> {
    for (let i = 0; i < 100_000 && this.#buf.length < min; i++) {
      if (!(await this.more())) break;
    }
    return this.#buf.length;
  }

  /** A chunked body, decoded (chunk extensions ignored, trailers skipped). */
  async chunked(): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    for (let i = 0; i < 100_000; i++) {
      const size = parseInt(await this.#line(), 16);
      if (size === 0) {
        for (let j = 0; j < 1000 && (await this.#line()) !== ""; j++) { /* trailer fields */ }
        break;
      }
      parts.push(await this.bytes(size));
      await this.bytes(2);
    }
    return concat(parts);
  }

  /** Writes all of `data`. */
  async write(data: string | Uint8Array): Promise<void> {
    await writeAll(this.conn, typeof data === "string" ? encoder.encode(data) : data);
  }

  async #line(): Promise<string> {
    for (let i = 0; i < 10_000; i++) {
      const lf = this.#buf.indexOf(10);
      if (lf !== -1) {
        const line = decoder.decode(this.#buf.subarray(0, lf)).replace(/\r$/, "");
        this.#buf = this.#buf.subarray(lf + 1);
        return line;
      }
      if (!(await this.more())) break;
    }
    throw new Error("peer closed mid-line");
  }
}

/** A head split into its first line and its fields (names lower-cased, in order, repeats kept). */
export interface ParsedHead {
  /** The request or status line. */
  line: string;
  fields: [string, string][];
}

/** Splits a head (without the blank line) into its first line and fields. */
export function parseHead(head: string): ParsedHead {
  const [line, ...lines] = head.split("\r\n");
  const fields = lines.map((field): [string, string] => {
    const colon = field.indexOf(":");
    return [field.slice(0, colon).trim().toLowerCase(), field.slice(colon + 1).trim()];
  });
  return { line, fields };
}

/** The status code of a status line such as `HTTP/1.1 200 OK`. */
export function statusOf(statusLine: string): number {
  return Number(statusLine.split(" ")[1]);
}

/** One whole response read by a raw client, kept as bytes (bodies may be binary). */
export interface RawResponse {
  status: number;
  /** `HTTP/1.1 200 OK`, as sent. */
  statusLine: string;
  /** Header fields in order, names lower-cased, repeats kept. */
  fields: [string, string][];
  /** The fields as Headers (repeats joined with ", "); built when first read. */
  readonly headers: Headers;
  /** The body with any chunked framing removed; reading it throws when the last chunk is missing. */
  readonly body: Uint8Array;
  /** Every byte that followed the head, framing included. */
  wireBody: Uint8Array;
}

/**
 * Parses the one response in `bytes` (as read until the connection closed). Throws, quoting
 * what arrived, when there is no complete head.
 */
export function parseResponse(bytes: Uint8Array): RawResponse {
  const end = headEnd(bytes);
  if (end === -1) {
    throw new Error(
      `no complete response head in ${JSON.stringify(decoder.decode(bytes.subarray(0, 500)))}`,
    );
  }
  const { line, fields } = parseHead(decoder.decode(bytes.subarray(0, end)));
  if (!/^HTTP\/1\.1 \d{3}/.test(line)) {
    throw new Error(`not a status line: ${JSON.stringify(line)}`);
  }
  const wireBody = bytes.subarray(end + 4);
  const chunked = fields.some(([n, v]) => n === "transfer-encoding" && /chunked/i.test(v));
  let headers: Headers | undefined;
  let body: Uint8Array | undefined;
  return {
    status: statusOf(line),
    statusLine: line,
    fields,
    get headers() {
      return headers ??= new Headers(fields);
    },
    get body() {
      return body ??= chunked ? dechunk(wireBody) : wireBody;
    },
    wireBody,
  };
}

/**
 * Sends `request` on a new connection to 127.0.0.1:port (end it with `Connection: close`), reads
 * until the peer closes or `timeoutMs` passes, and parses the one response.
 */
export async function rawResponse(
  port: number,
  request: string | Uint8Array,
  timeoutMs = 3000,
): Promise<RawResponse> {
  return parseResponse(await rawExchangeBytes(port, request, timeoutMs));
}

/** All values of `name` (lower case) joined with ", ", or undefined when absent. */
export function headerOf(
  response: { fields: [string, string][] },
  name: string,
): string | undefined {
  const values = headerValues(response, name);
  return values.length === 0 ? undefined : values.join(", ");
}

/** Every value of `name` (lower case) in `response`, in order. */
export function headerValues(response: { fields: [string, string][] }, name: string): string[] {
  return response.fields.filter(([n]) => n === name).map(([, v]) => v);
}

/** Removes chunked framing (extensions ignored, trailers dropped); throws on a truncated body. */
function dechunk(framed: Uint8Array): Uint8Array {
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (let i = 0; i < 1_000_000; i++) {
    const lineEnd = crlfAt(framed, offset);
    if (lineEnd === -1) throw new Error("chunked body ends without its last chunk");
    const size = parseInt(decoder.decode(framed.subarray(offset, lineEnd)).split(";")[0], 16);
    if (!Number.isInteger(size)) throw new Error("bad chunk size line");
    if (size === 0) break;
    chunks.push(framed.subarray(lineEnd + 2, lineEnd + 2 + size));
    offset = lineEnd + 2 + size + 2;
  }
  return concat(chunks);
}

/** Where the next CRLF at or after `from` starts, or -1. */
function crlfAt(bytes: Uint8Array, from: number): number {
  for (let i = from; i + 1 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10) return i;
  }
  return -1;
}

/** One response read off the wire, body as text (see {@linkcode parseResponses}). */
export interface WireResponse {
  status: number;
  headers: Map<string, string>;
  body: string;
}

/**
 * Splits what came back into responses, framed by Content-Length or chunked (test traffic only;
 * a 100 Continue has no body). Stops at anything it cannot frame.
 */
export function parseResponses(bytes: Uint8Array): WireResponse[] {
  let rest = decoder.decode(bytes);
  const responses: WireResponse[] = [];
  for (let n = 0; n < 1000; n++) {
    const headEnd = rest.indexOf("\r\n\r\n");
    if (!rest.startsWith("HTTP/") || headEnd === -1) break;
    const { line, fields } = parseHead(rest.slice(0, headEnd));
    const headers = new Map(fields);
    rest = rest.slice(headEnd + 4);
    let body = "";
    const status = statusOf(line);
    if (headers.get("transfer-encoding") === "chunked") {
      for (let i = 0; i < 100_000; i++) {
        const lineEnd = rest.indexOf("\r\n");
        const size = parseInt(rest.slice(0, lineEnd), 16);
        if (lineEnd === -1 || Number.isNaN(size)) return responses;
        rest = rest.slice(lineEnd + 2);
        if (size === 0) {
          rest = rest.slice(2);
          break;
        }
        body += rest.slice(0, size);
        rest = rest.slice(size + 2);
      }
    } else if (status !== 100) {
      const length = Number(headers.get("content-length") ?? 0);
      body = rest.slice(0, length);
      rest = rest.slice(length);
    }
    responses.push({ status, headers, body });
  }
  return responses;
}
