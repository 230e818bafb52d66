/**
 * @module
 * The native HTTP/1.1 front end (`--frontend native`): the balancer's own listener, connection
 * loop and strict request parser on `Deno.listen`/`Deno.listenTls` (ALPN `http/1.1`), with the
 * same seam as `Deno.serve`: a handler `(Request, info) => Response`. What it adds over
 * Deno.serve: a header timeout and a keep-alive idle timeout (denoland/deno#3515),
 * a connection cap, the PROXY protocol, and WebSocket tunnels that a drain keeps open.
 *
 * Per connection, requests are read and answered one at a time: pipelined requests wait in
 * the connection's buffer and are answered in order. Bytes a request body has not consumed
 * when its response starts make that response `Connection: close` (so nothing after an unread
 * body is ever read as a request). Request parsing: lib/http1_request_head.ts; response
 * framing: lib/http1_response.ts; PROXY headers: lib/proxy_protocol.ts.
 *
 * Timeouts are checked by one sweep over all connections every `tick` ms (a quarter of the
 * smaller timeout, 10-250 ms), not a timer per request: a deadline fires up to one tick late.
 */

import type { IncomingRequest } from "./incoming.ts";
import type { BodyPool } from "./body_pool.ts";
import type { Cidr } from "./cidr.ts";
import { cidrContains } from "./cidr.ts";
import { ChunkedDecoder, findHeadEnd, latin1, MAX_HEAD_BYTES } from "./http1_parse.ts";
import {
  BodyFraming,
  MalformedRequest,
  parseRequestHead,
  type RequestHead,
} from "./http1_request_head.ts";
import {
  errorHead,
  markTunnelable,
  type Tunnel,
  tunnelOf,
  UnsentResponseError,
  writeResponse,
} from "./http1_response.ts";
import { writeAll } from "./http1_request.ts";
import { MalformedProxyHeader, parseProxyHeader } from "./proxy_protocol.ts";

export { canTunnel, switchProtocols } from "./http1_response.ts";

/** Options of {@linkcode serveNative}. */
export interface FrontendOptions {
  /** Address to listen on. */
  hostname: string;
  /** Port to listen on; 0 lets the OS pick (read it from `addr`). */
  port: number;
  /**
   * SO_REUSEPORT (needs `--unstable-net`): several listeners share the port.
   * @default false
   */
  reusePort?: boolean;
  /** Serve HTTPS (HTTP/1.1 only, ALPN `http/1.1`) with this PEM certificate chain and key. */
  tls?: { cert: string; key: string };
  /**
   * Most milliseconds to receive a complete request head, counted from the connection's
   * accept (TLS handshake and PROXY header included) or, on a kept-alive connection, from the
   * first byte of the next request. Then: 408 if part of a request came, else a silent close.
   * A connection still in its TLS handshake then closes only once the handshake ends (Deno cannot
   * abort one) and counts against `maxConnections` until it does.
   * @default 10000
   */
  headerTimeoutMs?: number;
  /**
   * Most milliseconds a kept-alive connection may wait for its next request's first byte.
   * @default 60000
   */
  idleTimeoutMs?: number;
  /**
   * Most open client connections. When reached, the front end stops accepting (as HAProxy's
   * `maxconn`): new connections wait in the kernel's listen backlog and are accepted as open
   * ones close; none is refused or reset by the balancer. Unset: no limit.
   */
  maxConnections?: number;
  /** Connections the kernel queues before they are accepted (capped by somaxconn). @default 511 */
  backlog?: number;
  /**
   * Expect a PROXY protocol header (v1 or v2) on every connection from these peers; a
   * connection from any other peer is closed at once, as is one with a malformed header.
   * Not with `tls` (the header precedes the TLS handshake, which Deno's TLS listener owns).
   * `trusted` is read for each new connection (a reload may change it). Unset: no PROXY protocol.
   */
  proxyProtocol?: { trusted: () => readonly Cidr[] };
  /**
   * Admission before each request is read (lib/admission.ts's gate): a kept-alive connection
   * takes a place before it reads its next request and gives it back once the response is
   * delivered, so while the thread is saturated only so many connections read or carry a request
   * at a time and the others take turns, first come first served. Reads posted on thousands of
   * sockets at once complete very unevenly on a saturated thread (some clients wait seconds); the
   * queue keeps them fair. A new connection asks for its place once its first request head is
   * in, so a client that never completes a head holds none. `enter()` returns a ticket, or a
   * promise of one while the gate is full; `leave()` takes it back. The wait counts against the
   * idle timeout (the header timeout for a first request). Unset: no admission.
   */
  admission?: { enter(): number | Promise<number>; leave(ticket: number): void };
  /**
   * Buffers for the response heads, and where response bodies held in memory go back once
   * written: the pool the native transport takes them from (lib/body_pool.ts). Unset: fresh
   * arrays for heads, and nothing goes back.
   */
  bodyPool?: BodyPool;
  /**
   * Answers a handler that threw. Unset: an empty 500.
   */
  onError?: (error: unknown) => Response;
}

