/**
 * @module
 * Admission of requests into the balancer's work while its thread is saturated.
 *
 * With thousands of clients on one busy thread, every request Deno hands over starts at once and
 * then waits for the thread: all of them keep their objects alive across collections, so V8
 * copies and promotes them again and again and GC dominates (docs/performance.md). The gate
 * samples the thread's CPU use; while the thread is saturated, it lowers the number of requests
 * being worked on and queues the others, first come first served, before any work (a queued
 * request holds only what Deno gave it). When the thread has time to spare it raises the limit
 * again, up to no limit at all, so slow backends (many requests waiting on I/O, the thread idle)
 * are not held back. The idea is Envoy's adaptive concurrency filter, with the thread's CPU use
 * as the signal and a queue instead of a 503. (The loop's timer lag was tried first: timers run
 * between batches of I/O, so it stayed low while the thread was saturated.)
 */

import type { IncomingRequest } from "./incoming.ts";
import type { Handler } from "./proxy.ts";

/** Share of the time the thread is busy above which it counts as saturated: the limit drops. */
const SATURATED = 0.9;
/** Share below which the thread has time to spare: the limit rises. */
const SPARE = 0.7;
/** The limit never goes below this many requests at work. */
const MIN_ACTIVE = 64;
/** How often the thread's CPU use is sampled (its clock counts in 10 ms ticks). */
const SAMPLE_MS = 100;

/** `performance.now()` when each request that waited for admission reached the gate. */
const arrivals = new WeakMap<IncomingRequest, number>();

/** When `req` reached the balancer: its arrival at the gate if it waited, else now. */
export function arrivalTime(req: IncomingRequest): number {
  return arrivals.get(req) ?? performance.now();
}

/** A limit on requests at work, adapted to how busy the thread is. */
export class AdmissionGate {
  /**
   * Requests at work: admitted in the current or the previous sampling period and not finished.
   * Older ones are waiting on a backend, not on this thread, and no longer hold a place: a few
   * slow requests (long polls) must not keep fast ones queued.
   */
  active = 0;
  /** Sampling periods so far; a request remembers the one it was admitted in. */
  epoch = 0;
  #current = 0;
  #previous = 0;
  /** Requests at work allowed now; Infinity while the thread keeps up. */
  limit = Infinity;
  #queue: (() => void)[] = [];
  #head = 0;

  /** Requests waiting to be admitted. */
  get queued(): number {
    return this.#queue.length - this.#head;
  }

  /**
   * Admits a request now (returns its period) or queues it (returns a promise of its period);
   * pass the period to {@linkcode leave} when the request is done.
   */
  enter(): number | Promise<number> {
    if (this.active < this.limit && this.queued === 0) return this.#take();
    return new Promise<number>((resolve) => this.#queue.push(() => resolve(this.#take())));
  }

  /** A request admitted in period `epoch` finished: its place goes to the first one waiting. */
  leave(epoch: number): void {
    if (epoch === this.epoch) this.#current--;
    else if (epoch === this.epoch - 1) this.#previous--;
    else return;
    this.active--;
    this.#admit();
  }

  #take(): number {
    this.active++;
    this.#current++;
    return this.epoch;
  }

  /**
   * Adapts the limit to one sample of the thread's busy share (0 to 1): a saturated thread
   * lowers it to three quarters of the requests at work (at least {@linkcode MIN_ACTIVE}); a
   * thread with time to spare raises it by a quarter and removes it once it is well above the
   * requests at work and waiting.
   */
  observe(busy: number): void {
    this.active -= this.#previous;
    this.#previous = this.#current;
    this.#current = 0;
    this.epoch++;
    if (busy > SATURATED) {
      this.limit = Math.max(MIN_ACTIVE, Math.floor(Math.min(this.limit, this.active) * 0.75));
    } else if (busy < SPARE && this.limit !== Infinity) {
      this.limit = Math.ceil(this.limit * 1.25);
      if (this.limit > 2 * (this.active + this.queued)) this.limit = Infinity;
    }
    this.#admit();
  }

  /** Lifts the limit and admits everyone waiting (at shutdown: the drain must not queue). */
  open(): void {
    this.limit = Infinity;
    this.#admit();
  }

  #admit(): void {
    while (this.active < this.limit && this.#head < this.#queue.length) {
      const next = this.#queue[this.#head];
      this.#queue[this.#head++] = undefined!;
      next();
    }
    if (this.#head === this.#queue.length) {
      this.#queue.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
  }
}

/**
 * `handler` behind `gate`, with the thread's CPU use sampled every {@linkcode SAMPLE_MS} ms, from
 * the first request on, by a timer that does not keep the process alive. `stop()` ends the
 * sampling and lifts the limit. A front end that admits requests itself (the native one, before
 * it reads each request) uses `gate` with `start()` (which starts the sampling, once) instead of
 * `handler`.
 */
export function admitted(
  handler: Handler,
  gate = new AdmissionGate(),
): { handler: Handler; gate: AdmissionGate; start(): void; stop(): void } {
  let wall = 0;
  let cpu: number | undefined;
  let timer: ReturnType<typeof setInterval> | undefined;
  let stopped = false;
  // Started by the first request: a balancer that never listened leaves no timer behind.
  const start = () => {
    if (timer !== undefined || stopped) return;
    wall = performance.now();
    cpu = cpuMicros();
    const every = setInterval(() => {
      const [nowWall, nowCpu] = [performance.now(), cpuMicros()];
      if (nowCpu !== undefined && cpu !== undefined && nowWall > wall) {
        gate.observe((nowCpu - cpu) / 1000 / (nowWall - wall));
      }
      [wall, cpu] = [nowWall, nowCpu];
    }, SAMPLE_MS);
    Deno.unrefTimer(every);
    timer = every;
  };
  return {
    gate,
    start,
    handler: async (req, info) => {
      start();
      const admittedIn = gate.enter();
      let epoch: number;
      if (typeof admittedIn === "number") epoch = admittedIn;
      else {
        // The wait counts in the request's duration (metrics, access log), as HAProxy's Tw.
        // Kept beside the request, not in a copy of `info`: that would drop the native front
        // end's fields (the PROXY protocol's client address).
        arrivals.set(req, performance.now());
        epoch = await admittedIn;
      }
      try {
        return await handler(req, info);
      } finally {
        gate.leave(epoch);
      }
    },
    stop: () => {
      stopped = true;
      clearInterval(timer);
      gate.open();
    },
  };
}

/**
 * CPU time (user + system, µs) that shows whether this thread is saturated: the whole process's
 * when it may run on one CPU only (GC and I/O helper threads then take from the same CPU), else
 * the calling thread's. Undefined where Deno cannot say.
 */
function cpuMicros(): number | undefined {
  const usage = ONE_CPU
    ? process.cpuUsage()
    : (process as { threadCpuUsage?: () => { user: number; system: number } }).threadCpuUsage?.();
  return usage === undefined ? undefined : usage.user + usage.system;
}

const ONE_CPU = navigator.hardwareConcurrency === 1;
