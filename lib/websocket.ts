/**
 * @module
 * WebSocket relaying: an upgrade request goes to a backend chosen like any other request, the
 * balancer opens its own WebSocket to that backend first, and only once the backend has agreed
 * (and picked a subprotocol) does it accept the client's upgrade with the same subprotocol. Then
 * frames are copied both ways until either side closes.
 *
 * Why two WebSockets and not a byte tunnel: `Deno.serve` offers no raw upgraded connection, only
 * `Deno.upgradeWebSocket`, and `fetch` cannot send an upgrade. What that costs (see docs/edge.md#websockets):
 * the backend's handshake response headers (its Set-Cookie on the 101, its extensions) do not
 * reach the client, compression is not negotiated, and close codes the WebSocket API forbids a
 * client to send are mapped (see {@linkcode upstreamCloseFor}).
 *
 * Behind the native front end (`--frontend native`, see docs/frontend.md) none of that applies:
 * the upgrade is relayed as a byte tunnel ({@linkcode openTunnel}, {@linkcode switchProtocols}),
 * the handshake end to end, through the same attempt loop.
 */

import type { IncomingRequest } from "./incoming.ts";
import { BadGatewayError, BadRequestError, HttpError, NoBackendError } from "./errors.ts";
import type { Log } from "./log.ts";
import { isToken } from "./http_token.ts";
import type { Backend } from "./pool.ts";
import type { Failure } from "./retry.ts";
import { type AttemptLoopOptions, runAttempts } from "./attempt_loop.ts";
import { canTunnel, openTunnel, switchProtocols, type TunnelOpen } from "./tunnel_upstream.ts";

/** RFC 6455 §7.4.1: the endpoint is going away (server shutdown). */
export const CLOSE_GOING_AWAY = 1001;
/** RFC 6455 §7.4.1: the server hit an unexpected condition (here: the backend vanished). */
export const CLOSE_INTERNAL_ERROR = 1011;

/** Whether `req` asks to become a WebSocket: a GET with `websocket` in `Upgrade` (RFC 6455 §4.1). */
export function isWebSocketUpgrade(req: IncomingRequest): boolean {
  // Other methods may ignore Upgrade (RFC 9110 §7.8) and are forwarded as plain HTTP.
  return req.method === "GET" && hasToken(req.headers.get("upgrade"), "websocket");
}

/**
 * Why this upgrade request is not a WebSocket handshake the balancer can accept (RFC 6455
 * §4.2.1), as an {@linkcode HttpError}; undefined when it is one. Checked before any backend is
 * contacted, so a malformed handshake costs the backends nothing.
 */
export function handshakeProblem(headers: Headers): HttpError | undefined {
  if (!hasToken(headers.get("connection"), "upgrade")) {
    return new BadRequestError("WebSocket handshake without Connection: upgrade");
  }
  const key = headers.get("sec-websocket-key")?.trim();
  // The key is 16 random bytes in base64 (RFC 6455 §4.1 item 7).
  if (key === undefined || !/^[A-Za-z0-9+/]{22}==$/.test(key)) {
    return new BadRequestError("WebSocket handshake with a missing or malformed key");
  }
  if (headers.get("sec-websocket-version")?.trim() !== "13") {
    // §4.4: answer with the version this side speaks.
    return new HttpError(426, "unsupported WebSocket version", { "sec-websocket-version": "13" });
  }
  if (requestedProtocols(headers) === undefined) {
    return new BadRequestError("malformed Sec-WebSocket-Protocol");
  }
  return undefined;
}

/**
 * The subprotocols the client offered, in order (`[]` when none), or undefined when the header
 * is malformed: a value that is not a token, or one offered twice, which would make
 * `new WebSocket` throw.
 */
export function requestedProtocols(headers: Headers): string[] | undefined {
  const value = headers.get("sec-websocket-protocol");
  if (value === null) return [];
  const protocols = value.split(",").map((p) => p.trim());
  if (!protocols.every(isToken)) return undefined;
  return new Set(protocols).size === protocols.length ? protocols : undefined;
}

/**
 * The handshake headers for the backend, from the proxy's upstream request headers (hop-by-hop
 * already removed, X-Forwarded-*, X-Request-Id and Host set): the client's own `Sec-WebSocket-*`
 * are removed because the balancer's WebSocket makes its own handshake (key, version), sends
 * the subprotocols itself, and negotiates no extensions (passing the client's
 * `permessage-deflate` offer would let the backend compress frames the balancer cannot read).
 */