/** The handler's `info`: Deno.serve's, plus the client address a PROXY header gave. */
export interface NativeServeInfo extends Deno.ServeHandlerInfo<Deno.NetAddr> {
  /**
   * The client's IP address from the PROXY header; then `remoteAddr` is that client's address
   * too (so X-Forwarded-For, hashing, rate limits, access rules and logs all use it) and
   * `proxyAddr` is the L4 proxy's. Undefined without a PROXY header that named a client.
   */
  clientAddress?: string;
  /** The socket peer when a PROXY header named another client. */
  proxyAddr?: Deno.NetAddr;
}

/** The request handler, as Deno.serve's. */
export type NativeHandler = (
  req: IncomingRequest,
  info: NativeServeInfo,
) => Response | Promise<Response>;

/** A running native front end. */
export interface FrontendServer {
  /** The listening address (the port the OS picked for port 0). */
  readonly addr: Deno.NetAddr;
  /** Open client connections. */
  readonly connections: number;
  /** Requests whose responses are not fully delivered, plus open tunnels. */
  readonly active: number;
  /**
   * New connections get `next`: a second listener on the same port (SO_REUSEPORT), then the
   * old one stops accepting; its connections go on. Throws, keeping the old one, when `next`
   * cannot be served.
   */
  replaceCertificate(next: { cert: string; key: string }): void;
  /**
   * Stops accepting, closes idle connections, lets requests in flight and tunnels go on until
   * `deadline` (performance.now() ms), then closes everything. Resolves to how many requests
   * and tunnels were still open at the deadline.
   */
  drain(deadline: number): Promise<number>;
  /** {@linkcode drain} with no deadline, as Deno.serve's shutdown(). */
  shutdown(): Promise<void>;
}

const HEADER_TIMEOUT_MS = 10_000;
const IDLE_TIMEOUT_MS = 60_000;
/** First buffer of a connection: most heads fit; a slow client holds no more. */
const INITIAL_BUFFER = 2048;
/** Buffer while a body streams, and the largest read of a body straight from the socket. */
const BODY_BUFFER = 64 * 1024;
/** Empty lines tolerated before a request line (RFC 9112 §2.2 says at least one). */
const MAX_LEADING_EMPTY_LINES = 4;

/** Connection phases, for the sweep. */
const Phase = { Head: 0, Idle: 1, Busy: 2, Tunnel: 3 } as const;
type Phase = typeof Phase[keyof typeof Phase];

/** One client connection's state. */
class Connection {
  buf = new Uint8Array(INITIAL_BUFFER);
  start = 0;
  end = 0;
  phase: Phase = Phase.Head;
  /** performance.now() after which the sweep closes it; 0: none. */
  deadline = 0;
  /** The longest one write of a response may wait for the client to take bytes. */
  sendTimeout = Infinity;
  /**
   * The connection's response writes, each given at most `sendTimeout` (the sweep closes the
   * connection otherwise): a client that stops reading would hold its request, and the backend
   * slot behind it, for ever (nginx's send_timeout, HAProxy's timeout client).
   */
  readonly out = {
    write: async (bytes: Uint8Array): Promise<number> => {
      this.deadline = performance.now() + this.sendTimeout;
      try {
        return await this.conn.write(bytes);
      } finally {
        this.deadline = 0;
      }
    },
  };
  /** A read started while the handler runs (to notice a client hanging up). */
  pending: Promise<void> | null = null;
  eof = false;
  closed = false;
  /** Aborts the current request's signal. */
  abort: AbortController | null = null;
  /** Set while the connection waits for admission: its close ends the wait. */
  onClosedWhileQueued: (() => void) | undefined = undefined;
  remoteAddr: Deno.NetAddr;
  clientAddress?: string;
  proxyAddr?: Deno.NetAddr;
  /** Waiting for the PROXY header: no HTTP spoken yet, so a timeout answers nothing. */
  readingProxyHeader = false;
  /** In the TLS handshake: a timeout cannot close it, see timeOut(). */
  handshaking = false;
  /** Timed out in the TLS handshake: closed when the handshake settles. */
  expired = false;

