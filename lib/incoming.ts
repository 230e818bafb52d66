/**
 * @module
 * What the balancer reads of a client's request, whichever front end received it: the part of a
 * Fetch `Request` the request path uses. Deno.serve hands a `Request`, which has all of it; the
 * native front end hands a lighter object of its own (lib/frontend_native.ts), so that a request
 * costs no Fetch `Request` (its URL parsing and internal records) there.
 */
export interface IncomingRequest {
  /** The method as the client sent it. */
  readonly method: string;
  /** Absolute: the listener's scheme, the Host, then the request target as sent. */
  readonly url: string;
  readonly headers: Headers;
  /** The request body; null without one, and for GET and HEAD (as a Fetch `Request`). */
  readonly body: ReadableStream<Uint8Array> | null;
  /** Aborted when the client goes away before its response has been delivered. */
  readonly signal: AbortSignal;
  /**
   * The header fields in the order received, names as sent: the native front end's parse, read
   * instead of `headers` where it will do, so that its `Headers` need not be built. Deno.serve's
   * Requests have none.
   */
  readonly fields?: readonly (readonly [string, string])[];
  /**
   * The protocol version, `HTTP/1.0` or `HTTP/1.1`, where the front end knows it (the native
   * one); Deno.serve does not say which version a request came in.
   */
  readonly protocol?: string;
}
