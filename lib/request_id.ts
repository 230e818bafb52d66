/**
 * @module
 * `X-Request-Id`: one identifier per request, shared by the client, the backend and the access
 * log, so a complaint ("request abc failed") can be found on every hop.
 *
 * A client's id is kept when it is well formed: 1 to 128 characters out of letters, digits and
 * `-` `_` `.` `:` `+` `/` `=` (UUIDs, ULIDs, hex and base64 ids, `trace:span` pairs). Anything
 * else, including an empty value or two `X-Request-Id` headers (which read as one value joined
 * with `, `), is replaced by a fresh `crypto.randomUUID()`: the id is written into log lines and
 * other systems' headers, so it must not carry spaces, quotes, commas or control characters, nor
 * be long enough to bloat every line it appears in.
 */

/** The header name, lower case as `Headers` returns it. */
export const REQUEST_ID_HEADER = "x-request-id";

/** Longest client-supplied id that is kept. */
export const MAX_REQUEST_ID_LENGTH = 128;

const WELL_FORMED = /^[A-Za-z0-9\-_.:+/=]{1,128}$/;

/** Whether `value` is an id the balancer keeps as sent (see the module comment). */
export function isWellFormedRequestId(value: string): boolean {
  return WELL_FORMED.test(value);
}

/**
 * The id of the request with these headers: the client's `X-Request-Id` when well formed,
 * otherwise a new random UUID.
 */
export function requestIdOf(headers: Headers): string {
  return requestIdFor(headers.get(REQUEST_ID_HEADER));
}

/** {@linkcode requestIdOf} from the `X-Request-Id` value the client sent (null: none). */
export function requestIdFor(sent: string | null): string {
  return sent !== null && isWellFormedRequestId(sent) ? sent : crypto.randomUUID();
}
