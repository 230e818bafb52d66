/**
 * @module
 * Reused byte buffers for what the native front end writes: response bodies the native transport
 * reads whole, and the response heads the front end encodes. A fresh `Uint8Array` costs an
 * allocation outside V8's heap that the garbage collector then has to account for and free:
 * more than a microsecond even for a few bytes, and several times the cost of the copy into it
 * for 64 KiB. A buffer given back once its bytes are written is used again by a later response.
 *
 * Only the native front end gives buffers back: it knows when it has written them. With
 * Deno.serve in front there is no pool (its writes end out of sight). A pooled body is a view on
 * a larger buffer: read such a Response as a stream or with `bytes()`, since Deno's
 * `arrayBuffer()` hands out the whole underlying buffer. Idle buffers kept: at most about 20 MiB
 * in all (the caps below), and only as many as were once in flight together.
 */

/** Smallest buffer: anything shorter takes one of these. */
const MIN_POOLED = 128;
/** Largest pooled buffer: the transport reads bodies up to this size whole. */
const MAX_POOLED = 64 * 1024;
/** Bytes of idle buffers kept per size class, and at most so many buffers. */
const IDLE_BYTES_PER_CLASS = 4 * 1024 * 1024;
const IDLE_BUFFERS_PER_CLASS = 512;

/** Buffers of 128 B to 64 KiB in powers of two, each size class with its own idle stack. */
export class BodyPool {
  readonly #idle: ArrayBuffer[][] = [];
  readonly #caps: number[] = [];
  /** Views handed out and not given back: only these are taken back, and only once. */
  readonly #lent = new WeakSet<Uint8Array>();

  constructor() {
    for (let size = MIN_POOLED; size <= MAX_POOLED; size *= 2) {
      this.#idle.push([]);
      this.#caps.push(Math.min(IDLE_BUFFERS_PER_CLASS, IDLE_BYTES_PER_CLASS / size));
    }
  }

  /**
   * `n` bytes to fill (not zeroed when reused): a view on a pooled buffer when `n` is at most
   * 64 KiB, else a fresh array. The caller writes them out and gives them back.
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
    if (idle.length < this.#caps[index]) idle.push(buffer);
  }

  /** Idle buffers kept now, by size class from 128 B up (for tests). */
  idleCounts(): number[] {
    return this.#idle.map((stack) => stack.length);
  }
}

/** The size class index for `n` bytes, or -1 when it is not pooled. */
function classOf(n: number): number {
  if (n > MAX_POOLED) return -1;
  let index = 0;
  for (let size = MIN_POOLED; size < n; size *= 2) index++;
  return index;
}
