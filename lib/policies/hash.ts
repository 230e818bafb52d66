/**
 * @module
 * Consistent hashing: requests with the same key (client IP, a header, a cookie or the path) go
 * to the same backend, and changes to the backend set move as few keys as possible.
 *
 * The algorithm is weighted rendezvous hashing (highest random weight) served from a lookup
 * table. Each key falls into one of `tableSize` slots; each slot belongs to the backend with the
 * highest score `weight / -ln(u)`, where `u` is a hash of (backend URL, slot) mapped into (0, 1).
 * Why this rather than Maglev or a ring:
 *
 * - **Exactly minimal movement.** Removing a backend moves only the slots it owned (each goes to
 *   its runner-up); adding one moves only the slots it now wins. No other key moves, ever.
 *   Maglev moves a few extra keys; a ring needs virtual-node counts proportional to weight,
 *   which for weights up to 1,000,000 is millions of points.
 * - **Exact weights.** A slot is owned with probability `weight / total weight`, for any weights.
 * - **Order-free and seedless.** Scores depend only on the URL, weight and slot, so two processes
 *   with the same backends (in any order) map every key identically.
 *
 * The answer is always "the rendezvous winner among the candidates"; the table only caches it
 * for the pool's current set. See {@linkcode HashPolicy} for how filtered picks are served.
 */

import type { Accept, Backend, Policy, SelectContext } from "../pool.ts";
import { getCookie } from "../sticky_cookie.ts";
import { isToken } from "../http_token.ts";

/** Where the hash key comes from. */
export type HashKeySpec =
  | { kind: "ip" }
  | { kind: "path" }
  | { kind: "header"; name: string }
  | { kind: "cookie"; name: string };

/**
 * Parses `ip`, `path`, `header:NAME` or `cookie:NAME` (as given on the command line).
 * Header names are lower-cased since header lookup ignores case; cookie names are kept as is.
 *
 * @throws Error with a one-line message naming the bad text.
 */
export function parseHashKey(text: string): HashKeySpec {
  if (text === "ip" || text === "path") return { kind: text };
  const colon = text.indexOf(":");
  const kind = text.slice(0, colon);
  if (colon === -1 || (kind !== "header" && kind !== "cookie")) {
    // JSON quoting keeps the message on one line whatever the input holds.
    throw new Error(
      `hash key ${JSON.stringify(text)} is not one of: ip, path, header:NAME, cookie:NAME`,
    );
  }
  const name = text.slice(colon + 1);
  if (!isToken(name)) {
    throw new Error(
      `hash key ${JSON.stringify(text)}: ${JSON.stringify(name)} is not a valid ${kind} name`,
    );
  }
  return kind === "header" ? { kind, name: name.toLowerCase() } : { kind, name };
}

/**
 * The key to hash for one request. A missing or empty header or cookie falls back to the client
 * IP, so clients without the key are still spread out yet stay put between requests.
 */
export function hashKeyFor(spec: HashKeySpec, context: SelectContext): string {
  switch (spec.kind) {
    case "ip":
      return context.clientIp;
    case "path":
      return pathOf(context.path);
    case "header":
      return context.headers.get(spec.name) || context.clientIp;
    case "cookie":
      return getCookie(context.headers, spec.name) || context.clientIp;
  }
}

/** The path without the query (also accepts an absolute URL), found without parsing it. */
function pathOf(url: string): string {
  const scheme = url.indexOf("://");
  const start = url.indexOf("/", scheme === -1 ? 0 : scheme + 3);
  if (start === -1) return "/";
  let end = start;
  while (end < url.length && url[end] !== "?" && url[end] !== "#") end++;
  return url.slice(start, end);
}

/**
 * A stable 32-bit hash of a string: FNV-1a over its UTF-16 code units (identical to byte-wise
 * FNV-1a for ASCII), then the MurmurHash3 finalizer. FNV-1a alone mixes its last characters
 * poorly into the low bits, and similar keys ("user1", "user2") must land far apart.
 * No seed, so every process computes the same value.
 */
export function hashString(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  }
  return finalize(hash);
}

/** MurmurHash3's fmix32: every input bit affects every output bit. */
function finalize(value: number): number {
  let hash = value;
  hash = Math.imul(hash ^ (hash >>> 16), 0x85ebca6b);
  hash = Math.imul(hash ^ (hash >>> 13), 0xc2b2ae35);
  return (hash ^ (hash >>> 16)) >>> 0;
}

