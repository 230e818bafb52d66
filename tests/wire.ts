/**
 * @module
 * Buffered reads and writes on one raw connection, for tests whose backend speaks HTTP/1.1 by
 * hand (tests/exact_path_test.ts, tests/upstream_native_test.ts): request heads, bodies by length
 * or chunked. Every loop is bounded, so a peer that misbehaves ends a test instead of hanging it.
 */

import { concat, writeAll } from "./helpers.ts";

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

/** One response read off the wire. */
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
    const [statusLine, ...lines] = rest.slice(0, headEnd).split("\r\n");
    const headers = new Map<string, string>();
    for (const line of lines) {
      const colon = line.indexOf(":");
      headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
    }
    rest = rest.slice(headEnd + 4);
    let body = "";
    const status = Number(statusLine.split(" ")[1]);
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
