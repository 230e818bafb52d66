/**
 * @module
 * The pure parts of `deno task mutate` (tools/mutate.ts): options, the anchor rule, verdicts,
 * the summary, and the shape of the mutation list. Nothing here runs a mutation: the whole list
 * takes minutes and is run by hand (docs/mutation_testing.md).
 */
import assert from "node:assert/strict";
import denoJson from "../deno.json" with { type: "json" };
import {
  applyMutation,
  classify,
  countOccurrences,
  DEFAULT_TIMEOUT_SECONDS,
  failedTests,
  formatTable,
  formatTotals,
  isFailure,
  killedBy,
  parseOptions,
  type Result,
  selectMutations,
  TEST_FLAGS,
  type TestRun,
  unfinishedTest,
  UsageError,
} from "../tools/mutate.ts";
import { type Mutation, MUTATIONS } from "../tools/mutations.ts";

function mutation(overrides: Partial<Mutation> = {}): Mutation {
  return {
    id: "example",
    rule: "An example rule.",
    file: "lib/example.ts",
    original: "return false;",
    replacement: "return true;",
    tests: ["tests/example_test.ts"],
    ...overrides,
  };
}

function run(overrides: Partial<TestRun> = {}): TestRun {
  return { code: 0, timedOut: false, output: "", seconds: 1, ...overrides };
}

Deno.test("parseOptions() defaults to every mutation, no list and the default timeout", () => {
  assert.deepEqual(parseOptions([]), {
    only: undefined,
    list: false,
    timeoutSeconds: DEFAULT_TIMEOUT_SECONDS,
    help: false,
  });
});

Deno.test("parseOptions() splits --only on commas, trims ids and reads --list and --timeout", () => {
  assert.deepEqual(parseOptions(["--only", "a, b,,c", "--list", "--timeout=2.5"]), {
    only: ["a", "b", "c"],
    list: true,
    timeoutSeconds: 2.5,
    help: false,
  });
  assert.equal(parseOptions(["-h"]).help, true);
});

Deno.test("parseOptions() throws UsageError naming the bad value", () => {
  assert.throws(() => parseOptions(["--frobnicate"]), UsageError);
  assert.throws(() => parseOptions(["stray"]), UsageError);
  assert.throws(() => parseOptions(["--timeout", "soon"]), /got "soon"/);
  assert.throws(() => parseOptions(["--timeout", "0"]), /got "0"/);
  assert.throws(() => parseOptions(["--only", " , "]), /got " , "/);
});

Deno.test("selectMutations() keeps the list's order and names unknown ids", () => {
  const all = [mutation({ id: "a" }), mutation({ id: "b" }), mutation({ id: "c" })];
  assert.deepEqual(selectMutations(all, undefined).map((m) => m.id), ["a", "b", "c"]);
  assert.deepEqual(selectMutations(all, ["c", "a"]).map((m) => m.id), ["a", "c"]);
  assert.throws(() => selectMutations(all, ["a", "nope", "zilch"]), /nope, zilch/);
});

Deno.test("countOccurrences() counts overlapping occurrences, and none of an empty needle", () => {
  assert.equal(countOccurrences("aaa", "aa"), 2);
  assert.equal(countOccurrences("abc", "x"), 0);
  assert.equal(countOccurrences("abc", ""), 0);
});

Deno.test("applyMutation() replaces an anchor that occurs exactly once", () => {
  const source = "if (a) return false;\nreturn x;\n";
  assert.deepEqual(applyMutation(source, mutation()), {
    ok: true,
    text: "if (a) return true;\nreturn x;\n",
  });
});

Deno.test("applyMutation() is stale when the anchor is missing or occurs twice", () => {
  assert.deepEqual(applyMutation("return x;", mutation()), {
    ok: false,
    reason: "anchor not found",
  });
  assert.deepEqual(applyMutation("return false; return false;", mutation()), {
    ok: false,
    reason: "anchor found 2 times",
  });
  const unchanged = mutation({ replacement: "return false;" });
  assert.equal(applyMutation("return false;", unchanged).ok, false);
});

Deno.test("applyMutation() inserts the replacement literally, `$&` and all", () => {
  const applied = applyMutation("x = 1;", mutation({ original: "1", replacement: "'$&$1'" }));
  assert.deepEqual(applied, { ok: true, text: "x = '$&$1';" });
});

