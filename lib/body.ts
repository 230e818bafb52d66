/**
 * @module
 * Request bodies that can be offered to more than one attempt when that is safe.
 *
 * Small bodies of known length are read whole so any retry can resend them. Other bodies stream
 * straight through, keeping their first {@linkcode KEEP_LIMIT} bytes so that an attempt that
 * failed early (a refused connect, during which fetch has already read ahead) can be followed
 * by another that sends the whole body.
 *
 * Every body is read under {@linkcode BodyLimits}: a declared length over `maxBody` is refused
 * before anything is read, a body that grows past it is cut off, and a client that keeps the
 * balancer waiting for its next bytes longer than `bodyTimeout` is given up on.
 */

import type { IncomingRequest } from "./incoming.ts";
import { BadRequestError, ContentTooLargeError, HttpError, RequestTimeoutError } from "./errors.ts";

/** Bodies up to this size (by Content-Length) are kept for replay. */
export const REPLAY_LIMIT = 64 * 1024;

/** Limits on how much a client may send and how long it may pause while sending it. */
export interface BodyLimits {
  /** Largest body accepted, in bytes; a larger one gets 413. @default Infinity */
  maxBody: number;
  /**
   * Longest wait for the client's next body bytes (ms), counted only while the balancer is
   * asking for them: a backend that reads slowly never makes a client time out. A longer
   * stall gets 408. It bounds each pause, not the whole upload (like nginx's
   * `client_body_timeout`). @default Infinity
   */
  bodyTimeout: number;
}

const UNLIMITED: BodyLimits = { maxBody: Infinity, bodyTimeout: Infinity };

/** A request body as attempts see it. */
export interface RequestBody {
  /** A body for the next attempt; call once per attempt. */
  forAttempt(): BodyInit | null;
  /** Whether another attempt could still send the complete body. */
  readonly replayable: boolean;
  /** Releases the client's stream when no attempt will read it any more. */
  discard(): Promise<void>;
  /**
   * Aborted the moment the client fails while an attempt streams its body: that attempt's
   * upstream request must be cancelled, so the backend sees an incomplete body.
   */
  readonly signal: AbortSignal;
  /**
   * What the client earned by failing to send its body: 413 (too large), 408 (too slow) or
   * 400 (malformed or broken off); undefined while it has not failed.
   */
  readonly clientError: HttpError | undefined;
}

const NEVER_ABORTED = new AbortController().signal;

/**
 * Whether the client can still fail while an attempt sends `body` (it streams): only then must
 * attempts also listen to {@linkcode RequestBody.signal}. Empty and fully read bodies cannot,
 * and they skip the cost of `AbortSignal.any`.
 */
export function mayFailWhileSent(body: RequestBody): boolean {
  return body.signal !== NEVER_ABORTED;
}

/** The body of a request without one: what {@linkcode prepareBody} gives when `req.body` is null. */
export const NO_BODY: RequestBody = {
  forAttempt: () => null,
  replayable: true,
  discard: () => Promise.resolve(),
  signal: NEVER_ABORTED,
  clientError: undefined,
};

/**
 * Whether the request head announces a body (RFC 9112 §6.3): a Transfer-Encoding, or a
 * Content-Length other than 0. `req.body` cannot tell: Deno.serve gives GET and HEAD a null
 * body even when bytes follow (it reads and discards them), and every other method a stream,
 * empty or not. Exact for HTTP/1.x; on HTTP/2 (which Deno.serve also speaks, in cleartext with
 * prior knowledge) a body may come with neither header, so `false` proves nothing there.
 */
export function declaresBody(headers: Headers): boolean {
  return announcesBody(headers.get("transfer-encoding"), headers.get("content-length"));
}

/** {@linkcode declaresBody} from the two header values (null: absent). */
export function announcesBody(
  transferEncoding: string | null,
  contentLength: string | null,
): boolean {
  return transferEncoding !== null || (contentLength !== null && lengthOf(contentLength) !== 0);
}

/**
 * The Content-Length the client declared, or undefined. Deno.serve has already refused
 * malformed and conflicting values with 400 but lets a repeated identical header through as
 * `5, 5`, which `Number()` would read as NaN.
 */
export function declaredLength(headers: Headers): number | undefined {
  const value = headers.get("content-length");
  return value === null ? undefined : lengthOf(value);
}

