/**
 * @module
 * The process log (lib/log.ts) called directly: Go's line shape, JSON lines, levels that are
 * left out, and a log that follows a reload.
 */

import assert from "node:assert/strict";
import {
  createLog,
  formatJsonLine,
  formatLine,
  goTimestamp,
  type Log,
  type LogEntry,
  quietLog,
  switchableLog,
} from "../lib/log.ts";

/** 2024-12-21 09:05:07 local time, as Go's log prints it. */
const WHEN = new Date(2024, 11, 21, 9, 5, 7, 250).getTime();

function record(level: LogEntry["level"], message: string): LogEntry {
  return { level, message, timestamp: WHEN };
}

Deno.test("goTimestamp() prints local time as Go's log does, zero-padded, without milliseconds", () => {
  assert.equal(goTimestamp(WHEN), "2024/12/21 09:05:07");
});

Deno.test("formatLine() writes time, level and message", () => {
  assert.equal(
    formatLine(record("info", "Configured server: http://a:1")),
    "2024/12/21 09:05:07 INFO Configured server: http://a:1",
  );
  assert.equal(formatLine(record("warn", "x")), "2024/12/21 09:05:07 WARN x");
});

Deno.test("formatJsonLine() writes one JSON object with an ISO time", () => {
  const line = formatJsonLine(record("warn", 'say "hi"\n'));
  assert.ok(!line.includes("\n"), "one line");
  assert.deepEqual(JSON.parse(line), {
    time: new Date(WHEN).toISOString(),
    level: "warn",
    message: 'say "hi"\n',
  });
});

Deno.test("createLog() writes the given level and above, and messages with braces as given", () => {
  const lines: string[] = [];
  const log = createLog("info", (line) => lines.push(line), "json");
  assert.equal(log.debugEnabled, false);
  log.debug("not written");
  log.info("GET /{id} took {ms}");
  log.warn("w");
  log.error("e");
  assert.deepEqual(lines.map((line) => JSON.parse(line).level), ["info", "warn", "error"]);
  assert.equal(JSON.parse(lines[0]).message, "GET /{id} took {ms}");
  const errors: string[] = [];
  const quiet = createLog("error", (line) => errors.push(line));
  quiet.warn("not written");
  quiet.error("written");
  assert.equal(errors.length, 1);
  assert.match(errors[0], /^\d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d ERROR written$/);
});

Deno.test("createLog(): a sink that throws loses the line, not the caller", () => {
  let calls = 0;
  const log = createLog("info", () => {
    calls++;
    throw new Deno.errors.BrokenPipe("standard error is closed");
  });
  log.info("first");
  log.error("second");
  assert.equal(calls, 2, "both lines were offered to the sink");
});

Deno.test("switchableLog() writes through the log given to replace() from then on", () => {
  const seen: string[] = [];
  const to = (name: string): Log => ({
    ...quietLog,
    info: (message) => seen.push(`${name}: ${message}`),
    debugEnabled: name === "second",
  });
  const log = switchableLog(to("first"));
  log.info("a");
  assert.equal(log.debugEnabled, false);
  log.replace(to("second"));
  log.info("b");
  assert.equal(log.debugEnabled, true);
  assert.deepEqual(seen, ["first: a", "second: b"]);
});
