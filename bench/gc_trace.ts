/**
 * @module
 * Reads V8's `--trace-gc` lines (one per collection, in a Deno process's stderr) into totals.
 * On a balancer pinned to one core, the time a collection stops the main thread is also about
 * the CPU it costs (its helper threads share that core), so GC time per request shows what a
 * heap flag costs more precisely than the process's CPU time, which moves by tens of percent
 * between runs on a shared machine.
 */

/** Collections and the main-thread time they took. */
export interface GcTotals {
  /** Young-generation collections (Scavenge, Minor Mark-Sweep). */
  young: number;
  youngMs: number;
  /** Full collections (Mark-Compact, Mark-Sweep, incremental or not). */
  full: number;
  /** Their pauses plus the incremental marking steps done before them. */
  fullMs: number;
}

const LINE =
  /ms: (?:Incremental )?(Scavenge|Minor Mark-Sweep|Mark-Compact|Mark-Sweep)\b[^,]*, .*?([\d.]+) \/ [\d.]+ ms(?: \(\+ ([\d.]+) ms in \d+ steps)?/;

/** Sums the `--trace-gc` lines of `text`; other lines are ignored. */
export function parseTraceGc(text: string): GcTotals {
  const totals: GcTotals = { young: 0, youngMs: 0, full: 0, fullMs: 0 };
  for (const line of text.split("\n")) {
    const match = LINE.exec(line);
    if (match === null) continue;
    const pause = Number(match[2]) + Number(match[3] ?? 0);
    if (match[1] === "Scavenge" || match[1] === "Minor Mark-Sweep") {
      totals.young++;
      totals.youngMs += pause;
    } else {
      totals.full++;
      totals.fullMs += pause;
    }
  }
  return totals;
}
