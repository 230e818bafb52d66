/**
 * @module
 * Checks the docs against the code, so they cannot drift: docs/architecture.md lists every module
 * with its layer and the imports obey the layers; `--help` and docs/configuration.md name the same
 * flags; every relative link in README.md and docs/*.md reaches a file (and heading); README.md
 * stays short and keeps the test command CI runs.
 */

import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
const read = (path: string) => Deno.readTextFile(new URL(path, ROOT));

// ---------------------------------------------------------------------------------------------
// docs/architecture.md against lib/

/** The one module whose types any layer may import (the settings' vocabulary). */
const SHARED_TYPES = "lib/config.ts";

/** An import of `to` by `from`; `typeOnly` when it is erased at run time. */
export interface Import {
  from: string;
  to: string;
  typeOnly: boolean;
}

/** Module path -> layer rank (0 = top), from the "Modules by layer" table, in its order. */
export function parseLayers(markdown: string): Map<string, { layer: string; rank: number }> {
  const section = markdown.split(/^## /m).find((part) => part.startsWith("Modules by layer"));
  if (section === undefined) throw new Error('docs/architecture.md has no "Modules by layer"');
  const ranks: string[] = [];
  const modules = new Map<string, { layer: string; rank: number }>();
  for (const line of section.split("\n")) {
    const row = /^\|\s*([a-z][a-z ]*?)\s*\|\s*`([^`]+\.ts)`\s*\|/.exec(line);
    if (row === null) continue;
    const [, layer, module] = row;
    if (!ranks.includes(layer)) ranks.push(layer);
    modules.set(module, { layer, rank: ranks.indexOf(layer) });
  }
  return modules;
}

/** Relative `.ts` imports and re-exports of one source file, static and dynamic. */
export function parseImports(from: string, source: string): Import[] {
  const out: Import[] = [];
  const resolve = (spec: string) => new URL(spec, new URL(from, "file:///")).pathname.slice(1);
  const statement = /^(import|export)\s+(type\s+)?([^;]*?)\s*from\s*"(\.{1,2}\/[^"]+\.ts)"/gm;
  for (const [, , typeKeyword, clause, spec] of source.matchAll(statement)) {
    const names = /^\{([^}]*)\}$/.exec(clause.trim())?.[1].split(",").map((n) => n.trim())
      .filter((n) => n !== "");
    const allTypes = names !== undefined && names.length > 0 &&
      names.every((n) => n.startsWith("type "));
    out.push({ from, to: resolve(spec), typeOnly: typeKeyword !== undefined || allTypes });
  }
  for (const [, spec] of source.matchAll(/\bimport\(\s*"(\.{1,2}\/[^"]+\.ts)"\s*\)/g)) {
    out.push({ from, to: resolve(spec), typeOnly: false });
  }
  return out;
}

async function sourceModules(): Promise<string[]> {
  const found = ["main.ts", "backend.ts"];
  async function walk(dir: string) {
    for await (const entry of Deno.readDir(new URL(dir, ROOT))) {
      if (entry.isDirectory) await walk(`${dir}${entry.name}/`);
      else if (entry.name.endsWith(".ts")) found.push(`${dir}${entry.name}`);
    }
  }
  await walk("lib/");
  return found.sort();
}

/** Imports that the layer and cycle rules judge (types from {@linkcode SHARED_TYPES} aside). */
async function judgedImports(modules: string[]): Promise<Import[]> {
  const all: Import[] = [];
  for (const module of modules) all.push(...parseImports(module, await read(module)));
  return all.filter((i) => !(i.typeOnly && i.to === SHARED_TYPES));
}

/** Every import cycle, each as its module path (first module repeated at the end). */
export function findCycles(imports: Import[]): string[][] {
  const edges = new Map<string, Set<string>>();
  for (const { from, to } of imports) {
    if (!edges.has(from)) edges.set(from, new Set());
    edges.get(from)!.add(to);
  }
  const cycles: string[][] = [];
  const seen = new Set<string>();
  const done = new Set<string>();
  const stack: string[] = [];
  function visit(node: string) {
    seen.add(node);
    stack.push(node);
    for (const next of edges.get(node) ?? []) {
      if (stack.includes(next)) cycles.push([...stack.slice(stack.indexOf(next)), next]);
      else if (!seen.has(next)) visit(next);
    }
    stack.pop();
    done.add(node);
  }
  for (const node of [...edges.keys()].sort()) if (!done.has(node)) visit(node);
  return cycles;
}

Deno.test("docs/architecture.md lists every module of lib/ with a layer, and no other", async () => {
  const listed = parseLayers(await read("docs/architecture.md"));
  const actual = await sourceModules();
  const missing = actual.filter((m) => !listed.has(m));
  const stale = [...listed.keys()].filter((m) => !actual.includes(m));
  assert.deepEqual(
    { "modules the doc does not list": missing, "modules the doc lists that do not exist": stale },
    { "modules the doc does not list": [], "modules the doc lists that do not exist": [] },
  );
});

Deno.test("imports never point to a higher layer than docs/architecture.md gives", async () => {
  const listed = parseLayers(await read("docs/architecture.md"));
  const upward = (await judgedImports(await sourceModules()))
    .filter(({ from, to }) => listed.has(from) && listed.has(to))
    .filter(({ from, to }) => listed.get(to)!.rank < listed.get(from)!.rank)
    .map(({ from, to, typeOnly }) =>
      `${from} (${listed.get(from)!.layer}) imports ${typeOnly ? "types of " : ""}${to} ` +
      `(${listed.get(to)!.layer})`
    );
  assert.deepEqual(upward, []);
});

Deno.test("imports form no cycle", async () => {
  const cycles = findCycles(await judgedImports(await sourceModules()));
  assert.deepEqual(cycles.map((c) => c.join(" -> ")), []);
});

Deno.test("parseImports() tells type-only imports from value imports", () => {
  const source = [
    'import type { A } from "./a.ts";',
    'import { type B, c } from "../b.ts";',
    'import {\n  type D,\n  type E,\n} from "./d.ts";',
    'export { f } from "./f.ts";',
    'const g = await import("./g.ts");',
    'import { h } from "npm:h";',
  ].join("\n");
  assert.deepEqual(parseImports("lib/x.ts", source), [
    { from: "lib/x.ts", to: "lib/a.ts", typeOnly: true },
    { from: "lib/x.ts", to: "b.ts", typeOnly: false },
    { from: "lib/x.ts", to: "lib/d.ts", typeOnly: true },
    { from: "lib/x.ts", to: "lib/f.ts", typeOnly: false },
    { from: "lib/x.ts", to: "lib/g.ts", typeOnly: false },
  ]);
});

Deno.test("findCycles() finds a cycle through a type import and none in a chain", () => {
  const edge = (from: string, to: string) => ({ from, to, typeOnly: false });
  assert.deepEqual(findCycles([edge("a", "b"), edge("b", "c")]), []);
  assert.deepEqual(findCycles([edge("a", "b"), { from: "b", to: "a", typeOnly: true }]), [
    ["a", "b", "a"],
  ]);
});

// ---------------------------------------------------------------------------------------------
// --help against docs/configuration.md

async function helpFlags(): Promise<string[]> {
  const { code, stdout } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "main.ts", "--help"],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  assert.equal(code, 0);
  const text = new TextDecoder().decode(stdout);
  return [...text.matchAll(/^ {2}(--[a-z0-9-]+)/gm)].map((m) => m[1]);
}

Deno.test("every flag --help prints is in docs/configuration.md, and every flag there is in --help", async () => {
  const help = new Set(await helpFlags());
  assert.ok(help.size > 10, `--help printed only ${help.size} flags`);
  const reference = await read("docs/configuration.md");
  const documented = new Set(
    [...reference.matchAll(/(?<![\w-])--[a-z][a-z0-9-]*/g)].map((m) => m[0]),
  );
  assert.deepEqual({
    "in --help only": [...help].filter((f) => !documented.has(f)).sort(),
    "in docs/configuration.md only": [...documented].filter((f) => !help.has(f)).sort(),
  }, { "in --help only": [], "in docs/configuration.md only": [] });
});

// ---------------------------------------------------------------------------------------------
// Links and the README's size

/** Markdown without its fenced blocks. */
function withoutFences(markdown: string): string {
  return markdown.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, "");
}

/** GitHub's anchors for a document's headings (duplicates get -1, -2, ...). */
export function anchors(markdown: string): Set<string> {
  const out = new Set<string>();
  for (const [, heading] of withoutFences(markdown).matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const base = heading.replace(/`/g, "").toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, "")
      .replace(/\s/g, "-");
    let slug = base;
    for (let n = 1; out.has(slug); n++) slug = `${base}-${n}`;
    out.add(slug);
  }
  return out;
}