/** Options for {@linkcode HashPolicy}. */
export interface HashPolicyOptions {
  /** What to hash: a spec, or text for {@linkcode parseHashKey}. @default "ip" */
  key?: HashKeySpec | string;
  /**
   * Number of slots keys are spread over. Larger is finer-grained (each slot is `1/tableSize` of
   * the keys) at 12 bytes per slot; every process must use the same value to agree.
   * @default 65536
   */
  tableSize?: number;
}

/**
 * Consistent-hash selection keyed by {@linkcode hashKeyFor}: the rendezvous winner among exactly
 * the candidates, which is what makes keys of surviving backends stay put.
 *
 * - An unfiltered pick is one table read, O(1) (a slot's owner is computed, O(n), the first time
 *   a key lands in it and kept).
 * - A pick filtered by `accept` (a retry, max-conns) takes the table's owner when it is accepted,
 *   and otherwise computes the winner among the accepted backends, O(n) with no allocation: the
 *   key's next backend in rendezvous order.
 * - {@linkcode HashPolicy.rebuild} moves the table to the new set: slots of departed backends are
 *   forgotten (refilled on use) and each newcomer takes the known slots it outscores,
 *   O(tableSize) per backend added or removed. A weight change refills the table, since every
 *   slot's score involves the weight.
 */
export class HashPolicy implements Policy {
  readonly #key: HashKeySpec;
  readonly #size: number;
  /** The set the table serves. */
  #backends: readonly Backend[] = [];
  /** Slot to index into #members, or -1 while unowned. */
  #owner: Int32Array | undefined;
  /** The winning score in each slot, to compare newcomers against. */
  #ownerScore: Float64Array | undefined;
  /** Backends the table knows, by stable index; indices of departed backends are reused. */
  #members: (Backend | undefined)[] = [];
  /** The weight each member's slots were scored with, by the same index. */
  readonly #memberWeight: number[] = [];
  readonly #memberIndex = new Map<Backend, number>();
  /** Score of the last {@linkcode HashPolicy.#winner} result, saving a recomputation. */
  #winnerScore = -Infinity;
  /** Hash of each backend's URL, the per-backend half of every score. */
  readonly #urlHash = new WeakMap<Backend, number>();

  /** Validates the options; throws an Error naming an invalid key spec or table size. */
  constructor(options: HashPolicyOptions = {}) {
    const { key = "ip", tableSize = 65_536 } = options;
    if (!Number.isInteger(tableSize) || tableSize < 1 || tableSize > 2 ** 24) {
      throw new Error(`hash: tableSize must be a whole number 1-16777216, got ${tableSize}`);
    }
    this.#key = typeof key === "string" ? parseHashKey(key) : key;
    this.#size = tableSize;
  }

