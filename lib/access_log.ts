/**
 * @module
 * Access log: one line per client request, as JSON ({@linkcode formatJson}) or in the
 * Apache/nginx "combined" format with a few fields appended ({@linkcode formatCombined}).
 *
 * Writing never blocks the request path: {@linkcode createAccessLog} queues lines in memory and
 * a single background loop writes them in batches. The queue is bounded; when the disk or a
 * pipe cannot keep up, new lines are dropped and counted rather than growing memory without
 * limit or slowing requests down.
 *
 * Every field that a client controls (path, method, user agent, referer, request id) is
 * escaped so that no value can end a line early or close a quoted field: a forged log line
 * stays inside the field it came in.
 */

/** Everything the access log knows about one finished request. */
export interface AccessRecord {
  /** When the request arrived. */
  time: Date;
  /** The client's address (the TCP peer, not X-Forwarded-For). */
  clientIp: string;
  method: string;
  /** Path and query as received (raw request target). */
  path: string;
  /** For example `HTTP/1.1`. */
  protocol: string;
  /** Status sent to the client. */
  status: number;
  /** Response body bytes sent, or undefined when unknown (streamed, aborted). */
  bytes: number | undefined;
  /** Time from arrival to the end of the response, in ms. */
  durationMs: number;
  /** URL of the backend that answered, or undefined when none did. */
  backend: string | undefined;
  /** Backends tried, 0 when none could be chosen. */
  attempts: number;
  requestId?: string | undefined;
  userAgent?: string | undefined;
  referer?: string | undefined;
}

/** Names of the line formats {@linkcode createAccessLog} accepts. */
export type AccessLogFormat = "json" | "combined";

/**
 * One JSON object per record (no trailing newline). Keys are always the same, in the same
 * order, with `null` for unknown values, so log pipelines see one schema. `time` is ISO 8601
 * UTC; `durationMs` has exactly three decimals. JSON string escaping already keeps control
 * characters and quotes from breaking the line.
 */
export function formatJson(record: AccessRecord): string {
  const json = JSON.stringify;
  return `{"time":${json(isoTime(record.time))}` +
    `,"clientIp":${json(record.clientIp)}` +
    `,"method":${json(record.method)}` +
    `,"path":${json(record.path)}` +
    `,"protocol":${json(record.protocol)}` +
    `,"status":${jsonNumber(record.status)}` +
    `,"bytes":${jsonNumber(record.bytes)}` +
    `,"durationMs":${fixed3(record.durationMs) ?? "null"}` +
    `,"backend":${json(record.backend ?? null)}` +
    `,"attempts":${jsonNumber(record.attempts)}` +
    `,"requestId":${json(record.requestId ?? null)}` +
    `,"userAgent":${json(headerText(record.userAgent) ?? null)}` +
    `,"referer":${json(headerText(record.referer) ?? null)}}`;
}

/**
 * A header value (a byte string: one character per byte received) as the text its bytes spell
 * in UTF-8, so that a UTF-8 User-Agent reads as sent; bytes that are not UTF-8 become U+FFFD.
 */
function headerText(value: string | undefined): string | undefined {
  if (value === undefined || !/[\x80-\xff]/.test(value)) return value;
  const bytes = byteStringBytes(value);
  return bytes === undefined ? value : new TextDecoder().decode(bytes);
}

/** The bytes of a byte string (every character below 256), or undefined for other text. */
function byteStringBytes(value: string): Uint8Array | undefined {
  if (/[\u0100-\uffff]/.test(value)) return undefined;
  return Uint8Array.from(value, (c) => c.charCodeAt(0));
}

/** ISO 8601 UTC, or null for an invalid Date (whose toISOString() would throw). */
function isoTime(time: Date): string | null {
  return Number.isNaN(time.getTime()) ? null : time.toISOString();
}

/** A JSON number, or `null` for undefined and non-finite values (JSON has no NaN). */
function jsonNumber(value: number | undefined): string {
  return value !== undefined && Number.isFinite(value) ? String(value) : "null";
}

/** Three decimals, or undefined for a value that has no finite text. */
function fixed3(value: number): string | undefined {
  return Number.isFinite(value) ? value.toFixed(3) : undefined;
}

