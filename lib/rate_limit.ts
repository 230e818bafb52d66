/**
 * @module
 * Rate limits per route (nginx `limit_req`, Traefik `rateLimit`): a token bucket per client key
 * (the client's address, or a request header's value), in a table that every thread of
 * `--workers N` shares, so that the process as a whole admits at most
 * `requestsPerSecond x time + burst` per key whatever N is. Each balancer process limits on its
 * own: two processes behind one address admit twice as much.
 *
 * The table is a fixed-size open-addressing hash table (linear probing) in a SharedArrayBuffer,
 * made once on the main thread ({@linkcode createRateLimitTable}) and posted to each worker
 * (structured clone shares, not copies, a SharedArrayBuffer); each thread builds a
 * {@linkcode RateLimiter} over it. A slot holds a 64-bit key hash, the bucket's tokens and the
 * time they were counted, and the time its key was last reported refused. Locking:
 * - A take of a key already in the table finds its slot without locks and updates the bucket
 *   under that slot's spin lock (a few arithmetic operations).
 * - Everything that changes which key is in which slot (adding a key, dropping an expired one)
 *   runs under the table's lock, and so does every lookup that found nothing: a key is never
 *   added twice, and a lookup that raced with a move looks again where nothing moves.
 *
 * Memory stays bounded under a flood of distinct keys: a full bucket is the same as no bucket,
 * so each insertion also sweeps a few slots and drops the full buckets it finds (more when the
 * table is at its cap); at `maxKeys` keys, a key that finds no room shares one overflow bucket
 * (same rate and burst) with every other such key, counted in `overflowed`, so a flood neither
 * grows memory nor locks out the clients the table already holds.
 *
 * Keys are hashed to 64 bits with a seed drawn per table (so that a set of keys crowding one
 * run of slots is not known in advance; the hash is fast, not cryptographic); two keys whose hashes are equal share a bucket (with 100,000 keys the
 * chance that any two do is about 3 in 10 billion). A key more than 64 slots from its home
 * slot is never stored: it goes to the overflow bucket, which bounds the work of one take.
 *
 * Time is `Date.now()`, the one clock all threads read alike: `performance.now()` counts from
 * each thread's own `performance.timeOrigin` (a worker started later reads less at the same
 * moment), and `timeOrigin + now()` takes each origin from the wall clock when the thread
 * started, so it parts between threads after a clock adjustment.
 * A wall clock stepped back by more than a second restarts the count from the new time (at
 * most one burst more is admitted, no one is locked out for the size of the step); smaller
 * differences are threads reading the clock a moment apart and count as no time.
 */

import { type Problem, show } from "./problem.ts";
import { isToken, TCHAR } from "./http_token.ts";

/** A route's `rateLimit`: a token bucket per key. */
export interface RateLimitSpec {
  /** Tokens added per second (fractions allowed: 0.5 is one request every 2 s). */
  requestsPerSecond: number;
  /** Bucket size: requests admitted at once after a quiet spell. @default 1 */
  burst: number;
  /**
   * `ip` (the client address) or `header:NAME` (its value; a request without the header: its
   * address). @default "ip"
   */
  key: "ip" | `header:${string}`;
  /** Keys the table holds before new keys share one overflow bucket. @default 100000 */
  maxKeys?: number;
}

/** The answer to one take. */
export type TakeResult =
  | { ok: true }
  | {
    ok: false;
    /** Whole seconds until a token is there, at least 1: the `Retry-After` value. */
    retryAfterSeconds: number;
    /** True for the first refusal of this key in a second (over all threads): log this one. */
    log: boolean;
  };

/** Counters for metrics. */
export interface RateLimitStats {
  /** Keys in the table (the same in every thread; idle ones not swept yet included). */
  keys: number;
  /** Takes by this limiter that found no room and used the overflow bucket. */
  overflowed: number;
  /** Takes by this limiter refused (overflow bucket included). */
  refused: number;
  /** Full buckets this limiter dropped from the table. */
  expired: number;
}

// ---------------------------------------------------------------------------------------------
// Validation

/** The default cap on keys per limiter. */
export const DEFAULT_MAX_KEYS = 100_000;
/** 80 MB of table: a typo should not reserve gigabytes. */
const MAX_MAX_KEYS = 1_000_000;
const MAX_RATE = 1_000_000_000;
const MAX_BURST = 1_000_000_000;
const KEYS = ["requestsPerSecond", "burst", "key", "maxKeys"];