export function handshakeHeaders(upstream: Headers): Headers {
  const headers = new Headers(upstream);
  for (const name of [...headers.keys()]) {
    if (name.startsWith("sec-websocket-") || name === "content-length") headers.delete(name);
  }
  return headers;
}

/** The backend's WebSocket URL: its origin with `ws`/`wss` for `http`/`https`, plus the path. */
export function backendWebSocketUrl(origin: string, pathAndQuery: string): string {
  return origin.replace(/^http/, "ws") + pathAndQuery;
}

/** A close to send: no code means a close frame without a status (seen as 1005). */
export interface CloseFrame {
  code?: number;
  reason?: string;
}

/**
 * How the client's socket is closed when the backend's closed with `code`. A backend that
 * vanished without a close frame (1006, or any unclean end) gives 1011 (RFC 6455 §7.4.1);
 * "no status" (1005) stays without a status; codes a server may send pass through with their
 * reason; anything else (reserved codes) becomes 1011.
 */
export function clientCloseFor(code: number, reason: string, wasClean: boolean): CloseFrame {
  if (!wasClean || code === 1006) return { code: CLOSE_INTERNAL_ERROR, reason: "backend lost" };
  if (code === 1005) return {};
  if (sendableByServer(code)) return { code, reason };
  return { code: CLOSE_INTERNAL_ERROR, reason: "backend closed with an unusable code" };
}

/**
 * How the backend's socket is closed when the client's closed with `code`. The balancer is a
 * WebSocket *client* there, and the WebSocket API lets a client send only 1000 and 3000-4999:
 * those pass through with their reason, "no status" (1005) stays without one, and any other
 * code (a browser's 1001 when a page is left, 1006 for a vanished client) becomes 1000 whose
 * reason names the original code when the client gave none.
 */
export function upstreamCloseFor(code: number, reason: string): CloseFrame {
  if (code === 1000 || (code >= 3000 && code <= 4999)) return { code, reason };
  if (code === 1005) return {};
  // Deno reports a client that vanished without a close frame as code 0: RFC 6455's 1006.
  return { code: 1000, reason: reason || `client closed with ${code < 1000 ? 1006 : code}` };
}

/** Codes an endpoint may put in a close frame (RFC 6455 §7.4.1-2). */
function sendableByServer(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
    (code >= 3000 && code <= 4999);
}

/** The open relays of one balancer, so that shutdown can close them cleanly. */
export class WebSocketRelays {
  readonly #open = new Set<Relay>();

  /** Relays currently open. */
  get size(): number {
    return this.#open.size;
  }

