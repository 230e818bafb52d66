/**
 * @module
 * Calls back when a file's content changes, however it changes in production: written in
 * place, replaced by an editor's rename, or swapped under a symlink. A Kubernetes ConfigMap or
 * Secret volume is the last kind: `dir/lb.jsonc -> ..data/lb.jsonc`, `dir/..data ->
 * ..2026_12_07_10_00_00.123`, and an update renames a new `..data` link over the old one, so no
 * event ever names `lb.jsonc`.
 *
 * Directories are watched, never files (a rename-over silences a watch on the old inode): the
 * file's own directory, the directory of every symlink on the way to the real file, and the real
 * file's directory. That set is derived again whenever the path leads somewhere else; a watched
 * directory that is replaced (removed and made again, or renamed away) is watched again at its
 * new inode, and one that is missing is waited for from its nearest existing ancestor. Any event
 * in them re-stats the files (where each path resolves to, inode, size, times); only a changed
 * stat (re)starts the debounce, and after `debounceMs` of quiet the content (SHA-256) is compared
 * with what was last loaded: what the watch last reported, or what the files held at the last
 * `markLoaded()` (a SIGHUP's reload reads them too). `onChange` runs only if it differs. Unrelated
 * files in the same directories cost one stat per event, never a callback, and cannot postpone one.
 */

import { nodeCrypto } from "./node_builtins.ts";
import { dirname, resolve } from "node:path";
import { assertRegularFile } from "./file_failure.ts";
import type { Log } from "./log.ts";

/** File events come in bursts (2-3 per write, more for editors): the quiet time waited for. */
export const RELOAD_DEBOUNCE_MS = 200;

/** Symlinks followed at most on the way to the real file (Linux's own limit). */
const MAX_SYMLINK_HOPS = 40;

/** Options of {@linkcode watchFiles}. */
export interface FileWatchOptions {
  /**
   * Quiet time after the last change before `onChange` runs. One save gives 2-3 events, and a
   * certificate and its key are usually replaced one after the other. @default 200
   */
  debounceMs?: number;
  /** Told when a directory cannot be watched or `onChange` throws. @default none */
  log?: Log;
}

/** A running watch; `close()` stops it and leaves no watcher or timer behind. */
export interface FileWatcher {
  /**
   * The files are being read now (by a reload the watch did not start): their content now is
   * what later content is compared with. Call it before reading them: a change made after it is
   * always reported, and one made before it (already read) is not reported again.
   */
  markLoaded(): void;
  close(): void;
}

/**
 * Calls `onChange` (debounced) when the content of `path` changes, including through a
 * Kubernetes ConfigMap `..data` swap. The config file's watcher in main.ts.
 */
export function watchFile(path: string, onChange: () => void, log: Log): FileWatcher {
  return watchFiles([path], onChange, { log });
}

/**
 * Calls `onChange` (debounced, once per burst) when the content of any of `paths` changes; a
 * file that appears or disappears counts as a change. See the module comment for how.
 */
