/**
 * @module
 * `deno task mutate`: breaks each safety rule on purpose, one at a time, and checks that a test
 * notices. The mutations (one-line replacements) are listed in tools/mutations.ts.
 *
 *     deno task mutate                                   # every mutation
 *     deno task mutate --only retry-timeout,sticky-mac-full
 *     deno task mutate --list                            # the list, and whether each anchor holds
 *     deno task mutate --timeout 300                     # seconds per mutation (default 120)
 *
 * Everything happens in a temporary copy of the project (tracked files plus untracked ones git
 * does not ignore, so uncommitted tests count): the working tree is never written. The copy is
 * removed at the end, on failure, and on Ctrl-C. One copy serves every mutation: each mutated
 * file is written back before the next mutation is applied.
 *
 * First the covering tests of the selected mutations run once, unmutated (the baseline): a
 * mutation whose tests already fail unmutated is reported as "baseline failed", never as killed.
 * Then, per mutation, its covering tests run with the flags of `deno task test`, and the
 * mutation is:
 * - `killed`: a test failed;
 * - `timed out`: the run passed the time limit and was killed. Counted as killed (Stryker's
 *   convention): a mutation that makes a test hang has been noticed, since CI would hang too;
 * - `survived`: every covering test passed (or no covering test file exists yet);
 * - `stale`: the anchor is not found exactly once, or its file is gone: the list is out of date;
 * - `invalid`: the mutated code does not type-check, so no test ran: fix the replacement;
 * - `baseline failed`: a covering test fails without the mutation.
 *
 * The exit code is 1 unless every mutation was killed (or timed out), 2 for bad options.
 *
 * It needs `--allow-all` (the task passes `-A`): the tests it runs get all permissions anyway,
 * and Deno reads /proc, where processes left behind by the tests are found, only with all of
 * them.
 */

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { concatBytes } from "../lib/body.ts";
import { type Mutation, MUTATIONS } from "./mutations.ts";

/** The flags of `deno task test` (deno.json), so a mutation is judged as CI would judge it. */
export const TEST_FLAGS = ["--allow-all", "--sanitize-ops", "--sanitize-resources"] as const;

/** Seconds one mutation's test run may take before it is killed. */
export const DEFAULT_TIMEOUT_SECONDS = 120;

/** Command-line options. */
export interface Options {
  /** Ids to run, in the list's order; undefined runs them all. @default undefined */
  only: string[] | undefined;
  /** Print the mutations and exit. @default false */
  list: boolean;
  /** Per-mutation time limit in seconds. @default DEFAULT_TIMEOUT_SECONDS */
  timeoutSeconds: number;
  /** Print usage and exit. @default false */
  help: boolean;
}

/** A bad command line; its message says which value. */
export class UsageError extends Error {}

/** Usage text for `--help` and bad options. */
export const USAGE = `Usage: deno task mutate [--only ID,ID] [--list] [--timeout SECONDS]

Breaks each safety rule listed in tools/mutations.ts, one at a time, in a temporary copy of the
project, and runs the tests that cover it. Exits 1 when a mutation survives or is stale.

  --only ID,ID       run only these mutations
  --list             print the mutations (and whether each anchor is found) and exit
  --timeout SECONDS  time limit per mutation's test run (default ${DEFAULT_TIMEOUT_SECONDS})
  --help             print this and exit`;

/**
 * Parses the command line.
 *
 * @throws UsageError for an unknown option, a stray argument or a bad timeout.
 */
export function parseOptions(args: readonly string[]): Options {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      strict: true,
      allowPositionals: false,
      options: {
        only: { type: "string" },
        list: { type: "boolean", default: false },
        timeout: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values } = parsed;
  const only = values.only?.split(",").map((id) => id.trim()).filter((id) => id !== "");
  if (only !== undefined && only.length === 0) {
    throw new UsageError(`--only needs at least one mutation id, got "${values.only}"`);
  }
  const timeoutSeconds = values.timeout === undefined
    ? DEFAULT_TIMEOUT_SECONDS
    : Number(values.timeout);
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) {
    throw new UsageError(`--timeout must be a number of seconds > 0, got "${values.timeout}"`);
  }
  return { only, list: values.list, timeoutSeconds, help: values.help };
}