Deno.test("classify() tells killed, survived, timed out and type errors apart", () => {
  assert.equal(classify(run({ code: 1 })), "killed");
  assert.equal(classify(run({ code: 0 })), "survived");
  assert.equal(classify(run({ code: 137, timedOut: true })), "timed out");
  const typeError =
    "TS2322 [ERROR]: Type 'number' is not assignable\n\nerror: Type checking failed.";
  assert.equal(classify(run({ code: 1, output: typeError })), "invalid");
});

Deno.test("isFailure() passes only killed and timed-out mutations", () => {
  assert.equal(isFailure("killed"), false);
  assert.equal(isFailure("timed out"), false);
  for (const verdict of ["survived", "stale", "invalid", "baseline failed"] as const) {
    assert.equal(isFailure(verdict), true, verdict);
  }
});

Deno.test("failedTests() reads test names from deno test's FAILURES section, once each", () => {
  const output = [
    "a => ./tests/x_test.ts:3:6",
    "error: AssertionError",
    "",
    " FAILURES ",
    "",
    "first test => ./tests/x_test.ts:3:6",
    "a => b test => ./tests/y_test.ts:10:6",
    "first test => ./tests/x_test.ts:3:6",
    "",
    "FAILED | 1 passed | 2 failed (1s)",
  ].join("\n");
  assert.deepEqual(failedTests(output), ["first test", "a => b test"]);
  assert.deepEqual(failedTests("ok | 3 passed | 0 failed"), []);
});

Deno.test("unfinishedTest() names the test that started and never reported", () => {
  const output = [
    "running 3 tests from ./tests/x_test.ts",
    "quick ... ok (2ms)",
    "hangs ...",
    "------- output -------",
    "something it printed",
  ].join("\n");
  assert.equal(unfinishedTest(output), "hangs");
  assert.equal(
    unfinishedTest("running 1 test from ./tests/x_test.ts\nquick ... ok (2ms)"),
    undefined,
  );
});

Deno.test("killedBy() names the first failed test and counts the rest", () => {
  assert.equal(killedBy(["t1", "t2", "t3"]), 'killed by "t1" (+2 more)');
  assert.equal(killedBy(["t1"]), 'killed by "t1"');
  assert.match(killedBy([]), /before any test reported/);
});

Deno.test("formatTable() aligns id, result and seconds, and lists notes below", () => {
  const results: Result[] = [
    {
      mutation: mutation({ id: "a", rule: "Rule A." }),
      verdict: "killed",
      seconds: 3.21,
      note: "",
    },
    {
      mutation: mutation({ id: "longer-id", rule: "Rule B." }),
      verdict: "stale",
      seconds: 0,
      note: "anchor not found in lib/example.ts",
    },
  ];
  assert.equal(
    formatTable(results),
    [
      "id         result    s  rule",
      "a          killed  3.2  Rule A.",
      "longer-id  stale   0.0  Rule B.",
      "",
      "  longer-id: anchor not found in lib/example.ts",
    ].join("\n"),
  );
  assert.equal(formatTotals(results), "2 mutations: 1 killed, 1 stale");
});

Deno.test("TEST_FLAGS are the flags of every `deno test` run by `deno task test`", () => {
  const runs = Object.entries(denoJson.tasks)
    .filter(([name]) => name === "test" || name.startsWith("test:"))
    .flatMap(([, line]) => line.split("&&").map((part) => part.trim()))
    .filter((part) => /\bdeno test\b/.test(part));
  assert.ok(runs.length > 0, "deno.json's test tasks run deno test");
  for (const run of runs) assert.ok(run.includes(`deno test ${TEST_FLAGS.join(" ")} `), run);
});

Deno.test("MUTATIONS have unique ids, one-sentence rules, lib/ files and tests/ test files", () => {
  assert.ok(MUTATIONS.length > 0);
  const ids = MUTATIONS.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, "ids are unique");
  for (const m of MUTATIONS) {
    assert.match(m.id, /^[a-z0-9]+(-[a-z0-9]+)*$/, m.id);
    assert.match(m.rule, /^[^\n]+\.$/, m.id);
    assert.match(m.file, /^lib\/.+\.ts$/, m.id);
    assert.ok(m.original.trim() !== "" && !m.original.includes("\n"), `${m.id}: one-line anchor`);
    assert.notEqual(m.replacement, m.original, m.id);
    assert.ok(m.tests.length > 0, `${m.id} names its covering tests`);
    for (const test of m.tests) assert.match(test, /^tests\/[a-z0-9_]+_test\.ts$/, m.id);
  }
});
