/**
 * @module
 * Header rules for a proxy hop: hop-by-hop stripping (both directions), the `X-Forwarded-*`
 * set, and strict validation of the client's Host.
 */

/**
 * Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
 * de-facto `Proxy-Connection` and `Keep-Alive`. `Transfer-Encoding` is framing for one hop;
 * `Upgrade` is stripped because fetch cannot switch protocols: WebSocket upgrades take their own
 * path (lib/websocket.ts), which makes its own handshake.
 */
export const HOP_BY_HOP = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
] as const;

/**
 * Removes hop-by-hop headers and every header the `Connection` header names (RFC 9110 §7.6.1),
 * in place. Run it on both the request and the response, before the proxy adds its own headers,
 * so that `Connection: X-Forwarded-For` cannot remove what the proxy sets.
 */
export function stripHopByHop(headers: Headers): void {
  const connection = headers.get("connection");
  if (connection !== null) {
    for (const name of connection.split(",")) {
      const trimmed = name.trim();
      // A token that is not a valid header name would make delete() throw; it names nothing.
      if (trimmed !== "" && HEADER_NAME.test(trimmed)) headers.delete(trimmed);
    }
  }
  for (const name of HOP_BY_HOP) headers.delete(name);
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HOP_BY_HOP_NAMES: ReadonlySet<string> = new Set(HOP_BY_HOP);

/**
 * A copy of `source` without hop-by-hop headers and those its `Connection` names: the same
 * result as `new Headers(source)` then {@linkcode stripHopByHop}, built with `forEach`. Deno
 * 2.9.6 copies and iterates a Headers object in quadratic time (denoland/deno#36063: 72 µs for
 * 24 headers against 3 µs with forEach), and this runs twice per request.
 */
export function copyWithoutHopByHop(source: Headers): Headers {
  const connection = source.get("connection");
  let named: Set<string> | undefined;
  if (connection !== null) {
    named = new Set();
    for (const name of connection.split(",")) {
      const trimmed = name.trim();
      if (trimmed !== "" && HEADER_NAME.test(trimmed)) named.add(trimmed.toLowerCase());
    }
  }
  const copy = new Headers();
  // forEach yields lower-case names, and each Set-Cookie on its own.
  source.forEach((value, name) => {
    if (!HOP_BY_HOP_NAMES.has(name) && !named?.has(name)) copy.append(name, value);
  });
  return copy;
}

// reg-name (letters, digits, - . _ ~), IPv4, or a bracketed IPv6 literal, then an optional port.
const HOST_PATTERN = /^(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$/;

/**
 * Whether `value` is a valid `host[:port]` (RFC 9110 §7.2) with no path, userinfo, or
 * out-of-range port. Anything else in Host would change how `req.url` parses.
 */
export function isValidHost(value: string): boolean {
  // Nearly every request names the same host as the one before it; validating costs ~1 µs.
  if (value === lastValidHost) return true;
  const match = HOST_PATTERN.exec(value);
  if (match === null) return false;
  if (match[1] !== undefined && Number(match[1]) > 65535) return false;
  // The pattern admits `[...]`, `1.2.3.999` and `a.123`, which URL parsers refuse (bad IPv6,
  // out-of-range IPv4): `new URL(req.url)` would throw on them anywhere downstream.
  if (!URL.canParse(`http://${value}/`)) return false;
  lastValidHost = value;
  return true;
}

let lastValidHost: string | undefined;

/** What the proxy tells the backend about the original request. */
export interface ForwardedFacts {
  /** The peer address on the client socket (never a client-supplied value). */
  clientIp: string;
  /** `http` or `https`: the scheme the client used to reach the balancer. */
  proto: string;
  /** The client's Host, when it sent one. */
  host: string | null;
  /**
   * Whether the peer is a trusted proxy (`trustedProxies`): its `X-Forwarded-For` and
   * `Forwarded` are extended and its `X-Forwarded-Proto/-Host` kept. @default false
   */
  trustedPeer?: boolean;
  /** Also send an RFC 7239 `Forwarded` header (`forwarded`). @default false */
  forwarded?: boolean;
}

/**
 * Builds the upstream request headers from the client's: hop-by-hop removed, then the client's
 * Host kept (as HAProxy and Go's ReverseProxy do) and `X-Forwarded-For/-Proto/-Host` set from
 * what the balancer saw.
 *
 * From anyone but a trusted proxy, client-sent `X-Forwarded-*` are replaced and `Forwarded` is
 * replaced (or dropped when `forwarded` is off): they are as easy to forge as any header. From
 * a trusted proxy, which already wrote what it saw, `X-Forwarded-For` becomes
 * `its value, peer`, its `X-Forwarded-Proto/-Host` are kept (set when absent), and with
 * `forwarded` its `Forwarded` gets this hop's element appended (RFC 7239 §7.1).
 */
export function upstreamRequestHeaders(incoming: Headers, facts: ForwardedFacts): Headers {
  const headers = copyWithoutHopByHop(incoming);
  const trusted = facts.trustedPeer === true;
  const priorFor = trusted ? headers.get("x-forwarded-for") : null;
  headers.set("x-forwarded-for", priorFor ? `${priorFor}, ${facts.clientIp}` : facts.clientIp);
  if (!trusted || !headers.get("x-forwarded-proto")) headers.set("x-forwarded-proto", facts.proto);
  if (facts.host !== null) {
    headers.set("host", facts.host);
    if (!trusted || !headers.get("x-forwarded-host")) headers.set("x-forwarded-host", facts.host);
  } else {
    headers.delete("host");
    if (!trusted) headers.delete("x-forwarded-host");
  }
  // Without `forwarded`, a trusted proxy's Forwarded is dropped too: passed on without this
  // hop's element, its last entry would claim to be the backend's direct peer.
  const priorForwarded = trusted ? headers.get("forwarded") : null;
  headers.delete("forwarded");
  if (facts.forwarded) {
    const element = forwardedElement(facts);
    headers.set("forwarded", priorForwarded ? `${priorForwarded}, ${element}` : element);
  }
  // Without this, fetch asks for gzip/br on the client's behalf and then decodes the answer:
  // wasted work both ends for a client that never asked for compression.
  if (!headers.has("accept-encoding")) headers.set("accept-encoding", "identity");
  return headers;
}

/**
 * This hop's RFC 7239 `Forwarded` element: `for=192.0.2.7;proto=http;host=example.com`. An
 * IPv6 address is bracketed and quoted (`for="[2001:db8::1]"`, §6), and any value that is not a
 * token (a host with a port) is quoted (§4).
 */
export function forwardedElement(facts: ForwardedFacts): string {
  const node = facts.clientIp.includes(":") ? `[${facts.clientIp}]` : facts.clientIp;
  let element = `for=${forwardedValue(node)};proto=${forwardedValue(facts.proto)}`;
  if (facts.host !== null) element += `;host=${forwardedValue(facts.host)}`;
  return element;
}

/** A token as is, anything else as a quoted-string (RFC 9110 §5.6.4). */
function forwardedValue(value: string): string {
  // A header name is exactly a token (RFC 9110 §5.1, §5.6.2).
  return HEADER_NAME.test(value) ? value : `"${value.replace(/[\\"]/g, "\\$&")}"`;
}

/** Content codings that Deno's fetch decodes by itself (verified on 2.9.6: deflate, zstd are not). */
const FETCH_DECODED_CODINGS = new Set(["gzip", "br"]);

/**
 * Whether fetch has already decoded this response body. fetch decodes gzip and br unless the
 * request asked for `identity` or carried a Range header, but leaves `Content-Encoding` and the
 * compressed `Content-Length` in place; relaying those with the decoded bytes corrupts the
 * response. Only for fetch's responses: a transport that knows what it did says so instead
 * (`decoded` in lib/upstream.ts's `AttemptResult`; node:http never decodes).
 */
export function fetchDecodedBody(requestHeaders: Headers, responseHeaders: Headers): boolean {
  const coding = responseHeaders.get("content-encoding");
  if (coding === null) return false;
  if (!FETCH_DECODED_CODINGS.has(coding.trim().toLowerCase())) return false;
  if (requestHeaders.get("accept-encoding")?.trim().toLowerCase() === "identity") return false;
  return !requestHeaders.has("range");
}

/**
 * Builds the client response headers from the backend's: hop-by-hop removed, and when fetch
 * decoded the body, `Content-Encoding`/`Content-Length` dropped so they describe the bytes
 * actually sent, and a strong ETag weakened (it named the encoded representation).
 */
export function downstreamResponseHeaders(upstream: Headers, decoded: boolean): Headers {
  const headers = copyWithoutHopByHop(upstream);
  if (decoded) {
    headers.delete("content-encoding");
    headers.delete("content-length");
    const etag = headers.get("etag");
    if (etag !== null && !etag.startsWith("W/")) headers.set("etag", `W/${etag}`);
  }
  return headers;
}