async function markdownFiles(): Promise<string[]> {
  const files = ["README.md"];
  for await (const entry of Deno.readDir(new URL("docs/", ROOT))) {
    if (entry.name.endsWith(".md")) files.push(`docs/${entry.name}`);
  }
  return files.sort();
}

Deno.test("every relative link in README.md and docs/*.md reaches a file and heading", async () => {
  const broken: string[] = [];
  for (const file of await markdownFiles()) {
    const text = await read(file);
    for (
      const [, target] of withoutFences(text).replace(/`[^`\n]*`/g, "").matchAll(
        /\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g,
      )
    ) {
      if (/^[a-z]+:/i.test(target)) continue;
      const [path, anchor] = target.split("#", 2);
      const url = path === "" ? new URL(file, ROOT) : new URL(path, new URL(file, ROOT));
      let linked: string;
      try {
        linked = (await Deno.stat(url)).isFile ? await Deno.readTextFile(url) : "";
      } catch {
        broken.push(`${file}: ${target} (no such file)`);
        continue;
      }
      if (anchor !== undefined && url.pathname.endsWith(".md")) {
        if (!anchors(linked).has(anchor)) broken.push(`${file}: ${target} (no such heading)`);
      }
    }
  }
  assert.deepEqual(broken, []);
});

Deno.test("anchors() slugs headings as GitHub does", () => {
  const text =
    "# A `b` c\n\n## Every core: `--workers`\n\n## X\n\n## X\n\n```\n# not a heading\n```";
  assert.deepEqual([...anchors(text)], ["a-b-c", "every-core---workers", "x", "x-1"]);
});

Deno.test("README.md is at most 250 lines and 20 KB, and gives the test command CI runs", async () => {
  const text = await read("README.md");
  const lines = text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
  assert.ok(lines <= 250, `README.md has ${lines} lines (at most 250)`);
  const bytes = new TextEncoder().encode(text).length;
  assert.ok(bytes <= 20_000, `README.md has ${bytes} bytes (at most 20,000)`);
  const fenced = [...text.matchAll(/^```[^\n]*\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
  assert.ok(
    fenced.some((block) => /^(npx -y deno@[\d.]+ |deno )task test\b/m.test(block)),
    "README.md has no fenced block running `deno task test`",
  );
});