/** JSON Schema of a `rateLimit` value, for lb.schema.json. */
export const RATE_LIMIT_SCHEMA: Record<string, unknown> = {
  type: "object",
  additionalProperties: false,
  required: ["requestsPerSecond"],
  description: "Token bucket per client key; over the limit: 429 with Retry-After.",
  properties: {
    requestsPerSecond: {
      type: "number",
      exclusiveMinimum: 0,
      maximum: MAX_RATE,
      description: "Tokens added per second; fractions allowed (0.5: one every 2 s).",
    },
    burst: {
      type: "integer",
      minimum: 1,
      maximum: MAX_BURST,
      default: 1,
      description: "Bucket size: requests admitted at once after a quiet spell.",
    },
    key: {
      type: "string",
      pattern: `^(ip|header:${TCHAR}+)$`,
      default: "ip",
      description: "ip (client address after --trusted-proxies) or header:NAME " +
        "(its value; a request without it is keyed by address).",
    },
    maxKeys: {
      type: "integer",
      minimum: 1,
      maximum: MAX_MAX_KEYS,
      default: DEFAULT_MAX_KEYS,
      description: "Keys held at most; more share one overflow bucket.",
    },
  },
};

function at(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

/**
 * Checks a `rateLimit` value from the config file; pushes one problem per mistake at its path
 * under `path` (e.g. `routes[2].rateLimit.burst`) and returns the spec with defaults filled in,
 * or undefined when anything is wrong.
 */
export function checkRateLimit(
  value: unknown,
  path: string,
  problems: Problem[],
): RateLimitSpec | undefined {
  const fail = (where: string, message: string) => {
    problems.push({ path: where, message });
    return undefined;
  };
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return fail(
      path,
      `${show(value)} is not an object like {"requestsPerSecond": 20, "burst": 40}`,
    );
  }
  const object = value as Record<string, unknown>;
  const before = problems.length;
  for (const name of Object.keys(object)) {
    if (!KEYS.includes(name)) {
      const guess = KEYS.find((k) => k.toLowerCase() === name.toLowerCase().replace(/[-_]/g, ""));
      fail(at(path, name), `unknown key${guess ? ` (did you mean "${guess}"?)` : ""}`);
    }
  }
  const rate = object.requestsPerSecond;
  if (!Object.hasOwn(object, "requestsPerSecond")) {
    fail(path, 'needs "requestsPerSecond"');
  } else if (typeof rate !== "number" || !Number.isFinite(rate) || rate <= 0) {
    fail(at(path, "requestsPerSecond"), `${show(rate)} is not a number above 0`);
  } else if (rate > MAX_RATE) {
    fail(at(path, "requestsPerSecond"), `${rate} is out of range (at most ${MAX_RATE})`);
  }
  const burst = object.burst ?? 1;
  if (typeof burst !== "number" || !Number.isInteger(burst)) {
    fail(at(path, "burst"), `${show(burst)} is not a whole number`);
  } else if (burst < 1 || burst > MAX_BURST) {
    fail(at(path, "burst"), `${burst} is out of range (1 to ${MAX_BURST})`);
  }
  const key = object.key ?? "ip";
  if (typeof key !== "string" || !(key === "ip" || isHeaderKey(key))) {
    fail(at(path, "key"), `${show(key)} is not "ip" or "header:NAME" (e.g. "header:X-Api-Key")`);
  }
  const maxKeys = object.maxKeys ?? DEFAULT_MAX_KEYS;
  if (typeof maxKeys !== "number" || !Number.isInteger(maxKeys)) {
    fail(at(path, "maxKeys"), `${show(maxKeys)} is not a whole number`);
  } else if (maxKeys < 1 || maxKeys > MAX_MAX_KEYS) {
    fail(at(path, "maxKeys"), `${maxKeys} is out of range (1 to ${MAX_MAX_KEYS})`);
  }
  if (problems.length > before) return undefined;
  return {
    requestsPerSecond: rate as number,
    burst: burst as number,
    key: key as RateLimitSpec["key"],
    maxKeys: maxKeys as number,
  };
}

function isHeaderKey(key: string): key is `header:${string}` {
  return key.startsWith("header:") && isToken(key.slice("header:".length));
}

// ---------------------------------------------------------------------------------------------
// The shared table

