/**
 * @module
 * Strict HTTP/1.1 response parsing for the native transport (lib/upstream_native.ts): the
 * response head (status line, fields, framing) and a chunked-body decoder, both over raw bytes
 * with fixed limits. Pure: no I/O, so every rule is tested without sockets.
 *
 * Policies where RFC 9112 leaves a choice:
 * - Head lines may end in CRLF or a bare LF (RFC 9112 §2.2 allows recognising a lone LF; hyper,
 *   Go and nginx do). A CR anywhere else in the head is refused. The head is read by nobody
 *   but this parser, so accepting LF there cannot make two parsers disagree.
 * - Chunked framing needs CRLF everywhere (size lines, after data, trailers): line-ending
 *   leniency inside chunked bodies is what request smuggling feeds on, and no sane server
 *   sends bare LF there.
 * - Refused outright (a malformed response, never guessed at): obs-fold, whitespace before a
 *   colon, control characters in names or values, a Content-Length that is not digits, two
 *   different Content-Lengths, Content-Length with Transfer-Encoding, any transfer coding but
 *   one final `chunked`, Transfer-Encoding in an HTTP/1.0 response, statuses outside 100-599.
 */

import { isTokenChar } from "./http_token.ts";

/** Largest response head, status line to blank line (bytes), as hyper's default buffer. */
export const MAX_HEAD_BYTES = 64 * 1024;
/** Most header fields in one response head (hyper allows 100 too). */
export const MAX_HEADERS = 100;
/** Longest chunk-size line, extensions included (bytes, CRLF excluded). */
export const MAX_CHUNK_LINE = 4096;
/** Most trailer bytes after the last chunk, all lines together. */
export const MAX_TRAILER_BYTES = 16 * 1024;

/** A response that breaks HTTP/1.1 framing or syntax; the message says why. */
export class MalformedResponse extends Error {
  override name = "MalformedResponse";
  constructor(why: string) {
    super(`malformed response: ${why}`);
  }
}

/** How a response body is delimited (RFC 9112 §6.3). */
export const Framing = {
  /** No body: HEAD, 1xx, 204, 304. */
  None: 0,
  /** Exactly `length` bytes. */
  Length: 1,
  /** Chunked transfer coding. */
  Chunked: 2,
  /** Until the backend closes the connection. */
  Close: 3,
} as const;
/** One of {@linkcode Framing}'s values. */
export type Framing = typeof Framing[keyof typeof Framing];

/** A parsed response head. */
export interface ResponseHead {
  status: number;
  statusText: string;
  /** Fields in the order received, names as sent, values with surrounding whitespace removed. */
  headers: [string, string][];
  framing: Framing;
  /** Body length for {@linkcode Framing.Length}, else -1. */
  length: number;
  /** Whether the connection may carry another request after this response. */
  keepAlive: boolean;
}

/**
 * Where the head that starts at `from` ends in `buf` (the offset just past its blank line),
 * looking at bytes up to `to`; -1 when the blank line has not arrived. `scanFrom` (>= from)
 * skips bytes already searched. A blank line is CRLF or a bare LF, after a line ending.
 */
export function findHeadEnd(buf: Uint8Array, from: number, scanFrom: number, to: number): number {
  let lf = buf.indexOf(10, scanFrom);
  while (lf !== -1 && lf < to) {
    // The line this LF ends is empty: the previous byte ends a line too (LF), or is a CR
    // right after one.
    if (lf > from) {
      const prev = buf[lf - 1];
      if (prev === 10 || (prev === 13 && lf - 1 > from && buf[lf - 2] === 10)) return lf + 1;
    }
    lf = buf.indexOf(10, lf + 1);
  }
  return -1;
}

const utf8 = new TextDecoder();

/**
 * `buf[from, to)` as a string of one character per byte (header bytes are Latin-1). ASCII,
 * nearly every head, takes the native UTF-8 decoder, far faster than `String.fromCharCode`:
 * any byte over 127 shows in its result, as a multi-byte character (a shorter string) or
 * U+FFFD, and sends the bytes to the exact, slower path.
 */
export function latin1(buf: Uint8Array, from: number, to: number): string {
  const text = utf8.decode(buf.subarray(from, to));
  if (text.length === to - from && text.indexOf("\uFFFD") === -1) return text;
  let out = "";
  for (let i = from; i < to; i += 8192) {
    out += String.fromCharCode.apply(
      null,
      buf.subarray(i, Math.min(to, i + 8192)) as unknown as number[],
    );
  }
  return out;
}

/** A field-content character: HTAB, SP, VCHAR or obs-text (no other control, no DEL). */
function isFieldChar(c: number): boolean {
  return c >= 0x20 ? c !== 0x7f : c === 9;
}

