/**
 * @module
 * Test helpers for Prometheus text (exposition format 0.0.4): a strict parser, and `promtool
 * check metrics` as an independent second opinion when promtool is installed (Debian package
 * `prometheus`).
 *
 * The parser is stricter than Prometheus on purpose: it rejects anything the registry should
 * never write (blank lines, stray comments, trailing commas, samples before their HELP/TYPE,
 * interleaved families, unknown escapes).
 */

import assert from "node:assert/strict";

/** One sample line: metric name, labels, value. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A metric family: its HELP, TYPE and samples, in the order written. */
export interface ParsedFamily {
  name: string;
  type: string;
  help: string;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const FLOAT = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

function parseNumber(text: string, where: string): number {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  if (!FLOAT.test(text)) throw new Error(`${where}: bad number "${text}"`);
  return Number(text);
}

/** Undoes the escapes `allowed` lists (\\ and \n always; \" in label values); others fail. */
function unescape(text: string, allowQuote: boolean, where: string): string {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\n") throw new Error(`${where}: raw newline`);
    if (c !== "\\") {
      out += c;
      continue;
    }
    const next = text[++i];
    if (next === "\\") out += "\\";
    else if (next === "n") out += "\n";
    else if (next === '"' && allowQuote) out += '"';
    else throw new Error(`${where}: bad escape "\\${next ?? ""}"`);
  }
  return out;
}

/** Parses `{a="x",b="y"}` starting at `text[0] === "{"`; returns labels and the rest. */
function parseLabels(text: string, where: string): [Record<string, string>, string] {
  const labels: Record<string, string> = {};
  let i = 1;
  if (text[i] === "}") return [labels, text.slice(2)];
  for (;;) {
    const eq = text.indexOf("=", i);
    if (eq < 0) throw new Error(`${where}: label without "="`);
    const name = text.slice(i, eq);
    if (!LABEL_NAME.test(name) || name.startsWith("__")) {
      throw new Error(`${where}: bad label name "${name}"`);
    }
    if (name in labels) throw new Error(`${where}: duplicate label "${name}"`);
    if (text[eq + 1] !== '"') throw new Error(`${where}: label value not quoted`);
    let j = eq + 2;
    let raw = "";
    while (j < text.length && text[j] !== '"') {
      if (text[j] === "\\") raw += text[j++];
      raw += text[j++];
    }
    if (j >= text.length) throw new Error(`${where}: unterminated label value`);
    labels[name] = unescape(raw, true, where);
    j++;
    if (text[j] === "}") return [labels, text.slice(j + 1)];
    if (text[j] !== ",") throw new Error(`${where}: expected "," or "}" after label`);
    i = j + 1;
    if (text[i] === "}") throw new Error(`${where}: trailing comma in labels`);
  }
}

function parseSample(line: string, where: string): Sample {
  const nameEnd = line.search(/[{ ]/);
  if (nameEnd <= 0) throw new Error(`${where}: no metric name`);
  const name = line.slice(0, nameEnd);
  if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name "${name}"`);
  let rest = line.slice(nameEnd);
  let labels: Record<string, string> = {};
  if (rest[0] === "{") [labels, rest] = parseLabels(rest, where);
  if (rest[0] !== " ") throw new Error(`${where}: expected one space before the value`);
  const parts = rest.slice(1).split(" ");
  if (parts.length > 2 || parts.some((p) => p === "")) {
    throw new Error(`${where}: expected "value [timestamp]", got "${rest}"`);
  }
  if (parts.length === 2 && !/^-?\d+$/.test(parts[1])) {
    throw new Error(`${where}: bad timestamp "${parts[1]}"`);
  }
  return { name, labels, value: parseNumber(parts[0], where) };
}

/** Which family a sample name belongs to, given the family's type. */
function belongsTo(sample: string, family: ParsedFamily): boolean {
  if (sample === family.name) return family.type !== "histogram";
  if (family.type !== "histogram") return false;
  return ["_bucket", "_sum", "_count"].some((s) => sample === family.name + s);
}

/**
 * Parses and checks a whole exposition (histograms cumulative, counters not negative, no
 * duplicate series); throws at the first problem. Returns the families by name.
 */
export function parseExposition(text: string): Map<string, ParsedFamily> {
  assert.ok(text.endsWith("\n"), "exposition must end with a newline");
  const families = new Map<string, ParsedFamily>();
  const seenSeries = new Set<string>();
  let current: ParsedFamily | undefined;
  let declaring: { name: string; help?: string; type?: string } | undefined;
  text.slice(0, -1).split("\n").forEach((line, index) => {
    const where = `line ${index + 1} "${line}"`;
    if (line === "") throw new Error(`${where}: blank line`);
    const meta = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
    if (line.startsWith("#")) {
      if (!meta) throw new Error(`${where}: unexpected comment`);
      const [, keyword, name, rest] = meta;
      if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name`);
      if (families.has(name)) throw new Error(`${where}: family ${name} declared twice`);
      if (declaring?.name !== name) {
        if (declaring) throw new Error(`${where}: ${declaring.name} lacks HELP or TYPE`);
        declaring = { name };
      }
      if (keyword === "HELP") {
        if (declaring.help !== undefined) throw new Error(`${where}: second HELP`);
        if (declaring.type !== undefined) throw new Error(`${where}: HELP after TYPE`);
        declaring.help = unescape(rest, false, where);
      } else {
        if (declaring.type !== undefined) throw new Error(`${where}: second TYPE`);
        if (!TYPES.has(rest)) throw new Error(`${where}: unknown type "${rest}"`);
        declaring.type = rest;
      }
      if (declaring.help !== undefined && declaring.type !== undefined) {
        current = { name, type: declaring.type, help: declaring.help, samples: [] };
        families.set(name, current);
        declaring = undefined;
      }
      return;
    }
    if (declaring) throw new Error(`${where}: sample inside ${declaring.name}'s HELP/TYPE`);
    const sample = parseSample(line, where);
    if (!current || !belongsTo(sample.name, current)) {
      throw new Error(`${where}: sample without HELP and TYPE before it (or interleaved)`);
    }
    const series = `${sample.name}${JSON.stringify(Object.entries(sample.labels).sort())}`;
    if (seenSeries.has(series)) throw new Error(`${where}: duplicate series`);
    seenSeries.add(series);
    current.samples.push(sample);
  });
  if (declaring) throw new Error(`${declaring.name}: HELP or TYPE missing at end`);
  for (const family of families.values()) {
    if (family.type === "histogram") checkHistogram(family);
    if (family.type === "counter") {
      for (const s of family.samples) assert.ok(s.value >= 0, `${s.name} counter is negative`);
    }
  }
  return families;
}