  constructor(readonly conn: Deno.Conn, readonly onClose: () => void) {
    this.remoteAddr = conn.remoteAddr as Deno.NetAddr;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const queued = this.onClosedWhileQueued;
    this.onClosedWhileQueued = undefined;
    queued?.();
    this.abort?.abort(new DOMException("client connection closed", "AbortError"));
    try {
      this.conn.close();
    } catch { /* closed already */ }
    this.onClose();
  }

  /** Reads more bytes into the buffer (growing it up to `limit`); false at EOF or error. */
  async fill(limit: number): Promise<boolean> {
    if (this.pending !== null) {
      await this.pending;
      return !this.eof;
    }
    if (this.eof || this.closed) return false;
    if (this.start === this.end) this.start = this.end = 0;
    if (this.end === this.buf.length) {
      if (this.start > 0) {
        this.buf.copyWithin(0, this.start, this.end);
        this.end -= this.start;
        this.start = 0;
      } else if (this.buf.length < limit) {
        this.grow(Math.min(limit, this.buf.length * 4));
      } else return true; // full: the caller decides (a head too large)
    }
    try {
      const n = await this.conn.read(this.buf.subarray(this.end));
      if (n === null) this.eof = true;
      else this.end += n;
    } catch {
      this.eof = true;
    }
    return !this.eof;
  }

  grow(size: number): void {
    if (this.buf.length >= size) return;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(this.start, this.end));
    this.end -= this.start;
    this.start = 0;
    this.buf = next;
  }

  /**
   * Starts one background read, while the handler runs, so a client that hangs up aborts the
   * request's signal; bytes it brings (pipelined requests, tunnel data) stay in the buffer.
   */
  watch(): void {
    if (this.pending !== null || this.eof || this.closed) return;
    if (this.start === this.end) this.start = this.end = 0;
    if (this.end === this.buf.length) return; // full of pipelined bytes: nothing to learn
    this.pending = this.conn.read(this.buf.subarray(this.end)).then((n) => {
      if (n === null) this.eof = true;
      else this.end += n;
    }, () => {
      this.eof = true;
    }).finally(() => {
      this.pending = null;
      if (this.eof) this.abort?.abort(new DOMException("client hung up", "AbortError"));
    });
  }
}

/**
 * Serves HTTP/1.1 (HTTPS with `options.tls`) on `options.hostname:port`, calling `handler`
 * for each request. Throws when it cannot listen or the options are invalid.
 */
