/**
 * @module
 * lib/file_watch.ts on real files in a temp directory: an in-place write, an editor's
 * rename-over, a Kubernetes ConfigMap `..data` swap and a symlink into another directory each
 * fire once; unrelated files and same-content rewrites never do; close() leaves nothing open.
 * Last, main.ts as a process on a ConfigMap-layout config reloads its backends on a swap.
 */
import assert from "node:assert/strict";
import { directoriesOf, RELOAD_DEBOUNCE_MS, watchFiles } from "../lib/file_watch.ts";
import { captureLog, delay, makeFifo, startTestBackend, waitFor } from "./helpers.ts";
import { installed, run } from "./pki.ts";
import { spawnBalancer } from "./process.ts";
import type { BackendView } from "../lib/admin.ts";

/** Longest wait for an expected callback (a loaded 2-core machine may be slow). */
const WAIT_MS = 10_000;
/** After an expected callback: many debounce periods, so a second callback would have come. */
const SETTLE_MS = 5 * RELOAD_DEBOUNCE_MS;

const HAS_MKFIFO = await installed("mkfifo");
if (!HAS_MKFIFO) {
  console.log(
    "file_watch_test.ts: mkfifo is not installed, so no FIFO can be made: the test of a " +
      "watched FIFO is skipped (apt-get install -y coreutils)",
  );
}

