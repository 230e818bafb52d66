/**
 * @module
 * Reads the request target safely. `req.url` is attacker-controlled: Deno builds it from the
 * Host header (or an absolute-form target) plus the raw path, so a Host like `evil/admin?`
 * shifts where the path starts and `Host: x:99999` makes `new URL(req.url)` throw. The upstream
 * URL is therefore never parsed out of `req.url`; only the path and query are sliced from it,
 * after the authority has been validated.
 */

import type { IncomingRequest } from "./incoming.ts";
import { BadRequestError, HttpError } from "./errors.ts";
import { isValidHost } from "./headers.ts";

/** The parts of the request target the proxy forwards. */
export interface Target {
  /** Path and query exactly as the client sent them, always starting with `/`. */
  pathAndQuery: string;
  /** The validated authority the client addressed (Host, or `:authority` on HTTP/2). */
  host: string | null;
}

/**
 * Extracts the path/query and authority of `req` (`hostHeader`: its Host header, when the caller
 * has read it already), or throws a 4xx {@linkcode HttpError}:
 * 400 for an invalid Host, or an absolute-form target naming another host than Host;
 * 405 for CONNECT (this is a reverse proxy, not a tunnel).
 */
export function parseTarget(
  req: IncomingRequest,
  hostHeader: string | null = req.headers.get("host"),
): Target {
  if (req.method === "CONNECT") {
    throw new HttpError(405, "CONNECT is not supported", { allow: "GET, HEAD, POST, PUT, DELETE" });
  }
  if (hostHeader !== null && !isValidHost(hostHeader)) {
    throw new BadRequestError("invalid Host header");
  }
  const url = req.url;
  const authorityStart = url.indexOf("://") + 3;
  let pathStart = authorityStart;
  while (pathStart < url.length) {
    const c = url.charCodeAt(pathStart);
    if (c === 0x2f /* / */ || c === 0x3f /* ? */ || c === 0x23 /* # */) break;
    pathStart++;
  }
  const authority = url.slice(authorityStart, pathStart);
  if (hostHeader === null) {
    // HTTP/2 carries the authority in :authority, which Deno puts into req.url.
    if (!isValidHost(authority)) throw new BadRequestError("invalid authority");
  } else if (authority.toLowerCase() !== hostHeader.toLowerCase()) {
    // An absolute-form target (`GET http://other/ HTTP/1.1`) naming another host than Host:
    // refuse rather than guess which one the client meant.
    throw new BadRequestError("request target does not match Host");
  }
  let rest = url.slice(pathStart);
  const hash = rest.indexOf("#");
  if (hash !== -1) rest = rest.slice(0, hash);
  if (rest === "" || rest.charCodeAt(0) === 0x3f) rest = `/${rest}`;
  return { pathAndQuery: rest, host: hostHeader ?? authority };
}
