/**
 * @module
 * A second {@linkcode Transport}, on `node:http`/`node:https`, for the requests whose target
 * fetch would rewrite (issue 5): fetch parses the URL with the WHATWG parser, so `/a/../b`,
 * `/a/%2e%2e/b` and `/a\b` would reach the backend as `/b` and `/a/b`. `node:http` writes the
 * path it is given on the request line as it is (verified on Deno 2.9.6). The proxy picks this
 * transport only for those requests (`fetchRewritesTarget` in lib/upstream.ts); fetch, which
 * is faster on Deno, keeps everything else.
 *
 * It keeps fetch's contract ({@linkcode sendAttempt}): the same failure kinds and timeouts,
 * redirects not followed, a Web `Response` whose body streams with back-pressure. It differs
 * where fetch does something a proxy should not: bodies are never decoded (the result says
 * `decoded: false`, so Content-Encoding and Content-Length pass through), and no `accept`,
 * `accept-language` or `user-agent` is added. It speaks HTTP/1.1 only, also to HTTPS backends
 * that offer HTTP/2.
 */

import * as http from "node:http";
import * as https from "node:https";
import * as tls from "node:tls";
import type { IncomingMessage } from "node:http";
import { isIP, type Socket } from "node:net";
import { classifyFetchError, type Failure } from "./retry.ts";
import { type BackendTlsFiles, readBackendTls } from "./tls.ts";
import {
  type AttemptOptions,
  type AttemptRequest,
  type AttemptResult,
  guardAttempt,
  type Transport,
} from "./upstream.ts";

/** A transport with keep-alive connections of its own, closed by {@linkcode close}. */
export interface ExactTransport {
  /** Sends one attempt; the same contract as `sendAttempt` (lib/upstream.ts). */
  readonly send: Transport;
  /** Closes every connection, idle or not; attempts still running fail. */
  close(): void;
}

/** How long an idle kept-alive backend connection is kept (ms). @default of createExactTransport */
const IDLE_TIMEOUT_MS = 30_000;

/** Response statuses that never have a body (RFC 9110 §6.4.1), besides any answer to HEAD. */
const BODILESS_STATUS = new Set([204, 304]);

/**
 * Creates the transport. HTTPS backends are verified against the default roots plus
 * `files.ca`, and are shown `files.cert`/`files.key` when they ask for a client certificate:
 * the same files, read by the same reader, as fetch's client (lib/tls.ts). Throws `TlsError`
 * when a file cannot be read.
 */
export function createExactTransport(
  files: BackendTlsFiles = {},
  { idleTimeoutMs = IDLE_TIMEOUT_MS }: { idleTimeoutMs?: number } = {},
): ExactTransport {
  // `timeout` closes a kept-alive connection idle that long (checked on Deno 2.9.6: requests in
  // progress are not affected), so connections to removed backends do not linger.
  const keepAlive = { keepAlive: true, timeout: idleTimeoutMs };
  const agents = {
    "http:": new http.Agent(keepAlive),
    // One TLS context for every connection: node:tls would otherwise parse the roots anew for
    // each one.
    "https:": new https.Agent({ ...keepAlive, secureContext: secureContext(files) }),
  };
  const origins = new Map<string, Destination>();

  function destination(origin: string): Destination {
    let known = origins.get(origin);
    if (known === undefined) {
      const url = new URL(origin);
      const secure = url.protocol === "https:";
      const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
      known = {
        secure,
        hostname,
        port: Number(url.port || (secure ? 443 : 80)),
        // SNI names no IP address (RFC 6066 §3): "" sends none; the certificate is then
        // checked against the address.
        servername: isIP(hostname) === 0 ? hostname : "",
      };
      // Backends come and go (discovery, the admin API): keep the map from growing unbounded.
      if (origins.size >= 1024) origins.clear();
      origins.set(origin, known);
    }
    return known;
  }

  return {
    send: (origin, url, request, clientSignal, options) => {
      const to = destination(origin);
      const agent = to.secure ? agents["https:"] : agents["http:"];
      // The proxy's `url` is the origin followed by the client's path and query, as they are.
      const path = url.slice(origin.length);
      return exchange(to, agent, path, request, clientSignal, options);
    },
    close() {
      agents["http:"].destroy();
      agents["https:"].destroy();
    },
  };
}

/**
 * The TLS context of HTTPS backends. `ca` replaces node:tls's roots rather than adding to them
 * (unlike fetch's `caCerts`; verified on Deno 2.9.6), so a private CA is given together with
 * the bundled Mozilla roots, which are what fetch trusts by default too.
 */
function secureContext(files: BackendTlsFiles): tls.SecureContext {
  const pem = readBackendTls(files);
  return tls.createSecureContext({
    ...(pem.ca === undefined ? {} : { ca: [...tls.rootCertificates, pem.ca] }),
    ...(pem.cert === undefined ? {} : { cert: pem.cert, key: pem.key }),
  });
}

