/**
 * @module
 * The process log. Lines keep the original Go tool's shape (`2024/12/21 12:00:00 message`, local
 * time as Go's `log` package prints it) with the level added after the time:
 * `2024/12/21 12:00:00 INFO Configured server: http://localhost:8081`.
 *
 * Output goes through LogTape so that sinks and formats can grow (JSON, files) without touching
 * callers. Modules receive a {@linkcode Log}; tests pass {@linkcode quietLog}. Disabled levels are
 * no-op functions, so a debug line on the request path costs one call, and callers building an
 * expensive message check {@linkcode Log.debugEnabled} first.
 */

import { configureSync, getLogger, type LogRecord } from "@logtape/logtape";
import type { LogLevel } from "./config.ts";

/** A leveled logger taking finished message strings. */
export interface Log {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  /** True when debug lines are written; guard costly message building with it. */
  readonly debugEnabled: boolean;
}

const noop = (_message: string): void => {};

/** A {@linkcode Log} whose target can be replaced (a reload changing the level or format). */
export interface SwitchableLog extends Log {
  /** Writes through `next` from now on. */
  replace(next: Log): void;
}

/** Wraps `initial` so that modules holding the log follow a later {@linkcode SwitchableLog.replace}. */
export function switchableLog(initial: Log): SwitchableLog {
  let current = initial;
  return {
    debug: (m) => current.debug(m),
    info: (m) => current.info(m),
    warn: (m) => current.warn(m),
    error: (m) => current.error(m),
    get debugEnabled() {
      return current.debugEnabled;
    },
    replace(next) {
      current = next;
    },
  };
}

/** A logger that writes nothing, for tests and embedding. */
export const quietLog: Log = {
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  debugEnabled: false,
};

const LOGTAPE_LEVEL = { debug: "debug", info: "info", warn: "warning", error: "error" } as const;
const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

function pad(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/** Formats a timestamp as Go's log package does: `2006/01/02 15:04:05`, local time. */
export function goTimestamp(epochMs: number): string {
  const d = new Date(epochMs);
  return `${d.getFullYear()}/${pad(d.getMonth() + 1)}/${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Process log formats: Go-style text lines, or one JSON object per line. */
export type LogFormat = "text" | "json";

/** Renders one record as a JSON line: `{"time":ISO,"level":"info","message":"..."}`. */
export function formatJsonLine(record: LogRecord): string {
  const level = record.level === "warning" ? "warn" : record.level;
  return JSON.stringify({
    time: new Date(record.timestamp).toISOString(),
    level,
    message: record.message.map(String).join(""),
  });
}

/** Renders one record as a text line: time, level, message. */
export function formatLine(record: LogRecord): string {
  const level = record.level === "warning" ? "WARN" : record.level.toUpperCase();
  return `${goTimestamp(record.timestamp)} ${level} ${record.message.map(String).join("")}`;
}

/**
 * Configures LogTape to write lines (text or JSON) at `level` and above to `write` (standard
 * error by default, like Go's log) and returns the logger the modules share.
 */
export function createLog(
  level: LogLevel,
  write: (line: string) => void = (line) => console.error(line),
  format: LogFormat = "text",
): Log {
  const render = format === "json" ? formatJsonLine : formatLine;
  configureSync({
    reset: true,
    sinks: { text: (record: LogRecord) => write(render(record)) },
    loggers: [
      { category: ["load-balancer"], lowestLevel: LOGTAPE_LEVEL[level], sinks: ["text"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["text"] },
    ],
  });
  const logger = getLogger(["load-balancer"]);
  const enabled = (l: LogLevel) => RANK[l] >= RANK[level];
  // Tagged templates keep LogTape from reading `{...}` in URLs as placeholders.
  return {
    debug: enabled("debug") ? (m) => logger.debug`${m}` : noop,
    info: enabled("info") ? (m) => logger.info`${m}` : noop,
    warn: enabled("warn") ? (m) => logger.warn`${m}` : noop,
    error: enabled("error") ? (m) => logger.error`${m}` : noop,
    debugEnabled: enabled("debug"),
  };
}