/**
 * The combined log format, as Apache's `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`
 * and nginx's `combined` write it, so existing tools (goaccess, awstats, fail2ban) read it:
 *
 * ```text
 * 127.0.0.1 - - [25/Nov/2026:13:20:59 +0000] "GET /path HTTP/1.1" 200 1234 "-" "curl/8.5.0" backend=http://127.0.0.1:8081 attempts=1 duration_ms=12.345
 * ```
 *
 * Differences from the classic format:
 * - Extension: ` backend=URL attempts=N duration_ms=D` is appended (and ` request_id=ID` when
 *   known). Parsers of the combined format ignore what follows the user agent field; the
 *   values are escaped like unquoted fields so each stays one space-free token.
 *   `backend=-` when no backend answered.
 * - The time is always UTC (`+0000`), so lines from several hosts sort together.
 * - Bytes are `-` when unknown (as Apache's `%b` writes nothing sent), else the count.
 * - Escaping follows nginx: `"` and `\` are backslash-escaped, and control characters, DEL
 *   and every non-ASCII byte are written as `\xHH` (of their UTF-8 encoding), so a client
 *   cannot start a new line or close a quoted field. Empty fields are `-`.
 */
export function formatCombined(record: AccessRecord): string {
  const request = `${record.method} ${record.path} ${record.protocol}`;
  let line = `${token(record.clientIp)} - - [${clfTime(record.time)}] "${quoted(request)}" ` +
    `${token(String(record.status))} ${clfBytes(record.bytes)} ` +
    `"${quoted(record.referer)}" "${quoted(record.userAgent)}"` +
    ` backend=${token(record.backend)} attempts=${record.attempts}` +
    ` duration_ms=${fixed3(record.durationMs) ?? "-"}`;
  if (record.requestId !== undefined) line += ` request_id=${token(record.requestId)}`;
  return line;
}