/**
 * Parses a response head: `text` is its bytes as Latin-1 ({@linkcode latin1}) from the status
 * line through the blank line. Returns the status, fields and framing; `method` is the
 * request's (a HEAD response has no body). Throws {@linkcode MalformedResponse}.
 */
export function parseHead(text: string, method: string): ResponseHead {
  let lineEnd = text.indexOf("\n");
  const statusLine = lineEnd > 0 && text.charCodeAt(lineEnd - 1) === 13
    ? text.slice(0, lineEnd - 1)
    : text.slice(0, lineEnd);
  const { status, statusText, http10 } = parseStatusLine(statusLine);
  const headers: [string, string][] = [];
  let contentLength = -1;
  let transferEncoding: string | undefined;
  let connection: string | undefined;
  let pos = lineEnd + 1;
  for (;;) {
    lineEnd = text.indexOf("\n", pos);
    // findHeadEnd() guarantees the blank line; a missing LF means a caller bug.
    if (lineEnd === -1) throw new MalformedResponse("head without its blank line");
    let end = lineEnd;
    if (end > pos && text.charCodeAt(end - 1) === 13) end--;
    if (end === pos) break;
    if (headers.length === MAX_HEADERS) {
      throw new MalformedResponse(`more than ${MAX_HEADERS} header fields`);
    }
    const field = parseField(text, pos, end);
    headers.push(field);
    const name = field[0];
    switch (name.length) {
      case 10:
        if (name.toLowerCase() === "connection") {
          connection = connection === undefined ? field[1] : `${connection},${field[1]}`;
        }
        break;
      case 14:
        if (name.toLowerCase() === "content-length") {
          contentLength = mergeContentLength(contentLength, field[1]);
        }
        break;
      case 17:
        if (name.toLowerCase() === "transfer-encoding") {
          transferEncoding = transferEncoding === undefined
            ? field[1]
            : `${transferEncoding},${field[1]}`;
        }
        break;
    }
    pos = lineEnd + 1;
  }
  let keepAlive = http10
    ? connection !== undefined && hasToken(connection, "keep-alive")
    : connection === undefined || !hasToken(connection, "close");
  if (transferEncoding !== undefined) {
    // RFC 9112 §6.1: both at once may be an attempt at smuggling; an HTTP/1.0 message with
    // Transfer-Encoding has faulty framing.
    if (contentLength !== -1) {
      throw new MalformedResponse("Content-Length with Transfer-Encoding");
    }
    if (http10) throw new MalformedResponse("Transfer-Encoding in an HTTP/1.0 response");
    checkChunkedOnly(transferEncoding);
  }
  let framing: Framing;
  let length = -1;
  if (method === "HEAD" || status === 204 || status === 304 || status < 200) {
    framing = Framing.None;
  } else if (transferEncoding !== undefined) {
    framing = Framing.Chunked;
  } else if (contentLength !== -1) {
    framing = Framing.Length;
    length = contentLength;
  } else {
    framing = Framing.Close;
    keepAlive = false;
  }
  return { status, statusText, headers, framing, length, keepAlive };
}

/** `HTTP/1.x NNN reason` (reason may be empty, its space too, as hyper accepts). */
function parseStatusLine(line: string): { status: number; statusText: string; http10: boolean } {
  if (
    line.length < 12 || !line.startsWith("HTTP/1.") || line.charCodeAt(8) !== 32 ||
    (line.charCodeAt(7) !== 48 && line.charCodeAt(7) !== 49)
  ) {
    throw new MalformedResponse(`bad status line ${JSON.stringify(line.slice(0, 40))}`);
  }
  let status = 0;
  for (let i = 9; i < 12; i++) {
    const d = line.charCodeAt(i) - 48;
    if (d < 0 || d > 9) {
      throw new MalformedResponse(`bad status line ${JSON.stringify(line.slice(0, 40))}`);
    }
    status = status * 10 + d;
  }
  if (status < 100 || status > 599) throw new MalformedResponse(`status ${status}`);
  let statusText = "";
  if (line.length > 12) {
    if (line.charCodeAt(12) !== 32) {
      throw new MalformedResponse(`bad status line ${JSON.stringify(line.slice(0, 40))}`);
    }
    for (let i = 13; i < line.length; i++) {
      if (!isFieldChar(line.charCodeAt(i))) {
        throw new MalformedResponse("control character in the reason phrase");
      }
    }
    statusText = line.slice(13);
  }
  return { status, statusText, http10: line.charCodeAt(7) === 48 };
}

/**
 * One `name: value` line of `text[from, to)`, for response heads and (with `Malformed` set to
 * its own error) the native front end's request heads.
 */
