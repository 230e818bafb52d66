/** Unit tests of lib/file_failure.ts, with real file errors from a temporary directory. */

import assert from "node:assert/strict";
import { fileFailure } from "../lib/file_failure.ts";

function errorOf(action: () => unknown): unknown {
  try {
    action();
  } catch (error) {
    return error;
  }
  assert.fail("expected an error");
}

Deno.test("fileFailure() says a missing file in a few words", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const error = errorOf(() => Deno.readTextFileSync(`${dir}/missing.jsonc`));
    assert.equal(fileFailure(error), "no such file");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fileFailure() drops the os error and the path from other system errors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const error = errorOf(() => Deno.readTextFileSync(dir));
    assert.match((error as Error).message, /os error/, "the raw message has what is dropped");
    assert.equal(fileFailure(error), "Is a directory");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fileFailure() names the flag when Deno's permissions refuse", () => {
  const refused = new Deno.errors.NotCapable('Requires read access to "x"');
  assert.equal(fileFailure(refused), "not allowed to read it (run with --allow-read)");
  assert.equal(
    fileFailure(refused, "not allowed (run with --allow-write)"),
    "not allowed (run with --allow-write)",
  );
  assert.equal(
    fileFailure(new Deno.errors.PermissionDenied("Permission denied")),
    "permission denied",
  );
});