/** `-` for unknown (or nonsensical) byte counts, as Apache's `%b` writes nothing sent. */
function clfBytes(bytes: number | undefined): string {
  return bytes !== undefined && Number.isFinite(bytes) ? String(bytes) : "-";
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/** `25/Nov/2026:13:20:59 +0000` (Common Log Format time, in UTC). */
export function clfTime(time: Date): string {
  return `${pad2(time.getUTCDate())}/${MONTHS[time.getUTCMonth()]}/${time.getUTCFullYear()}:` +
    `${pad2(time.getUTCHours())}:${pad2(time.getUTCMinutes())}:${pad2(time.getUTCSeconds())} +0000`;
}

/** Printable ASCII except `"` and `\`: what may appear unescaped inside a quoted field. */
const QUOTED_SAFE = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;
/** Same, minus space: what may appear in an unquoted token. */
const TOKEN_SAFE = /^[\x21\x23-\x5b\x5d-\x7e]*$/;
const encoder = new TextEncoder();

/** A value for inside double quotes; `-` when empty or unknown. */
function quoted(value: string | undefined): string {
  if (value === undefined || value === "") return "-";
  return QUOTED_SAFE.test(value) ? value : escapeField(value, false);
}

/** A value that must stay one space-free token; `-` when empty or unknown. */
function token(value: string | undefined): string {
  if (value === undefined || value === "") return "-";
  return TOKEN_SAFE.test(value) ? value : escapeField(value, true);
}

/**
 * The slow path, only for values that need it: nginx-style `\"`, `\\` and `\xHH`. A header
 * value is a byte string (one character per byte received): its bytes are escaped as received.
 */
function escapeField(value: string, escapeSpace: boolean): string {
  let out = "";
  for (const byte of byteStringBytes(value) ?? encoder.encode(value)) {
    if (byte === 0x22) out += '\\"';
    else if (byte === 0x5c) out += "\\\\";
    else if (byte < 0x20 || byte >= 0x7f || (escapeSpace && byte === 0x20)) {
      out += `\\x${byte.toString(16).toUpperCase().padStart(2, "0")}`;
    } else out += String.fromCharCode(byte);
  }
  return out;
}

/** Formats a record in `format`. */
export function formatRecord(record: AccessRecord, format: AccessLogFormat): string {
  return format === "json" ? formatJson(record) : formatCombined(record);
}

// ---------------------------------------------------------------------------------------------
// Writing.

/** Where lines go: `Deno.stdout`, a `Deno.FsFile`, or a test double. */
export interface ByteSink {
  /** Writes some of `bytes`, resolving with how many were written (partial writes happen). */
  write(bytes: Uint8Array): Promise<number>;
}

/** Options for {@linkcode LineWriter} and {@linkcode createAccessLog}. */
export interface LineWriterOptions {
  /**
   * Lines waiting to be written beyond which new lines are dropped (and counted). Bounds
   * memory when the disk or a pipe is slower than the traffic. @default 10000
   */
  maxPending?: number;
  /** Told about write failures, once per run of failures. @default ignores them */
  log?: { warn(message: string): void };
}

/**
 * Queues lines and writes them in batches from one background loop. `write` only pushes onto
 * an array; the loop encodes everything queued so far into one buffer per batch, so a burst of
 * requests costs one write call, not one per line.
 */
export class LineWriter {
  readonly #sink: ByteSink;
  readonly #maxPending: number;
  readonly #log: { warn(message: string): void } | undefined;
  #pending: string[] = [];
  #loop: Promise<void> | undefined;
  #closed = false;
  #dropped = 0;
  #failing = false;

  /** @throws Error when `maxPending` is not a whole number >= 1. */
  constructor(sink: ByteSink, options: LineWriterOptions = {}) {
    const { maxPending = 10_000 } = options;
    if (!Number.isInteger(maxPending) || maxPending < 1) {
      throw new Error(`access log: maxPending must be a whole number >= 1, got ${maxPending}`);
    }
    this.#sink = sink;
    this.#maxPending = maxPending;
    this.#log = options.log;
  }

  /** Lines dropped because the queue was full, writing failed, or the writer was closed. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Lines queued and not yet handed to the sink. */
  get pending(): number {
    return this.#pending.length;
  }

  /** Queues `line` (without its newline). Never waits and never throws. */
  write(line: string): void {
    if (this.#closed || this.#pending.length >= this.#maxPending) {
      this.#dropped++;
      return;
    }
    this.#pending.push(line);
    this.#loop ??= this.#drain();
  }

  /** Writes everything queued, then stops accepting lines. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#loop;
  }

  async #drain(): Promise<void> {
    // Yield once so every line written in the current task joins the first batch.
    await Promise.resolve();
    while (this.#pending.length > 0) {
      const batch = this.#pending;
      this.#pending = [];
      await this.#writeBatch(batch);
    }
    this.#loop = undefined;
  }

  async #writeBatch(batch: string[]): Promise<void> {
    try {
      await writeAll(this.#sink, encoder.encode(`${batch.join("\n")}\n`));
      this.#failing = false;
    } catch (error) {
      this.#dropped += batch.length;
      // Log the first failure of a run only: a full disk would otherwise log once per batch.
      if (!this.#failing) {
        this.#log?.warn(`access log: write failed, dropping lines: ${describe(error)}`);
      }
      this.#failing = true;
    }
  }
}

async function writeAll(sink: ByteSink, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await sink.write(bytes.subarray(offset));
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** An access log as the proxy uses it. */
export interface AccessLog {
  /** Formats and queues one record; never waits and never throws. */
  write(record: AccessRecord): void;
  /** Writes what is queued, then closes the file (never standard output). */
  close(): Promise<void>;
  /** Lines dropped so far (queue full, write errors, written after close). */
  readonly dropped: number;
}

/**
 * Opens an access log writing `format` lines to standard output (`"stdout"`) or appending to
 * the file at `target` (created if missing, mode 0644 minus umask). The file is opened here,
 * synchronously, so that a bad path stops start-up instead of failing on the first request.
 *
 * @throws Deno.errors.NotFound, PermissionDenied, ... when the file cannot be opened.
 */
export function createAccessLog(
  target: "stdout" | string,
  format: AccessLogFormat,
  options: LineWriterOptions = {},
): AccessLog {
  if (format !== "json" && format !== "combined") {
    throw new Error(`access log: format must be "json" or "combined", got "${format}"`);
  }
  const file = target === "stdout"
    ? undefined
    : Deno.openSync(target, { append: true, create: true, mode: 0o644 });
  const writer = new LineWriter(file ?? Deno.stdout, options);
  const render = format === "json" ? formatJson : formatCombined;
  let unformattable = 0;
  let closing: Promise<void> | undefined;
  return {
    write(record) {
      // A malformed record must cost a log line, never the request that produced it.
      let line: string;
      try {
        line = render(record);
      } catch {
        unformattable++;
        return;
      }
      writer.write(line);
    },
    close() {
      // Idempotent: closing the file twice would throw BadResource.
      closing ??= writer.close().then(() => file?.close());
      return closing;
    },
    get dropped() {
      return writer.dropped + unformattable;
    },
  };
}