export function parseField(
  text: string,
  from: number,
  to: number,
  Malformed: new (message: string) => Error = MalformedResponse,
): [string, string] {
  let i = from;
  for (; i < to; i++) {
    const c = text.charCodeAt(i);
    if (c === 58) break;
    // Also refuses obs-fold (a line starting with SP/HTAB) and SP before the colon, which
    // RFC 9112 §5.1-5.2 let a proxy refuse.
    if (!isTokenChar(c)) {
      throw new Malformed(
        c === 32 || c === 9
          ? (i === from ? "obs-fold in the header section" : "whitespace before a colon")
          : "invalid header name",
      );
    }
  }
  if (i === from || i === to) throw new Malformed("header line without a name and colon");
  const name = text.slice(from, i);
  let start = i + 1;
  let end = to;
  while (start < end && (text.charCodeAt(start) === 32 || text.charCodeAt(start) === 9)) start++;
  while (end > start && (text.charCodeAt(end - 1) === 32 || text.charCodeAt(end - 1) === 9)) end--;
  for (let j = start; j < end; j++) {
    if (!isFieldChar(text.charCodeAt(j))) {
      throw new Malformed(`control character in the value of ${name}`);
    }
  }
  return [name, text.slice(start, end)];
}

/**
 * The length so far (-1: none yet) combined with one more Content-Length field value: digits
 * only, a list of equal values allowed (RFC 9110 §8.6), any disagreement refused.
 */
function mergeContentLength(known: number, value: string): number {
  let result = known;
  let i = 0;
  for (;;) {
    while (i < value.length && isOws(value.charCodeAt(i))) i++;
    let n = 0;
    let digits = 0;
    let significant = 0;
    for (; i < value.length; i++) {
      const d = value.charCodeAt(i) - 48;
      if (d < 0 || d > 9) break;
      digits++;
      // Leading zeros are valid (1*DIGIT) and do not count toward the size limit.
      if ((n > 0 || d > 0) && ++significant > 15) {
        throw new MalformedResponse("Content-Length too large");
      }
      n = n * 10 + d;
    }
    if (digits === 0) throw new MalformedResponse("bad Content-Length");
    if (result !== -1 && result !== n) {
      throw new MalformedResponse("conflicting Content-Length values");
    }
    result = n;
    while (i < value.length && isOws(value.charCodeAt(i))) i++;
    if (i === value.length) return result;
    if (value.charCodeAt(i) !== 44) throw new MalformedResponse("bad Content-Length");
    i++;
  }
}

function isOws(c: number): boolean {
  return c === 32 || c === 9;
}

/**
 * Throws `Malformed` unless the codings are exactly `chunked` (any case), applied once: for
 * response heads and the native front end's request heads. Empty list elements are skipped
 * (RFC 9110 §5.6.1) unless `emptyElements` is false, which refuses them.
 */
export function checkChunkedOnly(
  value: string,
  Malformed: new (message: string) => Error = MalformedResponse,
  emptyElements = true,
): void {
  let seen = 0;
  for (const part of value.split(",")) {
    const coding = part.trim();
    if (coding === "" && emptyElements) continue;
    if (coding.toLowerCase() !== "chunked" || ++seen > 1) {
      throw new Malformed(`Transfer-Encoding ${JSON.stringify(value)} (only chunked)`);
    }
  }
  if (seen === 0) throw new Malformed("empty Transfer-Encoding");
}

/** Whether the comma-separated `list` holds `token` (lower case), ignoring case. */
export function hasToken(list: string, token: string): boolean {
  for (const part of list.split(",")) {
    if (part.trim().toLowerCase() === token) return true;
  }
  return false;
}

/** States of {@linkcode ChunkedDecoder}. */
const Chunk = {
  Size: 0,
  SizeWs: 1,
  Ext: 2,
  SizeLf: 3,
  Data: 4,
  DataCr: 5,
  DataLf: 6,
  TrailerStart: 7,
  Trailer: 8,
  TrailerLf: 9,
  EndLf: 10,
  Done: 11,
} as const;
type Chunk = typeof Chunk[keyof typeof Chunk];

/**
 * Decodes a chunked body incrementally (RFC 9112 §7.1): feed it bytes with
 * {@linkcode advance}; while {@linkcode dataLeft} > 0 the next that many bytes are content,
 * which the caller takes and reports with {@linkcode took}. Extensions are skipped and trailers
 * dropped, both bounded. Throws {@linkcode MalformedResponse} at the first framing error.
 */
