/**
 * @module
 * Why a file could not be read or written, in a few words for a one-line message
 * (`lb.jsonc: cannot read the file: no such file`), never a stack trace; and the check that a
 * path is a regular file before a synchronous read.
 */

/** What to say when Deno's permissions refuse a read. */
const READ_NOT_ALLOWED = "not allowed to read it (run with --allow-read)";

/**
 * `no such file`, `notAllowed` when Deno's permissions refuse, `permission denied` when the
 * system does (no flag would help then), or the system's message without its `(os error N)`
 * and the call and path Deno appends (the caller names the path itself).
 */
export function fileFailure(error: unknown, notAllowed: string = READ_NOT_ALLOWED): string {
  if (error instanceof Deno.errors.NotFound) return "no such file";
  if (error instanceof Deno.errors.NotCapable) return notAllowed;
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  const message = (error as Error)?.message ?? String(error);
  // Deno's messages end with the call and path: "Is a directory (os error 21): readfile '/x'".
  return message.replace(/\s*\(os error \d+\)/, "").replace(/:\s*\w+ '.*'$/, "");
}

/** A path that is a FIFO, a device, a socket or a directory where a file's text is wanted. */
export class NotRegularFileError extends Error {
  constructor(kind: string) {
    super(`not a regular file (${kind})`);
    this.name = "NotRegularFileError";
  }
}

/**
 * Throws {@linkcode NotRegularFileError} unless `path` (symlinks followed) is a regular file.
 * Called before a synchronous read on the main thread: reading a FIFO waits for a writer, a
 * device may never end, and either would stop every request and signal.
 */
export function assertRegularFile(path: string): void {
  const info = Deno.statSync(path);
  if (info.isFile) return;
  const kind = info.isDirectory
    ? "a directory"
    : info.isFifo
    ? "a FIFO"
    : info.isSocket
    ? "a socket"
    : "a device";
  throw new NotRegularFileError(kind);
}