  /** Tracks `relay` until it has ended. */
  add(relay: Relay): void {
    this.#open.add(relay);
    relay.ended.then(() => this.#open.delete(relay));
  }

  /**
   * Closes every open relay: the client with 1001 "going away" (RFC 6455 §7.4.1), the backend
   * with 1000 and the same reason (a client may not send 1001). Resolves, with how many were
   * open, once both sides of each have finished closing or after `waitMs`, whichever is first.
   */
  async closeAll(waitMs: number, reason = "going away"): Promise<number> {
    const relays = [...this.#open];
    for (const relay of relays) relay.close({ code: CLOSE_GOING_AWAY, reason });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise((resolve) => (timer = setTimeout(resolve, Math.max(0, waitMs))));
    await Promise.race([Promise.all(relays.map((r) => r.settled)), late]);
    clearTimeout(timer);
    return relays.length;
  }
}

type Message = string | ArrayBuffer;

/**
 * One client socket joined to one backend socket. Created as soon as the backend's socket is
 * open, so that messages the backend sends before the client's upgrade completes are queued,
 * not lost.
 */
export class Relay {
  readonly #upstream: WebSocket;
  #client: WebSocket | undefined;
  /** Backend messages that arrived before the client's socket opened. */
  #queued: Message[] = [];
  /** A close for the client decided before its socket opened. */
  #pendingClientClose: CloseFrame | undefined;
  readonly #ended = Promise.withResolvers<void>();
  readonly #upstreamClosed = Promise.withResolvers<void>();
  readonly #clientClosed = Promise.withResolvers<void>();

  /** Resolves when either side has closed (the other has been told to close): the session is over. */
  readonly ended: Promise<void> = this.#ended.promise;
  /** Resolves when both sides have closed. */
  readonly settled: Promise<void>;

  constructor(upstream: WebSocket) {
    this.#upstream = upstream;
    this.settled = Promise.all([this.#upstreamClosed.promise, this.#clientClosed.promise])
      .then(() => {});
    upstream.onmessage = (event) => {
      const client = this.#client;
      if (client === undefined || client.readyState === WebSocket.CONNECTING) {
        this.#queued.push(event.data);
      } else if (client.readyState === WebSocket.OPEN) client.send(event.data);
    };
    upstream.onerror = () => {}; // the close event that follows says everything needed
    upstream.onclose = (event) => {
      this.#upstreamClosed.resolve();
      this.#ended.resolve();
      this.#closeClient(clientCloseFor(event.code, event.reason, event.wasClean));
    };
  }

  /** The subprotocol the backend chose ("" for none). */
  get protocol(): string {
    return this.#upstream.protocol;
  }

  /** Joins the client's socket (from `Deno.upgradeWebSocket`); frames flow from now on. */
  attach(client: WebSocket): void {
    this.#client = client;
    client.binaryType = "arraybuffer";
    client.onopen = () => {
      for (const data of this.#queued) client.send(data);
      this.#queued = [];
      if (this.#pendingClientClose !== undefined) this.#closeClient(this.#pendingClientClose);
    };
    client.onmessage = (event) => {
      if (this.#upstream.readyState === WebSocket.OPEN) this.#upstream.send(event.data);
    };
    client.onerror = () => {};
    client.onclose = (event) => {
      this.#clientClosed.resolve();
      this.#ended.resolve();
      close(this.#upstream, upstreamCloseFor(event.code, event.reason));
    };
  }

  /** Abandons a relay whose client upgrade failed: closes the backend's socket. */
  abandon(): void {
    this.#clientClosed.resolve();
    this.#ended.resolve();
    close(this.#upstream, { code: 1000, reason: "client handshake failed" });
  }

  /** Closes both sides: the client with `frame`, the backend as a client may. */
  close(frame: CloseFrame): void {
    this.#closeClient(frame);
    close(this.#upstream, upstreamCloseFor(frame.code ?? 1005, frame.reason ?? ""));
  }

  #closeClient(frame: CloseFrame): void {
    const client = this.#client;
    if (client === undefined || client.readyState === WebSocket.CONNECTING) {
      this.#pendingClientClose ??= frame;
      return;
    }
    close(client, frame);
  }
}

/** Closes `socket` with `frame` unless it is already closing; never throws. */
function close(socket: WebSocket, frame: CloseFrame): void {
  if (socket.readyState === WebSocket.CLOSING || socket.readyState === WebSocket.CLOSED) return;
  try {
    socket.close(frame.code, frame.reason);
  } catch {
    socket.close(); // a code this side may not send: close without a status rather than not at all
  }
}

/** Outcome of opening the backend's WebSocket. */
type OpenResult =
  | { ok: true; socket: WebSocket }
  | { ok: false; failure: Failure }
  | { ok: false; status: number };

/** How the backend's WebSocket is opened. */
export interface UpstreamOptions {
  /** Client for backend connections (TLS trust, `allowHost` so Host passes). @default none */
  client?: Deno.HttpClient;
  /** Time for the TCP connect plus the WebSocket handshake (ms). */
  timeout: number;
}

/**
 * Opens a WebSocket to `url` and waits for the handshake. Never throws: a failure is
 * classified like a fetch attempt's (`connect` when no connection was made), and a backend that
 * answered the handshake with another status than 101 is reported with that status.
 */
export function openUpstream(
  url: string,
  protocols: string[],
  headers: Headers,
  clientSignal: AbortSignal,
  options: UpstreamOptions,
): Promise<OpenResult> {
  const { promise, resolve } = Promise.withResolvers<OpenResult>();
  if (clientSignal.aborted) {
    resolve({ ok: false, failure: { kind: "client-gone", detail: "client disconnected" } });
    return promise;
  }
  let socket: WebSocket;
  try {
    socket = new WebSocket(url, { protocols, headers, client: options.client });
  } catch (error) {
    resolve({ ok: false, failure: { kind: "connect", detail: (error as Error).message } });
    return promise;
  }
  socket.binaryType = "arraybuffer";
  const closed = new Promise<void>((r) => (socket.onclose = () => r()));
  let settled = false;
  // A failed socket is closed before the result is given, so nothing of it outlives the attempt.
  const fail = async (result: OpenResult) => {
    if (settled) return;
    settled = true;
    cleanup();
    if (socket.readyState !== WebSocket.CLOSED) socket.close();
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([closed, new Promise((r) => (timer = setTimeout(r, 1000)))]);
    clearTimeout(timer);
    resolve(result);
  };
  const onAbort = () =>
    fail({ ok: false, failure: { kind: "client-gone", detail: "client disconnected" } });
  const timer = setTimeout(() =>
    fail({
      ok: false,
      failure: { kind: "maybe-sent", detail: `no WebSocket handshake within ${options.timeout}ms` },
    }), options.timeout);
  const cleanup = () => {
    clearTimeout(timer);
    clientSignal.removeEventListener("abort", onAbort);
    socket.onopen = null;
    socket.onerror = null;
  };
  clientSignal.addEventListener("abort", onAbort);
  socket.onopen = () => {
    if (settled) return;
    settled = true;
    cleanup();
    socket.onclose = null;
    resolve({ ok: true, socket });
  };
  socket.onerror = (event) => fail(classifyOpenError((event as ErrorEvent).message ?? ""));
  return promise;
}

/**
 * Classifies the message of a failed WebSocket open (Deno's wording): `Invalid status code:
 * 403` is the backend answering the handshake; `tcp connect error`, DNS and TLS failures
 * (`invalid peer certificate: UnknownIssuer`) mean no request was sent, as fetch's
 * `client error (Connect)` does; anything else happened after connecting.
 */
export function classifyOpenError(message: string): OpenResult {
  const status = /Invalid status code:? (\d{3})/.exec(message);
  if (status !== null) return { ok: false, status: Number(status[1]) };
  const detail = message.replace(/^NetworkError: /, "").replace(/\s+/g, " ").slice(0, 160);
  if (
    /tcp connect error|connection refused|dns error|failed to lookup|certificate|tls/i.test(message)
  ) {
    return { ok: false, failure: { kind: "connect", detail } };
  }
  return { ok: false, failure: { kind: "maybe-sent", detail } };
}

/** What the WebSocket path needs from the proxy. */
export interface WebSocketProxyOptions {
  /** Where open relays are registered (shutdown closes them). */
  relays: WebSocketRelays;
  /** Time to connect and complete the backend handshake, per attempt (ms). */
  connectTimeout: number;
  /** Client for backend connections. @default none */
  client?: Deno.HttpClient;
  /**
   * CA certificates (PEM) trusted for a `wss` backend when tunnelling (native front end): the
   * `--backend-ca` bundle, as the HTTP client has it. @default none (the system's roots)
   */
  caCerts?: string[];
  /** Client certificate a tunnel presents to a `wss` backend (mTLS). @default none */
  clientCert?: { cert: string; key: string };
  /** Seconds a 503 tells clients to wait (Retry-After). @default 1 */
  retryAfterSeconds?: number;
  /** The attempt loop's settings, shared with HTTP requests (pool, retries, budget, log). */
  loop: AttemptLoopOptions;
}

/** Per-request record of attempts, read by the proxy for its outcome. */
export interface WebSocketTrace {
  backend: Backend | undefined;
  attempts: number;
}

/**
 * Relays one WebSocket upgrade. `pick` chooses the backend for each attempt (the proxy's own
 * selection, sticky pin included) among those not yet tried. Returns the 101 response to give
 * the client; throws an {@linkcode HttpError}: 400/426 for a bad handshake, 503 when no backend
 * is available, the backend's status when it refused the handshake with a 4xx, else 502.
 *
 * The WebSocket counts as in flight on its backend (`pool.acquire`) from the first attempt
 * until it closes, so least-conn, `maxConns` and draining see it.
 */
export async function proxyWebSocket(
  req: IncomingRequest,
  headers: Headers,
  pathAndQuery: string,
  pick: (tried: ReadonlySet<Backend>, attempt: number) => Backend | undefined,
  trace: WebSocketTrace,
  options: WebSocketProxyOptions,
): Promise<Response> {
  const problem = handshakeProblem(req.headers);
  if (problem !== undefined) throw problem;
  const { pool, log } = options.loop;
  const protocols = requestedProtocols(req.headers)!;
  const upstreamHeaders = handshakeHeaders(headers);
  // The native front end relays the client's own handshake as a byte tunnel.
  const tunnel = canTunnel(req);
  const result = await runAttempts<Relay | Tunneled | number>({
    // The handshake is a GET and no frame has been sent: safe to try elsewhere.
    method: "GET",
    label: "WebSocket ",
    pick,
    send: async (backend) => {
      if (tunnel) {
        const opened = await openTunnel(backend.url, pathAndQuery, "websocket", headers, {
          signal: req.signal,
          timeoutMs: options.connectTimeout,
          caCerts: options.caCerts,
          clientCert: options.clientCert,
        });
        if (opened.ok) return { ok: true, value: { tunnel: opened }, status: 101 };
        if ("status" in opened) return { ok: true, value: opened.status, status: opened.status };
        return opened;
      }
      const opened = await openUpstream(
        backendWebSocketUrl(backend.url, pathAndQuery),
        protocols,
        upstreamHeaders,
        req.signal,
        { client: options.client, timeout: options.connectTimeout },
      );
      // The relay queues the backend's messages from now on: one sent right after the handshake
      // would be lost while the loop hands the socket over (events arrive as microtasks).
      if (opened.ok) return { ok: true, value: new Relay(opened.socket), status: 101 };
      // The backend answered the handshake, with another status than 101.
      if ("status" in opened) return { ok: true, value: opened.status, status: opened.status };
      return opened;
    },
    replayable: () => true,
    clientFailed: () => false,
    trace,
  }, options.loop);
  if (!result.ok) {
    if (result.failure === undefined) throw new NoBackendError(options.retryAfterSeconds ?? 1);
    throw new BadGatewayError("WebSocket upgrade failed");
  }
  const { backend, value } = result;
  if (value instanceof Relay) return accept(req, value, backend, options);
  if (typeof value !== "number") {
    // The front end writes the backend's 101 and relays bytes; the backend is busy until the end.
    const { headers, conn, head } = value.tunnel;
    return switchProtocols(headers, conn, head, () => pool.release(backend));
  }
  pool.release(backend);
  throw refusedHandshake(backend, value, log);
}

/** A backend that switched protocols for a tunnel (native front end). */
interface Tunneled {
  tunnel: Extract<TunnelOpen, { ok: true }>;
}

/** Accepts the client's upgrade with the backend's subprotocol and starts relaying. */
function accept(
  req: IncomingRequest,
  relay: Relay,
  backend: Backend,
  options: WebSocketProxyOptions,
): Response {
  /** Gives up the backend's side; returns `error` for the caller to throw. */
  const refuse = (error: HttpError) => {
    relay.abandon();
    relay.settled.then(() => options.loop.pool.release(backend));
    return error;
  };
  const chosen = relay.protocol;
  if (chosen !== "" && !requestedProtocols(req.headers)?.includes(chosen)) {
    // The backend's mistake, not the client's (RFC 6455 §4.1: the client must fail it anyway).
    options.loop.log.warn(
      `${backend.url} chose WebSocket subprotocol ${JSON.stringify(chosen)}, ` +
        "which the client did not offer",
    );
    throw refuse(
      new BadGatewayError("backend chose a WebSocket subprotocol the client did not offer"),
    );
  }
  let upgrade: Deno.WebSocketUpgrade;
  try {
    // Only Deno.serve's requests come here, and they are Requests: the native front end's
    // upgrades are tunnels.
    upgrade = Deno.upgradeWebSocket(req as Request, { protocol: relay.protocol || undefined });
  } catch (error) {
    throw refuse(new BadRequestError(`WebSocket handshake refused: ${(error as Error).message}`));
  }
  relay.attach(upgrade.socket);
  options.relays.add(relay);
  relay.ended.then(() => options.loop.pool.release(backend));
  return upgrade.response;
}

/** The error for a backend that answered the handshake with `status` instead of 101. */
function refusedHandshake(backend: Backend, status: number, log: Log): HttpError {
  log.warn(`${backend.url} refused the WebSocket handshake: HTTP ${status}`);
  // A 4xx is the backend's verdict on this client (auth, origin, path): the client gets it. Any
  // other answer means the backend is not speaking WebSocket there: a gateway error.
  return status >= 400 && status < 500
    ? new HttpError(status, "backend refused the WebSocket handshake")
    : new BadGatewayError("backend refused the WebSocket handshake");
}

/** Whether the comma-separated header `value` contains `token` (case-insensitive). */
function hasToken(value: string | null, token: string): boolean {
  if (value === null) return false;
  return value.split(",").some((part) => part.trim().toLowerCase() === token);
}
