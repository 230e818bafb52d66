/**
 * @module
 * One request over a raw socket, to check what a client really receives (issue 12: a balancer on
 * `fetch` decoded its backends' gzip answers). `fetch` or curl would decode or hide the bytes on
 * the wire; this reads them as sent, with a small HTTP/1.1 response parser.
 */

import { concatBytes } from "../lib/body.ts";

/** A response as it came off the wire. */
export interface RawResponse {
  status: number;
  /** Header names lowercased; repeated headers joined with ", ". */
  headers: Map<string, string>;
  /** The body after de-chunking, never decoded. */
  body: Uint8Array;
}

/**
 * Parses a complete HTTP/1.x response (the connection read to its end): Content-Length,
 * chunked (trailers ignored) or close-delimited bodies. Throws on a malformed head or a body
 * shorter than announced.
 */
export function parseHttpResponse(bytes: Uint8Array): RawResponse {
  const text = new TextDecoder("latin1").decode(bytes);
  const headEnd = text.indexOf("\r\n\r\n");
  if (headEnd < 0) throw new Error("no complete response head");
  const [statusLine, ...lines] = text.slice(0, headEnd).split("\r\n");
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
  if (match === null) throw new Error(`bad status line: ${statusLine.slice(0, 80)}`);
  const headers = new Map<string, string>();
  for (const line of lines) {
    const colon = line.indexOf(":");
    if (colon <= 0) throw new Error(`bad header line: ${line.slice(0, 80)}`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers.set(name, headers.has(name) ? `${headers.get(name)}, ${value}` : value);
  }
  const rest = bytes.subarray(headEnd + 4);
  return { status: Number(match[1]), headers, body: framedBody(rest, headers) };
}

function framedBody(rest: Uint8Array, headers: Map<string, string>): Uint8Array {
  if (/\bchunked\b/i.test(headers.get("transfer-encoding") ?? "")) return dechunk(rest);
  const length = headers.get("content-length");
  if (length === undefined) return rest;
  const n = Number(length);
  if (!Number.isInteger(n) || n < 0) throw new Error(`bad Content-Length: ${length}`);
  if (rest.length < n) throw new Error(`body cut short: ${rest.length} of ${n} bytes`);
  return rest.subarray(0, n);
}

function dechunk(bytes: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  let at = 0;
  for (;;) {
    const lineEnd = bytes.indexOf(10, at);
    if (lineEnd < 0) throw new Error("chunked body cut short");
    const size = parseInt(new TextDecoder().decode(bytes.subarray(at, lineEnd)), 16);
    if (!Number.isInteger(size)) throw new Error("bad chunk size line");
    if (size === 0) break;
    if (lineEnd + 1 + size > bytes.length) throw new Error("chunk cut short");
    parts.push(bytes.subarray(lineEnd + 1, lineEnd + 1 + size));
    at = lineEnd + 1 + size + 2;
  }
  return concatBytes(parts);
}

/** Sends `GET path` with `headers` over a new connection and reads the answer to its end. */
export async function rawGet(
  port: number,
  path: string,
  headers: Record<string, string>,
  timeoutMs = 5000,
): Promise<RawResponse> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    const head = Object.entries({ Host: `127.0.0.1:${port}`, ...headers, Connection: "close" })
      .map(([name, value]) => `${name}: ${value}\r\n`).join("");
    await conn.write(new TextEncoder().encode(`GET ${path} HTTP/1.1\r\n${head}\r\n`));
    return parseHttpResponse(new Uint8Array(await new Response(conn.readable).arrayBuffer()));
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed with its readable */ }
  }
}

/** Whether a client that accepts gzip got the backend's compressed bytes unchanged. */
export interface PassThroughCheck {
  passThrough: boolean;
  /** What was received, e.g. `1,234 bytes, Content-Encoding gzip, identical`. */
  detail: string;
}

/**
 * Asks `port` for `path` with `Accept-Encoding: gzip` and compares the body with `expected`, the
 * compressed file the backend serves.
 */
export async function checkGzipPassThrough(
  port: number,
  path: string,
  expected: Uint8Array,
): Promise<PassThroughCheck> {
  let response: RawResponse;
  try {
    response = await rawGet(port, path, { "Accept-Encoding": "gzip" });
  } catch (error) {
    return { passThrough: false, detail: `request failed: ${(error as Error).message}` };
  }
  const { body, headers, status } = response;
  const same = body.length === expected.length && body.every((b, i) => b === expected[i]);
  const encoding = headers.get("content-encoding") ?? "none";
  return {
    passThrough: status === 200 && same && encoding === "gzip",
    detail: `HTTP ${status}, ${
      body.length.toLocaleString("en-US")
    } bytes, Content-Encoding ${encoding}, ${
      same ? "identical to" : "differs from"
    } the backend's ${expected.length.toLocaleString("en-US")} compressed bytes`,
  };
}
