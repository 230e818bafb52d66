/**
 * @module
 * Request bodies that can be offered to more than one attempt when that is safe.
 *
 * Small bodies of known length are read whole so any retry can resend them. Other bodies stream
 * straight through; an attempt that failed before fetch pulled a single chunk (a refused connect)
 * leaves the body untouched, so the next attempt can still send it.
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

/** Prepares `req`'s body: none, buffered for replay, or streamed once. */
export async function prepareBody(req: Request): Promise<RequestBody> {
  if (req.body === null) return EMPTY;
  const length = req.headers.get("content-length");
  if (length !== null && Number(length) <= REPLAY_LIMIT) {
    const bytes = new Uint8Array(await req.arrayBuffer());
    return { forAttempt: () => bytes, replayable: true, discard: () => Promise.resolve() };
  }
  return new StreamedBody(req.body);
}

/** A body streamed through once, re-offered only while no attempt has pulled from it. */
class StreamedBody implements RequestBody {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  #pulled = false;

  constructor(source: ReadableStream<Uint8Array>) {
    this.#reader = source.getReader();
  }

  get replayable(): boolean {
    return !this.#pulled;
  }

  forAttempt(): ReadableStream<Uint8Array> {
    const reader = this.#reader;
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        this.#pulled = true;
        const { done, value } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      // fetch cancels the stream of a failed attempt; the client's stream must survive that
      // for the next attempt, so cancelling here does not touch the source.
      cancel: () => {},
    }, { highWaterMark: 0 });
  }

  async discard(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }
}
