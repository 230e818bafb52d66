/** Unit tests of lib/file_failure.ts, with real file errors from a temporary directory. */

import assert from "node:assert/strict";
import { assertRegularFile, fileFailure, NotRegularFileError } from "../lib/file_failure.ts";
import { makeFifo } from "./helpers.ts";
import { installed } from "./pki.ts";

const HAS_MKFIFO = await installed("mkfifo");
if (!HAS_MKFIFO) {
  console.log(
    "file_failure_test.ts: mkfifo is not installed, so no FIFO can be made: the FIFO case of " +
      "assertRegularFile() is left out (apt-get install -y coreutils)",
  );
}

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

Deno.test("assertRegularFile() passes a file and a symlink to one; refuses a directory and a FIFO", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/lb.jsonc`, "{}");
    await Deno.symlink(`${dir}/lb.jsonc`, `${dir}/link.jsonc`);
    assertRegularFile(`${dir}/lb.jsonc`);
    assertRegularFile(`${dir}/link.jsonc`);
    const refused = [[dir, "not a regular file (a directory)"]];
    if (HAS_MKFIFO) {
      // Only stat is called: a FIFO is never opened, which would wait for a writer.
      await makeFifo(`${dir}/fifo`);
      await Deno.symlink(`${dir}/fifo`, `${dir}/fifo-link`);
      refused.push([`${dir}/fifo`, "not a regular file (a FIFO)"]);
      refused.push([`${dir}/fifo-link`, "not a regular file (a FIFO)"]);
    }
    for (const [path, message] of refused) {
      const error = errorOf(() => assertRegularFile(path));
      assert.ok(error instanceof NotRegularFileError, path);
      assert.equal(fileFailure(error), message, path);
    }
    assert.equal(fileFailure(errorOf(() => assertRegularFile(`${dir}/missing`))), "no such file");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
