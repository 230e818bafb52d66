/**
 * @module
 * Strict HTTP/1.1 request-head parsing for the native front end (lib/frontend_native.ts), as
 * hyper and HAProxy are strict: the request line, fields and body framing from the head's
 * bytes, or {@linkcode MalformedRequest} with the status to answer (400, or 505 for another
 * HTTP version) before the connection is closed. Pure: no I/O.
 *
 * Refused: a request line that is not `method SP target SP HTTP/1.x` with single spaces, a
 * method that is not a token, a target with control bytes or bytes that are not UTF-8 (UTF-8 is
 * read as Deno.serve reads it), obs-fold, whitespace before a
 * colon, control characters (a CR anywhere but before the LF), more than
 * {@linkcode MAX_HEADERS} fields, Content-Length that is not digits (a list too) or differs
 * between fields,
 * Content-Length with Transfer-Encoding, any transfer coding but one final `chunked`,
 * Transfer-Encoding in HTTP/1.0, HTTP/1.1 without exactly one valid Host, an absolute-form
 * target naming another authority than Host, `*` for any method but OPTIONS, authority-form
 * for any method but CONNECT. Lines may end in a bare LF (RFC 9112 §2.2, as hyper, HAProxy and
 * nginx); chunked framing needs CRLF (lib/http1_parse.ts's ChunkedDecoder).
 */

import { isValidHost } from "./headers.ts";
import { checkChunkedOnly, hasToken, MAX_HEADERS, parseField } from "./http1_parse.ts";
import { isToken } from "./http_token.ts";

export { hasToken };

export { MAX_HEADERS };

/** A request the front end refuses; `status` is what the client is told. */
export class MalformedRequest extends Error {
  override name = "MalformedRequest";
  constructor(why: string, readonly status = 400) {
    super(`malformed request: ${why}`);
  }
}

/** How the request body is delimited (RFC 9112 §6.3). */
export const BodyFraming = { None: 0, Length: 1, Chunked: 2 } as const;
/** One of {@linkcode BodyFraming}'s values. */
export type BodyFraming = typeof BodyFraming[keyof typeof BodyFraming];

/** A parsed request head. */
export interface RequestHead {
  method: string;
  /** The request target exactly as sent. */
  target: string;
  http10: boolean;
  /** Fields in order, names as sent, values without surrounding whitespace. */
  headers: [string, string][];
  /** The Host field, or the authority of an absolute-form target when Host is absent. */
  host: string | null;
  framing: BodyFraming;
  /** Body bytes for {@linkcode BodyFraming.Length}, else -1 (0 with framing None). */
  length: number;
  /** Whether the client lets the connection carry another request (before our own choice). */
  keepAlive: boolean;
  /** `Expect: 100-continue` on an HTTP/1.1 request that has a body. */
  expectContinue: boolean;
  /** The request carries an Upgrade field (a WebSocket handshake, say). */
  upgrade: boolean;
}

/**
 * Parses `text` (the head's bytes as Latin-1: request line through the blank line, leading
 * empty lines already skipped). Throws {@linkcode MalformedRequest}.
 */
export function parseRequestHead(text: string): RequestHead {
  let lineEnd = text.indexOf("\n");
  if (lineEnd === -1) throw new MalformedRequest("head without its blank line");
  const line = text.slice(
    0,
    lineEnd > 0 && text.charCodeAt(lineEnd - 1) === 13 ? lineEnd - 1 : lineEnd,
  );
  const { method, target, http10 } = parseRequestLine(line);
  const headers: [string, string][] = [];
  let host: string | null = null;
  let hosts = 0;
  let contentLength = -1;
  let transferEncoding: string | undefined;
  let connection: string | undefined;
  let expect: string | undefined;
  let upgrade = false;
  let pos = lineEnd + 1;
  for (;;) {
    lineEnd = text.indexOf("\n", pos);
    if (lineEnd === -1) throw new MalformedRequest("head without its blank line");
    let end = lineEnd;
    if (end > pos && text.charCodeAt(end - 1) === 13) end--;
    if (end === pos) break;
    if (headers.length === MAX_HEADERS) {
      throw new MalformedRequest(`more than ${MAX_HEADERS} header fields`);
    }
    const field = parseField(text, pos, end, MalformedRequest);
    headers.push(field);
    switch (field[0].toLowerCase()) {
      case "host":
        host = field[1];
        hosts++;
        break;
      case "content-length":
        contentLength = mergeContentLength(contentLength, field[1]);
        break;
      case "transfer-encoding":
        transferEncoding = transferEncoding === undefined
          ? field[1]
          : `${transferEncoding},${field[1]}`;
        break;
      case "connection":
        connection = connection === undefined ? field[1] : `${connection},${field[1]}`;
        break;
      case "expect":
        expect = field[1];
        break;
      case "upgrade":
        upgrade = true;
        break;
    }
    pos = lineEnd + 1;
  }
  // RFC 9112 §3.2: a request with no Host, or more than one, is refused (hyper takes none).
  if (hosts > 1) throw new MalformedRequest("more than one Host field");
  if (host !== null && !isValidHost(host)) throw new MalformedRequest("invalid Host");
  if (hosts === 0 && !http10) throw new MalformedRequest("HTTP/1.1 request without Host");
  host = checkTarget(method, target, host);
  if (transferEncoding !== undefined) {
    // RFC 9112 §6.1: both at once may be an attempt at smuggling.
    if (contentLength !== -1) throw new MalformedRequest("Content-Length with Transfer-Encoding");
    if (http10) throw new MalformedRequest("Transfer-Encoding in an HTTP/1.0 request");
    // Empty list elements (`chunked,`, a second empty field) are refused, as hyper does.
    checkChunkedOnly(transferEncoding, MalformedRequest, false);
  }
  // RFC 9110 §9.3.6: CONNECT content has no meaning; what follows is the next request (hyper).
  const framing = method === "CONNECT"
    ? BodyFraming.None
    : transferEncoding !== undefined
    ? BodyFraming.Chunked
    : contentLength > 0
    ? BodyFraming.Length
    : BodyFraming.None;
  const keepAlive = http10
    ? connection !== undefined && hasToken(connection, "keep-alive")
    : connection === undefined || !hasToken(connection, "close");
  return {
    method,
    target,
    http10,
    headers,
    host,
    framing,
    length: framing === BodyFraming.Length ? contentLength : framing === BodyFraming.None ? 0 : -1,
    keepAlive,
    // RFC 9110 §10.1.1: a 1.0 client's 100-continue is ignored; so is one without a body.
    upgrade,
    expectContinue: !http10 && framing !== BodyFraming.None && expect !== undefined &&
      expect.toLowerCase() === "100-continue",
  };
}

