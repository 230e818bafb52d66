/**
 * @module
 * Weighted least-connections: the candidate with the fewest requests in flight per unit of
 * weight wins. "In flight" is {@linkcode Backend.inflight}, the requests sent whose response
 * bodies have not been fully delivered (so a long stream counts as load), which makes this count
 * active requests, not TCP connections.
 *
 * Cost: O(1) per pick and O(log n) (amortized) per load change: {@linkcode LeastConnPolicy.rebuild}
 * files the backends in a heap ordered by load, and the pool reports every change of `inflight`
 * ({@linkcode Policy.loadChanged}). Sets of up to {@linkcode SCAN_MAX_CANDIDATES} backends, and
 * picks filtered by `accept` (retries, max-conns), take one O(n) scan instead.
 *
 * - The heap's entries are *levels*, one per distinct load, each holding every backend at that
 *   load; a pick draws uniformly among the lowest level's backends, with a fresh draw. A random
 *   tie-breaker stored with each backend would not be fair: under one-at-a-time traffic the last
 *   winner, whose draw is fresh, keeps beating backends whose draws lost before.
 * - The index trusts `loadChanged` and reads `effectiveWeight` when a backend is filed; the pool
 *   rebuilds after every weight change.
 */

import type { Accept, Backend, Policy, SelectContext } from "../pool.ts";
import type { RandomSource } from "./random_source.ts";

/** Sets this short are scanned on every pick: below it the index costs more than it saves. */
export const SCAN_MAX_CANDIDATES = 8;

/** Options for {@linkcode LeastConnPolicy}. */
export interface LeastConnOptions {
  /** Breaks ties between equally loaded candidates. @default Math.random */
  random?: RandomSource;
}

/**
 * Picks the candidate with the lowest `(inflight + 1) / weight`, choosing uniformly at random
 * among those tied for lowest.
 *
 * The `+ 1` counts the request being placed: with plain `inflight / weight` every idle backend
 * scores 0 whatever its weight, so a weight-5 backend would not be preferred over a weight-1 one
 * until both were busy. Random tie-breaking matters most when everything is idle: always taking
 * the first tied candidate would send every quiet-period request to the same backend.
 */
export class LeastConnPolicy implements Policy {
  readonly #random: RandomSource;
  #backends: readonly Backend[] = [];
  /** The backends by load; undefined for a set short enough to scan. */
  #index: LoadIndex | undefined;

  /** Creates the policy; `options.random` breaks ties. */
  constructor(options: LeastConnOptions = {}) {
    this.#random = options.random ?? Math.random;
  }

  /** Files the backends by load, O(n); a short set is only kept, to be scanned. */
  rebuild(backends: readonly Backend[]): void {
    this.#backends = backends;
    this.#index = backends.length > SCAN_MAX_CANDIDATES ? new LoadIndex(backends) : undefined;
  }