/** Where one origin's requests go. */
interface Destination {
  secure: boolean;
  hostname: string;
  port: number;
  /** TLS server name to send and verify. */
  servername: string;
}

/**
 * One attempt: writes the request (path as given), waits for the response head under the
 * timeouts, and resolves exactly once, with a response or a classified failure.
 */
function exchange(
  to: Destination,
  agent: http.Agent,
  path: string,
  request: AttemptRequest,
  clientSignal: AbortSignal,
  options: AttemptOptions,
): Promise<AttemptResult> {
  if (clientSignal.aborted) return Promise.resolve(failed("client-gone", "client disconnected"));
  const { promise, resolve } = Promise.withResolvers<AttemptResult>();
  let settled = false;
  /** The TCP (and TLS) connection is up: from then on, the request may have been sent. */
  let connected = false;
  let req!: http.ClientRequest;
  let bodyReader: ReadableStreamDefaultReader<Uint8Array> | undefined;

  const settle = (result: AttemptResult) => {
    if (settled) return;
    settled = true;
    disarm();
    resolve(result);
  };
  const abandon = (failure: Failure) => {
    if (settled) return;
    settle({ ok: false, failure });
    bodyReader?.cancel().catch(() => {});
    req?.destroy();
  };
  // Unlike fetch, node:http says when the connection is made: no separate probe is needed.
  const disarm = guardAttempt(clientSignal, options, abandon, () => !connected);

  const body = request.body;
  let bytes: Uint8Array | undefined;
  try {
    bytes = body === null || body instanceof ReadableStream ? undefined : toBytes(body);
    req = (to.secure ? https : http).request(requestOptions(to, agent, path, request, bytes));
  } catch (error) {
    // Refused before anything was written: a header or body node:http will not send. The
    // request's doing, not the backend's, and every backend would get the same: like a client
    // gone, it is neither blamed on the backend nor retried (502).
    abandon({ kind: "client-gone", detail: `not sendable: ${(error as Error).message}` });
    return promise;
  }
  // node:http upper-cases the method it is given; the request line is written only when the
  // body is, from `req.method`, so setting it back keeps a method such as `purge` as sent
  // (methods are case-sensitive, RFC 9110 §9.1). Verified on Deno 2.9.6.
  req.method = request.method;
  req.on("socket", (socket: Socket) => {
    if (!socket.connecting) connected = true;
    else socket.once(to.secure ? "secureConnect" : "connect", () => (connected = true));
  });
  // Kept for the request's whole life: an 'error' event with no listener would crash the
  // process, and errors can come after the response head (a reset mid-body).
  req.on("error", (error: Error) => abandon(classifyNodeError(error, connected)));
  req.on("response", (res: IncomingMessage) => {
    if (settled) {
      res.destroy();
      return;
    }
    settle(respond(req, res, request.method));
  });
  // A 101 was not asked for (Upgrade is stripped from requests): the connection now speaks
  // another protocol, so it is closed. The client gets a 502 as on the fetch path, but here
  // the attempt counts as failed, so an idempotent request is first retried elsewhere.
  req.on("upgrade", (_res: IncomingMessage, socket: Socket) => {
    socket.destroy();
    abandon({ kind: "maybe-sent", detail: "unexpected 101 response" });
  });
  if (body instanceof ReadableStream) {
    bodyReader = body.getReader();
    pump(bodyReader, req).catch((error) => abandon(classifyNodeError(error, connected)));
  } else {
    req.end(bytes);
  }
  return promise;
}

/**
 * node:http's options for one request: the path as given, the headers and body framing
 * (`bytes`: the body when it is buffered).
 */
function requestOptions(
  to: Destination,
  agent: http.Agent,
  path: string,
  request: AttemptRequest,
  bytes: Uint8Array | undefined,
): http.RequestOptions {
  const headers = headerRecord(request.headers);
  if (bytes !== undefined) {
    headers["content-length"] = String(bytes.length);
  } else if (request.body !== null && headers["content-length"] === undefined) {
    // A stream without a declared length goes chunked, whatever the method (node:http would
    // otherwise frame a DELETE's body by closing the connection).
    headers["transfer-encoding"] = "chunked";
  }
  return {
    agent,
    hostname: to.hostname,
    port: to.port,
    // Set, so that node:https does not take the server name from the Host header (the
    // client's): the backend's certificate is verified against the backend's name, as fetch does.
    ...(to.secure ? { servername: to.servername } : {}),
    method: request.method,
    path: wirePath(path),
    headers,
    // The Host header is the client's, in `headers`; without one (HTTP/1.0), node:http names
    // the backend, as fetch does.
    setHost: headers["host"] === undefined,
  };
}

/**
 * The response head as a Web `Response` whose body streams from `res`. A head that a
 * `Response` cannot carry (a status outside 200-599, a header fetch would refuse) is a failed
 * attempt, as fetch would report it.
 */
