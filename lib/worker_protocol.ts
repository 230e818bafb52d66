/**
 * @module
 * Messages between the main thread and the worker threads of `--workers N` (lib/workers.ts and
 * lib/worker_thread.ts), and the merging of what the threads report. The main thread owns the
 * backend list, health checks, discovery, admin API and alerts; each worker serves traffic on
 * the same port (SO_REUSEPORT) with a pool that mirrors the main thread's.
 */

import type { Config } from "./config.ts";
import type { AdminState, HealthState } from "./pool.ts";
import { formatValue } from "./metrics.ts";
import type { CertifiedKey } from "./tls.ts";

/** A backend as the main thread decides it: what every worker's pool must show. */
export interface SyncedBackend {
  /** The service whose pool holds it. */
  service: string;
  url: string;
  weight: number;
  admin: AdminState;
  state: HealthState;
}

/** Per-backend counters one thread reports, for the admin API's merged view. */
export interface BackendCounters {
  /** The service whose pool holds the backend: one URL may be in several. */
  service: string;
  url: string;
  inflight: number;
  requests: number;
  errors: number;
  /** The thread's recent latency samples (ms), so percentiles can be taken over all threads. */
  latencies: number[];
}

/** Main thread -> worker. */
export type ToWorker =
  | {
    type: "start";
    index: number;
    /** The worker's settings: the port actually bound, backends as the main thread has them. */
    config: Config;
    version: string;
    backends: SyncedBackend[];
    /** The main thread's rate limit tables by route name (shared memory, not copies). */
    rateLimitTables: Record<string, SharedArrayBuffer>;
  }
  | { type: "sync"; backends: SyncedBackend[] }
  /** The configuration was reloaded: routes and services as `config` gives them. */
  | {
    type: "reload";
    config: Config;
    backends: SyncedBackend[];
    rateLimitTables: Record<string, SharedArrayBuffer>;
  }
  | { type: "stats"; id: number }
  | { type: "reloadCertificate"; pair?: CertifiedKey }
  | { type: "shutdown"; drainMs: number };

/** Worker -> main thread. */
export type FromWorker =
  /** The module has been evaluated: messages sent from now on are handled. */
  | { type: "loaded" }
  | { type: "listening" }
  | { type: "failed"; message: string }
  /** The worker saw `url` refuse a connection and marked it down; the main thread decides. */
  | { type: "down"; service: string; url: string; reason: string }
  | { type: "stats"; id: number; metrics: string; backends: BackendCounters[] }
  | { type: "stopped"; left: number };

/** Gauges whose per-thread values add up; every other gauge is the same fact seen N times. */
const SUMMED_GAUGES = new Set([
  "lb_backend_inflight",
  "lb_backend_connections_open",
  "lb_backend_connections_idle",
]);

/**
 * Merges the Prometheus texts of several threads into one: counters and histograms add up
 * (each thread counted its own requests), in-flight and connection gauges add up, and other gauges
 * (up, ejected, weight, build info) take the highest value, so "ejected" means ejected by at
 * least one thread. Families keep the order in which they first appear.
 */
export function mergeExpositions(texts: readonly string[]): string {
  const families = new Map<string, { header: string[]; samples: Map<string, number> }>();
  const typeOf = new Map<string, string>();
  const familyOfSample = (name: string) => {
    for (const suffix of ["_bucket", "_sum", "_count"]) {
      if (name.endsWith(suffix) && families.has(name.slice(0, -suffix.length))) {
        return name.slice(0, -suffix.length);
      }
    }
    return name;
  };
  for (const text of texts) {
    for (const line of text.split("\n")) {
      if (line === "") continue;
      if (line.startsWith("#")) {
        const [, kind, name, rest] = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line) ?? [];
        if (name === undefined) continue;
        let family = families.get(name);
        if (family === undefined) {
          family = { header: [], samples: new Map() };
          families.set(name, family);
        }
        if (!family.header.includes(line)) family.header.push(line);
        if (kind === "TYPE") typeOf.set(name, rest);
        continue;
      }
      const space = line.lastIndexOf(" ");
      const series = line.slice(0, space);
      const value = Number(line.slice(space + 1));
      const sampleName = /^[^{ ]+/.exec(series)![0];
      const familyName = familyOfSample(sampleName);
      let family = families.get(familyName);
      if (family === undefined) {
        family = { header: [], samples: new Map() };
        families.set(familyName, family);
      }
      const before = family.samples.get(series);
      const adds = typeOf.get(familyName) !== "gauge" || SUMMED_GAUGES.has(familyName);
      family.samples.set(
        series,
        before === undefined ? value : adds ? before + value : Math.max(before, value),
      );
    }
  }
  const out: string[] = [];
  for (const family of families.values()) {
    out.push(...family.header);
    for (const [series, value] of family.samples) out.push(`${series} ${formatValue(value)}`);
  }
  return out.join("\n") + "\n";
}

/**
 * `text` without its gauges: what a thread that is gone (or did not answer in time) still
 * contributes to a merge. Its counters must stay in the totals, or they would go backwards (a
 * reset to Prometheus); its gauges describe a moment that has passed.
 */
export function countersOnly(text: string): string {
  const gauges = new Set<string>();
  for (const match of text.matchAll(/^# TYPE (\S+) gauge$/gm)) gauges.add(match[1]);
  return text.split("\n").filter((line) => {
    const name = line.startsWith("#") ? line.split(" ")[2] : /^[^{ ]+/.exec(line)?.[0];
    return name === undefined || !gauges.has(name);
  }).join("\n");
}