function lengthOf(value: string): number | undefined {
  const length = Number(value.split(",")[0].trim());
  return Number.isSafeInteger(length) && length >= 0 ? length : undefined;
}

/**
 * Prepares `req`'s body: none, buffered for replay, or streamed, all read under `limits`.
 * Throws the 413 for a declared length over the limit before reading anything, and the
 * {@linkcode RequestBody.clientError} a buffered body earns while it is read; a streamed body
 * reports its failure through {@linkcode RequestBody.signal} and `clientError` instead.
 */
export async function prepareBody(
  req: IncomingRequest,
  limits: BodyLimits = UNLIMITED,
): Promise<RequestBody> {
  if (req.body === null) return NO_BODY;
  const length = declaredLength(req.headers);
  if (length !== undefined && length > limits.maxBody) {
    throw new ContentTooLargeError(limits.maxBody);
  }
  // Deno.serve ends an HTTP/2 body the client cancelled (RST_STREAM) as if complete, and aborts
  // the request's signal a moment later: without a length to hold it to, the end is checked.
  const cancelled = req.fields === undefined && length === undefined ? req.signal : undefined;
  const client = new ClientBody(req.body.getReader(), limits, cancelled);
  if (length !== undefined && length <= REPLAY_LIMIT) {
    const bytes = await client.readAll();
    // Deno.serve ends an HTTP/2 body the client cancelled (RST_STREAM) as if complete: a short
    // body must not go upstream as a whole request with a smaller length.
    if (bytes.length !== length) {
      throw new BadRequestError("the request body ended before its Content-Length");
    }
    return { ...NO_BODY, forAttempt: () => bytes };
  }
  if (!declaresBody(req.headers)) {
    // Deno.serve gives a bodiless POST a stream (one empty chunk, then done); streaming that
    // upstream would send it chunked. An HTTP/2 body may have no length header at all, so look
    // rather than assume.
    let first = await client.read();
    while (!first.done && first.value.length === 0) first = await client.read();
    if (first.done) return NO_BODY;
    return new StreamedBody(client, first.value);
  }
  return new StreamedBody(client);
}

/**
 * The client's side of a body: every read is counted against `maxBody` and given at most
 * `bodyTimeout`, and a read that fails (malformed chunked framing, a client gone mid-body)
 * is the client's doing too. The first such error aborts {@linkcode signal}, cancels the
 * client's stream and is thrown from this and every later read.
 *
 * Cancelling matters: a request body stream left unread and uncancelled stays in Deno's
 * resource table after its connection is gone (a leak per refused request). Once cancelled, Deno.serve reads and discards the rest of the body as the client
 * sends it; the bytes are never parsed as requests.
 */
class ClientBody {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #limits: BodyLimits;
  readonly #failed = new AbortController();
  #bytes = 0;
  clientError: HttpError | undefined;

  readonly #cancelled: AbortSignal | undefined;

  /**
   * `cancelled`: the request's signal, when an end of the body must be confirmed by its
   * staying unaborted a macrotask longer (see prepareBody).
   */
  constructor(
    reader: ReadableStreamDefaultReader<Uint8Array>,
    limits: BodyLimits,
    cancelled?: AbortSignal,
  ) {
    this.#reader = reader;
    this.#limits = limits;
    this.#cancelled = cancelled;
  }

  get signal(): AbortSignal {
    return this.#failed.signal;
  }

  async read(): Promise<ReadableStreamReadResult<Uint8Array>> {
    if (this.clientError !== undefined) throw this.clientError;
    const result = await this.#readWithinTimeout();
    if (!result.done) {
      this.#bytes += result.value.length;
      if (this.#bytes > this.#limits.maxBody) {
        this.#fail(new ContentTooLargeError(this.#limits.maxBody));
      }
    } else if (this.#cancelled !== undefined && this.#bytes > 0) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      if (this.#cancelled.aborted) {
        this.#fail(new BadRequestError("the client cancelled the request body"));
      }
    }
    return result;
  }

  async readAll(): Promise<Uint8Array<ArrayBuffer>> {
    const chunks: Uint8Array[] = [];
    for (let r = await this.read(); !r.done; r = await this.read()) chunks.push(r.value);
    return concatBytes(chunks);
  }

  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }

  async #readWithinTimeout(): Promise<ReadableStreamReadResult<Uint8Array>> {
    const read = this.#reader.read().catch((error: unknown) => {
      if (error instanceof HttpError) throw error;
      return this.#fail(new BadRequestError("the request body could not be read"));
    });
    const timeout = this.#limits.bodyTimeout;
    // setTimeout would turn Infinity into an immediate timer.
    if (!Number.isFinite(timeout)) return await read;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stalled = new Promise<"stalled">((resolve) => {
      timer = setTimeout(() => resolve("stalled"), timeout);
    });
    try {
      const result = await Promise.race([read, stalled]);
      if (result === "stalled") {
        // Cancelling settles the read still pending; nobody awaits it any more.
        read.catch(() => {});
        this.#fail(new RequestTimeoutError(timeout));
      }
      return result;
    } finally {
      clearTimeout(timer);
    }
  }

  #fail(error: HttpError): never {
    this.clientError ??= error;
    this.#failed.abort(this.clientError);
    this.cancel();
    throw this.clientError;
  }
}