// Header, in 32-bit words; the overflow bucket's numbers are 64-bit floats after them.
const MAGIC = 0x524c5431; // "RLT1"
const H_MAGIC = 0;
const H_CAPACITY = 1;
const H_MAX_KEYS = 2;
const H_KEYS = 3;
const H_TABLE_LOCK = 4;
const H_SWEEP_CURSOR = 5;
const H_SEED1 = 6;
const H_SEED2 = 7;
const H_OVERFLOW_LOCK = 8;
const HEADER_BYTES = 64;
// Then the overflow bucket (3 floats as in a slot) and the time a sweep at the cap found nothing.
const OVERFLOW_BYTES = 32;
const F_FRUITLESS = (HEADER_BYTES >> 3) + 3;
const SLOTS_OFFSET = HEADER_BYTES + OVERFLOW_BYTES;

// A slot: 4 words (lock, hash high, hash low, unused), then 3 floats (tokens, counted at, logged at).
const SLOT_BYTES = 40;
const S_LOCK = 0;
const S_HASH1 = 1;
const S_HASH2 = 2;
const S_TOKENS = 0;
const S_TIME = 1;
const S_LOGGED = 2;

/** Slots per key at the cap: linear probing stays short (2.5 probes for a miss) at half full. */
const SLOTS_PER_KEY = 2;
/** How far from its home slot a key may be stored; a lookup looks no further. */
const MAX_PROBE = 64;
/**
 * Slots each insertion sweeps for full buckets. At the cap it sweeps on, up to `CAP_SWEEP` more,
 * until it drops one; after a sweep there that dropped none, the next waits `CAP_SWEEP_WAIT_MS`,
 * so that a flood past the cap costs a sweep 10 times a second rather than on every take.
 */
const SWEEP = 8;
const CAP_SWEEP = 256;
const CAP_SWEEP_WAIT_MS = 100;
/** Lock-free lookups that lose a race with a move before the locked one decides. */
const RETRIES = 4;
/** A wall clock further back than this was stepped (ms); less is threads reading it apart. */
const CLOCK_STEP_MS = 1000;
/** Refusals of one key are reported for logging at most this often (ms). */
const LOG_EVERY_MS = 1000;
/** Float slack for token counts built from fractional refills (0.1 + 0.2 ...). */
const EPSILON = 1e-9;

/**
 * The shared memory of one limiter, for at most `maxKeys` keys (about 80 bytes of table per
 * key, allocated up front); pass it to each worker thread and build a {@linkcode RateLimiter}
 * over it there.
 */
export function createRateLimitTable(maxKeys: number = DEFAULT_MAX_KEYS): SharedArrayBuffer {
  if (!Number.isInteger(maxKeys) || maxKeys < 1 || maxKeys > MAX_MAX_KEYS) {
    throw new RangeError(`maxKeys ${maxKeys} is out of range (1 to ${MAX_MAX_KEYS})`);
  }
  const capacity = Math.max(8, maxKeys * SLOTS_PER_KEY);
  const table = new SharedArrayBuffer(SLOTS_OFFSET + capacity * SLOT_BYTES);
  const words = new Int32Array(table, 0, HEADER_BYTES / 4);
  const [seed1, seed2] = crypto.getRandomValues(new Int32Array(2));
  words[H_CAPACITY] = capacity;
  words[H_MAX_KEYS] = maxKeys;
  words[H_SEED1] = seed1;
  words[H_SEED2] = seed2;
  // The overflow bucket starts full: counted at the beginning of time, never logged.
  const overflow = new Float64Array(table, HEADER_BYTES, 4);
  overflow[S_TIME] = -Infinity;
  overflow[S_LOGGED] = -Infinity;
  overflow[3] = -Infinity;
  // Last, so that a table is never seen half set up.
  Atomics.store(words, H_MAGIC, MAGIC);
  return table;
}

/** Options for {@linkcode RateLimiter}. */
export interface RateLimiterOptions {
  /** The clock, in ms; every thread sharing a table must read the same one. @default Date.now */
  now?: () => number;
}

/**
 * One route's limiter over a shared table. Build one per thread over the same table: the
 * bucket of a key is the same for all of them. The stats' counters are this instance's own
 * (sum them over threads); `keys` is the table's (the same in every thread).
 */
