/**
 * @module
 * Why a file could not be read or written, in a few words for a one-line message
 * (`lb.jsonc: cannot read the file: no such file`), never a stack trace.
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
