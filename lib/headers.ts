/**
 * @module
 * Header rules for a proxy hop: hop-by-hop stripping (both directions), the `X-Forwarded-*`
 * set, and strict validation of the client's Host.
 */

import type { IncomingRequest } from "./incoming.ts";
import { isToken } from "./http_token.ts";

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

const HOP_BY_HOP_NAMES: ReadonlySet<string> = new Set(HOP_BY_HOP);

/** Header fields as name/value pairs, in order; a name may repeat (Set-Cookie). */
export type HeaderPairs = [string, string][];

/**
 * The lower-case names a `Connection` value lists (RFC 9110 §7.6.1) besides the fixed hop-by-hop
 * ones; undefined when it lists no other, as `keep-alive` does.
 */
function namedByConnection(connection: string | null): Set<string> | undefined {
  // What nearly every backend and browser sends names nothing more.
  if (connection === null || connection === "keep-alive") return undefined;
  let named: Set<string> | undefined;
  for (const token of connection.split(",")) {
    const name = token.trim().toLowerCase();
    // A token that is not a valid header name names nothing.
    if (name === "" || HOP_BY_HOP_NAMES.has(name) || !isToken(name)) continue;
    (named ??= new Set()).add(name);
  }
  return named;
}

/**
 * A copy of `source` without hop-by-hop headers and those its `Connection` names (RFC 9110
 * §7.6.1), so that `Connection: X-Forwarded-For` cannot remove what the proxy sets. Built with
 * `forEach`: Deno copies and iterates a Headers object in quadratic time (denoland/deno#36063).
 */
export function copyWithoutHopByHop(source: Headers): Headers {
  const copy = new Headers();
  appendEndToEnd(fieldsOf(source), copy, false, undefined, undefined);
  return copy;
}

/** `headers` as pairs in `forEach` order: lower-case names, each Set-Cookie on its own. */
function fieldsOf(headers: Headers): HeaderPairs {
  const pairs: HeaderPairs = [];
  headers.forEach((value, name) => pairs.push([name, value]));
  return pairs;
}

/**
 * Appends `fields` to `to` without hop-by-hop ones, those their `Connection` names, and
 * `except` (a lower-case name the caller sets itself). With `decoded` (fetch decoded the body),
 * `Content-Encoding` and `Content-Length` are dropped and a strong ETag is weakened, as
 * {@linkcode downstreamResponseHeaders} says. With `list` (the live list behind `to`, for fields
 * `to.append` would take unchanged), fields are pushed to it instead. Returns the
 * Content-Length passed on, or null.
 */
function appendEndToEnd(
  fields: HeaderPairs,
  to: Headers,
  decoded: boolean,
  except: string | undefined,
  list: HeaderPairs | undefined,
): string | null {
  let connection: string | null = null;
  for (let i = 0; i < fields.length; i++) {
    const name = fields[i][0];
    if (name.length === 10 && name.toLowerCase() === "connection") {
      connection = connection === null ? fields[i][1] : `${connection},${fields[i][1]}`;
    }
  }
  const named = namedByConnection(connection);
  let length: string | null = null;
  for (let i = 0; i < fields.length; i++) {
    const name = fields[i][0].toLowerCase();
    let value = fields[i][1];
    if (HOP_BY_HOP_NAMES.has(name) || named?.has(name) || name === except) continue;
    if (name === "content-length") {
      if (decoded) continue;
      length = value;
    } else if (decoded) {
      if (name === "content-encoding") continue;
      if (name === "etag" && !value.startsWith("W/")) value = `W/${value}`;
    }
    if (list === undefined) to.append(name, value);
    else list.push([name, value]);
  }
  return length;
}

/**
 * What the proxy reads from a client's request headers, gathered in one `forEach`
 * ({@linkcode readClientHeaders}): on Deno each `get()` on a served request's headers is
 * an op call and each `has()` lower-cases the whole list, while `forEach` reads it once.
 */