export class ChunkedDecoder {
  #state: Chunk = Chunk.Size;
  #size = 0;
  #digits = 0;
  #lineBytes = 0;
  #trailerBytes = 0;
  /** Content bytes left in the current chunk (0 when between chunks). */
  dataLeft = 0;

  /** Whether the last chunk and the trailers have been read. */
  get done(): boolean {
    return this.#state === Chunk.Done;
  }

  /**
   * Consumes framing bytes of `buf[pos, end)` up to the next content bytes, the end of the
   * body, or the end of the input; returns where it stopped.
   */
  advance(buf: Uint8Array, pos: number, end: number): number {
    while (pos < end) {
      const c = buf[pos];
      switch (this.#state) {
        case Chunk.Data:
          return pos;
        case Chunk.Size:
          if (this.#hexDigit(c)) break;
          if (c === 10) throw new MalformedResponse("bare LF in a chunk size line");
          if (this.#digits === 0) throw new MalformedResponse("bad chunk size");
          if (c === 13) this.#state = Chunk.SizeLf;
          else if (c === 59) this.#state = Chunk.Ext;
          else if (c === 32 || c === 9) this.#state = Chunk.SizeWs;
          else throw new MalformedResponse("bad chunk size");
          break;
        case Chunk.SizeWs:
          if (c === 10) throw new MalformedResponse("bare LF in a chunk size line");
          if (c === 13) this.#state = Chunk.SizeLf;
          else if (c === 59) this.#state = Chunk.Ext;
          else if (c !== 32 && c !== 9) throw new MalformedResponse("bad chunk size");
          break;
        case Chunk.Ext:
          // Extensions are skipped, but must be plain text: a CR or LF inside one is where
          // parsers disagree about where the line ends.
          if (c === 13) this.#state = Chunk.SizeLf;
          else if (!isFieldChar(c)) {
            throw new MalformedResponse("control character in a chunk extension");
          }
          break;
        case Chunk.SizeLf:
          if (c !== 10) throw new MalformedResponse("chunk size line without CRLF");
          this.#lineBytes = 0;
          this.#digits = 0;
          if (this.#size === 0) {
            this.#state = Chunk.TrailerStart;
          } else {
            this.dataLeft = this.#size;
            this.#size = 0;
            this.#state = Chunk.Data;
            return pos + 1;
          }
          break;
        case Chunk.DataCr:
          if (c !== 13) throw new MalformedResponse("chunk data not followed by CRLF");
          this.#state = Chunk.DataLf;
          break;
        case Chunk.DataLf:
          if (c !== 10) throw new MalformedResponse("chunk data not followed by CRLF");
          this.#state = Chunk.Size;
          break;
        case Chunk.TrailerStart:
          if (c === 13) this.#state = Chunk.EndLf;
          else this.#trailer(c);
          break;
        case Chunk.Trailer:
          this.#trailer(c);
          break;
        case Chunk.TrailerLf:
          if (c !== 10) throw new MalformedResponse("trailer line without CRLF");
          this.#state = Chunk.TrailerStart;
          break;
        case Chunk.EndLf:
          if (c !== 10) throw new MalformedResponse("chunked body without its final CRLF");
          this.#state = Chunk.Done;
          return pos + 1;
        case Chunk.Done:
          return pos;
      }
      pos++;
      if (
        (this.#state === Chunk.Size || this.#state === Chunk.SizeWs ||
          this.#state === Chunk.Ext) && ++this.#lineBytes > MAX_CHUNK_LINE
      ) {
        throw new MalformedResponse("chunk size line too long");
      }
    }
    return pos;
  }

  /** Reports `n` (<= {@linkcode dataLeft}) content bytes taken. */
  took(n: number): void {
    this.dataLeft -= n;
    if (this.dataLeft === 0) this.#state = Chunk.DataCr;
  }

  #hexDigit(c: number): boolean {
    let d: number;
    if (c >= 48 && c <= 57) d = c - 48;
    else if (c >= 97 && c <= 102) d = c - 87;
    else if (c >= 65 && c <= 70) d = c - 55;
    else return false;
    this.#digits++;
    // 2^48 bytes is far past any body; the bound keeps the arithmetic exact (leading zeros are
    // valid and bounded by the line's length).
    if ((this.#size = this.#size * 16 + d) > 2 ** 48) {
      throw new MalformedResponse("chunk size too large");
    }
    return true;
  }

  #trailer(c: number): void {
    if (++this.#trailerBytes > MAX_TRAILER_BYTES) throw new MalformedResponse("trailers too large");
    if (c === 13) this.#state = Chunk.TrailerLf;
    else if (c !== 9 && (c < 0x20 || c === 0x7f)) {
      throw new MalformedResponse("control character in a trailer");
    } else this.#state = Chunk.Trailer;
  }
}