  /** The candidate that owns this request's key. */
  select(context: SelectContext, accept?: Accept): Backend | undefined {
    const backends = this.#backends;
    if (backends.length === 1 && accept === undefined) return backends[0];
    return this.selectByKey(hashKeyFor(this.#key, context), accept);
  }

  /** {@linkcode HashPolicy.select} for an already extracted key. */
  selectByKey(key: string, accept?: Accept): Backend | undefined {
    const backends = this.#backends;
    if (backends.length === 0) return undefined;
    if (backends.length === 1 && accept === undefined) return backends[0];
    const slot = hashString(key) % this.#size;
    const owner = this.#lookup(slot);
    // The owner outscores every backend, so when accepted it is also the accepted set's winner.
    if (accept === undefined || accept(owner)) return owner;
    return this.#winner(slot, accept);
  }

  /**
   * The rendezvous winner of `slot` among the backends `accept` lets through (all when it is
   * undefined), computed directly; undefined when nothing is accepted.
   */
  #winner(slot: number, accept?: Accept): Backend | undefined {
    const backends = this.#backends;
    let best: Backend | undefined;
    let bestScore = -Infinity;
    for (let i = 0; i < backends.length; i++) {
      const backend = backends[i];
      if (accept !== undefined && !accept(backend)) continue;
      const candidateScore = score(this.#hashOf(backend), backend.weight, slot);
      if (best === undefined || beats(candidateScore, backend, bestScore, best)) {
        best = backend;
        bestScore = candidateScore;
      }
    }
    this.#winnerScore = bestScore;
    return best;
  }

  /** The table's answer for `slot`, computing and keeping it on first use. */
  #lookup(slot: number): Backend {
    const index = this.#owner![slot];
    if (index !== UNKNOWN) return this.#members[index]!;
    const winner = this.#winner(slot)!;
    this.#owner![slot] = this.#memberIndex.get(winner)!;
    this.#ownerScore![slot] = this.#winnerScore;
    return winner;
  }

  /**
   * Brings the table from its current members to exactly `candidates`. Slots are filled lazily by
   * {@linkcode HashPolicy.#lookup}, so a first build costs one O(tableSize) fill rather than
   * O(tableSize × n) scoring, which would stall the event loop for 300 backends.
   */
  rebuild(candidates: readonly Backend[]): void {
    const owner = this.#owner ??= new Int32Array(this.#size).fill(UNKNOWN);
    const ownerScore = this.#ownerScore ??= new Float64Array(this.#size);
    const wanted = new Set(candidates);
    // Via the set, so a backend listed twice is admitted once.
    const newcomers = [...wanted].filter((backend) => !this.#memberIndex.has(backend));
    const departed = new Uint8Array(this.#members.length);
    let anyDeparted = false;
    for (const [backend, index] of this.#memberIndex) {
      if (wanted.has(backend)) continue;
      departed[index] = 1;
      anyDeparted = true;
      this.#members[index] = undefined;
      this.#memberIndex.delete(backend);
    }
    const reweighted = candidates.some((backend) => {
      const index = this.#memberIndex.get(backend);
      return index !== undefined && this.#memberWeight[index] !== backend.weight;
    });
    const refill = reweighted || newcomers.length > MAX_INCREMENTAL_NEWCOMERS ||
      this.#memberIndex.size === 0;
    if (refill) {
      // Scoring each newcomer against every slot would cost more than refilling lazily.
      owner.fill(UNKNOWN);
    } else if (anyDeparted) {
      // Only the departed owners' slots change hands. Forgetting them now, before a newcomer can
      // reuse a departed index, lets #lookup hand each to its best remaining candidate later.
      for (let slot = 0; slot < this.#size; slot++) {
        if (owner[slot] !== UNKNOWN && departed[owner[slot]] === 1) owner[slot] = UNKNOWN;
      }
    }
    for (const backend of newcomers) {
      const index = this.#admit(backend);
      if (refill) continue;
      const hash = this.#hashOf(backend);
      // A newcomer takes exactly the known slots where it outscores the current owner; unknown
      // slots will include it when they are filled.
      for (let slot = 0; slot < this.#size; slot++) {
        const current = owner[slot];
        if (current === UNKNOWN || current === index) continue;
        const newScore = score(hash, backend.weight, slot);
        if (beats(newScore, backend, ownerScore[slot], this.#members[current]!)) {
          owner[slot] = index;
          ownerScore[slot] = newScore;
        }
      }
    }
    for (const [backend, index] of this.#memberIndex) this.#memberWeight[index] = backend.weight;
    this.#backends = candidates;
  }

  #admit(backend: Backend): number {
    let index = this.#members.indexOf(undefined);
    if (index === -1) index = this.#members.push(backend) - 1;
    else this.#members[index] = backend;
    this.#memberIndex.set(backend, index);
    return index;
  }

  #hashOf(backend: Backend): number {
    let hash = this.#urlHash.get(backend);
    if (hash === undefined) {
      hash = hashString(backend.url);
      this.#urlHash.set(backend, hash);
    }
    return hash;
  }
}

/** Marks a table slot whose owner is not computed yet. */
const UNKNOWN = -1;
/** Beyond this many backends joining at once, the table is refilled lazily instead. */
const MAX_INCREMENTAL_NEWCOMERS = 4;

/**
 * Weighted rendezvous score of a backend (by URL hash and weight) for a slot; higher wins.
 * `-ln(u)` of a uniform `u` is exponentially distributed; dividing the weight by it makes the
 * highest score win with probability `weight / total weight` (the minimum of exponential races).
 */
function score(urlHash: number, weight: number, slot: number): number {
  if (!(weight > 0)) return -Infinity;
  // The slot goes through the finalizer before it meets the URL hash so that the scores of two
  // backends in the same slot stay unrelated even though they share the slot term.
  const unit = (finalize(urlHash ^ finalize(slot + 0x9e3779b9)) + 0.5) / 0x1_0000_0000;
  return weight / -Math.log(unit);
}

/** Higher score wins; an exact tie goes to the smaller URL so the outcome is order-free. */
function beats(score: number, backend: Backend, otherScore: number, other: Backend): boolean {
  return score > otherScore || (score === otherScore && backend.url < other.url);
}
