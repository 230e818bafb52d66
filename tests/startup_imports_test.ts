/**
 * @module
 * What the balancer loads at start (docs/performance.md, "Where the resident memory is"): every
 * Node built-in and npm package costs each process and worker resident memory, so the modules
 * main.ts imports statically may only use the two Node built-ins start-up itself needs; features
 * that are off load nothing (lib/node_builtins.ts, dynamic imports for ACME and bcrypt).
 */

import assert from "node:assert/strict";

/** Loaded at start on purpose: flag parsing (node:util) and file watching's paths (node:path). */
const ALLOWED_AT_START = new Set(["node:util", "node:path"]);

interface InfoDependency {
  code?: { specifier: string };
  isDynamic?: boolean;
}

interface InfoModule {
  specifier: string;
  dependencies?: InfoDependency[];
}

/** The specifiers main.ts reaches through static, non-type imports (`deno info --json`). */
async function staticImports(entry: string): Promise<Set<string>> {
  const info = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(info.code, 0, new TextDecoder().decode(info.stderr));
  const modules = new Map<string, InfoModule>();
  for (const m of JSON.parse(new TextDecoder().decode(info.stdout)).modules as InfoModule[]) {
    modules.set(m.specifier, m);
  }
  const root = [...modules.keys()].find((s) => s.endsWith(`/${entry}`));
  assert.ok(root, `${entry} is in the graph`);
  const seen = new Set<string>([root]);
  const queue = [root];
  while (queue.length > 0 && seen.size <= modules.size) {
    for (const dep of modules.get(queue.pop()!)?.dependencies ?? []) {
      const target = dep.code?.specifier;
      if (target === undefined || dep.isDynamic || seen.has(target)) continue;
      seen.add(target);
      queue.push(target);
    }
  }
  return seen;
}

Deno.test("main.ts loads no npm package and only node:util and node:path at start", async () => {
  const reached = await staticImports("main.ts");
  assert.ok(reached.size > 20, `the walk followed imports (${reached.size} modules)`);
  const external = [...reached].filter((s) => !s.startsWith("file:"));
  const unexpected = external.filter((s) => !ALLOWED_AT_START.has(s));
  assert.deepEqual(unexpected, [], "loaded at start although only some configurations need them");
});

Deno.test("the walk sees a dynamic import as dynamic and a static one as static", async () => {
  const reached = await staticImports("main.ts");
  assert.ok(reached.has("node:util"), "node:util (config.ts, static) is reached");
  assert.ok(
    ![...reached].some((s) => s.endsWith("/lib/acme_setup.ts")),
    "lib/acme_setup.ts (imported by main.ts on demand) is not",
  );
});