/**
 * The mutations named by `only`, in the list's order (all of them when undefined).
 *
 * @throws UsageError naming any id that is not in `all`.
 */
export function selectMutations(
  all: readonly Mutation[],
  only: readonly string[] | undefined,
): Mutation[] {
  if (only === undefined) return [...all];
  const unknown = only.filter((id) => !all.some((m) => m.id === id));
  if (unknown.length > 0) {
    throw new UsageError(
      `--only: no mutation named ${unknown.join(", ")} (see deno task mutate --list)`,
    );
  }
  return all.filter((m) => only.includes(m.id));
}

/** How many times `needle` occurs in `text`, overlapping occurrences included. */
export function countOccurrences(text: string, needle: string): number {
  if (needle === "") return 0;
  let count = 0;
  for (let at = text.indexOf(needle); at !== -1; at = text.indexOf(needle, at + 1)) count++;
  return count;
}

/** The mutated source, or why the mutation cannot be applied. */
export type Applied = { ok: true; text: string } | { ok: false; reason: string };

/**
 * Applies `mutation` to `source`, its file's text. The anchor must occur exactly once: twice
 * would leave it unclear which occurrence the rule lives in.
 */
export function applyMutation(source: string, mutation: Mutation): Applied {
  const count = countOccurrences(source, mutation.original);
  if (count === 0) return { ok: false, reason: "anchor not found" };
  if (count > 1) return { ok: false, reason: `anchor found ${count} times` };
  if (mutation.replacement === mutation.original) {
    return { ok: false, reason: "replacement equals the anchor" };
  }
  return { ok: true, text: source.replace(mutation.original, () => mutation.replacement) };
}

/** What became of one mutation. */
export type Verdict =
  | "killed"
  | "timed out"
  | "survived"
  | "stale"
  | "invalid"
  | "baseline failed";

/** Whether `verdict` makes the run fail: only killed (and timed out) mutations are fine. */
export function isFailure(verdict: Verdict): boolean {
  return verdict !== "killed" && verdict !== "timed out";
}

/** How one `deno test` run ended. */
export interface TestRun {
  code: number;
  timedOut: boolean;
  /** stdout and stderr together. */
  output: string;
  seconds: number;
  /** Processes the tests left running, killed after the run. @default 0 */
  leftovers?: number;
}

/** The verdict on a mutation from its test run. */
export function classify(run: TestRun): Verdict {
  if (run.timedOut) return "timed out";
  // No test ran: the failure is the compiler's, not a test's.
  if (/^error: Type checking failed/m.test(run.output)) return "invalid";
  return run.code === 0 ? "survived" : "killed";
}

/**
 * Names of the tests that failed, from `deno test`'s FAILURES section
 * (`name => ./tests/x_test.ts:12:6`), in order and without repeats.
 */
export function failedTests(output: string): string[] {
  const section = output.split(/^ ?FAILURES ?$/m)[1];
  if (section === undefined) return [];
  const names = section.split("\n")
    .map((line) => /^(.+?) => \S+:\d+:\d+$/.exec(line.trim())?.[1])
    .filter((name): name is string => name !== undefined);
  return [...new Set(names)];
}

/** The test still running when the output stops (`name ...` with no result), if any. */
export function unfinishedTest(output: string): string | undefined {
  const lines = output.split("\n").map((line) => line.trimEnd());
  return lines.findLast((line) => line.endsWith(" ...") && !line.startsWith("running "))
    ?.slice(0, -4);
}

/** One row of the summary. */
export interface Result {
  mutation: Mutation;
  verdict: Verdict;
  seconds: number;
  /** Why (stale, invalid, baseline), or which test killed it. */
  note: string;
}