export function serveNative(options: FrontendOptions, handler: NativeHandler): FrontendServer {
  const headerTimeout = positive(options.headerTimeoutMs ?? HEADER_TIMEOUT_MS, "headerTimeoutMs");
  const idleTimeout = positive(options.idleTimeoutMs ?? IDLE_TIMEOUT_MS, "idleTimeoutMs");
  const maxConnections = options.maxConnections ?? Infinity;
  const backlog = options.backlog ?? 511;
  if (maxConnections !== Infinity) positive(maxConnections, "maxConnections");
  if (options.proxyProtocol !== undefined && options.tls !== undefined) {
    throw new Error("the PROXY protocol cannot be combined with TLS on the native front end");
  }
  const trusted = options.proxyProtocol?.trusted;
  const scheme = options.tls === undefined ? "http" : "https";
  const onError = options.onError ?? (() => new Response(null, { status: 500 }));
  const admission = options.admission;
  const bodyPool = options.bodyPool;

  const connections = new Set<Connection>();
  let active = 0;
  let stopping = false;
  /** Resolves the accept loops waiting for a free slot. */
  let slotFreed: (() => void) | null = null;
  const loops: Promise<void>[] = [];
  const handlers = new Set<Promise<void>>();

  function listen(port: number, tls: { cert: string; key: string } | undefined, reuse: boolean) {
    try {
      return tls === undefined
        ? Deno.listen({ hostname: options.hostname, port, reusePort: reuse, tcpBacklog: backlog })
        : Deno.listenTls({
          hostname: options.hostname,
          port,
          reusePort: reuse,
          tcpBacklog: backlog,
          cert: tls.cert,
          key: tls.key,
          alpnProtocols: ["http/1.1"],
        });
    } catch (error) {
      throw new Error(`cannot listen on ${options.hostname}:${port}: ${(error as Error).message}`);
    }
  }

  let listener = listen(
    options.port,
    options.tls,
    options.reusePort === true || options.tls !== undefined,
  );
  const addr = listener.addr as Deno.NetAddr;
  loops.push(acceptLoop(listener));

  const tick = Math.max(10, Math.min(250, headerTimeout / 4, idleTimeout / 4));
  const sweeper = setInterval(sweep, tick);

  function sweep(): void {
    const now = performance.now();
    for (const c of connections) {
      if (c.deadline !== 0 && now >= c.deadline) timeOut(c);
    }
  }

  function timeOut(c: Connection): void {
    c.deadline = 0;
    // Deno cannot abort a TLS handshake: close() would free the slot but keep the socket until the
    // client sends or leaves (docs/deno_platform.md), so the connection stays counted until then.
    if (c.handshaking) {
      c.expired = true;
      return;
    }
    // Part of a request came: say why it ends (HAProxy's 408); an idle connection just closes.
    if (c.phase === Phase.Head && c.end > c.start && !c.readingProxyHeader) {
      writeAll(c.conn, errorHead(408)).finally(() => c.close()).catch(() => {});
    } else c.close();
  }

  async function acceptLoop(l: Deno.Listener): Promise<void> {
    for (;;) {
      while (connections.size >= maxConnections && !stopping) {
        await new Promise<void>((resolve) => (slotFreed = resolve));
      }
      if (stopping) return;
      let conn: Deno.Conn;
      try {
        conn = await l.accept();
      } catch (error) {
        if (stopping || error instanceof Deno.errors.BadResource) return;
        // EMFILE and friends: wait for descriptors rather than spin.
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      if (stopping) {
        conn.close();
        return;
      }
      const c = new Connection(conn, () => {
        connections.delete(c);
        const wake = slotFreed;
        slotFreed = null;
        wake?.();
      });
      connections.add(c);
      c.sendTimeout = idleTimeout;
      c.deadline = performance.now() + headerTimeout;
      const done = serveConnection(c).catch(() => {}).finally(() => {
        c.close();
        handlers.delete(done);
      });
      handlers.add(done);
    }
  }

  async function serveConnection(c: Connection): Promise<void> {
    if (options.tls !== undefined) {
      c.handshaking = true;
      try {
        await (c.conn as Deno.TlsConn).handshake();
      } finally {
        c.handshaking = false;
      }
      if (c.expired) return;
    } else {
      (c.conn as Deno.TcpConn).setNoDelay(true);
    }
    if (trusted !== undefined && !(await readProxyHeader(c, trusted()))) return;
    for (let requests = 0; !c.closed && requests < Number.MAX_SAFE_INTEGER; requests++) {
      if (admission === undefined) {
        const head = await readHead(c);
        if (head === undefined || !(await exchange(c, head))) return;
        continue;
      }
      // A kept-alive connection waits for its place before reading; a new one reads its first
      // head first, so a client that never completes a head (slowloris) never holds a place.
      let head = requests === 0 ? await readHead(c) : undefined;
      if (requests === 0 && head === undefined) return;
      const entered = admission.enter();
      const ticket = typeof entered === "number" ? entered : await admittedUnlessClosed(c, entered);
      if (ticket === undefined) return;
      try {
        head ??= await readHead(c);
        if (head === undefined || !(await exchange(c, head))) return;
      } finally {
        admission.leave(ticket);
      }
    }
  }

  /**
   * The ticket `entered` resolves to, or undefined when `c` closes first (a drain, a timeout):
   * then the place, once given, goes straight back.
   */
  function admittedUnlessClosed(
    c: Connection,
    entered: Promise<number>,
  ): Promise<number | undefined> {
    return new Promise((resolve) => {
      c.onClosedWhileQueued = () => {
        entered.then((ticket) => admission!.leave(ticket));
        resolve(undefined);
      };
      entered.then((ticket) => {
        if (c.onClosedWhileQueued === undefined) return;
        c.onClosedWhileQueued = undefined;
        resolve(ticket);
      });
    });
  }

  /** Reads the PROXY header; false when the connection must close. */
  async function readProxyHeader(c: Connection, trusted: readonly Cidr[]): Promise<boolean> {
    const peer = c.remoteAddr.hostname;
    if (!trusted.some((range) => cidrContains(range, peer))) return false;
    c.readingProxyHeader = true;
    for (let i = 0; i < 1000; i++) {
      let header;
      try {
        header = parseProxyHeader(c.buf.subarray(c.start), c.end - c.start);
      } catch (error) {
        if (error instanceof MalformedProxyHeader) return false;
        throw error;
      }
      if (header !== undefined) {
        c.readingProxyHeader = false;
        c.start += header.length;
        if (header.source !== undefined) {
          c.proxyAddr = c.remoteAddr;
          c.clientAddress = header.source.hostname;
          c.remoteAddr = { transport: "tcp", ...header.source };
        }
        return true;
      }
      if (!(await c.fill(MAX_HEAD_BYTES))) return false;
    }
    return false;
  }

  /**
   * Reads one request head. Undefined when the connection ends (EOF, timeout, a malformed
   * head, which is answered here).
   */
  async function readHead(c: Connection): Promise<ParsedHead | undefined> {
    // Bytes after c.start already searched for the blank line (an offset: fill() may move
    // the bytes to the buffer's start).
    let scanned = 0;
    // Bytes of empty lines skipped so far, over every read of this head.
    let skipped = 0;
    for (let i = 0; i < 100_000; i++) {
      // Empty lines before a request line are skipped (RFC 9112 §2.2).
      while (c.start < c.end && (c.buf[c.start] === 10 || c.buf[c.start] === 13)) {
        if (skipped === MAX_LEADING_EMPTY_LINES * 2) {
          return refuse(c, new MalformedRequest("empty lines"));
        }
        if (c.buf[c.start] === 13) {
          // The byte after a CR decides; a CR that ends what has arrived waits for it.
          if (c.start + 1 === c.end) break;
          if (c.buf[c.start + 1] !== 10) return refuse(c, new MalformedRequest("bare CR"));
        }
        c.start++;
        skipped++;
        scanned = 0;
      }
      if (c.end > c.start) {
        if (c.phase === Phase.Idle) {
          c.phase = Phase.Head;
          c.deadline = performance.now() + headerTimeout;
        }
        const from = c.start + Math.max(0, scanned - 1);
        const headEnd = findHeadEnd(c.buf, c.start, from, c.end);
        if (headEnd !== -1) {
          const text = latin1(c.buf, c.start, headEnd);
          c.start = headEnd;
          try {
            return { head: parseRequestHead(text) };
          } catch (error) {
            if (error instanceof MalformedRequest) return refuse(c, error);
            throw error;
          }
        }
        scanned = c.end - c.start;
        if (c.end - c.start >= MAX_HEAD_BYTES) {
          return refuse(c, new MalformedRequest("request head larger than 64 KiB"));
        }
      }
      if (!(await c.fill(MAX_HEAD_BYTES + 4))) return undefined;
    }
    return undefined;
  }

  async function refuse(c: Connection, error: MalformedRequest): Promise<undefined> {
    c.deadline = 0;
    c.phase = Phase.Busy;
    try {
      await writeAll(c.conn, errorHead(error.status));
    } catch { /* the client left */ }
    c.close();
    return undefined;
  }

  /** Hands one request to the handler and writes its response; false: close the connection. */
  async function exchange(c: Connection, { head }: ParsedHead): Promise<boolean> {
    c.phase = Phase.Busy;
    c.deadline = 0;
    active++;
    let completed!: () => void;
    const done = new Promise<void>((resolve) => (completed = resolve));
    const body = head.framing === BodyFraming.None ? undefined : new BodyReader(c, head);
    let keepAlive = head.keepAlive;
    let req: NativeRequest | undefined;
    try {
      const info: NativeServeInfo = { remoteAddr: c.remoteAddr, completed: done };
      if (c.clientAddress !== undefined) {
        info.clientAddress = c.clientAddress;
        info.proxyAddr = c.proxyAddr;
      }
      req = new NativeRequest(head.method, urlOf(head, scheme, addr.port), head.headers, c, body);
      if (head.http10) req.protocol = "HTTP/1.0";
      if (head.upgrade) markTunnelable(req);
      let response: Response;
      try {
        response = await handler(req, info);
        if (!(response instanceof Response)) {
          throw new TypeError("the handler returned no Response");
        }
      } catch (error) {
        response = onError(error);
      }
      if (body !== undefined) body.responding = true;
      // A body left unread is read and dropped after the response (as hyper does), when it
      // is small enough; a larger one, or one the client waits to be asked for, ends the
      // connection.
      keepAlive &&= !stopping && !c.eof && (body === undefined || body.drainable());
      const tunnel = tunnelOf(response);
      if (tunnel !== undefined) return await runTunnel(c, response, tunnel);
      // A streamed body may wait long on its source: a client that leaves meanwhile ends it
      // (watched only once the request body is in: a watch would read its bytes).
      const hangUp = () => {
        if (body !== undefined && !body.done) return undefined;
        const signal = (c.abort ??= new AbortController()).signal;
        c.watch();
        return signal;
      };
      keepAlive = await writeResponse(c.out, response, head, keepAlive, bodyPool, hangUp);
      completed();
      if (keepAlive && body !== undefined && !body.done) {
        c.deadline = performance.now() + headerTimeout;
        keepAlive = await body.drain();
        c.deadline = 0;
      }
      if (!keepAlive || c.eof) return false;
      // A background read may still be pending: readHead() awaits it, under the idle deadline.
      c.phase = c.end > c.start ? Phase.Head : Phase.Idle;
      c.deadline = performance.now() + (c.phase === Phase.Head ? headerTimeout : idleTimeout);
      return true;
    } catch (error) {
      // Nothing of the response went out: the client gets a 502 rather than a bare close.
      if (error instanceof UnsentResponseError && !c.closed) {
        await writeAll(c.conn, errorHead(502)).catch(() => {});
      }
      c.abort?.abort(new DOMException("response not delivered", "AbortError"));
      return false;
    } finally {
      req?.finish();
      c.abort = null;
      active--;
      completed();
    }
  }

  /** Relays bytes both ways between the client and `tunnel` until either side ends. */
  async function runTunnel(
    c: Connection,
    response: Response,
    tunnel: Tunnel,
  ): Promise<false> {
    c.phase = Phase.Tunnel;
    try {
      await writeResponse(c.conn, response, null, true);
      const up = (async () => {
        // Bytes that came with the request go first, without waiting for more: a client that
        // sent them with the upgrade may wait for their answer. Then what the read started
        // while the handler ran brings.
        for (let round = 0; round < 2; round++) {
          if (c.end > c.start) {
            const early = c.buf.slice(c.start, c.end);
            c.start = c.end;
            await writeAll(tunnel.conn, early);
          }
          if (round === 0 && c.pending !== null) await c.pending;
        }
        if (!c.eof) await copy(c.conn, tunnel.conn);
      })();
      const down = (async () => {
        if (tunnel.head.length > 0) await writeAll(c.conn, tunnel.head);
        await copy(tunnel.conn, c.conn);
      })();
      await Promise.race([up.catch(() => {}), down.catch(() => {})]);
    } finally {
      try {
        tunnel.conn.close();
      } catch { /* closed already */ }
      c.close();
      try {
        tunnel.onEnd?.();
      } catch { /* the caller's bookkeeping must not keep the connection */ }
    }
    return false;
  }

  function closeIdle(): void {
    for (const c of connections) {
      if (c.phase === Phase.Idle || (c.phase === Phase.Head && c.end === c.start)) c.close();
    }
  }

  async function drain(deadline: number): Promise<number> {
    if (!stopping) {
      stopping = true;
      try {
        listener.close();
      } catch { /* closed already */ }
      slotFreed?.();
    }
    closeIdle();
    for (let i = 0; i < 1_000_000 && active > 0 && performance.now() < deadline; i++) {
      await new Promise((r) =>
        setTimeout(r, Math.min(20, Math.max(1, deadline - performance.now())))
      );
      // A response finished on a connection that was busy: it closes now (keep-alive is off).
      closeIdle();
    }
    const left = active;
    clearInterval(sweeper);
    for (const c of connections) c.close();
    await Promise.all(loops);
    await Promise.all([...handlers]);
    return left;
  }

  return {
    addr,
    get connections() {
      return connections.size;
    },
    get active() {
      return active;
    },
    replaceCertificate(next) {
      if (options.tls === undefined) throw new Error("not serving TLS");
      const old = listener;
      listener = listen(addr.port, next, true);
      loops.push(acceptLoop(listener));
      // Linux resets connections queued on a listener that leaves a SO_REUSEPORT group; Deno
      // closes it one event-loop turn later, so a connection arriving in that turn is reset.
      old.close();
    },
    drain,
    async shutdown() {
      await drain(Infinity);
    },
  };
}

interface ParsedHead {
  head: RequestHead;
}

/** Copies `from` to `to` until EOF. */
async function copy(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(16 * 1024);
  for (;;) {
    const n = await from.read(buf);
    if (n === null) return;
    await writeAll(to, buf.subarray(0, n));
  }
}

/**
 * The request's URL: scheme, the authority it names (Host, absolute-form, CONNECT's target,
 * or `localhost:port` for an HTTP/1.0 request without one, as Deno.serve), and the target.
 * `*` becomes `/*`, as Deno.serve builds it.
 */
function urlOf(head: RequestHead, scheme: string, port: number): string {
  const authority = head.host ?? `localhost:${port}`;
  const target = head.target;
  if (target.charCodeAt(0) === 47) return `${scheme}://${authority}${target}`;
  if (target === "*") return `${scheme}://${authority}/*`;
  if (head.method === "CONNECT") return `${scheme}://${authority}/`;
  return target; // absolute-form, checked against Host by the parser
}

function positive(value: number, name: string): number {
  if (!(value > 0) || !Number.isFinite(value)) {
    throw new Error(`${name} must be a positive number, not ${value}`);
  }
  return value;
}

/** A request body read off the connection as the handler pulls it. */
class BodyReader {
  readonly stream: ReadableStream<Uint8Array>;
  done = false;
  /** The response has been chosen: too late for 100 Continue. */
  responding = false;
  #left: number;
  #chunked: ChunkedDecoder | undefined;
  #continued = false;
  /** A pull is under way (the handler still reads: no draining then). */
  #reading = false;
  /** Bytes read so far (content only). */
  #read = 0;

  constructor(readonly c: Connection, readonly head: RequestHead) {
    this.#left = head.length;
    this.#chunked = head.framing === BodyFraming.Chunked ? new ChunkedDecoder() : undefined;
    this.stream = new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        this.#reading = true;
        try {
          const chunk = await this.#next();
          if (chunk === null) {
            controller.close();
            // The body is in: watch for the client hanging up, if anyone listens.
            if (this.c.abort !== null) this.c.watch();
          } else controller.enqueue(chunk);
        } catch (error) {
          controller.error(error);
          // Framing is lost: nothing after this can be read as a request.
          this.c.eof = true;
        } finally {
          this.#reading = false;
        }
      },
    }, { highWaterMark: 0 });
  }

  /**
   * Whether what is left of the body may be read and dropped after the response: no pull
   * under way, no 100 Continue owed (the client may never send the body), and at most
   * {@linkcode DRAIN_LIMIT} bytes (declared, or read so far when chunked).
   */
  drainable(): boolean {
    if (this.done) return true;
    if (this.#reading || this.c.eof) return false;
    if (this.head.expectContinue && !this.#continued) return false;
    return this.#chunked === undefined ? this.#left <= DRAIN_LIMIT : this.#read <= DRAIN_LIMIT;
  }

  /** Reads and drops the rest of the body; false when the connection must close instead. */
  async drain(): Promise<boolean> {
    if (this.#reading) return false;
    this.responding = true;
    try {
      for (let i = 0; i < 1_000_000; i++) {
        const chunk = await this.#next();
        if (chunk === null) return !this.c.eof;
        if (this.#read > DRAIN_LIMIT) return false;
      }
    } catch {
      this.c.eof = true;
    }
    return false;
  }

  async #next(): Promise<Uint8Array | null> {
    const chunk = await this.#nextRaw();
    if (chunk !== null) this.#read += chunk.length;
    return chunk;
  }

  async #nextRaw(): Promise<Uint8Array | null> {
    const c = this.c;
    // A read started by an earlier request's watch may still be filling the buffer: the body
    // is read after it, and the buffer grows only then.
    if (c.pending !== null) await c.pending;
    c.grow(BODY_BUFFER);
    if (this.head.expectContinue && !this.#continued && !this.responding) {
      this.#continued = true;
      await writeAll(c.conn, CONTINUE);
    }
    if (this.#chunked !== undefined) return await this.#nextChunk(this.#chunked);
    if (this.#left === 0) {
      this.done = true;
      return null;
    }
    if (c.end > c.start) {
      const n = Math.min(c.end - c.start, this.#left);
      const chunk = c.buf.slice(c.start, c.start + n);
      c.start += n;
      this.#left -= n;
      if (this.#left === 0) this.done = true;
      return chunk;
    }
    // Nothing buffered: read straight into a chunk of its own (no copy).
    const chunk = new Uint8Array(Math.min(this.#left, BODY_BUFFER));
    const n = await c.conn.read(chunk);
    if (n === null) throw new Error("client closed the connection inside the request body");
    this.#left -= n;
    if (this.#left === 0) this.done = true;
    return chunk.subarray(0, n);
  }

  async #nextChunk(decoder: ChunkedDecoder): Promise<Uint8Array | null> {
    const c = this.c;
    for (let i = 0; i < 1_000_000; i++) {
      c.start = decoder.advance(c.buf, c.start, c.end);
      if (decoder.dataLeft > 0 && c.end > c.start) {
        const n = Math.min(decoder.dataLeft, c.end - c.start);
        const chunk = c.buf.slice(c.start, c.start + n);
        c.start += n;
        decoder.took(n);
        return chunk;
      }
      if (decoder.done) {
        this.done = true;
        return null;
      }
      if (!(await c.fill(BODY_BUFFER))) {
        throw new Error("client closed the connection inside the request body");
      }
    }
    throw new Error("request body read stalled");
  }
}

const CONTINUE = new TextEncoder().encode("HTTP/1.1 100 Continue\r\n\r\n");

/** Most unread request body bytes dropped after a response to keep the connection (hyper's is 64 KiB too). */
const DRAIN_LIMIT = 64 * 1024;

/**
 * The handler's request (lib/incoming.ts), not a Fetch `Request`: building one costs more than
 * the rest of reading the request (URL parsing, WebIDL conversions, internal records), and
 * `new Request` would also upper-case `get`, refuse CONNECT/TRACE/TRACK and resolve `..` in the
 * URL, where Deno.serve hands on the method and target as sent. So does this. A GET or HEAD body
 * is not handed on (a Fetch `Request` cannot carry one); it is dropped after the response like
 * any unread body. The `headers` and `signal` are made on first use: the proxy reads the
 * parsed `fields` instead, and looks at the signal only for requests that take a while.
 */
class NativeRequest implements IncomingRequest {
  readonly body: ReadableStream<Uint8Array> | null;
  #headers: Headers | undefined;
  #c: Connection;
  #reader: BodyReader | undefined;
  #controller: AbortController | undefined;
  /** The response has been delivered or abandoned: a signal made now is never aborted. */
  #finished = false;
  protocol = "HTTP/1.1";

  constructor(
    readonly method: string,
    readonly url: string,
    readonly fields: readonly (readonly [string, string])[],
    c: Connection,
    reader: BodyReader | undefined,
  ) {
    this.body = reader === undefined || method === "GET" || method === "HEAD"
      ? null
      : reader.stream;
    this.#c = c;
    this.#reader = reader;
  }

  /** The exchange is over: the connection's later requests are not this one's business. */
  finish(): void {
    this.#finished = true;
  }

  get headers(): Headers {
    if (this.#headers !== undefined) return this.#headers;
    const headers = this.#headers = new Headers();
    // The parser has validated the fields: append takes each as it is.
    const fields = this.fields;
    for (let i = 0; i < fields.length; i++) headers.append(fields[i][0], fields[i][1]);
    return headers;
  }

  get signal(): AbortSignal {
    if (this.#controller !== undefined) return this.#controller.signal;
    const controller = this.#controller = new AbortController();
    const c = this.#c;
    if (this.#finished) return controller.signal;
    c.abort = controller;
    if (c.eof) controller.abort(new DOMException("client hung up", "AbortError"));
    else if (this.#reader === undefined || this.#reader.done) c.watch();
    return controller.signal;
  }
}