/** Buckets cumulative and monotonic, `+Inf` present and equal to `_count`, `_sum` present. */
function checkHistogram(family: ParsedFamily): void {
  const groups = new Map<string, Sample[]>();
  for (const s of family.samples) {
    if (s.name === `${family.name}_bucket` && !("le" in s.labels)) {
      throw new Error(`${family.name}: bucket without le`);
    }
    const { le: _le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    groups.set(key, [...(groups.get(key) ?? []), s]);
  }
  for (const [key, samples] of groups) {
    const where = `${family.name}${key}`;
    const buckets = samples.filter((s) => s.name.endsWith("_bucket"));
    const sum = samples.filter((s) => s.name.endsWith("_sum"));
    const count = samples.filter((s) => s.name.endsWith("_count"));
    assert.equal(sum.length, 1, `${where}: one _sum`);
    assert.equal(count.length, 1, `${where}: one _count`);
    assert.ok(buckets.length >= 1, `${where}: has buckets`);
    let lastLe = -Infinity;
    let lastCount = 0;
    for (const b of buckets) {
      const le = parseNumber(b.labels.le, where);
      assert.ok(le > lastLe, `${where}: le ${b.labels.le} not increasing`);
      assert.ok(b.value >= lastCount, `${where}: bucket le=${b.labels.le} not cumulative`);
      lastLe = le;
      lastCount = b.value;
    }
    assert.equal(buckets.at(-1)!.labels.le, "+Inf", `${where}: last bucket is +Inf`);
    assert.equal(buckets.at(-1)!.value, count[0].value, `${where}: +Inf equals _count`);
  }
}

/** The value of the sample `name{labels}` (labels exactly, in any order); fails when absent. */
export function sampleValue(
  families: Map<string, ParsedFamily>,
  name: string,
  labels: Record<string, string> = {},
): number {
  const family = families.get(name.replace(/_(bucket|sum|count)$/, "")) ?? families.get(name);
  assert.ok(family, `family for ${name}`);
  const want = JSON.stringify(Object.entries(labels).sort());
  const found = family.samples.find((s) =>
    s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want
  );
  assert.ok(found, `${name}${want} present`);
  return found.value;
}

/** The promtool command when it runs here, else undefined. */
export function findPromtool(): string | undefined {
  try {
    const out = new Deno.Command("promtool", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).outputSync();
    return out.success ? "promtool" : undefined;
  } catch {
    return undefined;
  }
}

/** Why promtool checks are skipped, printed by tests that ignore themselves without it. */
export const PROMTOOL_MISSING =
  "promtool check skipped: promtool not found (apt-get install prometheus)";

/**
 * Runs `promtool check metrics` on `text`; returns its exit code and everything it printed
 * (empty when the exposition has neither errors nor lint warnings).
 */
export async function promtoolCheck(
  promtool: string,
  text: string,
): Promise<{ code: number; report: string }> {
  const child = new Deno.Command(promtool, {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code, report: decode(stdout) + decode(stderr) };
}
