/**
 * @module
 * What a rate limit table costs (lib/rate_limit.ts): the process's RSS before and after
 * 100,000 distinct keys go through `take()`, per key; then 100,000 more distinct keys at the
 * cap (a flood: RSS must not grow); and the time of one take on each path. For comparison, the
 * same keys in a plain `Map` of `{tokens, at}` objects, which is what a table per thread would
 * be without shared memory.
 *
 * Run: `deno run --allow-run --allow-read --allow-sys bench/rate_limit_memory.ts` (option
 * `--keys=N`, default 100000). It prints a Markdown section for bench/results/rate_limit/README.md.
 * Each measurement runs in a fresh process of its own (this script re-runs itself with
 * `--expose-gc`, to collect before reading RSS), so one cannot inherit another's heap.
 */

import { parseArgs } from "node:util";
import { createRateLimitTable, RateLimiter, type RateLimitSpec } from "../lib/rate_limit.ts";

const SPEC: RateLimitSpec = { requestsPerSecond: 20, burst: 40, key: "ip" };

/** One measurement's figures, printed by the child as one JSON line. */
interface Figures {
  rssBeforeMiB: number;
  rssTableMiB: number;
  rssAfterMiB: number;
  rssFloodMiB: number;
  heapAfterMiB: number;
  keys: number;
  overflowed: number;
}

const mib = (bytes: number) => bytes / 1024 / 1024;

function settle(): { rss: number; heap: number } {
  (globalThis as { gc?: () => void }).gc?.();
  const usage = Deno.memoryUsage();
  return { rss: usage.rss, heap: usage.heapUsed };
}

type Reading = ReturnType<typeof settle>;

/** One measurement's figures from its readings: before, with the empty table, filled, flooded. */
function figures(
  readings: { before: Reading; table: Reading; after: Reading; flood: Reading },
  keys: number,
  overflowed = 0,
): Figures {
  const { before, table, after, flood } = readings;
  return {
    rssBeforeMiB: mib(before.rss),
    rssTableMiB: mib(table.rss),
    rssAfterMiB: mib(after.rss),
    rssFloodMiB: mib(flood.rss),
    heapAfterMiB: mib(after.heap),
    keys,
    overflowed,
  };
}