export class ClientHeaders {
  /**
   * The fields that may go upstream as they are: all but the hop-by-hop ones and those the proxy
   * writes itself (Host, X-Forwarded-*, Forwarded, X-Request-Id). Fields the `Connection`
   * header names are still among them: {@linkcode upstreamRequestHeaders} removes those.
   */
  readonly fields: HeaderPairs = [];
  host: string | null = null;
  connection: string | null = null;
  upgrade: string | null = null;
  transferEncoding: string | null = null;
  contentLength: string | null = null;
  requestId: string | null = null;
  forwardedFor: string | null = null;
  forwardedProto: string | null = null;
  forwardedHost: string | null = null;
  forwarded: string | null = null;
  /** Whether the client sent Accept-Encoding (it is among `fields`). */
  acceptEncoding = false;
}

/** Reads `headers` once into a {@linkcode ClientHeaders}. */
export function readClientHeaders(headers: Headers): ClientHeaders {
  const client = new ClientHeaders();
  headers.forEach(readClientField, client);
  return client;
}

/** {@linkcode readClientHeaders} of the request's fields as received when it has them. */
export function readClientRequest(req: IncomingRequest): ClientHeaders {
  const fields = req.fields;
  if (fields === undefined) return readClientHeaders(req.headers);
  const client = new ClientHeaders();
  const combined = combineFields(fields);
  for (let i = 0; i < combined.length; i++) {
    readClientField.call(client, combined[i][1], combined[i][0]);
  }
  return client;
}

/**
 * `fields` as `Headers` would give them: names in lower case, the values of a repeated name
 * joined with ", " (RFC 9110 §5.3) as Deno joins them (an empty value so far gives way to the
 * next), Set-Cookie never joined, but in the order received rather than sorted.
 */
function combineFields(fields: readonly (readonly [string, string])[]): [string, string][] {
  const out: [string, string][] = [];
  outer: for (let i = 0; i < fields.length; i++) {
    const name = fields[i][0].toLowerCase();
    const value = fields[i][1];
    if (name !== "set-cookie") {
      for (let j = 0; j < out.length; j++) {
        if (out[j][0] === name) {
          out[j][1] = out[j][1] === "" ? value : `${out[j][1]}, ${value}`;
          continue outer;
        }
      }
    }
    out.push([name, value]);
  }
  return out;
}

/** How {@linkcode readClientField} treats a request field; others go upstream untouched. */
const Read = {
  Keep: 0,
  Drop: 1,
  Host: 2,
  Connection: 3,
  Upgrade: 4,
  TransferEncoding: 5,
  ContentLength: 6,
  RequestId: 7,
  ForwardedFor: 8,
  ForwardedProto: 9,
  ForwardedHost: 10,
  Forwarded: 11,
  AcceptEncoding: 12,
} as const;
type Read = typeof Read[keyof typeof Read];

const REQUEST_FIELDS = new Map<string, Read>();
for (const name of HOP_BY_HOP_NAMES) REQUEST_FIELDS.set(name, Read.Drop);
for (
  const [name, read] of [
    ["host", Read.Host],
    ["connection", Read.Connection],
    ["upgrade", Read.Upgrade],
    ["transfer-encoding", Read.TransferEncoding],
    ["content-length", Read.ContentLength],
    ["x-request-id", Read.RequestId],
    ["x-forwarded-for", Read.ForwardedFor],
    ["x-forwarded-proto", Read.ForwardedProto],
    ["x-forwarded-host", Read.ForwardedHost],
    ["forwarded", Read.Forwarded],
    ["accept-encoding", Read.AcceptEncoding],
  ] as const
) REQUEST_FIELDS.set(name, read);