/**
 * Bytes of a streamed body kept so that another attempt can resend them. fetch reads ahead
 * (a few 64 KiB chunks) while it is still connecting, so even a refused
 * connect consumes part of the body; keeping that much makes the retry possible.
 */
export const KEEP_LIMIT = 256 * 1024;

/**
 * A body streamed through, with every chunk read so far kept while they total at most
 * {@linkcode KEEP_LIMIT}: a new attempt replays the kept chunks, then continues from the
 * client's stream. Past the limit the chunks are let go and no further attempt is possible.
 */
class StreamedBody implements RequestBody {
  readonly #client: ClientBody;
  /** Chunks read from the client, numbered from `#first`; all of them while replayable. */
  #chunks: Uint8Array[] = [];
  #first = 0;
  #keptBytes = 0;
  #replayable = true;
  #done = false;
  #reading: Promise<void> | undefined;
  #attempt = 0;

  constructor(client: ClientBody, firstChunk?: Uint8Array) {
    this.#client = client;
    if (firstChunk !== undefined) this.#keep(firstChunk);
  }

  get replayable(): boolean {
    return this.#replayable;
  }

  get signal(): AbortSignal {
    return this.#client.signal;
  }

  get clientError(): HttpError | undefined {
    return this.#client.clientError;
  }

  forAttempt(): ReadableStream<Uint8Array> {
    const attempt = ++this.#attempt;
    let next = 0;
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        const chunk = await this.#chunkAt(next);
        // A failed attempt's fetch may still have had a read in flight; the chunk it asked
        // for is kept for the current attempt and must not go to the abandoned one.
        if (attempt !== this.#attempt) return;
        if (chunk === undefined) return controller.close();
        next++;
        if (!this.#replayable) this.#forgetBefore(next);
        controller.enqueue(chunk);
      },
      // fetch cancels the stream of a failed attempt; the client's stream must survive that
      // for the next attempt, so cancelling here does not touch the source.
      cancel: () => {},
    }, { highWaterMark: 0 });
  }

  async discard(): Promise<void> {
    this.#chunks = [];
    await this.#client.cancel();
  }

  /** The chunk numbered `index`, reading from the client as needed; undefined at the end. */
  async #chunkAt(index: number): Promise<Uint8Array | undefined> {
    while (index >= this.#first + this.#chunks.length && !this.#done) {
      this.#reading ??= this.#readOne().finally(() => (this.#reading = undefined));
      await this.#reading;
    }
    return this.#chunks[index - this.#first];
  }

  async #readOne(): Promise<void> {
    let result: ReadableStreamReadResult<Uint8Array>;
    try {
      result = await this.#client.read();
    } catch (error) {
      // The client broke off or broke a limit: no attempt can send the whole body any more.
      this.#replayable = false;
      throw error;
    }
    if (result.done) this.#done = true;
    else this.#keep(result.value);
  }

  #keep(chunk: Uint8Array): void {
    this.#chunks.push(chunk);
    this.#keptBytes += chunk.length;
    if (this.#keptBytes > KEEP_LIMIT) this.#replayable = false;
  }

  /** Once not replayable only the current attempt reads: drop what it has already taken. */
  #forgetBefore(index: number): void {
    this.#chunks.splice(0, index - this.#first);
    this.#first = index;
  }
}

/** Joins byte chunks into one array. */
export function concatBytes(chunks: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}
