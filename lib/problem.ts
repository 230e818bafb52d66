/**
 * @module
 * The shape every configuration check reports in, so that the file validator, the route checks
 * and `--check` print problems the same way, and the small helpers every check uses.
 */

import { childPath } from "./jsonc.ts";

/** One thing wrong with a configuration, at a JSON path such as `backends[1].url`. */
export interface Problem {
  /** Where: `port`, `backends[1].url`; empty for the file as a whole. */
  path: string;
  /** What, naming the value: `"ftp://x" is not an absolute http(s) URL`. */
  message: string;
  /** 1-based line of the value in the file, when known. */
  line?: number;
  /** 1-based column (UTF-16 code units) of the value in the file, when known. */
  column?: number;
  /** A warning does not stop start-up or a reload (a service no route uses). @default false */
  warning?: boolean;
}

/** Short, one-line rendering of any JSON value for messages. */
export function show(value: unknown): string {
  if (Array.isArray(value)) return "a list";
  if (value !== null && typeof value === "object") return "an object";
  const text = JSON.stringify(value);
  if (text === undefined) return String(value);
  return text.length > 80 ? `${text.slice(0, 76)}..."` : text;
}

/** A JSON object (not null, not a list). */
export function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Reports keys of `object` not in `allowed`, suggesting the closest allowed key. */
export function checkKeys(
  object: Record<string, unknown>,
  allowed: readonly string[],
  path: string,
  problems: Problem[],
): void {
  for (const key of Object.keys(object)) {
    if (allowed.includes(key)) continue;
    const guess = closestKey(key, allowed);
    const hint = guess ? ` (did you mean ${JSON.stringify(guess)}?)` : "";
    problems.push({ path: childPath(path, key), message: `unknown key${hint}` });
  }
}

/** The candidate a typo most likely meant: same letters ignoring case, `-` and `_`, or 2 edits. */
export function closestKey(key: string, candidates: readonly string[]): string | undefined {
  const squash = (s: string) => s.toLowerCase().replace(/[-_]/g, "");
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of candidates) {
    const d = squash(key) === squash(candidate) ? 0 : editDistance(key, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j] + 1,
        current[j - 1] + 1,
        previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length];
}