/** `forEach` callback of {@linkcode readClientHeaders} (one function for every request). */
function readClientField(this: ClientHeaders, value: string, name: string): void {
  switch (REQUEST_FIELDS.get(name) ?? Read.Keep) {
    case Read.Keep:
      this.fields.push([name, value]);
      return;
    case Read.Drop:
      return;
    case Read.Host:
      this.host = value;
      return;
    case Read.Connection:
      this.connection = value;
      return;
    case Read.Upgrade:
      this.upgrade = value;
      return;
    case Read.TransferEncoding:
      this.transferEncoding = value;
      return;
    case Read.ContentLength:
      this.contentLength = value;
      this.fields.push([name, value]);
      return;
    case Read.RequestId:
      this.requestId = value;
      return;
    case Read.ForwardedFor:
      this.forwardedFor = value;
      return;
    case Read.ForwardedProto:
      this.forwardedProto = value;
      return;
    case Read.ForwardedHost:
      this.forwardedHost = value;
      return;
    case Read.Forwarded:
      this.forwarded = value;
      return;
    case Read.AcceptEncoding:
      this.acceptEncoding = true;
      this.fields.push([name, value]);
      return;
  }
}

// reg-name (letters, digits, - . _ ~), IPv4, or a bracketed IPv6 literal, then an optional port.
const HOST_PATTERN = /^(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$/;

/**
 * Whether `value` is a valid `host[:port]` (RFC 9110 §7.2) with no path, userinfo, or
 * out-of-range port. Anything else in Host would change how `req.url` parses.
 */
export function isValidHost(value: string): boolean {
  // Nearly every request names the same host as the one before it: validated once.
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
  /** The `X-Request-Id` to send, replacing the client's. @default the client's, if any */
  requestId?: string;
}

/**
 * Builds the upstream request headers from the client's: hop-by-hop removed, then the client's
 * Host kept (as HAProxy and Go's ReverseProxy do) and `X-Forwarded-For/-Proto/-Host` set from
 * what the balancer saw. Returns pairs with lower-case names, as both transports take them.
 *
 * From anyone but a trusted proxy, client-sent `X-Forwarded-*` are replaced and `Forwarded` is
 * replaced (or dropped when `forwarded` is off): they are as easy to forge as any header. From
 * a trusted proxy, which already wrote what it saw, `X-Forwarded-For` becomes
 * `its value, peer`, its `X-Forwarded-Proto/-Host` are kept (set when absent), and with
 * `forwarded` its `Forwarded` gets this hop's element appended (RFC 7239 §7.1).
 */
export function upstreamRequestHeaders(
  incoming: Headers | ClientHeaders,
  facts: ForwardedFacts,
): HeaderPairs {
  const client = incoming instanceof ClientHeaders ? incoming : readClientHeaders(incoming);
  const named = namedByConnection(client.connection);
  const headers = named === undefined
    ? client.fields.slice()
    : client.fields.filter((field) => !named.has(field[0]));
  const trusted = facts.trustedPeer === true;
  const priorFor = trusted ? kept(named, client.forwardedFor, "x-forwarded-for") : null;
  headers.push(["x-forwarded-for", priorFor ? `${priorFor}, ${facts.clientIp}` : facts.clientIp]);
  const priorProto = trusted ? kept(named, client.forwardedProto, "x-forwarded-proto") : null;
  headers.push(["x-forwarded-proto", priorProto || facts.proto]);
  const priorHost = trusted ? kept(named, client.forwardedHost, "x-forwarded-host") : null;
  if (facts.host !== null) {
    headers.push(["host", facts.host], ["x-forwarded-host", priorHost || facts.host]);
  } else if (priorHost !== null) {
    headers.push(["x-forwarded-host", priorHost]);
  }
  // Without `forwarded`, a trusted proxy's Forwarded is dropped too: passed on without this
  // hop's element, its last entry would claim to be the backend's direct peer.
  if (facts.forwarded) {
    const priorForwarded = trusted ? kept(named, client.forwarded, "forwarded") : null;
    const element = forwardedElement(facts);
    headers.push(["forwarded", priorForwarded ? `${priorForwarded}, ${element}` : element]);
  }
  // Without this, fetch asks for gzip/br on the client's behalf and then decodes the answer:
  // wasted work both ends for a client that never asked for compression.
  if (!client.acceptEncoding || named?.has("accept-encoding")) {
    headers.push(["accept-encoding", "identity"]);
  }
  const requestId = facts.requestId ?? kept(named, client.requestId, "x-request-id");
  if (requestId !== null) headers.push(["x-request-id", requestId]);
  return headers;
}

/**
 * `value`, unless the Connection header names `name`: such a field is hop-by-hop (RFC 9110
 * §7.6.1), so its value is not kept even from a trusted peer and the proxy's own replaces it.
 */
function kept(named: Set<string> | undefined, value: string | null, name: string): string | null {
  return named?.has(name) ? null : value;
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
  return isToken(value) ? value : `"${value.replace(/[\\"]/g, "\\$&")}"`;
}

/** Content codings that Deno's fetch decodes by itself (it leaves deflate and zstd alone). */
const FETCH_DECODED_CODINGS = new Set(["gzip", "br"]);

/**
 * Whether fetch has already decoded this response body. fetch decodes gzip and br unless the
 * request asked for `identity` or carried a Range header, but leaves `Content-Encoding` and the
 * compressed `Content-Length` in place; relaying those with the decoded bytes corrupts the
 * response. Only for fetch's responses: a transport that knows what it did says so instead
 * (`decoded` in lib/upstream.ts's `UpstreamResponse`; the native transport never decodes).
 */
export function fetchDecodedBody(
  requestHeaders: Headers | HeaderPairs,
  responseHeaders: Headers,
): boolean {
  const coding = responseHeaders.get("content-encoding");
  if (coding === null) return false;
  if (!FETCH_DECODED_CODINGS.has(coding.trim().toLowerCase())) return false;
  const request = requestHeaders instanceof Headers ? fieldsOf(requestHeaders) : requestHeaders;
  if (fieldValue(request, "accept-encoding")?.trim().toLowerCase() === "identity") return false;
  return fieldValue(request, "range") === null;
}

/** The value of the lower-case `name` among `fields` (repeats joined as Headers joins them). */
function fieldValue(fields: HeaderPairs, name: string): string | null {
  let value: string | null = null;
  for (const [n, v] of fields) if (n === name) value = value === null ? v : `${value}, ${v}`;
  return value;
}

/**
 * Builds the client response headers from the backend's: hop-by-hop removed, and when fetch
 * decoded the body, `Content-Encoding`/`Content-Length` dropped so they describe the bytes
 * actually sent, and a strong ETag weakened (it named the encoded representation).
 */
export function downstreamResponseHeaders(
  upstream: Headers | HeaderPairs,
  decoded: boolean,
): Headers {
  const headers = new Headers();
  appendResponseHeaders(upstream, headers, decoded);
  return headers;
}

/**
 * {@linkcode downstreamResponseHeaders}, appended to `to` (a new Response's headers: building
 * the Response first and appending costs less than giving pairs to its constructor, which
 * converts them through WebIDL), leaving out `except` too, a lower-case name the caller sets
 * itself. `upstream` may be the fields as received (names in any case). `list` is the live list
 * behind `to` (lib/response_fields.ts `headerListOf`), to be given only when `to.append` would
 * take every field of `upstream` unchanged (`UpstreamResponse.fieldsChecked`): the fields
 * are pushed to it without append's checks. Returns the Content-Length passed on, or null.
 */
export function appendResponseHeaders(
  upstream: Headers | HeaderPairs,
  to: Headers,
  decoded: boolean,
  except?: string,
  list?: HeaderPairs,
): string | null {
  return appendEndToEnd(
    upstream instanceof Headers ? fieldsOf(upstream) : upstream,
    to,
    decoded,
    except,
    list,
  );
}
