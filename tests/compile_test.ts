/**
 * @module
 * `deno task compile` builds standalone binaries. `deno compile` needs a `denort` runtime, which
 * it downloads on first use; where that download is impossible (no internet, as on the build
 * machines) and no DENORT_BIN names one, this test reports itself as skipped with the reason.
 */
import assert from "node:assert/strict";
import denoJson from "../deno.json" with { type: "json" };
import { PROGRAMS } from "../tools/compile_all.ts";
import { getText } from "./helpers.ts";

const ROOT = new URL("../", import.meta.url);

/** Runs the real compile task once at load time; its outcome decides whether the test runs. */
async function compileOnce(): Promise<{ ok: true } | { ok: false; reason: string }> {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["task", "compile"],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  if (code === 0) return { ok: true };
  const text = new TextDecoder().decode(stderr);
  const reason = /dns error|failed to lookup|download|denort/i.test(text)
    ? "no denort runtime available (download failed and DENORT_BIN is not set)"
    : `deno compile failed: ${text.split("\n").find((l) => l.trim()) ?? code}`;
  return { ok: false, reason };
}

const compiled = await compileOnce();
const skipReason = compiled.ok ? "" : compiled.reason;
if (!compiled.ok) console.log(`compile test skipped: ${skipReason}`);

Deno.test({
  name: `compiled load-balancer and backend run standalone${
    compiled.ok ? "" : ` (skipped: ${skipReason})`
  }`,
  ignore: !compiled.ok,
  async fn() {
    const backend = new Deno.Command(new URL("dist/backend", ROOT), {
      args: ["--port", "0"],
      stderr: "piped",
      stdout: "null",
    }).spawn();
    const backendLine = await firstLine(backend.stderr, /started at :(\d+)/);
    const backendPort = Number(/:(\d+)/.exec(backendLine)![1]);
    const lb = new Deno.Command(new URL("dist/load-balancer", ROOT), {
      args: [`-backends=http://127.0.0.1:${backendPort}`, "-port=0", "-host=127.0.0.1"],
      stderr: "piped",
      stdout: "null",
    }).spawn();
    try {
      const lbLine = await firstLine(lb.stderr, /Load balancer started at :(\d+)/);
      const port = Number(/:(\d+)$/.exec(lbLine)![1]);
      const { status, text } = await getText(`http://127.0.0.1:${port}/`);
      assert.equal(status, 200);
      assert.equal(text, `Backend server on port ${backendPort} is running\n`);
    } finally {
      lb.kill("SIGTERM");
      backend.kill("SIGTERM");
      await Promise.all([lb.status, backend.status]);
    }
    // The version comes from deno.json through main.ts's JSON import, embedded like any module.
    const version = await new Deno.Command(new URL("dist/load-balancer", ROOT), {
      args: ["--version"],
    }).output();
    assert.equal(new TextDecoder().decode(version.stdout), `load-balancer ${denoJson.version}\n`);
  },
});

Deno.test("deno task compile grants each binary the permissions and V8 flags compile:all does", () => {
  const commands = denoJson.tasks.compile.split(" && ").map((c) => c.split(" "));
  assert.equal(commands.length, PROGRAMS.length);
  for (const [i, program] of PROGRAMS.entries()) {
    const args = commands[i];
    assert.equal(args.at(-1), program.entry);
    assert.deepEqual(args.filter((a) => /^--(allow|deny)-|^-A$/.test(a)), program.permissions);
    const v8Flags = args.filter((a) => a.startsWith("--v8-flags="));
    assert.deepEqual(v8Flags.flatMap((a) => a.slice(11).split(",")), program.v8Flags);
    // Without it deno compile embeds every npm package in the lockfile (playwright-core: 13 MB).
    assert.ok(args.includes("--exclude-unused-npm"), `${program.name}: --exclude-unused-npm`);
  }
});

async function firstLine(stream: ReadableStream<Uint8Array>, pattern: RegExp): Promise<string> {
  let text = "";
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (let i = 0; i < 1000; i++) {
      const { done, value } = await reader.read();
      if (done) break;
      text += value;
      const line = text.split("\n").find((l) => pattern.test(l));
      if (line !== undefined) return line;
    }
    throw new Error(`no line matching ${pattern} in:\n${text}`);
  } finally {
    // Cancelling the reader cancels the pipe and the child's stderr behind it.
    await reader.cancel().catch(() => {});
  }
}