export function watchFiles(
  paths: readonly string[],
  onChange: () => void,
  options: FileWatchOptions = {},
): FileWatcher {
  const absolute = paths.map((path) => resolve(path));
  const debounceMs = options.debounceMs ?? RELOAD_DEBOUNCE_MS;
  /** Watched directories, with the identity (device, inode) each had when its watch began. */
  const watchers = new Map<string, { watcher: Deno.FsWatcher; identity: string }>();
  /** Whether a wanted directory is missing (its ancestor is watched until it reappears). */
  let waitingForDirectory = false;
  // Each unwatchable directory is reported once, not at every change of where the paths lead.
  const refused = new Set<string>();
  let stats = absolute.map(statOf);
  let contents = absolute.map(contentOf);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let closed = false;

  function watchDirectories(): void {
    const wanted = new Map<string, string>();
    waitingForDirectory = false;
    for (const dir of new Set(absolute.flatMap(directoriesOf))) {
      const found = nearestDirectory(dir);
      if (found === undefined) continue;
      if (found.dir !== dir) waitingForDirectory = true;
      wanted.set(found.dir, found.identity);
    }
    for (const [dir, entry] of watchers) {
      if (wanted.get(dir) === entry.identity) continue;
      watchers.delete(dir);
      entry.watcher.close();
    }
    for (const [dir, identity] of wanted) {
      if (watchers.has(dir) || refused.has(dir)) continue;
      let watcher: Deno.FsWatcher;
      try {
        watcher = Deno.watchFs(dir, { recursive: false });
      } catch (error) {
        refused.add(dir);
        options.log?.warn(
          `Not watching ${dir} for changes (${(error as Error).message}); SIGHUP still reloads`,
        );
        continue;
      }
      watchers.set(dir, { watcher, identity });
      (async () => {
        for await (const _event of watcher) onEvent();
      })().catch(() => {}).finally(() => {
        // Ended without close() (its directory went away): look again at what to watch.
        if (watchers.get(dir)?.watcher !== watcher) return;
        watchers.delete(dir);
        onEvent(true);
      });
    }
  }

  function onEvent(lostWatch = false): void {
    if (closed) return;
    // A missing directory is waited for from above: any event there may be its return.
    if (lostWatch || waitingForDirectory) watchDirectories();
    const next = absolute.map(statOf);
    if (next.every((stat, i) => stat === stats[i])) return;
    stats = next;
    // The path may lead elsewhere now: watch the new target's directory before its next write.
    watchDirectories();
    clearTimeout(timer);
    timer = setTimeout(compare, debounceMs);
  }

  function compare(): void {
    timer = undefined;
    if (closed) return;
    stats = absolute.map(statOf);
    const next = absolute.map(contentOf);
    const changed = next.some((content, i) => content !== contents[i]);
    contents = next;
    if (!changed) return;
    try {
      onChange();
    } catch (error) {
      // A throw from a timer callback would end the process.
      options.log?.error(`File change handler failed: ${(error as Error)?.message ?? error}`);
    }
  }

  watchDirectories();
  return {
    markLoaded() {
      if (closed) return;
      // Stat first: a write between the two shows as a changed stat, compared again later.
      stats = absolute.map(statOf);
      contents = absolute.map(contentOf);
    },
    close() {
      closed = true;
      clearTimeout(timer);
      for (const { watcher } of watchers.values()) watcher.close();
      watchers.clear();
    },
  };
}

/**
 * The directories whose entries decide what `path` reads: its own, that of each symlink on the
 * way, and the real file's; each by its real path (a watch on a directory symlink would stay on
 * the directory it named when the watch began).
 */
export function directoriesOf(path: string): string[] {
  const dirs = new Set<string>();
  let current = resolve(path);
  for (let hop = 0; hop < MAX_SYMLINK_HOPS; hop++) {
    dirs.add(dirname(current));
    let target: string;
    try {
      target = Deno.readLinkSync(current);
    } catch {
      break; // not a symlink, missing, or not ours to read: the chain ends here
    }
    current = resolve(dirname(current), target);
  }
  try {
    dirs.add(dirname(Deno.realPathSync(path)));
  } catch {
    // Missing or unreadable: the directories seen so far are where it would reappear.
  }
  return [...new Set([...dirs].map(realDirectory))];
}

/**
 * `dir`, or its nearest existing ancestor when it is missing, with its identity (device and
 * inode: a directory removed and made again, or renamed away, is another one).
 */
function nearestDirectory(dir: string): { dir: string; identity: string } | undefined {
  for (let current = dir, hop = 0; hop < 256; hop++) {
    try {
      const info = Deno.statSync(current);
      if (info.isDirectory) return { dir: current, identity: `${info.dev} ${info.ino}` };
    } catch (error) {
      // Not ours to read (no permission): watching it will fail and say so.
      if (!(error instanceof Deno.errors.NotFound)) return { dir: current, identity: "unread" };
      // Missing: its parent is where it would reappear.
    }
    const parent = dirname(current);
    if (parent === current) return undefined;
    current = parent;
  }
  return undefined;
}

function realDirectory(dir: string): string {
  try {
    return Deno.realPathSync(dir);
  } catch {
    return dir;
  }
}

/** Cheap identity of what `path` reads now; changes on any write, rename-over or swap. */
function statOf(path: string): string {
  try {
    const real = Deno.realPathSync(path);
    const info = Deno.statSync(real);
    return [real, info.dev, info.ino, info.size, info.mtime?.getTime(), info.ctime?.getTime()]
      .join(" ");
  } catch (error) {
    return `unreadable: ${(error as Error).name}`;
  }
}

/** What `path` holds now, as a hash (or why it cannot be read). */
function contentOf(path: string): string {
  try {
    assertRegularFile(path);
    return nodeCrypto().createHash("sha256").update(Deno.readFileSync(path)).digest("hex");
  } catch (error) {
    return `unreadable: ${(error as Error).name}`;
  }
}
