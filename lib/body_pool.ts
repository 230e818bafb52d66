/**
 * @module
 * Reused buffers for response bodies the native transport reads whole. A fresh 64 KiB
 * `Uint8Array` per response costs an allocation the garbage collector then has to account for and
 * free, several times the cost of the copy into it; a buffer given back once the client has the
 * bytes is used again by a later response.
 *
 * Only the native front end gives buffers back: it knows when it has written a body. With
 * Deno.serve there is no pool (nothing would come back; its write ends out of sight).
 */

/** Smallest pooled buffer; smaller bodies are allocated as before (cheap at that size). */
const MIN_POOLED = 4 * 1024;
/** Largest pooled buffer: the transport reads bodies up to this size whole. */
const MAX_POOLED = 64 * 1024;
/** Bytes of idle buffers kept per size class; more are left to the garbage collector. */
const IDLE_BYTES_PER_CLASS = 4 * 1024 * 1024;

/** Buffers of 4, 8, 16, 32 and 64 KiB, each size class with its own idle stack. */
export class BodyPool {
  readonly #idle: ArrayBuffer[][] = [];
  /** Views handed out and not given back: only these are taken back, and only once. */
  readonly #lent = new WeakSet<Uint8Array>();

  constructor() {
    for (let size = MIN_POOLED; size <= MAX_POOLED; size *= 2) this.#idle.push([]);
  }

  /**
   * `n` bytes to fill (not zeroed when reused): a view on a pooled buffer when `n` is between
   * 4 and 64 KiB, else a fresh array. The caller hands it on to be written and given back.
   */
  take(n: number): Uint8Array<ArrayBuffer> {
    const index = classOf(n);
    if (index < 0) return new Uint8Array(n);
    const buffer = this.#idle[index].pop() ?? new ArrayBuffer(MIN_POOLED << index);
    const view = new Uint8Array(buffer, 0, n);
    this.#lent.add(view);
    return view;
  }

  /**
   * Takes back a view {@linkcode take} gave, once its bytes will never be read again; any other
   * array (or the same view a second time) is left alone.
   */
  giveBack(view: Uint8Array): void {
    if (!this.#lent.delete(view)) return;
    const buffer = view.buffer as ArrayBuffer;
    const index = classOf(buffer.byteLength);
    const idle = this.#idle[index];
    if (idle.length * buffer.byteLength < IDLE_BYTES_PER_CLASS) idle.push(buffer);
  }

  /** Idle buffers kept now, by size class (for tests). */
  idleCounts(): number[] {
    return this.#idle.map((stack) => stack.length);
  }
}

/** The size class index of a body of `n` bytes, or -1 when it is not pooled. */
function classOf(n: number): number {
  if (n < MIN_POOLED || n > MAX_POOLED) return -1;
  let index = 0;
  for (let size = MIN_POOLED; size < n; size *= 2) index++;
  return index;
}
