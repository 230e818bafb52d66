/**
 * @module
 * A `Response` over bytes the caller owns, without the copy `new Response(bytes)` makes (the Fetch
 * standard's "extract a body" copies a BufferSource, since its owner could change it later). The
 * proxy's response bodies are fresh arrays no one else holds, so the copy is pure cost: for a
 * 64 KiB body it is an allocation of the same size and its garbage, on every response.
 *
 * The Response is built without a body and is given Deno's own body record holding the bytes,
 * made by the class Deno makes it with: to Deno.serve, `.body`, `.bytes()` and `clone()` it is
 * the body `new Response(bytes)` would have. If Deno's internals are not where this module
 * looks, {@linkcode responseOver} builds the Response the ordinary way
 * (tests/response_body_test.ts notices).
 */

import { responseSymbol } from "./response_fields.ts";

const INNER = responseSymbol("response");

/** Deno's InnerBody class, taken from a Response's body record, and the shape it must have. */
const InnerBody = (() => {
  if (INNER === undefined) return undefined;
  try {
    const probe = new Response(new Uint8Array(1), { status: 200 });
    const body = (probe as unknown as Record<symbol, { body?: object }>)[INNER]?.body;
    if (body === undefined || body === null) return undefined;
    const record = body as { streamOrStatic?: { body?: unknown; consumed?: unknown } };
    if (!(record.streamOrStatic?.body instanceof Uint8Array)) return undefined;
    if (!("source" in body) || !("length" in body)) return undefined;
    return Object.getPrototypeOf(body).constructor as new (
      streamOrStatic: { body: Uint8Array; consumed: boolean },
    ) => { source: unknown; length: number | null };
  } catch {
    return undefined;
  }
})();

/** Statuses whose responses have no body (Fetch's "null body status"). */
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

/**
 * `new Response(bytes, { status, statusText })`, holding `bytes` themselves: the caller gives
 * them up (they must not change afterwards).
 */
export function responseOver(
  bytes: Uint8Array<ArrayBuffer>,
  status: number,
  statusText: string,
): Response {
  if (InnerBody === undefined || NULL_BODY_STATUSES.has(status)) {
    // The constructor refuses a body for these, as it should.
    return new Response(bytes, { status, statusText });
  }
  const response = new Response(null, { status, statusText });
  const body = new InnerBody({ body: bytes, consumed: false });
  body.source = bytes;
  body.length = bytes.byteLength;
  (response as unknown as Record<symbol, { body: unknown }>)[INNER!].body = body;
  return response;
}

/** Whether {@linkcode responseOver} adopts bytes (false: Deno's internals moved, it copies). */
export const ADOPTS_BODIES = InnerBody !== undefined;