export class RateLimiter {
  readonly #rate: number;
  readonly #burst: number;
  /** Lower-cased header name, or undefined for `ip`. */
  readonly #header: string | undefined;
  readonly #now: () => number;
  readonly #words: Int32Array;
  readonly #floats: Float64Array;
  readonly #capacity: number;
  readonly #maxKeys: number;
  readonly #seed1: number;
  readonly #seed2: number;
  #overflowed = 0;
  #refused = 0;
  #expired = 0;

  constructor(spec: RateLimitSpec, table: SharedArrayBuffer, options: RateLimiterOptions = {}) {
    if (!(spec.requestsPerSecond > 0) || !(spec.burst >= 1)) {
      throw new RangeError("requestsPerSecond must be above 0 and burst at least 1");
    }
    this.#words = new Int32Array(table);
    this.#floats = new Float64Array(table, 0, Math.floor(table.byteLength / 8));
    if (table.byteLength < SLOTS_OFFSET || Atomics.load(this.#words, H_MAGIC) !== MAGIC) {
      throw new TypeError("not a rate limit table: make one with createRateLimitTable()");
    }
    this.#rate = spec.requestsPerSecond / 1000;
    this.#burst = spec.burst;
    this.#header = spec.key === "ip" ? undefined : spec.key.slice("header:".length).toLowerCase();
    this.#now = options.now ?? Date.now;
    this.#capacity = this.#words[H_CAPACITY];
    this.#maxKeys = this.#words[H_MAX_KEYS];
    this.#seed1 = this.#words[H_SEED1];
    this.#seed2 = this.#words[H_SEED2];
  }

  /**
   * The key of a request: the client address (after trusted-proxy resolution, computed by the
   * caller) or the header's value (a missing header: the client address). Prefixed by kind, so
   * that a header cannot name another client's address bucket.
   */
  keyOf(clientAddress: string, headers: Headers): string {
    const value = this.#header === undefined ? null : headers.get(this.#header);
    return value === null ? `ip ${clientAddress}` : `header ${value}`;
  }

  /** Takes one token for `key`: admitted, or refused with the seconds until a token is there. */
  take(key: string): TakeResult {
    const [hash1, hash2] = this.#hash(key);
    const home = this.#home(hash1);
    // Read once: another thread may count the bucket at a later time before this one locks it.
    const now = this.#now();
    for (let attempt = 0; attempt < RETRIES; attempt++) {
      const found = this.#find(hash1, hash2, home);
      if (found === -1) break;
      const result = this.#takeAt(found, hash1, hash2, now);
      if (result !== undefined) return result;
    }
    return this.#takeLocked(hash1, hash2, home, now);
  }

  /** Counters for metrics: keys in the table, overflowed and refused takes, buckets dropped. */
  stats(): RateLimitStats {
    return {
      keys: Atomics.load(this.#words, H_KEYS),
      overflowed: this.#overflowed,
      refused: this.#refused,
      expired: this.#expired,
    };
  }

  // -------------------------------------------------------------------------------------------

  /** Two 32-bit lanes mixed from the UTF-16 code units (cyrb53's mixing), never both 0. */
  #hash(key: string): [number, number] {
    let h1 = 0xdeadbeef ^ this.#seed1;
    let h2 = 0x41c6ce57 ^ this.#seed2;
    for (let i = 0; i < key.length; i++) {
      const code = key.charCodeAt(i);
      h1 = Math.imul(h1 ^ code, 2654435761);
      h2 = Math.imul(h2 ^ code, 1597334677);
    }
    h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507);
    h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909);
    h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507);
    h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909);
    // (0, 0) marks an empty slot.
    return h1 === 0 && h2 === 0 ? [0, 1] : [h1 | 0, h2 | 0];
  }

  /** The slot a hash starts probing at (multiply-shift: the capacity need not be a power of 2). */
  #home(hash1: number): number {
    return Math.floor((hash1 >>> 0) * this.#capacity / 4294967296);
  }

  /** Word index of a slot's first word. */
  #word(slot: number): number {
    return (SLOTS_OFFSET + slot * SLOT_BYTES) >> 2;
  }

  /** Float index of a slot's first float. */
  #float(slot: number): number {
    return (SLOTS_OFFSET + slot * SLOT_BYTES + 16) >> 3;
  }

  /** The slot holding the hash, or -1 when the probe reached an empty slot or its limit. */
  #find(hash1: number, hash2: number, home: number): number {
    const words = this.#words;
    for (let distance = 0, slot = home; distance < MAX_PROBE; distance++) {
      const w = this.#word(slot);
      const seen1 = Atomics.load(words, w + S_HASH1);
      const seen2 = Atomics.load(words, w + S_HASH2);
      if (seen1 === hash1 && seen2 === hash2) return slot;
      if (seen1 === 0 && seen2 === 0) return -1;
      slot = slot + 1 === this.#capacity ? 0 : slot + 1;
    }
    return -1;
  }

  /** Takes from `slot` if it still holds the hash (a move may have emptied it meanwhile). */
  #takeAt(slot: number, hash1: number, hash2: number, now: number): TakeResult | undefined {
    const w = this.#word(slot);
    lock(this.#words, w + S_LOCK);
    try {
      if (this.#words[w + S_HASH1] !== hash1 || this.#words[w + S_HASH2] !== hash2) {
        return undefined;
      }
      return this.#takeFrom(this.#float(slot), now);
    } finally {
      unlock(this.#words, w + S_LOCK);
    }
  }

  /** The path for a key not found without locks: look again, then add it or overflow. */
  #takeLocked(hash1: number, hash2: number, home: number, now: number): TakeResult {
    const words = this.#words;
    lock(words, H_TABLE_LOCK);
    try {
      this.#sweep(SWEEP, now, false);
      if (Atomics.load(words, H_KEYS) >= this.#maxKeys) this.#sweepAtCap(now);
      let empty = -1;
      for (let distance = 0, slot = home; distance < MAX_PROBE; distance++) {
        const w = this.#word(slot);
        const seen1 = words[w + S_HASH1];
        const seen2 = words[w + S_HASH2];
        if (seen1 === hash1 && seen2 === hash2) return this.#takeAt(slot, hash1, hash2, now)!;
        if (seen1 === 0 && seen2 === 0) {
          empty = slot;
          break;
        }
        slot = slot + 1 === this.#capacity ? 0 : slot + 1;
      }
      if (empty === -1 || Atomics.load(words, H_KEYS) >= this.#maxKeys) return this.#overflow(now);
      this.#insert(empty, hash1, hash2, now);
      return { ok: true };
    } finally {
      unlock(words, H_TABLE_LOCK);
    }
  }

  /** Stores a new key whose first take is admitted: a full bucket less one token. */
  #insert(slot: number, hash1: number, hash2: number, now: number): void {
    const w = this.#word(slot);
    const f = this.#float(slot);
    lock(this.#words, w + S_LOCK);
    this.#floats[f + S_TOKENS] = this.#burst - 1;
    this.#floats[f + S_TIME] = now;
    this.#floats[f + S_LOGGED] = -Infinity;
    Atomics.store(this.#words, w + S_HASH2, hash2);
    Atomics.store(this.#words, w + S_HASH1, hash1);
    unlock(this.#words, w + S_LOCK);
    Atomics.add(this.#words, H_KEYS, 1);
  }

  /** The shared bucket of keys that found no room. */
  #overflow(now: number): TakeResult {
    this.#overflowed++;
    lock(this.#words, H_OVERFLOW_LOCK);
    try {
      return this.#takeFrom(HEADER_BYTES >> 3, now);
    } finally {
      unlock(this.#words, H_OVERFLOW_LOCK);
    }
  }

  /** The token bucket at float index `f` (its lock held): refill, then take one or refuse. */
  #takeFrom(f: number, now: number): TakeResult {
    const floats = this.#floats;
    const tokens = this.#refill(f, now);
    if (tokens >= 1 - EPSILON) {
      floats[f + S_TOKENS] = Math.max(0, tokens - 1);
      return { ok: true };
    }
    this.#refused++;
    const log = now - floats[f + S_LOGGED] >= LOG_EVERY_MS || now < floats[f + S_LOGGED];
    if (log) floats[f + S_LOGGED] = now;
    const seconds = (1 - tokens) / this.#rate / 1000;
    return { ok: false, retryAfterSeconds: Math.max(1, Math.ceil(seconds - EPSILON)), log };
  }

  /** Brings the bucket at `f` up to `now` (its lock held) and returns its tokens. */
  #refill(f: number, now: number): number {
    const floats = this.#floats;
    let elapsed = now - floats[f + S_TIME];
    if (elapsed < 0) {
      if (elapsed > -CLOCK_STEP_MS) return floats[f + S_TOKENS];
      elapsed = 0;
    }
    const tokens = Math.min(this.#burst, floats[f + S_TOKENS] + elapsed * this.#rate);
    floats[f + S_TOKENS] = tokens;
    floats[f + S_TIME] = now;
    return tokens;
  }

  /** At the cap: sweeps until one bucket is dropped, unless that just found none (lock held). */
  #sweepAtCap(now: number): void {
    const fruitless = this.#floats[F_FRUITLESS];
    if (now - fruitless < CAP_SWEEP_WAIT_MS && now >= fruitless) return;
    if (!this.#sweep(CAP_SWEEP, now, true)) this.#floats[F_FRUITLESS] = now;
  }

  /**
   * Drops full buckets from the next `count` slots, or up to the first one dropped when
   * `untilOne`; returns whether any was (the table's lock held).
   */
  #sweep(count: number, now: number, untilOne: boolean): boolean {
    const words = this.#words;
    let slot = words[H_SWEEP_CURSOR];
    let dropped = false;
    for (let i = 0; i < count && !(untilOne && dropped); i++) {
      if (slot >= this.#capacity) slot = 0;
      // A dropped slot takes the next key of its run: look at it again.
      if (this.#dropIfFull(slot, now)) dropped = true;
      else slot++;
    }
    words[H_SWEEP_CURSOR] = slot;
    return dropped;
  }

  /** Removes the key in `slot` if its bucket is full (the table's lock held). */
  #dropIfFull(slot: number, now: number): boolean {
    const words = this.#words;
    const w = this.#word(slot);
    if (words[w + S_HASH1] === 0 && words[w + S_HASH2] === 0) return false;
    lock(words, w + S_LOCK);
    const f = this.#float(slot);
    if (this.#refill(f, now) < this.#burst - EPSILON) {
      unlock(words, w + S_LOCK);
      return false;
    }
    this.#remove(slot);
    this.#expired++;
    Atomics.sub(words, H_KEYS, 1);
    return true;
  }

  /**
   * Empties `slot` (its lock held; released here) by backward shift: each later key of the run
   * that may sit earlier moves into the hole, so that no probe ever stops short of its key and
   * no tombstones pile up. Lookups without locks that miss a moving key look again under the
   * table's lock, which this runs under.
   */
  #remove(slot: number): void {
    const words = this.#words;
    const floats = this.#floats;
    let hole = slot;
    Atomics.store(words, this.#word(hole) + S_HASH1, 0);
    Atomics.store(words, this.#word(hole) + S_HASH2, 0);
    let next = hole;
    for (let steps = 0; steps < this.#capacity; steps++) {
      next = next + 1 === this.#capacity ? 0 : next + 1;
      const w = this.#word(next);
      const hash1 = words[w + S_HASH1];
      const hash2 = words[w + S_HASH2];
      if (hash1 === 0 && hash2 === 0) break;
      const home = this.#home(hash1);
      const distance = (a: number, b: number) => (b - a + this.#capacity) % this.#capacity;
      if (distance(home, next) < distance(hole, next)) continue;
      lock(words, w + S_LOCK);
      const from = this.#float(next);
      const to = this.#float(hole);
      floats[to + S_TOKENS] = floats[from + S_TOKENS];
      floats[to + S_TIME] = floats[from + S_TIME];
      floats[to + S_LOGGED] = floats[from + S_LOGGED];
      Atomics.store(words, this.#word(hole) + S_HASH2, hash2);
      Atomics.store(words, this.#word(hole) + S_HASH1, hash1);
      Atomics.store(words, w + S_HASH1, 0);
      Atomics.store(words, w + S_HASH2, 0);
      unlock(words, this.#word(hole) + S_LOCK);
      hole = next;
    }
    unlock(words, this.#word(hole) + S_LOCK);
  }
}

// ---------------------------------------------------------------------------------------------
// Spin locks: held for a few arithmetic operations, so spinning beats parking.

/** Spins this many times before each short sleep, for a holder descheduled by the OS. */
const SPINS = 200;

function lock(words: Int32Array, index: number): void {
  for (let spins = 0; Atomics.compareExchange(words, index, 0, 1) !== 0; spins++) {
    if (spins >= SPINS) {
      // 50 us; no notify on unlock: the holder never waits for the waiter.
      Atomics.wait(words, index, 1, 0.05);
      spins = 0;
    }
  }
}

function unlock(words: Int32Array, index: number): void {
  Atomics.store(words, index, 0);
}