/** A temp directory, removed on dispose. */
async function tempDir() {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "lb-file-watch-" }));
  return { dir, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

/**
 * A watch on `paths` that counts its callbacks; closed on dispose. It debounces as main.ts
 * does: a shorter quiet time could split one slow write in two on a loaded machine.
 */
function countingWatch(paths: string[]) {
  const log = captureLog();
  const calls = { count: 0 };
  const watcher = watchFiles(paths, () => calls.count++, { log });
  return {
    calls,
    log,
    markLoaded: () => watcher.markLoaded(),
    close: () => watcher.close(),
    [Symbol.dispose]: () => watcher.close(),
  };
}

/** Waits (bounded) for the `n`th callback, then long enough that an extra one would show. */
async function assertFiresOnce(calls: { count: number }, n: number, what: string) {
  assert.ok(await waitFor(() => calls.count >= n, WAIT_MS), `${what}: no callback`);
  await delay(SETTLE_MS);
  assert.equal(calls.count, n, `${what}: exactly one callback`);
}

/**
 * A ConfigMap volume as the kubelet writes it: `dir/lb.jsonc -> ..data/lb.jsonc`,
 * `dir/..data -> ..<timestamp>`; `update` writes a new timestamped directory, renames a new
 * `..data` link over the old one, then deletes the old directory.
 */
async function configMap(dir: string, text: string) {
  let generation = 0;
  let current = "";
  const writeGeneration = async (content: string) => {
    const name = `..2026_12_07_10_00_00.${++generation}`;
    await Deno.mkdir(`${dir}/${name}`);
    await Deno.writeTextFile(`${dir}/${name}/lb.jsonc`, content);
    return name;
  };
  current = await writeGeneration(text);
  await Deno.symlink(current, `${dir}/..data`);
  await Deno.symlink("..data/lb.jsonc", `${dir}/lb.jsonc`);
  return {
    path: `${dir}/lb.jsonc`,
    async update(content: string) {
      const next = await writeGeneration(content);
      await Deno.symlink(next, `${dir}/..data_tmp`);
      await Deno.rename(`${dir}/..data_tmp`, `${dir}/..data`);
      await Deno.remove(`${dir}/${current}`, { recursive: true });
      current = next;
    },
  };
}

Deno.test("watchFiles() fires once for an in-place write", async () => {
  await using tmp = await tempDir();
  const path = `${tmp.dir}/lb.jsonc`;
  await Deno.writeTextFile(path, '{"backends": ["http://127.0.0.1:1"]}');
  using watch = countingWatch([path]);
  await Deno.writeTextFile(path, '{"backends": ["http://127.0.0.1:2"]}');
  await assertFiresOnce(watch.calls, 1, "in-place write");
  // Append-style writes in pieces are one burst: still one callback.
  using file = await Deno.open(path, { write: true, truncate: true });
  for (const piece of ['{"backends": ', '["http://127.0.0.1:3"]', "}"]) {
    await file.write(new TextEncoder().encode(piece));
  }
  await assertFiresOnce(watch.calls, 2, "write in pieces");
});

Deno.test("watchFiles() fires once when an editor renames a new file over the old one", async () => {
  await using tmp = await tempDir();
  const path = `${tmp.dir}/lb.jsonc`;
  await Deno.writeTextFile(path, "one");
  using watch = countingWatch([path]);
  for (const [i, text] of ["two", "three"].entries()) {
    await Deno.writeTextFile(`${tmp.dir}/.lb.jsonc.swp`, text);
    await Deno.rename(`${tmp.dir}/.lb.jsonc.swp`, path);
    // A watch on the replaced file's inode would go quiet after the first rename.
    await assertFiresOnce(watch.calls, i + 1, `rename-over ${i + 1}`);
  }
});

Deno.test("watchFiles() fires once per Kubernetes ConfigMap ..data swap", async () => {
  await using tmp = await tempDir();
  const cm = await configMap(tmp.dir, "one");
  using watch = countingWatch([cm.path]);
  await cm.update("two");
  await assertFiresOnce(watch.calls, 1, "first swap");
  assert.equal(await Deno.readTextFile(cm.path), "two");
  await cm.update("three");
  await assertFiresOnce(watch.calls, 2, "second swap");
  // A swap to the same content (another key of the ConfigMap changed) is no change of this file.
  await cm.update("three");
  await cm.update("four");
  await assertFiresOnce(watch.calls, 3, "same-content swap, then a real one");
  assert.deepEqual(watch.log.lines, []);
});

Deno.test("watchFiles() follows a symlink into another directory, also after it is repointed", async () => {
  await using tmp = await tempDir();
  await Deno.mkdir(`${tmp.dir}/config`);
  await Deno.mkdir(`${tmp.dir}/real-1`);
  await Deno.mkdir(`${tmp.dir}/real-2`);
  await Deno.writeTextFile(`${tmp.dir}/real-1/lb.jsonc`, "one");
  await Deno.writeTextFile(`${tmp.dir}/real-2/lb.jsonc`, "two");
  const path = `${tmp.dir}/config/lb.jsonc`;
  await Deno.symlink(`${tmp.dir}/real-1/lb.jsonc`, path);
  assert.deepEqual(directoriesOf(path), [`${tmp.dir}/config`, `${tmp.dir}/real-1`]);
  using watch = countingWatch([path]);

  // Nothing happens in config/: only a watch on the target's directory sees this.
  await Deno.writeTextFile(`${tmp.dir}/real-1/lb.jsonc`, "one, edited");
  await assertFiresOnce(watch.calls, 1, "write to the target");

  await Deno.symlink(`${tmp.dir}/real-2/lb.jsonc`, `${tmp.dir}/config/.link.tmp`);
  await Deno.rename(`${tmp.dir}/config/.link.tmp`, path);
  await assertFiresOnce(watch.calls, 2, "link repointed");

  await Deno.writeTextFile(`${tmp.dir}/real-2/lb.jsonc`, "two, edited");
  await assertFiresOnce(watch.calls, 3, "write to the new target");
  await Deno.writeTextFile(`${tmp.dir}/real-1/lb.jsonc`, "the old target is not the file now");
  await Deno.writeTextFile(`${tmp.dir}/real-2/lb.jsonc`, "two, edited again");
  await assertFiresOnce(watch.calls, 4, "old target, then the new one");
});

Deno.test("watchFiles() does not fire for other files or a rewrite with the same content", async () => {
  await using tmp = await tempDir();
  const path = `${tmp.dir}/lb.jsonc`;
  const sentinelPath = `${tmp.dir}/sentinel`;
  await Deno.writeTextFile(path, "config");
  await Deno.writeTextFile(sentinelPath, "0");
  using watch = countingWatch([path]);
  using sentinel = countingWatch([sentinelPath]);

  await Deno.writeTextFile(`${tmp.dir}/other.jsonc`, "unrelated");
  await Deno.writeTextFile(`${tmp.dir}/other.jsonc`, "unrelated, edited");
  await Deno.rename(`${tmp.dir}/other.jsonc`, `${tmp.dir}/other-2.jsonc`);
  await Deno.remove(`${tmp.dir}/other-2.jsonc`);
  await Deno.mkdir(`${tmp.dir}/..2026_12_07_10_00_00.1`);
  await Deno.symlink("..2026_12_07_10_00_00.1", `${tmp.dir}/..data`);
  await Deno.writeTextFile(path, "config"); // touched, same bytes
  await Deno.writeTextFile(`${tmp.dir}/.lb.jsonc.swp`, "config");
  await Deno.rename(`${tmp.dir}/.lb.jsonc.swp`, path); // replaced, same bytes
  await Deno.writeTextFile(sentinelPath, "1");

  // Events arrive in order: once the sentinel fired, every earlier event has been seen.
  assert.ok(await waitFor(() => sentinel.calls.count === 1, WAIT_MS), "sentinel fired");
  await delay(SETTLE_MS);
  assert.equal(watch.calls.count, 0);
});

Deno.test("watchFiles() compares with what markLoaded() saw: a file put back fires, a loaded edit does not", async () => {
  await using tmp = await tempDir();
  const path = `${tmp.dir}/lb.jsonc`;
  const sentinelPath = `${tmp.dir}/sentinel`;
  const replace = async (text: string) => {
    await Deno.writeTextFile(`${tmp.dir}/.lb.jsonc.tmp`, text);
    await Deno.rename(`${tmp.dir}/.lb.jsonc.tmp`, path);
  };
  await Deno.writeTextFile(path, "A");
  await Deno.writeTextFile(sentinelPath, "0");
  using watch = countingWatch([path]);
  using sentinel = countingWatch([sentinelPath]);

  // An edit read by a SIGHUP's reload, then the old file put back within the debounce: what
  // runs (B) differs from the file (A), though the watch never reported B.
  await replace("B");
  watch.markLoaded();
  await replace("A");
  await assertFiresOnce(watch.calls, 1, "file put back after a loaded edit");

  // An edit read by a SIGHUP's reload is not reported (loaded) again.
  await replace("C");
  watch.markLoaded();
  await Deno.writeTextFile(sentinelPath, "1");
  assert.ok(await waitFor(() => sentinel.calls.count === 1, WAIT_MS), "sentinel fired");
  await delay(SETTLE_MS);
  assert.equal(watch.calls.count, 1, "the loaded edit was not reported");
});

Deno.test("watchFiles() counts a file that disappears or appears as a change", async () => {
  await using tmp = await tempDir();
  const path = `${tmp.dir}/lb.jsonc`;
  using watch = countingWatch([path]);
  await Deno.writeTextFile(path, "created");
  await assertFiresOnce(watch.calls, 1, "created");
  await Deno.remove(path);
  await assertFiresOnce(watch.calls, 2, "removed");
});

for (const how of ["removed and made again", "renamed away"] as const) {
  Deno.test(`watchFiles() keeps watching when the file's directory is ${how}`, async () => {
    await using tmp = await tempDir();
    const dir = `${tmp.dir}/conf`;
    const file = `${dir}/lb.jsonc`;
    await Deno.mkdir(dir);
    await Deno.writeTextFile(file, "one");
    using watch = countingWatch([file]);
    if (how === "renamed away") await Deno.rename(dir, `${tmp.dir}/conf.old`);
    else await Deno.remove(dir, { recursive: true });
    // The directory is missing (the file with it: a change) until that is seen, then comes back.
    assert.ok(await waitFor(() => watch.calls.count >= 1, WAIT_MS), "the removal was seen");
    await Deno.mkdir(dir);
    await Deno.writeTextFile(file, "two");
    assert.ok(await waitFor(() => watch.calls.count >= 2, WAIT_MS), "the swap was seen");
    const seen = watch.calls.count;
    // Edits in the new directory are seen too, every one of them.
    for (const [i, text] of ["three", "four"].entries()) {
      await Deno.writeTextFile(file, text);
      await assertFiresOnce(watch.calls, seen + i + 1, `edit ${text} in the new directory`);
    }
    assert.deepEqual(watch.log.lines, [], "nothing to warn about");
  });
}

Deno.test("watchFiles() with several files fires once for a burst touching all of them", async () => {
  await using tmp = await tempDir();
  const [cert, key] = [`${tmp.dir}/tls.crt`, `${tmp.dir}/tls.key`];
  await Deno.writeTextFile(cert, "cert 1");
  await Deno.writeTextFile(key, "key 1");
  using watch = countingWatch([cert, key]);
  await Deno.writeTextFile(cert, "cert 2");
  await Deno.writeTextFile(key, "key 2");
  await assertFiresOnce(watch.calls, 1, "certificate and key");
  await Deno.writeTextFile(key, "key 3");
  await assertFiresOnce(watch.calls, 2, "key alone");
});

Deno.test("watchFiles() close() stops callbacks and leaves no watcher or timer", async () => {
  await using tmp = await tempDir();
  const path = `${tmp.dir}/lb.jsonc`;
  const sentinelPath = `${tmp.dir}/sentinel`;
  await Deno.writeTextFile(path, "one");
  await Deno.writeTextFile(sentinelPath, "0");
  using sentinel = countingWatch([sentinelPath]);
  const watch = countingWatch([path]);
  await Deno.writeTextFile(path, "two"); // a debounce timer may be pending at close()
  watch.close();
  watch.close(); // twice is harmless
  await Deno.writeTextFile(path, "three");
  await Deno.writeTextFile(sentinelPath, "1");
  assert.ok(await waitFor(() => sentinel.calls.count === 1, WAIT_MS), "sentinel fired");
  await delay(SETTLE_MS);
  assert.equal(watch.calls.count, 0);
  // The resource sanitizer checks that no watcher is left open.
});

Deno.test("watchFiles() waits for a missing directory from its parent, without a warning", async () => {
  await using tmp = await tempDir();
  const file = `${tmp.dir}/missing-dir/lb.jsonc`;
  using watch = countingWatch([file]);
  await delay(SETTLE_MS);
  await Deno.mkdir(`${tmp.dir}/missing-dir`);
  await Deno.writeTextFile(file, "here now");
  await assertFiresOnce(watch.calls, 1, "the file in the directory made later");
  await Deno.writeTextFile(file, "edited");
  await assertFiresOnce(watch.calls, 2, "an edit there");
  assert.deepEqual(watch.log.lines, []);
});

Deno.test("watchFiles() logs a throwing callback instead of ending the process", async () => {
  await using tmp = await tempDir();
  const path = `${tmp.dir}/lb.jsonc`;
  await Deno.writeTextFile(path, "one");
  const log = captureLog();
  let calls = 0;
  const watcher = watchFiles([path], () => {
    calls++;
    throw new Error("boom");
  }, { log });
  using _closing = { [Symbol.dispose]: () => watcher.close() };
  await Deno.writeTextFile(path, "two");
  assert.ok(await waitFor(() => log.lines.length > 0, WAIT_MS));
  assert.equal(calls, 1);
  assert.deepEqual(log.lines, ["ERROR File change handler failed: boom"]);
});

Deno.test({
  name: "watchFiles() never reads a FIFO (the read would block the thread): a process watching one",
  ignore: !HAS_MKFIFO,
  async fn() {
    await using tmp = await tempDir();
    const fifo = `${tmp.dir}/lb.jsonc`;
    await makeFifo(fifo);
    // In a child process, killed after WAIT_MS: a blocked read cannot be timed out in this one.
    const module = new URL("../lib/file_watch.ts", import.meta.url).href;
    const script = `import { watchFiles } from ${JSON.stringify(module)};\n` +
      `watchFiles([${JSON.stringify(fifo)}], () => {}).close();\nconsole.log("closed");`;
    const { code, stdout, stderr } = await run(Deno.execPath(), ["eval", script], "", WAIT_MS);
    assert.equal(stdout, "closed\n", stderr || "no answer: the watch blocked on the FIFO");
    assert.equal(code, 0);
  },
});

// ---------------------------------------------------------------------------------------------
// main.ts as a process

Deno.test("main.ts reloads a config mounted from a Kubernetes ConfigMap when ..data is swapped", async () => {
  await using tmp = await tempDir();
  await using a = await startTestBackend(() => new Response("A"));
  await using b = await startTestBackend(() => new Response("B"));
  const config = (backends: string[]) =>
    JSON.stringify({
      backends,
      port: 0,
      host: "127.0.0.1",
      admin: "127.0.0.1:0",
      healthInterval: "1m",
    });
  const cm = await configMap(tmp.dir, config([a.url]));
  await using lb = spawnBalancer(["--config", cm.path], {
    permissions: [`--allow-read=${tmp.dir}`],
  });
  await lb.port();
  const adminLine = await lb.waitForLine(/Admin listener started at 127\.0\.0\.1:\d+/, WAIT_MS);
  const adminPort = Number(/127\.0\.0\.1:(\d+)/.exec(adminLine)![1]);
  const backends = async () => {
    const response = await fetch(`http://127.0.0.1:${adminPort}/api/backends`);
    assert.equal(response.status, 200);
    return ((await response.json()).backends as BackendView[]).map((view) => view.url);
  };
  assert.deepEqual(await backends(), [a.url]);

  await cm.update(config([a.url, b.url]));
  await lb.waitForLine(/INFO Reloaded: 1 added, 0 removed, 0 reweighted/, WAIT_MS);
  assert.deepEqual(await backends(), [a.url, b.url]);

  await cm.update(config([b.url]));
  await lb.waitForLine(/INFO Reloaded: 0 added, 1 removed, 0 reweighted/, WAIT_MS);
  let urls: string[] = [];
  // A removed backend leaves once its in-flight requests are done (none here): bounded poll.
  for (let i = 0; i < 100; i++) {
    urls = await backends();
    if (urls.length === 1) break;
    await delay(50);
  }
  assert.deepEqual(urls, [b.url]);
});