/** `ip 10.A.B.C` for i: what keyOf() makes of 16M distinct IPv4 clients. */
function keyOf(i: number): string {
  return `ip 10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
}

/** A clock that stands still: no bucket refills, so every key stays in the table. */
const FROZEN = { now: () => 1_700_000_000_000 };

/** The shared table: 100k keys, then 100k more at its cap of 100k. */
function measureTable(keys: number): Figures {
  const before = settle();
  const limiter = new RateLimiter(SPEC, createRateLimitTable(keys), FROZEN);
  const table = settle();
  for (let i = 0; i < keys; i++) limiter.take(keyOf(i));
  const after = settle();
  for (let i = keys; i < 2 * keys; i++) limiter.take(keyOf(i));
  const flood = settle();
  const stats = limiter.stats();
  return figures({ before, table, after, flood }, stats.keys, stats.overflowed);
}

/** A Map of buckets, unbounded: the comparison. */
function measureMap(keys: number): Figures {
  const before = settle();
  const buckets = new Map<string, { tokens: number; at: number }>();
  for (let i = 0; i < keys; i++) buckets.set(keyOf(i), { tokens: SPEC.burst - 1, at: Date.now() });
  const after = settle();
  for (let i = keys; i < 2 * keys; i++) {
    buckets.set(keyOf(i), { tokens: SPEC.burst - 1, at: Date.now() });
  }
  const flood = settle();
  return figures({ before, table: before, after, flood }, buckets.size);
}

/**
 * Nanoseconds per take on each path: a new key, a key held, a key past the cap; and a plain
 * Map's get-or-insert with the same arithmetic, measured alike in the same process, as the
 * yardstick (on a loaded machine absolute figures move; the ratio moves less). Medians of 5
 * rounds, each over a fresh table.
 */
function measureTakes(keys: number): Record<string, number> {
  const time = (count: number, f: (i: number) => void) => {
    const start = performance.now();
    for (let i = 0; i < count; i++) f(i);
    return ((performance.now() - start) * 1e6) / count;
  };
  const keyNames = Array.from({ length: 2 * keys }, (_, i) => keyOf(i));
  const rounds: Record<string, number>[] = [];
  for (let round = 0; round < 5; round++) {
    const limiter = new RateLimiter(SPEC, createRateLimitTable(keys), FROZEN);
    const newKey = time(keys, (i) => limiter.take(keyNames[i]));
    const heldKey = time(keys, (i) => limiter.take(keyNames[i]));
    const overCap = time(keys, (i) => limiter.take(keyNames[keys + i]));
    const map = new Map<string, { tokens: number; at: number }>();
    const mapTake = (key: string) => {
      const now = FROZEN.now();
      const bucket = map.get(key);
      if (bucket === undefined) {
        map.set(key, { tokens: SPEC.burst - 1, at: now });
        return;
      }
      bucket.tokens = Math.min(SPEC.burst, bucket.tokens + (now - bucket.at) * 0.02);
      bucket.at = now;
      if (bucket.tokens >= 1) bucket.tokens--;
    };
    const mapNew = time(keys, (i) => mapTake(keyNames[i]));
    const mapHeld = time(keys, (i) => mapTake(keyNames[i]));
    rounds.push({ newKey, heldKey, overCap, mapNew, mapHeld });
  }
  const median = (name: string) => rounds.map((r) => r[name]).sort((a, b) => a - b)[2];
  return Object.fromEntries(Object.keys(rounds[0]).map((name) => [name, median(name)]));
}

/** The strings alone: what making 100k key strings leaves in RSS, without any table. */
function measureStrings(keys: number): Figures {
  const before = settle();
  let length = 0;
  for (let i = 0; i < keys; i++) length += keyOf(i).length;
  const after = settle();
  for (let i = keys; i < 2 * keys; i++) length += keyOf(i).length;
  const flood = settle();
  return figures({ before, table: before, after, flood }, length > 0 ? 0 : -1);
}

function loadAverage(): string {
  try {
    return Deno.loadavg().map((n) => n.toFixed(2)).join(" ");
  } catch {
    return "unknown (run with --allow-sys)";
  }
}

async function child(kind: string, keys: number): Promise<unknown> {
  const command = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--v8-flags=--expose-gc",
      new URL(import.meta.url).pathname,
      `--child=${kind}`,
      `--keys=${keys}`,
    ],
    stdout: "piped",
    stderr: "inherit",
  });
  const { code, stdout } = await command.output();
  if (code !== 0) throw new Error(`${kind} measurement exited with ${code}`);
  const lines = new TextDecoder().decode(stdout).trim().split("\n");
  return JSON.parse(lines[lines.length - 1]);
}

const fmt = (n: number, digits = 1) => n.toFixed(digits);

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { keys: { type: "string", default: "100000" }, child: { type: "string" } },
    strict: true,
  });
  const keys = Number(values.keys);
  if (!Number.isInteger(keys) || keys < 1) {
    console.error(`--keys: ${JSON.stringify(values.keys)} is not a whole number above 0`);
    Deno.exit(2);
  }
  if (values.child === "table") return console.log(JSON.stringify(measureTable(keys)));
  if (values.child === "map") return console.log(JSON.stringify(measureMap(keys)));
  if (values.child === "strings") return console.log(JSON.stringify(measureStrings(keys)));
  if (values.child === "takes") return console.log(JSON.stringify(measureTakes(keys)));

  const table = await child("table", keys) as Figures;
  const map = await child("map", keys) as Figures;
  const strings = await child("strings", keys) as Figures;
  const takes = await child("takes", keys) as Record<string, number>;
  const perKey = (f: Figures) => ((f.rssAfterMiB - f.rssBeforeMiB) * 1024 * 1024) / keys;
  console.log(
    `Deno ${Deno.version.deno}, V8 ${Deno.version.v8}, ${keys} distinct keys, ` +
      `rateLimit ${JSON.stringify(SPEC)}, ${new Date().toISOString().slice(0, 10)}.\n`,
  );
  console.log(
    "| | RSS before | after table made | after keys | per key | " +
      "after as many more keys | keys held |",
  );
  console.log("|---|---|---|---|---|---|---|");
  const rows = [
    ["shared table (maxKeys = keys)", table],
    ["Map of objects (no cap)", map],
    ["the key strings alone", strings],
  ] as const;
  for (const [name, f] of rows) {
    console.log(
      `| ${name} | ${fmt(f.rssBeforeMiB)} MiB | ${fmt(f.rssTableMiB)} MiB | ` +
        `${fmt(f.rssAfterMiB)} MiB | ${fmt(perKey(f), 0)} B | ${fmt(f.rssFloodMiB)} MiB | ` +
        `${f.keys}${f.overflowed ? ` (${f.overflowed} overflowed)` : ""} |`,
    );
  }
  console.log(
    `\nOne take (one thread): new key ${fmt(takes.newKey, 0)} ns, key held ` +
      `${fmt(takes.heldKey, 0)} ns, past the cap (overflow bucket) ${fmt(takes.overCap, 0)} ns; ` +
      `a Map in the same process: new key ${fmt(takes.mapNew, 0)} ns, key held ` +
      `${fmt(takes.mapHeld, 0)} ns.`,
  );
  console.log(`\nLoad average (1, 5, 15 min) after measuring: ${loadAverage()}.`);
}

if (import.meta.main) await main();