/** `method SP target SP HTTP/1.x`, single spaces. */
function parseRequestLine(line: string): { method: string; target: string; http10: boolean } {
  const sp1 = line.indexOf(" ");
  const sp2 = line.lastIndexOf(" ");
  if (sp1 <= 0 || sp2 === sp1) throw new MalformedRequest("bad request line");
  const method = line.slice(0, sp1);
  if (!isToken(method)) throw new MalformedRequest("bad method");
  let target = line.slice(sp1 + 1, sp2);
  if (target === "") throw new MalformedRequest("empty request target");
  let ascii = true;
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c <= 0x20 || c === 0x7f) throw new MalformedRequest("bad byte in the request target");
    if (c > 0x7f) ascii = false;
  }
  if (!ascii) target = utf8Target(target);
  const version = line.slice(sp2 + 1);
  if (version === "HTTP/1.1") return { method, target, http10: false };
  if (version === "HTTP/1.0") return { method, target, http10: true };
  if (/^HTTP\/\d\.\d$/.test(version)) throw new MalformedRequest(`${version} not supported`, 505);
  throw new MalformedRequest("bad HTTP version");
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A target with bytes over 0x7F (here one character per byte), read as UTF-8 as Deno.serve
 * reads it: the proxy sends such a path on as the same bytes. Bytes that are not UTF-8 are
 * refused.
 */
function utf8Target(latin1Target: string): string {
  const bytes = new Uint8Array(latin1Target.length);
  for (let i = 0; i < bytes.length; i++) bytes[i] = latin1Target.charCodeAt(i);
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new MalformedRequest("request target is not UTF-8");
  }
}

/**
 * Checks the target's form against the method and Host; returns the authority the request
 * names (Host, or an absolute-form target's when Host is absent).
 */
function checkTarget(method: string, target: string, host: string | null): string | null {
  const c = target.charCodeAt(0);
  if (c === 47) return host; // "/": origin-form, nearly every request
  if (target === "*") {
    if (method !== "OPTIONS") throw new MalformedRequest("* target for a method but OPTIONS");
    return host;
  }
  if (method === "CONNECT") {
    if (!isValidHost(target) || !/:\d+$/.test(target)) {
      throw new MalformedRequest("CONNECT target is not host:port");
    }
    return host ?? target;
  }
  const scheme = /^https?:\/\//i.exec(target);
  if (scheme === null) throw new MalformedRequest("bad request target");
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    throw new MalformedRequest("bad absolute-form target");
  }
  // RFC 9112 §3.2.2 lets a server prefer the target's authority; a proxy that routes by Host
  // cannot, so two that differ are refused (as HAProxy does).
  if (url.username !== "" || url.password !== "") throw new MalformedRequest("userinfo in target");
  if (host === null) return url.host;
  if (!URL.canParse(`http://${host}/`) || new URL(`${url.protocol}//${host}/`).host !== url.host) {
    throw new MalformedRequest("absolute-form target naming another host than Host");
  }
  return host;
}

/**
 * Digits only. Repeated fields must agree; a list in one field (`5, 5`), which RFC 9110 §8.6
 * would allow, is refused as hyper refuses it.
 */
function mergeContentLength(known: number, value: string): number {
  if (!/^\d{1,15}$/.test(value)) throw new MalformedRequest("bad Content-Length");
  const n = Number(value);
  if (known !== -1 && known !== n) throw new MalformedRequest("conflicting Content-Length values");
  return n;
}