/** The summary table: one aligned row per result, notes on the following lines. */
export function formatTable(results: readonly Result[]): string {
  const header = { id: "id", verdict: "result", seconds: "s", rule: "rule" };
  const rows = results.map((r) => ({
    id: r.mutation.id,
    verdict: r.verdict,
    seconds: r.seconds.toFixed(1),
    rule: r.mutation.rule,
  }));
  const width = (key: "id" | "verdict" | "seconds") =>
    Math.max(header[key].length, ...rows.map((row) => row[key].length));
  const [idW, verdictW, secondsW] = [width("id"), width("verdict"), width("seconds")];
  const line = (row: typeof header) =>
    `${row.id.padEnd(idW)}  ${row.verdict.padEnd(verdictW)}  ${row.seconds.padStart(secondsW)}` +
    `  ${row.rule}`;
  const notes = results.filter((r) => r.note !== "").map((r) => `  ${r.mutation.id}: ${r.note}`);
  return [line(header), ...rows.map(line), ...(notes.length > 0 ? ["", ...notes] : [])].join(
    "\n",
  );
}

/** The one-line count under the table. */
export function formatTotals(results: readonly Result[]): string {
  const counts = new Map<Verdict, number>();
  for (const r of results) counts.set(r.verdict, (counts.get(r.verdict) ?? 0) + 1);
  const parts = [...counts].map(([verdict, n]) => `${n} ${verdict}`);
  return `${results.length} mutations: ${parts.join(", ")}`;
}

// ---------------------------------------------------------------------------------------------
// Running.

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));

