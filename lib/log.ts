/**
 * @module
 * The process log. Lines keep the original Go tool's shape (`2024/12/21 12:00:00 message`, local
 * time as Go's `log` package prints it) with the level added after the time:
 * `2024/12/21 12:00:00 INFO Configured server: http://localhost:8081`.
 *
 * Lines are written straight to a sink (standard error by default), as text or JSON: no logging
 * library, because loading one (LogTape was used before) costs every process and worker a few MiB
 * resident for nothing these two formats need (docs/performance.md, "Where the resident memory
 * is"). Modules receive a {@linkcode Log}; tests pass {@linkcode quietLog}. Disabled levels are
 * no-op functions, so a debug line on the request path costs one call, and callers building an
 * expensive message check {@linkcode Log.debugEnabled} first.
 */

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

/** One line before it is rendered. */
export interface LogEntry {
  level: LogLevel;
  /** Epoch milliseconds. */
  timestamp: number;
  message: string;
}

/** Renders one entry as a JSON line: `{"time":ISO,"level":"info","message":"..."}`. */
export function formatJsonLine(entry: LogEntry): string {
  return JSON.stringify({
    time: new Date(entry.timestamp).toISOString(),
    level: entry.level,
    message: entry.message,
  });
}

/** Renders one entry as a text line: time, level, message. */
export function formatLine(entry: LogEntry): string {
  return `${goTimestamp(entry.timestamp)} ${entry.level.toUpperCase()} ${entry.message}`;
}

/**
 * A log writing lines (text or JSON) at `level` and above to `write` (standard error by default,
 * like Go's log). A sink that throws (standard error closed) loses the line, never the caller.
 */
export function createLog(
  level: LogLevel,
  write: (line: string) => void = (line) => console.error(line),
  format: LogFormat = "text",
): Log {
  const render = format === "json" ? formatJsonLine : formatLine;
  const writer = (at: LogLevel) =>
    RANK[at] < RANK[level] ? noop : (message: string) => {
      try {
        write(render({ level: at, timestamp: Date.now(), message }));
      } catch {
        // Nowhere left to report it.
      }
    };
  return {
    debug: writer("debug"),
    info: writer("info"),
    warn: writer("warn"),
    error: writer("error"),
    debugEnabled: RANK.debug >= RANK[level],
  };
}