  /**
   * O(1) from the index (the heap's top; the O(log n) is paid in
   * {@linkcode LeastConnPolicy.loadChanged}), one O(n) scan otherwise. One `random` call from the
   * index when the lowest load is shared, none otherwise; a scan calls it once per tie.
   */
  select(_context: SelectContext, accept?: Accept): Backend | undefined {
    const index = this.#index;
    if (index !== undefined && accept === undefined) return index.least(this.#random);
    return scan(this.#backends, this.#random, accept);
  }

  /** Re-files `backend` under its new load, O(log n); ignored for a backend not indexed. */
  loadChanged(backend: Backend): void {
    this.#index?.update(backend);
  }
}

/**
 * One O(n) pass over the backends `accept` lets through (all when undefined); no allocation.
 * Calls `random` once per tie found. Undefined when nothing is accepted.
 * Cross-multiplied so integer counts and weights compare exactly, without division.
 */
function scan(
  backends: readonly Backend[],
  random: RandomSource,
  accept: Accept | undefined,
): Backend | undefined {
  let best: Backend | undefined;
  let ties = 1;
  for (let i = 0; i < backends.length; i++) {
    const backend = backends[i];
    if (accept !== undefined && !accept(backend)) continue;
    if (best === undefined) {
      best = backend;
      continue;
    }
    const mine = (backend.inflight + 1) * best.effectiveWeight;
    const theirs = (best.inflight + 1) * backend.effectiveWeight;
    if (mine < theirs) {
      best = backend;
      ties = 1;
    } else if (mine === theirs) {
      // Reservoir sampling of size one: the k-th tie replaces the choice with chance 1/k,
      // which leaves every tied candidate equally likely without collecting them in an array.
      ties++;
      if (random() * ties < 1) best = backend;
    }
  }
  return best;
}

/**
 * `(inflight + 1) / weight` as a double. Division is correctly rounded, so equal loads give the
 * very same double and can key a Map. Unequal loads `a/b < c/d` stay distinct and in order while
 * `c × b < 2^52` (their gap, at least `1/(b·d)`, is then no smaller than one unit in the last
 * place of `c/d`): the products the scan compares, so keys are exact wherever the scan is, and
 * with weights up to 10^6 × SLOW_START_STEPS that allows hundreds of millions in flight.
 * Weight 0 gives Infinity: such a backend (the pool never offers one) loses to any other.
 */
function keyOf(backend: Backend): number {
  return (backend.inflight + 1) / backend.effectiveWeight;
}

/** `Level.heapIndex` of a level with no members: out of the heap, still in the map. */
const EMPTY = -1;
/** `Level.heapIndex` of a level swept from the map: must not be used again. */
const SWEPT = -2;
/** Empty levels kept beyond one per backend, so that small pools do not sweep all the time. */
const SWEEP_SLACK = 64;

/** Every indexed backend with one load, and where that load sits in the heap. */
interface Level {
  readonly key: number;
  readonly members: Slot[];
  heapIndex: number;
}

/** Where one backend is filed: its level and its position in that level's members. */
interface Slot {
  readonly backend: Backend;
  level: Level;
  index: number;
  /**
   * The level this backend left last. A load mostly goes back and forth (acquire, release), so
   * this is usually the level of its next load, found without a Map lookup.
   */
  previous: Level | undefined;
}

/**
 * The backends of one set, grouped into levels by load, with the non-empty levels in
 * a binary min-heap by key. A backend moves between levels in O(1) (swap-remove, push); a level
 * that empties or fills again is a heap delete or insert, O(log n).
 *
 * An empty level stays in the map, out of the heap, until more than n + 64 levels are empty
 * and a sweep drops them: loads move back and forth between a few values, and deleting and
 * re-adding Map entries on every move made V8 rehash the table so often that it cost more than
 * the heap. A sweep visits at most 2n + 65 levels after n + 65 levels emptied: O(1) amortized.
 */
class LoadIndex {
  /** How many backends are filed. */
  readonly size: number;
  readonly #heap: Level[] = [];
  /** Every level by key, empty ones included (at most 2n + 65 of them). */
  readonly #levels = new Map<number, Level>();
  #emptyLevels = 0;
  readonly #slots = new Map<Backend, Slot>();

  /** Indexes `candidates` in O(n): group by key, then heapify bottom-up. */
  constructor(candidates: readonly Backend[]) {
    this.size = candidates.length;
    for (const backend of candidates) {
      // A backend listed twice (never by the pool) is filed once, so it gets one share, not two.
      if (this.#slots.has(backend)) continue;
      const key = keyOf(backend);
      let level = this.#levels.get(key);
      if (level === undefined) {
        level = { key, members: [], heapIndex: this.#heap.length };
        this.#levels.set(key, level);
        this.#heap.push(level);
      }
      const slot: Slot = { backend, level, index: level.members.length, previous: undefined };
      level.members.push(slot);
      this.#slots.set(backend, slot);
    }
    for (let i = (this.#heap.length >> 1) - 1; i >= 0; i--) this.#siftDown(i);
  }

  /** A uniformly random backend of the lowest level; one `random` call unless it has one. */
  least(random: RandomSource): Backend {
    const members = this.#heap[0].members;
    if (members.length === 1) return members[0].backend;
    return members[Math.floor(random() * members.length)].backend;
  }

  /** Moves `backend` to the level of its current load; ignored when it is not indexed. */
  update(backend: Backend): void {
    const slot = this.#slots.get(backend);
    if (slot === undefined) return;
    const key = keyOf(backend);
    const from = slot.level;
    if (key === from.key) return;
    const previous = slot.previous;
    this.#leave(slot);
    const level = previous !== undefined && previous.key === key && previous.heapIndex !== SWEPT
      ? this.#enterHeap(previous)
      : this.#levelFor(key);
    slot.previous = from;
    slot.level = level;
    slot.index = level.members.length;
    level.members.push(slot);
  }

  /** Takes `slot` out of its level (swap-remove); a level left empty leaves the heap. */
  #leave(slot: Slot): void {
    const level = slot.level;
    const members = level.members;
    const last = members.pop()!;
    if (last !== slot) {
      members[slot.index] = last;
      last.index = slot.index;
    }
    if (members.length > 0) return;
    const heap = this.#heap;
    const tail = heap.pop()!;
    if (tail !== level) {
      heap[level.heapIndex] = tail;
      tail.heapIndex = level.heapIndex;
      this.#siftDown(tail.heapIndex);
      this.#siftUp(tail.heapIndex);
    }
    level.heapIndex = EMPTY;
    if (++this.#emptyLevels > this.size + SWEEP_SLACK) this.#sweep();
  }

  /** The level for `key`, in the heap (a backend is about to join it). */
  #levelFor(key: number): Level {
    let level = this.#levels.get(key);
    if (level === undefined) {
      level = { key, members: [], heapIndex: EMPTY };
      this.#levels.set(key, level);
      this.#emptyLevels++;
    }
    return this.#enterHeap(level);
  }

  /** Puts an empty `level` back in the heap; a level already there is returned as it is. */
  #enterHeap(level: Level): Level {
    if (level.heapIndex !== EMPTY) return level;
    this.#emptyLevels--;
    level.heapIndex = this.#heap.length;
    this.#heap.push(level);
    this.#siftUp(level.heapIndex);
    return level;
  }

  /** Drops the empty levels from the map; slots that remember one will not use it again. */
  #sweep(): void {
    for (const [key, level] of this.#levels) {
      if (level.heapIndex !== EMPTY) continue;
      level.heapIndex = SWEPT;
      this.#levels.delete(key);
    }
    this.#emptyLevels = 0;
  }

  #siftUp(i: number): void {
    const heap = this.#heap;
    const level = heap[i];
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!(level.key < heap[parent].key)) break;
      heap[i] = heap[parent];
      heap[i].heapIndex = i;
      i = parent;
    }
    heap[i] = level;
    level.heapIndex = i;
  }

  #siftDown(i: number): void {
    const heap = this.#heap;
    const n = heap.length;
    const level = heap[i];
    while (true) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && heap[child + 1].key < heap[child].key) child++;
      if (!(heap[child].key < level.key)) break;
      heap[i] = heap[child];
      heap[i].heapIndex = i;
      i = child;
    }
    heap[i] = level;
    level.heapIndex = i;
  }
}