// deno-lint-ignore no-control-regex
const ANSI_ESCAPE = /\x1b\[[0-9;]*m/g;

/** PID of the test run in progress, so Ctrl-C can stop it. */
let running: number | undefined;

/**
 * Copies the project into `copy`: tracked files (as they are in the working tree, uncommitted
 * edits included) and untracked files git does not ignore.
 */
async function copyProject(root: string, copy: string): Promise<void> {
  const listed = await new Deno.Command("git", {
    args: ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!listed.success) {
    throw new Error(`git ls-files failed: ${new TextDecoder().decode(listed.stderr).trim()}`);
  }
  const paths = new TextDecoder().decode(listed.stdout).split("\0").filter((p) => p !== "");
  for (const path of new Set(paths)) await copyEntry(join(root, path), join(copy, path));
}

async function copyEntry(from: string, to: string): Promise<void> {
  let info;
  try {
    info = await Deno.lstat(from);
  } catch (error) {
    // Tracked but deleted in the working tree: the copy mirrors the tree, so it is left out.
    if (error instanceof Deno.errors.NotFound) return;
    throw error;
  }
  await Deno.mkdir(dirname(to), { recursive: true });
  if (info.isSymlink) await Deno.symlink(await Deno.readLink(from), to);
  else if (info.isFile) await Deno.copyFile(from, to);
}

/** A process as /proc shows it: its parent and its process group. */
interface ProcessEntry {
  pid: number;
  ppid: number;
  pgrp: number;
}

/**
 * Every running process (Linux /proc); empty where /proc is missing.
 *
 * @throws Deno.errors.NotCapable without --allow-all: Deno 2.9.6 lets nothing less read /proc.
 */
function processTable(): ProcessEntry[] {
  const table: ProcessEntry[] = [];
  let entries: Iterable<Deno.DirEntry>;
  try {
    entries = Deno.readDirSync("/proc");
  } catch (error) {
    // Not Linux: only the test process itself can be stopped (by its PID).
    if (error instanceof Deno.errors.NotFound) return table;
    throw error;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      // The command name is in parentheses and may contain spaces: read after the last ")".
      const [, ppid, pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number);
      table.push({ pid: Number(entry.name), ppid, pgrp });
    } catch {
      // The process exited while the list was read.
    }
  }
  return table;
}

/** Every descendant of `pid` in `table`. */
function descendants(pid: number, table: readonly ProcessEntry[]): number[] {
  const found: number[] = [];
  for (let queue = [pid]; queue.length > 0;) {
    const parent = queue.shift();
    const children = table.filter((p) => p.ppid === parent).map((p) => p.pid);
    found.push(...children);
    queue = [...queue, ...children];
  }
  return found;
}

/**
 * Processes of this tool's process group working in `dir`: those the tests started and left
 * behind when their parent died (no longer anyone's descendant). Only this run's temporary copy
 * is passed, and the group check spares a shell someone opened there to look around.
 */
function processesIn(dir: string, table: readonly ProcessEntry[]): number[] {
  const group = table.find((p) => p.pid === Deno.pid)?.pgrp;
  return table.filter(({ pid, pgrp }) => {
    if (pgrp !== group || pid === Deno.pid) return false;
    try {
      const cwd = Deno.readLinkSync(`/proc/${pid}/cwd`);
      return cwd === dir || cwd.startsWith(`${dir}/`);
    } catch {
      return false;
    }
  }).map(({ pid }) => pid);
}

/**
 * Kills the test process, everything it started, and anything still working in the copy (a
 * balancer spawned by a CLI test would otherwise outlive the run, holding its port and the
 * output pipe), by PID. SIGKILL: the run is discarded anyway, and a hung process may not act on
 * SIGTERM.
 */
function killTree(pid: number | undefined, dir: string): number {
  const table = processTable();
  const pids = new Set([
    ...(pid === undefined ? [] : [pid, ...descendants(pid, table)]),
    ...processesIn(dir, table),
  ]);
  pids.delete(Deno.pid);
  let killed = 0;
  for (const p of pids) {
    try {
      Deno.kill(p, "SIGKILL");
      killed++;
    } catch {
      // Already gone.
    }
  }
  return killed;
}

/** A stream read to its end in the background; cancel() stops waiting for the end. */
function collect(stream: ReadableStream<Uint8Array>) {
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  const done = (async () => {
    try {
      for (let r = await reader.read(); !r.done; r = await reader.read()) chunks.push(r.value);
    } catch {
      // Cancelled.
    }
  })();
  return {
    done,
    cancel: () => reader.cancel().catch(() => {}),
    text: () => new TextDecoder().decode(concatBytes(chunks)),
  };
}

/** How long output may keep coming after `deno test` exited, before its pipes are let go. */
const OUTPUT_GRACE_MS = 2000;

/**
 * Runs `deno test` on `files` in `cwd`, killed after `timeoutMs`. The time limit applies to the
 * test process, not to its output: a process a test leaked keeps the pipes open after `deno
 * test` has exited, and must not turn a finished run into a timeout.
 */
export async function runTests(
  cwd: string,
  files: readonly string[],
  timeoutMs: number,
): Promise<TestRun> {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", ...TEST_FLAGS, ...files],
    cwd,
    // Plain text: the FAILURES section is parsed.
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  running = child.pid;
  const stdout = collect(child.stdout);
  const stderr = collect(child.stderr);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killTree(child.pid, cwd);
  }, timeoutMs);
  try {
    const { code } = await child.status;
    const seconds = (performance.now() - started) / 1000;
    clearTimeout(timer);
    let grace: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) => (grace = setTimeout(() => r("late"), OUTPUT_GRACE_MS)));
    const outcome = await Promise.race([Promise.all([stdout.done, stderr.done]), late]);
    clearTimeout(grace);
    // Whatever the tests left running would hold ports and CPU through the next mutation.
    const leftovers = killTree(undefined, cwd);
    if (outcome === "late") await Promise.all([stdout.cancel(), stderr.cancel()]);
    // deno's "info:" and "hint:" lines are coloured even with NO_COLOR.
    const output = (stdout.text() + stderr.text()).replace(ANSI_ESCAPE, "");
    return { code, timedOut, output, seconds, leftovers };
  } finally {
    clearTimeout(timer);
    running = undefined;
  }
}