function respond(req: http.ClientRequest, res: IncomingMessage, method: string): AttemptResult {
  try {
    const headers = new Headers();
    const raw = res.rawHeaders;
    for (let i = 0; i + 1 < raw.length; i += 2) headers.append(raw[i], raw[i + 1]);
    const status = res.statusCode ?? 0;
    const init = { status, statusText: res.statusMessage ?? "", headers };
    if (method === "HEAD" || BODILESS_STATUS.has(status)) {
      const response = new Response(null, init);
      res.resume(); // nothing to read: the connection goes back to the pool
      return { ok: true, response, decoded: false };
    }
    return { ok: true, response: new Response(bodyStream(req, res), init), decoded: false };
  } catch (error) {
    req.destroy();
    return failed("maybe-sent", `invalid response head: ${(error as Error).message}`);
  }
}

/**
 * `res` as a byte stream with back-pressure: node's stream is paused while the Web stream's
 * queue is full and resumed when it is pulled. Cancelling (the client went away) destroys the
 * request and its socket, so a backend still sending is cut off rather than read to the end.
 * A response that ends before its framing says it should errors the stream, which aborts the
 * client's response instead of letting it look complete.
 */
function bodyStream(req: http.ClientRequest, res: IncomingMessage): ReadableStream<Uint8Array> {
  let ended = false;
  return new ReadableStream<Uint8Array>({
    start(controller) {
      res.on("data", (chunk: Uint8Array) => {
        controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        if ((controller.desiredSize ?? 0) <= 0) res.pause();
      });
      res.on("end", () => {
        ended = true;
        controller.close();
      });
      const broken = (error?: Error) => {
        if (ended) return;
        ended = true;
        controller.error(error ?? new Error("backend closed the connection mid-body"));
      };
      res.on("error", broken);
      res.on("aborted", () => broken());
      res.on("close", () => broken());
    },
    pull() {
      res.resume();
    },
    cancel() {
      ended = true;
      res.destroy();
      req.destroy();
    },
  }, { highWaterMark: 64 * 1024, size: (chunk) => chunk.byteLength });
}

/** Writes a streamed body, waiting for 'drain' whenever node:http's buffer is full. */
async function pump(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  req: http.ClientRequest,
): Promise<void> {
  for (;;) {
    const { done, value } = await reader.read();
    if (req.destroyed) return;
    if (done) {
      req.end();
      return;
    }
    if (!req.write(value)) {
      await new Promise<void>((resolve) => {
        const go = () => {
          req.off("drain", go);
          req.off("close", go);
          resolve();
        };
        req.on("drain", go);
        req.on("close", go);
      });
    }
  }
}

/**
 * Classifies a node:http error like {@linkcode classifyFetchError} does fetch's: nothing can
 * have been sent before the connection was up (refused, unreachable, TLS handshake or
 * certificate refused), so that is `connect`; anything later is `maybe-sent`.
 */
function classifyNodeError(error: unknown, connected: boolean): Failure {
  const code = (error as { code?: unknown })?.code;
  const message = error instanceof Error ? error.message : String(error);
  if (!connected || /certificate|handshake/i.test(message)) {
    if (code === "ECONNREFUSED") return { kind: "connect", detail: "connection refused" };
    return { kind: "connect", detail: classifyFetchError(error).detail };
  }
  return classifyFetchError(error);
}

/** Anything beyond printable ASCII. */
const NON_ASCII = /[^\x21-\x7e]/;

/**
 * The path as node:http must be given it to put the client's bytes on the wire. It writes the
 * request line as Latin-1, one byte per character, while Deno.serve hands over the target
 * decoded from UTF-8 (verified on Deno 2.9.6, which refuses other bytes above 0x7F itself):
 * a non-ASCII path is turned back into its UTF-8 bytes, one character each.
 */
function wirePath(path: string): string {
  if (!NON_ASCII.test(path)) return path;
  let bytes = "";
  for (const byte of encoder.encode(path)) bytes += String.fromCharCode(byte);
  return bytes;
}

const encoder = new TextEncoder();

/**
 * `headers` as node:http takes them: a name seen more than once (only Set-Cookie, since a
 * Headers object joins the others) gets an array, which node:http writes as several lines.
 * A null prototype keeps a header named `__proto__` an ordinary entry.
 */
function headerRecord(headers: Headers): Record<string, string | string[]> {
  const record: Record<string, string | string[]> = Object.create(null);
  headers.forEach((value, name) => {
    const prior = record[name];
    if (prior === undefined) record[name] = value;
    else if (typeof prior === "string") record[name] = [prior, value];
    else prior.push(value);
  });
  return record;
}

/** A buffered body's bytes (lib/body.ts gives a Uint8Array; other BodyInits are accepted). */
function toBytes(body: BodyInit): Uint8Array {
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (typeof body === "string") return encoder.encode(body);
  throw new TypeError(`unsupported request body type: ${Object.prototype.toString.call(body)}`);
}

function failed(kind: Failure["kind"], detail: string): AttemptResult {
  return { ok: false, failure: { kind, detail } };
}
