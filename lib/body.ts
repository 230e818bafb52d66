/**
 * @module
 * Request bodies that can be offered to more than one attempt when that is safe.
 *
 * Small bodies of known length are read whole so any retry can resend them. Other bodies stream
 * straight through, keeping their first {@linkcode KEEP_LIMIT} bytes so that an attempt that
 * failed early (a refused connect, during which fetch has already read ahead) can be followed
 * by another that sends the whole body.
 */

/** Bodies up to this size (by Content-Length) are kept for replay. */
export const REPLAY_LIMIT = 64 * 1024;

/** A request body as attempts see it. */
export interface RequestBody {
  /** A body for the next attempt; call once per attempt. */
  forAttempt(): BodyInit | null;
  /** Whether another attempt could still send the complete body. */
  readonly replayable: boolean;
  /** Releases the client's stream when no attempt will read it any more. */
  discard(): Promise<void>;
}

const EMPTY: RequestBody = {
  forAttempt: () => null,
  replayable: true,
  discard: () => Promise.resolve(),
};

/**
 * Whether the request head announces a body (RFC 9112 §6.3): a Transfer-Encoding, or a
 * Content-Length other than 0. `req.body` cannot tell: Deno.serve gives GET and HEAD a null
 * body even when bytes follow (it reads and discards them), and every other method a stream,
 * empty or not. Exact for HTTP/1.x; on HTTP/2 (which Deno.serve also speaks, in cleartext with
 * prior knowledge) a body may come with neither header, so `false` proves nothing there.
 */
export function declaresBody(headers: Headers): boolean {
  if (headers.has("transfer-encoding")) return true;
  const length = headers.get("content-length");
  return length !== null && Number(length) !== 0;
}

/** Prepares `req`'s body: none, buffered for replay, or streamed. */
export async function prepareBody(req: Request): Promise<RequestBody> {
  if (req.body === null) return EMPTY;
  const length = req.headers.get("content-length");
  if (length !== null && Number(length) <= REPLAY_LIMIT) {
    const bytes = new Uint8Array(await req.arrayBuffer());
    return { forAttempt: () => bytes, replayable: true, discard: () => Promise.resolve() };
  }
  const reader = req.body.getReader();
  if (!declaresBody(req.headers)) {
    // Deno.serve gives a bodiless POST a stream (one empty chunk, then done); streaming that
    // upstream would send it chunked. An HTTP/2 body may have no length header at all, so look
    // rather than assume.
    let first = await reader.read();
    while (!first.done && first.value.length === 0) first = await reader.read();
    if (first.done) return EMPTY;
    return new StreamedBody(reader, first.value);
  }
  return new StreamedBody(reader);
}

/**
 * Bytes of a streamed body kept so that another attempt can resend them. fetch reads ahead
 * (two or three 64 KiB chunks on Deno 2.9.6) while it is still connecting, so even a refused
 * connect consumes part of the body; keeping that much makes the retry possible.
 */
export const KEEP_LIMIT = 256 * 1024;

/**
 * A body streamed through, with every chunk read so far kept while they total at most
 * {@linkcode KEEP_LIMIT}: a new attempt replays the kept chunks, then continues from the
 * client's stream. Past the limit the chunks are let go and no further attempt is possible.
 */
class StreamedBody implements RequestBody {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  /** Chunks read from the client, numbered from `#first`; all of them while replayable. */
  #chunks: Uint8Array[] = [];
  #first = 0;
  #keptBytes = 0;
  #replayable = true;
  #done = false;
  #reading: Promise<void> | undefined;
  #attempt = 0;

  constructor(reader: ReadableStreamDefaultReader<Uint8Array>, firstChunk?: Uint8Array) {
    this.#reader = reader;
    if (firstChunk !== undefined) this.#keep(firstChunk);
  }

  get replayable(): boolean {
    return this.#replayable;
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
    await this.#reader.cancel().catch(() => {});
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
      result = await this.#reader.read();
    } catch (error) {
      // The client broke off: no attempt can send the whole body any more.
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