/** The covering files of `mutation` that exist in the copy, and those that do not. */
async function coveringFiles(copy: string, mutation: Mutation) {
  const present: string[] = [];
  const missing: string[] = [];
  for (const file of mutation.tests) {
    (await exists(join(copy, file)) ? present : missing).push(file);
  }
  return { present, missing };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** The mutation applied to the copy's file, or why it cannot be. */
async function mutatedText(copy: string, mutation: Mutation) {
  let source: string;
  try {
    source = await Deno.readTextFile(join(copy, mutation.file));
  } catch {
    return { source: "", applied: { ok: false, reason: "file not found" } as Applied };
  }
  return { source, applied: applyMutation(source, mutation) };
}

/**
 * Runs the covering tests of every applicable mutation once, unmutated. Returns the files that
 * fail on their own: when the union fails, each file is run alone to find them.
 */
async function baseline(
  copy: string,
  mutations: readonly Mutation[],
  timeoutMs: number,
): Promise<Set<string>> {
  const files = new Set<string>();
  for (const mutation of mutations) {
    const { applied } = await mutatedText(copy, mutation);
    if (!applied.ok) continue;
    for (const file of (await coveringFiles(copy, mutation)).present) files.add(file);
  }
  if (files.size === 0) return new Set();
  console.log(`Baseline: ${files.size} test files, unmutated`);
  const union = await runTests(copy, [...files], timeoutMs * files.size);
  if (union.code === 0 && !union.timedOut) {
    console.log(`Baseline passed (${union.seconds.toFixed(1)} s)\n`);
    return new Set();
  }
  console.log(`Baseline FAILED (${union.seconds.toFixed(1)} s); running each file alone`);
  const failing = new Set<string>();
  for (const file of files) {
    const run = await runTests(copy, [file], timeoutMs);
    if (run.code === 0 && !run.timedOut) continue;
    failing.add(file);
    console.log(`  ${file} fails unmutated: ${describeFailure(run)}`);
  }
  if (failing.size === 0) console.log("  every file passes alone: they fail only together");
  console.log("");
  return failing;
}

/** Why a baseline run failed, in one line. */
function describeFailure(run: TestRun): string {
  if (run.timedOut) return "timed out";
  if (classify(run) === "invalid") return `type errors: ${typeErrors(run.output)}`;
  const names = failedTests(run.output);
  if (names.length > 0) return `failed: ${names.join("; ")}`;
  return run.output.trim().split("\n").slice(-5).join(" | ");
}

/** Applies one mutation in the copy, runs its tests, and writes the file back. */
async function runMutation(
  copy: string,
  mutation: Mutation,
  failingBaseline: ReadonlySet<string>,
  timeoutMs: number,
): Promise<Result> {
  const result = (verdict: Verdict, note: string, seconds = 0): Result => ({
    mutation,
    verdict,
    seconds,
    note,
  });
  const { source, applied } = await mutatedText(copy, mutation);
  if (!applied.ok) return result("stale", `${applied.reason} in ${mutation.file}`);
  const { present, missing } = await coveringFiles(copy, mutation);
  const missingNote = missing.length > 0 ? `no such test file: ${missing.join(", ")}` : "";
  if (present.length === 0) return result("survived", missingNote);
  const broken = present.filter((file) => failingBaseline.has(file));
  if (broken.length > 0) return result("baseline failed", `fails unmutated: ${broken.join(", ")}`);
  const path = join(copy, mutation.file);
  await Deno.writeTextFile(path, applied.text);
  let run: TestRun;
  try {
    run = await runTests(copy, present, timeoutMs);
  } finally {
    // Written back before anything else runs: mutations never leak into each other.
    await Deno.writeTextFile(path, source);
  }
  const verdict = classify(run);
  const notes = [missingNote];
  if (run.leftovers) notes.push(`killed ${run.leftovers} processes the tests left running`);
  if (verdict === "killed") notes.push(killedBy(failedTests(run.output)));
  if (verdict === "invalid") notes.push(`type errors: ${typeErrors(run.output)}`);
  if (verdict === "timed out") notes.push(`still running: "${unfinishedTest(run.output) ?? "?"}"`);
  return result(verdict, notes.filter((n) => n !== "").join("; "), run.seconds);
}

/** The first test that failed, and how many others did: enough to find the witness. */
export function killedBy(names: readonly string[]): string {
  if (names.length === 0) return "killed before any test reported (see deno test's output)";
  const more = names.length > 1 ? ` (+${names.length - 1} more)` : "";
  return `killed by "${names[0]}"${more}`;
}

function typeErrors(output: string): string {
  return output.split("\n").filter((line) => /^TS\d+ \[ERROR\]/.test(line)).join(" | ");
}

/** `--list`: every selected mutation, and whether its anchor holds in the working tree. */
async function printList(mutations: readonly Mutation[]): Promise<boolean> {
  let allFound = true;
  for (const mutation of mutations) {
    const { applied } = await mutatedText(ROOT, mutation);
    if (!applied.ok) allFound = false;
    const status = applied.ok ? "anchor found" : `STALE: ${applied.reason}`;
    console.log(`${mutation.id} (${status})`);
    console.log(`  rule: ${mutation.rule}`);
    console.log(`  ${mutation.file}: ${mutation.original}`);
    console.log(`  becomes: ${mutation.replacement}`);
    console.log(`  tests: ${mutation.tests.join(" ")}`);
  }
  return allFound;
}

/** Runs the mutations in a temporary copy; returns the exit code. */
async function runAll(mutations: readonly Mutation[], timeoutMs: number): Promise<number> {
  // The real path: leftover processes are found by their working directory (/proc/PID/cwd).
  const copy = await Deno.realPath(await Deno.makeTempDir({ prefix: "lb-mutate-" }));
  // Ctrl-C or a kill: stop the test run, remove the copy, then exit as interrupted.
  const stop = () => {
    killTree(running, copy);
    Deno.removeSync(copy, { recursive: true });
    Deno.exit(130);
  };
  const signals = ["SIGINT", "SIGTERM"] as const;
  for (const signal of signals) Deno.addSignalListener(signal, stop);
  try {
    await copyProject(ROOT, copy);
    console.log(`Copied the project to ${copy}`);
    const failing = await baseline(copy, mutations, timeoutMs);
    const results: Result[] = [];
    for (const [i, mutation] of mutations.entries()) {
      const result = await runMutation(copy, mutation, failing, timeoutMs);
      results.push(result);
      const note = result.note === "" ? "" : ` (${result.note})`;
      console.log(
        `[${i + 1}/${mutations.length}] ${mutation.id}: ${result.verdict}, ` +
          `${result.seconds.toFixed(1)} s${note}`,
      );
    }
    console.log(`\n${formatTable(results)}\n\n${formatTotals(results)}`);
    return results.some((r) => isFailure(r.verdict)) ? 1 : 0;
  } finally {
    for (const signal of signals) Deno.removeSignalListener(signal, stop);
    killTree(undefined, copy);
    await Deno.remove(copy, { recursive: true });
  }
}

/** Entry point: parses `args`, runs or lists the mutations, returns the exit code. */
export async function main(args: readonly string[]): Promise<number> {
  let options: Options;
  let mutations: Mutation[];
  try {
    options = parseOptions(args);
    mutations = selectMutations(MUTATIONS, options.only);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`${error.message}\n\n${USAGE}`);
    return 2;
  }
  if (options.help) {
    console.log(USAGE);
    return 0;
  }
  if (options.list) return await printList(mutations) ? 0 : 1;
  try {
    processTable();
  } catch (error) {
    // Found now rather than when a hung run has to be stopped.
    console.error(`cannot list processes to stop them: ${(error as Error).message}`);
    return 2;
  }
  return await runAll(mutations, options.timeoutSeconds * 1000);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
