/**
 * @module
 * The native upstream transport (issue 12): HTTP/1.1 to backends over `Deno.connect` and
 * `Deno.startTls`/`Deno.connectTls`, with a keep-alive pool per origin, behind the same
 * {@linkcode Transport} signature as fetch's `sendAttempt` (lib/upstream.ts).
 *
 * Why not fetch: fetch decodes gzip/br bodies, normalises request targets, has no connect or
 * body read timeout, and costs more CPU per small request (docs/performance.md). This
 * transport writes the method and target exactly as received, passes bodies through
 * undecoded (`decoded: false`) and parses responses strictly (lib/http1_parse.ts).
 *
 * Where the time goes on a small GET is the kernel's loopback write; the rest is kept small:
 * one reusable read buffer per connection, into which an idle connection always has a read
 * posted (bytes or EOF arriving while idle discard the connection at once, and the posted read
 * is the next response's first read, as in Go's `persistConn`); the head (with a small body)
 * written with one `write`; the common exchange one async function (write, read, synchronous
 * parse); small Content-Length bodies read whole and returned as bytes; the answer returned
 * in parts (status, fields as parsed, body), from which the proxy builds the one Response the
 * client gets; deadlines on the shared `afterDelay` lists, their callbacks made once per
 * connection; no clock read per release (idle expiry counts sweeps).
 *
 * Decisions where HTTP or the issue leaves a choice:
 * - Failure kinds follow lib/retry.ts. Nothing sent -> `connect`: refused, connect timeout,
 *   TLS handshake failure, and a request that cannot be written (CR/LF/NUL in a header value,
 *   a method that is not a token). The request may have been sent -> `maybe-sent`: resets, EOF,
 *   every malformed response, a write failure even on a new connection. No headers in time
 *   -> `timeout`. The client left, or the caller's body stream failed or did not match its
 *   Content-Length -> `client-gone` (not the backend's doing).
 * - `connectTimeout` covers TCP and the TLS handshake, capped by `timeout`; `timeout` then
 *   counts from the request being sent (its body included) until the response head, as nginx
 *   counts its read timeout; while a body is sent, each piece the backend does not take within
 *   `timeout` ends the attempt (nginx's send timeout), and the client's pauses between pieces
 *   are not counted (the caller's body timeout bounds those).
 * - At most `maxConnsPerOrigin` connections per origin (no cap unless set), 32 of them connecting
 *   at once: more
 *   requests queue for a released connection, up to `timeout` (HAProxy's `maxconn` and `timeout
 *   queue`). A connect that times out while the origin has other connections open makes its
 *   request queue too: under 2,000 connections Deno delivered connects that the kernel had
 *   completed at once 0.7-2 s late, so such a timeout is the balancer's own queueing. A refused
 *   connect, or a timeout with nothing open, fails the queued requests at once (a dead backend).
 * - `readTimeout` bounds each wait for body bytes. While a small body is read whole, before
 *   anything was returned, running out is a failed attempt (`maybe-sent`, "read timeout after
 *   Nms"); on a streamed body it errors the stream and tells `onBodyFailure`. A framing error
 *   found mid-body (chunked bodies decoded after their head was returned) does the same.
 * - A reused connection that ends (EOF, reset, failed write) before any response byte is the
 *   idle-connection race: the request is sent once more, on a new connection, only when its
 *   method is idempotent and its body is null or bytes.
 * - `Expect: 100-continue`: the head goes first; the body follows a 100, or after 1 s without
 *   one (curl's wait); a final answer first means the body is never sent and the connection
 *   is closed after.
 * - Statuses whose Response cannot have a body (205 with content) get none; the connection is
 *   then closed.
 * - The client's signal is listened to once an exchange has lasted 50 ms (listening is dear, and
 *   most exchanges are over by then); a client that left sooner ends its attempt then.
 */

import {
  ChunkedDecoder,
  findHeadEnd,
  Framing,
  latin1,
  MalformedResponse,
  MAX_HEAD_BYTES,
  parseHead,
  type ResponseHead,
} from "./http1_parse.ts";
import {
  buildHead,
  encodeHead,
  type RequestBody,
  requestBody,
  type RequestHead,
  SourceError,
  targetOf,
  writeAll,
  writeStream,
} from "./http1_request.ts";
import { concatBytes } from "./body.ts";
import { ResponseBodyError } from "./errors.ts";
import type { BodyPool } from "./body_pool.ts";
import { unbracket } from "./host.ts";
import { type Failure, type FailureKind, isIdempotent } from "./retry.ts";
import {
  afterDelay,
  type AttemptOptions,
  type AttemptRequest,
  type AttemptResult,
  type Deadline,
  type Transport,
  type UpstreamResponse,
} from "./upstream.ts";

/** TLS material for HTTPS backends, as PEM text. */
export interface NativeTlsOptions {
  /**
   * Extra CA certificates trusted for backends, added to the default roots (Deno's
   * `caCerts`, which adds to the Mozilla roots, or the system store with
   * `DENO_TLS_CA_STORE=system`). @default none
   */
  ca?: string;
  /** Client certificate chain shown to backends that ask (mTLS); needs `key`. @default none */
  cert?: string;
  /** Private key of `cert`. @default none */
  key?: string;
}

/** Options of {@linkcode createNativeTransport}. */
export interface NativeTransportOptions {
  /** TLS for `https:` origins. @default default roots, no client certificate */
  tls?: NativeTlsOptions;
  /**
   * Idle connections kept per origin; more are closed when released. Without a cap a burst's
   * connections stay until `idleTimeout`, as HAProxy's and Envoy's pools do: a cap below the
   * concurrency closes and reopens connections all the time under load. @default Infinity
   */
  maxIdlePerOrigin?: number;
  /** An idle connection unused this long (ms) is closed. @default 30000 */
  idleTimeout?: number;
  /**
   * Connects in progress per origin; further requests wait for a released connection or a free
   * connect, so a burst does not overflow a backend's accept queue (nginx's is 511). @default 32
   */
  maxConnectingPerOrigin?: number;
  /**
   * Connections per origin, open or connecting (HAProxy's `maxconn` on a server line): at the
   * cap a request waits for a released connection, up to its `timeout`, rather than opening
   * another socket. No cap by default, as nginx's `max_conns`: a cap holds long-lived streams
   * (server-sent events) beyond it until their timeout. @default Infinity
   */
  maxConnsPerOrigin?: number;
  /**
   * Buffers for bodies read whole (up to 64 KiB), given back by whoever writes them to the
   * client (the native front end). Unset: a fresh array per body.
   */
  bodyPool?: BodyPool;
  /**
   * Told when a backend sent bytes after a complete response (a wrong Content-Length, a second
   * answer): the connection is closed rather than reused, as nginx does ("upstream sent more
   * data than specified"). @default none
   */
  onExtraBytes?: (origin: string, count: number) => void;
}

/** Connection counts of one origin. */
export interface OriginStats {
  /** Connections open now, idle or carrying a request. */
  open: number;
  /** Connections idle in the pool now. */
  idle: number;
  /** Connections made since the transport was created (retiring the origin keeps the count). */
  connects: number;
  /** Requests sent on an idle connection rather than a new one. */
  reuses: number;
  /** Requests waiting now for a connection (the cap or the connects in progress reached). */
  waiting: number;
}

/** What {@linkcode createNativeTransport} returns. */
export interface NativeTransport {
  /** Sends one attempt; the contract of `sendAttempt` (lib/upstream.ts), `decoded: false`. */
  readonly send: Transport;
  /** Connection counts of `origin` (zeros when it has none). */
  stats(origin: string): OriginStats;
  /**
   * Forgets `origin` (a removed backend): its idle connections close now, the ones carrying a
   * request when that request finishes. A later request to it starts afresh; its connect and
   * reuse counts go on from where they were (metrics counters must not go backwards).
   */
  retire(origin: string): void;
  /** Closes every connection, idle or busy (shutdown); later attempts fail as `connect`. */
  close(): Promise<void>;
}

/** Bytes of each connection's read buffer; a longer response head grows it. */
const READ_SIZE = 16 * 1024;
/** Bytes of each connection's write buffer (the head, plus a small body when it fits). */
const WRITE_SIZE = 4 * 1024;
/** Content-Length bodies up to this size are read whole before the response is returned. */
const BUFFER_BODY_LIMIT = 64 * 1024;
/** Largest read while streaming a body. */
const STREAM_READ_SIZE = 64 * 1024;
/** Interim (1xx) responses skipped before the answer is called malformed. */
const MAX_INTERIM = 32;
/** How long `Expect: 100-continue` waits for the 100 before sending the body anyway (curl: 1 s). */
const EXPECT_WAIT_MS = 1000;
/**
 * How long an exchange runs before it listens to its client's signal (see
 * `Connection.watchClient`); shorter than the proxy's own wait before it watches the client
 * (lib/proxy.ts), so a hang-up the proxy reports is never seen later for it.
 */
const CLIENT_LISTEN_DELAY_MS = 50;
/** Read timeout when `AttemptOptions.readTimeout` is left out (nginx's proxy_read_timeout). */
const DEFAULT_READ_TIMEOUT = 60_000;

/** Request body write states of a {@linkcode Connection}. */
const Write = { Writing: 0, Done: 1, Failed: 2, Skipped: 3 } as const;
type Write = typeof Write[keyof typeof Write];

/**
 * Runs `fn` once the I/O that completed during the current turn of the event loop has been
 * delivered. Deno runs due timers before it: after a long turn (a busy balancer), a connect that
 * succeeded in time would otherwise lose to its own timeout. nginx, too, handles events before
 * it expires timers.
 */
function afterPendingIo(fn: () => void): () => void {
  // Two turns: a connect still waiting for its first poll when the timer fired completes in
  // the turn after the one that starts it.
  let timer = setTimeout(() => timer = setTimeout(fn, 0), 0);
  return () => clearTimeout(timer);
}

/** A waiter's turn to connect itself (see {@linkcode OriginPool.acquire}). */
const DIAL = Symbol("dial");
type Dial = typeof DIAL;

/** A request waiting for a connection to one origin. */
interface Waiter {
  settle(turn: Connection | Failure | Dial): void;
}

/** Creates a transport with its own connection pools. Throws RangeError for bad options. */
export function createNativeTransport(options: NativeTransportOptions = {}): NativeTransport {
  const maxIdle = options.maxIdlePerOrigin ?? Infinity;
  const idleTimeout = options.idleTimeout ?? 30_000;
  const maxDialing = options.maxConnectingPerOrigin ?? 32;
  const maxConns = options.maxConnsPerOrigin ?? Infinity;
  if (!(maxIdle === Infinity || (Number.isInteger(maxIdle) && maxIdle >= 0))) {
    throw new RangeError(`maxIdlePerOrigin: expected a whole number >= 0, got ${maxIdle}`);
  }
  if (!Number.isInteger(maxDialing) || maxDialing < 1) {
    throw new RangeError(`maxConnectingPerOrigin: expected a whole number >= 1, got ${maxDialing}`);
  }
  if (!(maxConns === Infinity || (Number.isInteger(maxConns) && maxConns >= 1))) {
    throw new RangeError(`maxConnsPerOrigin: expected a whole number >= 1, got ${maxConns}`);
  }
  if (!(idleTimeout > 0) || !Number.isFinite(idleTimeout)) {
    throw new RangeError(`idleTimeout: expected milliseconds > 0, got ${idleTimeout}`);
  }
  const tls = options.tls ?? {};
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new RangeError("tls: cert and key go together");
  }
  const state = new TransportState(
    maxIdle,
    idleTimeout,
    tls,
    maxDialing,
    maxConns,
    options.bodyPool,
    options.onExtraBytes,
  );

  return {
    send: (origin, url, request, clientSignal, attemptOptions) =>
      send(state, origin, url, request, clientSignal, attemptOptions),
    stats(origin) {
      const pool = state.pools.get(origin);
      const { connects, reuses } = state.totals.get(origin) ?? { connects: 0, reuses: 0 };
      if (pool === undefined) return { open: 0, idle: 0, connects, reuses, waiting: 0 };
      return {
        open: pool.open,
        idle: pool.idle.length,
        connects,
        reuses,
        waiting: pool.waiters.length,
      };
    },
    retire(origin) {
      const pool = state.pools.get(origin);
      if (pool === undefined) return;
      state.pools.delete(origin);
      pool.retired = true;
      for (const c of pool.idle.splice(0)) c.close();
    },
    close: () => state.close(),
  };
}

/** Everything one transport owns. */
class TransportState {
  readonly pools = new Map<string, OriginPool>();
  /** Connects and reuses by origin, kept when a retired origin's pool is dropped. */
  readonly totals = new Map<string, OriginTotals>();
  /** Every open connection, idle or busy, for close(). */
  readonly all = new Set<Connection>();
  /** Connects in progress, so close() can wait for them. */
  readonly connecting = new Set<Promise<unknown>>();
  closed = false;
  /**
   * Counts idle sweeps; a released connection notes it (`idleSince`) instead of reading the
   * clock, which costs an op per request. Sweeps are at least `#sweepEvery` apart, so one that
   * finds `epoch - idleSince > #sweepsToExpire` closes connections idle at least idleTimeout
   * (and at most one sweep interval more).
   */
  epoch = 0;
  #sweep: Deadline | undefined;
  readonly #sweepEvery: number;
  readonly #sweepsToExpire: number;

  constructor(
    readonly maxIdle: number,
    readonly idleTimeout: number,
    readonly tls: NativeTlsOptions,
    readonly maxDialing: number,
    readonly maxConns: number,
    readonly bodies: BodyPool | undefined,
    readonly onExtraBytes: ((origin: string, count: number) => void) | undefined,
  ) {
    this.#sweepEvery = Math.max(10, Math.min(1000, Math.round(idleTimeout / 4)));
    this.#sweepsToExpire = Math.ceil(idleTimeout / this.#sweepEvery);
  }

  poolOf(origin: string): OriginPool {
    let pool = this.pools.get(origin);
    if (pool === undefined) {
      let totals = this.totals.get(origin);
      if (totals === undefined) this.totals.set(origin, totals = { connects: 0, reuses: 0 });
      pool = new OriginPool(this, origin, totals);
      this.pools.set(origin, pool);
    }
    return pool;
  }

  /** Arms the idle sweep unless armed; it re-arms itself while idle connections remain. */
  scheduleSweep(): void {
    this.#sweep ??= afterDelay(this.#sweepEvery, () => this.#sweepIdle());
  }

  #sweepIdle(): void {
    this.#sweep = undefined;
    const expired = ++this.epoch - this.#sweepsToExpire;
    let left = 0;
    for (const pool of this.pools.values()) {
      // LIFO: the longest idle are at the bottom.
      let n = 0;
      while (n < pool.idle.length && pool.idle[n].idleSince < expired) n++;
      for (const c of pool.idle.splice(0, n)) c.close();
      left += pool.idle.length;
    }
    if (left > 0) this.scheduleSweep();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.#sweep?.cancel();
    this.#sweep = undefined;
    const posted: Promise<unknown>[] = [];
    for (const c of this.all) {
      if (c.posted !== undefined) posted.push(c.posted);
      c.failure ??= SHUTDOWN;
      c.close();
    }
    for (const pool of this.pools.values()) {
      for (const waiter of pool.waiters.splice(0)) waiter.settle(SHUTDOWN);
    }
    this.pools.clear();
    await Promise.allSettled([...posted, ...this.connecting]);
  }
}

/** Not the backend's fault: the transport was closed. */
const SHUTDOWN: Failure = { kind: "client-gone", detail: "transport closed" };
const CLIENT_GONE: Failure = { kind: "client-gone", detail: "client disconnected" };

/** What {@linkcode OriginStats} counts of one origin, across its pools. */
interface OriginTotals {
  connects: number;
  reuses: number;
}

/** The connections of one origin. */
class OriginPool {
  readonly hostname: string;
  readonly port: number;
  /** `host[:port]` for a request that has no Host header. */
  readonly authority: string;
  readonly secure: boolean;
  /** Idle connections, most recently used last (LIFO reuse). */
  readonly idle: Connection[] = [];
  open = 0;
  /** Set by retire(): connections close instead of returning to `idle`. */
  retired = false;
  /** Connects in progress. */
  dialing = 0;
  /** Requests waiting for a connection (connects or connections at their cap), oldest first. */
  readonly waiters: Waiter[] = [];

  constructor(
    readonly owner: TransportState,
    readonly origin: string,
    readonly totals: OriginTotals,
  ) {
    const url = new URL(origin);
    this.secure = url.protocol === "https:";
    if (!this.secure && url.protocol !== "http:") {
      throw new TypeError(`unsupported backend scheme ${url.protocol}`);
    }
    this.hostname = unbracket(url.hostname);
    this.port = Number(url.port || (this.secure ? 443 : 80));
    this.authority = url.host;
  }

  /** Takes the most recently used idle connection, if any. */
  take(): Connection | undefined {
    const c = this.idle.pop();
    if (c === undefined) return undefined;
    c.idle = false;
    this.totals.reuses++;
    return c;
  }

  /**
   * A connection for one request: an idle one, a new one, or, while `maxDialing` connects are in
   * progress or `maxConns` connections are open or connecting, the first one released or a
   * connect of its own once a slot frees. Bursts of requests thus never open more connections at
   * once than the backend's accept queue can take, nor more in all than the cap.
   *
   * A connect that times out while the origin has other connections open is not the end of the
   * request: the backend is answering on those, and under a saturated event loop Deno delivered
   * connects that the kernel had completed in microseconds 0.7 to 2 s late (docs/performance.md),
   * so the request waits for one of them to be released instead.
   */
  async acquire(options: AttemptOptions, clientSignal: AbortSignal): Promise<Connection | Failure> {
    const idle = this.take();
    if (idle !== undefined) return idle;
    if (!this.#mayDial()) {
      const turn = await this.#wait(options, clientSignal, false);
      if (turn !== DIAL) return turn;
    }
    this.dialing++;
    let made: Connection | Failure;
    try {
      made = await connect(this, options, clientSignal);
    } finally {
      this.dialing--;
    }
    if (made instanceof Connection || made.kind !== "connect") {
      this.wakeDialer();
      return made;
    }
    if (made.timedOut !== true) {
      // Refused or reset: every waiter's connect would fail the same way.
      for (const waiter of this.waiters.splice(0)) waiter.settle(made);
      return made;
    }
    if (this.open === 0 || this.retired || this.owner.closed) {
      // Nothing answers: a black-holed backend would time out every waiter's connect in turn.
      for (const waiter of this.waiters.splice(0)) waiter.settle(made);
      return made;
    }
    this.wakeDialer();
    const turn = await this.#wait(options, clientSignal, true);
    if (turn !== DIAL) return turn;
    // Only a released connection was worth the wait; pass the connect turn on.
    this.wakeDialer();
    return made;
  }

  /** Whether a request may start a connect now (see {@linkcode acquire}). */
  #mayDial(): boolean {
    const owner = this.owner;
    return this.dialing < owner.maxDialing && this.open + this.dialing < owner.maxConns;
  }

  /** Gives the oldest waiter its turn to connect when a connect or a connection slot frees. */
  wakeDialer(): void {
    if (this.waiters.length > 0 && !this.owner.closed && this.#mayDial()) {
      this.waiters.shift()!.settle(DIAL);
    }
  }

  /**
   * Waits for a released connection or a free connect, at most the attempt's `timeout` (HAProxy's
   * `timeout queue`). Running out is a `connect` failure marked `timedOut`: nothing was sent, so
   * another backend may be tried, and a wait in the balancer's queue does not mark the backend
   * down. `first` puts the request at the head of the queue (it has waited for a connect already).
   */
  #wait(
    options: AttemptOptions,
    clientSignal: AbortSignal,
    first: boolean,
  ): Promise<Connection | Failure | Dial> {
    if (clientSignal.aborted) return Promise.resolve(CLIENT_GONE);
    const { promise, resolve } = Promise.withResolvers<Connection | Failure | Dial>();
    const limit = options.timeout;
    const waiter: Waiter = {
      settle: (turn) => {
        deadline?.cancel();
        clientSignal.removeEventListener("abort", onClientAbort);
        resolve(turn);
      },
    };
    const leave = (failure: Failure) => {
      const at = this.waiters.indexOf(waiter);
      if (at === -1) return; // served meanwhile
      this.waiters.splice(at, 1);
      waiter.settle(failure);
    };
    const onClientAbort = () => leave(CLIENT_GONE);
    const deadline = limit < Infinity
      ? afterDelay(limit, () =>
        leave({
          kind: "connect",
          detail: `no connection free within ${limit}ms (${this.open} open)`,
          timedOut: true,
        }))
      : undefined;
    clientSignal.addEventListener("abort", onClientAbort);
    if (first) this.waiters.unshift(waiter);
    else this.waiters.push(waiter);
    return promise;
  }

  /** Back to `idle` with a read posted, or closed when it cannot carry another request. */
  release(c: Connection): void {
    const owner = this.owner;
    if (c.start !== c.end && !c.closed) {
      // Bytes after a complete response: reused, they would be the next request's answer.
      try {
        owner.onExtraBytes?.(this.origin, c.end - c.start);
      } catch { /* a hook must not keep the connection */ }
    }
    if (c.closed || this.retired || owner.closed || c.start !== c.end) return c.close();
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      // Handed straight to a request waiting for a connection: no idle round trip.
      c.start = c.end = 0;
      this.totals.reuses++;
      return waiter.settle(c);
    }
    if (this.idle.length >= owner.maxIdle) return c.close();
    c.start = c.end = 0;
    c.idle = true;
    c.idleSince = owner.epoch;
    const posted = c.conn.read(c.buf);
    c.posted = posted;
    posted.then(c.onIdleSettled, c.onIdleSettled);
    this.idle.push(c);
    owner.scheduleSweep();
  }
}

/**
 * One backend connection: its reusable buffers, and the state of the request it carries. The
 * deadline and abort callbacks are made once here, not once per request.
 */
class Connection {
  buf = new Uint8Array(READ_SIZE);
  /** Unread response bytes are `buf[start, end)`. */
  start = 0;
  end = 0;
  wbuf: Uint8Array | undefined;
  /** The read posted while idle; the next response's first read. */
  posted: Promise<number | null> | undefined;
  idle = false;
  /** {@linkcode TransportState.epoch} when it was last released. */
  idleSince = 0;
  closed = false;
  /** Requests carried so far (more than 1: reused). */
  uses = 0;
  /** Why the current request was cut short (deadline, client, shutdown); undefined if not. */
  failure: Failure | undefined;
  writeState: Write = Write.Done;
  /** Opens the `Expect: 100-continue` gate (true) or shuts it (false). */
  gate: ((send: boolean) => void) | undefined;
  /** The response body streams: its stream, not the exchange, finishes the connection. */
  streaming = false;
  headerTimeout = 0;
  readTimeout = DEFAULT_READ_TIMEOUT;
  /**
   * The wait for the response head: from the request (its body included) being sent, while
   * the response head has not come. Undefined while a body is still being written.
   */
  headerDeadline: Deadline | undefined;
  /** The response head came, or the exchange failed: body writes no longer time it. */
  headed = false;

  readonly onHeaderTimeout = () =>
    this.abandon({
      kind: "timeout",
      detail: `no response headers within ${this.headerTimeout}ms`,
    });
  readonly onWriteTimeout = () => {
    if (this.headed) return;
    this.abandon({
      kind: "timeout",
      detail: `request body not taken within ${this.headerTimeout}ms`,
    });
  };

  /** Stops the wait for the response head (it came, or the exchange is over). */
  endHeaderWait(): void {
    this.headed = true;
    this.headerDeadline?.cancel();
    this.headerDeadline = undefined;
  }

  /**
   * Writes a piece of the request body, within the header timeout while no response head has
   * come: a backend that stops taking the body is the backend's delay, the client's pauses
   * between pieces are not (the client's body timeout bounds those).
   */
  async writeBodyPiece(bytes: Uint8Array): Promise<void> {
    const deadline = this.headed ? undefined : afterDelay(this.headerTimeout, this.onWriteTimeout);
    try {
      await writeAll(this.conn, bytes);
    } finally {
      deadline?.cancel();
    }
  }

  /** The body is all sent: the wait for the response head starts now, if it has not come. */
  bodySent(): void {
    if (!this.headed) this.headerDeadline = afterDelay(this.headerTimeout, this.onHeaderTimeout);
  }
  readonly onClientAbort = () => this.abandon(CLIENT_GONE);
  /** The current request's client signal, listened to once the exchange has lasted a while. */
  #client: AbortSignal | undefined;
  #listening = false;
  #listen: Deadline | undefined;
  readonly #startListening = () => {
    this.#listen = undefined;
    const client = this.#client!;
    if (client.aborted) return this.onClientAbort();
    client.addEventListener("abort", this.onClientAbort);
    this.#listening = true;
  };
  readonly onReadTimeout = () =>
    this.abandon({ kind: "maybe-sent", detail: `read timeout after ${this.readTimeout}ms` });
  /** The posted read settled: while still idle, that is EOF, a reset or stray bytes. */
  readonly onIdleSettled = () => {
    if (!this.idle) return;
    this.idle = false;
    const list = this.pool.idle;
    const index = list.indexOf(this);
    if (index !== -1) list.splice(index, 1);
    this.close();
  };

  constructor(readonly conn: Deno.Conn, readonly pool: OriginPool) {
    pool.open++;
    pool.totals.connects++;
    pool.owner.all.add(this);
  }

  /**
   * Has the current request end when `client` aborts. Adding and removing an abort listener
   * is among the dearest steps of a request on Deno, and most exchanges are over long
   * before a client could be missed, so listening starts only once this one has lasted
   * {@linkcode CLIENT_LISTEN_DELAY_MS}: a client gone earlier is seen then.
   */
  watchClient(client: AbortSignal, now: number): void {
    this.#client = client;
    // An abort before now (during a connect) fires no event.
    if (client.aborted) return this.onClientAbort();
    this.#listen = afterDelay(CLIENT_LISTEN_DELAY_MS, this.#startListening, now);
  }

  /** Stops {@linkcode watchClient}: that client must not abandon the next request. */
  unwatchClient(): void {
    this.#listen?.cancel();
    this.#listen = undefined;
    if (this.#listening) this.#client!.removeEventListener("abort", this.onClientAbort);
    this.#listening = false;
    this.#client = undefined;
  }

  /** Ends the current request with `failure` (the first one given wins). */
  abandon(failure: Failure): void {
    this.failure ??= failure;
    this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.idle = false;
    this.pool.open--;
    this.pool.owner.all.delete(this);
    // A slot under the connection cap is free.
    this.pool.wakeDialer();
    try {
      this.conn.close();
    } catch { /* closed already */ }
  }

  /** Reads more bytes after `end` (compacting or growing the buffer first); false on EOF. */
  async fill(): Promise<boolean> {
    let n: number | null;
    if (this.posted !== undefined) {
      // Posted into buf[0, ...) by release(), where start = end = 0.
      const posted = this.posted;
      this.posted = undefined;
      n = await posted;
    } else {
      if (this.start === this.end) this.start = this.end = 0;
      if (this.end === this.buf.length) this.#makeRoom();
      n = await this.conn.read(this.buf.subarray(this.end));
    }
    if (n === null) return false;
    this.end += n;
    return true;
  }

  #makeRoom(): void {
    if (this.start > 0) {
      this.buf.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
      return;
    }
    // Only a response head needs more than the buffer at once; MAX_HEAD_BYTES bounds it.
    const bigger = new Uint8Array(Math.min(this.buf.length * 2, MAX_HEAD_BYTES + READ_SIZE));
    bigger.set(this.buf.subarray(0, this.end));
    this.buf = bigger;
  }

  /**
   * Swaps in a {@linkcode STREAM_READ_SIZE} buffer while a body streams, keeping unread bytes:
   * each read then takes up to 64 KiB, and chunks are copied out at their size: a fresh zeroed
   * 64 KiB array per read would cost more in allocation and GC than the copy.
   */
  streamBuffer(): void {
    if (this.buf.length >= STREAM_READ_SIZE) return;
    const big = new Uint8Array(STREAM_READ_SIZE);
    big.set(this.buf.subarray(this.start, this.end));
    this.end -= this.start;
    this.start = 0;
    this.#small = this.buf;
    this.buf = big;
  }

  /** Back to the connection's own buffer once a streamed body is over (nothing left unread). */
  endStream(): void {
    if (this.#small !== undefined && this.start === this.end) {
      this.buf = this.#small;
      this.start = this.end = 0;
    }
    this.#small = undefined;
  }

  #small: Uint8Array<ArrayBuffer> | undefined;

  /** One read of body bytes into `into`, bounded by the read timeout. */
  async readBody(into: Uint8Array): Promise<number | null> {
    if (!(this.readTimeout < Infinity)) return await this.conn.read(into);
    const deadline = afterDelay(this.readTimeout, this.onReadTimeout);
    try {
      return await this.conn.read(into);
    } finally {
      deadline.cancel();
    }
  }

  /** {@linkcode fill} bounded by the read timeout (for chunked bodies). */
  async fillBody(): Promise<boolean> {
    if (!(this.readTimeout < Infinity)) return await this.fill();
    const deadline = afterDelay(this.readTimeout, this.onReadTimeout);
    try {
      return await this.fill();
    } finally {
      deadline.cancel();
    }
  }
}

/** Why an exchange ended before a response; `nothingReceived` marks a stale connection. */
class ExchangeError extends Error {
  constructor(message: string, readonly nothingReceived = false) {
    super(message);
  }
}

/**
 * Sends one attempt. Not async: a request that finds an idle connection (most do) gets the
 * exchange's own promise, one promise and microtask turn fewer.
 */
function send(
  state: TransportState,
  origin: string,
  url: string,
  request: AttemptRequest,
  clientSignal: AbortSignal,
  options: AttemptOptions,
): Promise<AttemptResult> {
  if (clientSignal.aborted) return Promise.resolve({ ok: false, failure: CLIENT_GONE });
  if (state.closed) return Promise.resolve(failed("connect", "transport closed"));
  let pool: OriginPool;
  let body: RequestBody;
  let head: RequestHead | string;
  try {
    pool = state.poolOf(origin);
    body = requestBody(request.body);
    head = buildHead(request.method, targetOf(origin, url), request.headers, body, pool.authority);
  } catch (error) {
    return Promise.resolve(failed("connect", `request not sent: ${describe(error)}`));
  }
  // Nothing was sent: `connect` is the kind that says so (no Headers object can hold such a
  // value, so the proxy never gets here).
  if (typeof head === "string") {
    return Promise.resolve(failed("connect", `request not sent: ${head}`));
  }
  const c = pool.take();
  if (c !== undefined) return exchange(c, head, body, request, clientSignal, options);
  return sendOn(pool.acquire(options, clientSignal), head, body, request, clientSignal, options);
}

/**
 * The exchange on the connection `pending` gives (an idle or new one from `pool.acquire`, or a
 * new one for a resend), or its failure.
 */
async function sendOn(
  pending: Promise<Connection | Failure>,
  head: RequestHead,
  body: RequestBody,
  request: AttemptRequest,
  clientSignal: AbortSignal,
  options: AttemptOptions,
): Promise<AttemptResult> {
  const c = await pending;
  if (!(c instanceof Connection)) return { ok: false, failure: c };
  return await exchange(c, head, body, request, clientSignal, options);
}

/**
 * The idle-connection race: the backend closed a kept-alive connection as the request went
 * out. Sent again on a new connection only when that cannot do harm (RFC 9110 §9.2.2) and the
 * body is replayable. A new connection is never stale: its failures are the exchange's own.
 */
function resend(
  pool: OriginPool,
  head: RequestHead,
  body: RequestBody,
  request: AttemptRequest,
  clientSignal: AbortSignal,
  options: AttemptOptions,
): Promise<AttemptResult> | AttemptResult {
  if (body instanceof ReadableStream || !isIdempotent(request.method)) {
    return failed("maybe-sent", "reused connection closed by the backend before any response");
  }
  if (clientSignal.aborted) return { ok: false, failure: CLIENT_GONE };
  const fresh = connect(pool, options, clientSignal);
  return sendOn(fresh, head, body, request, clientSignal, options);
}

// ---------------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------------

/**
 * A new connection within `min(connectTimeout, timeout)` (TCP, and for HTTPS the TLS handshake
 * too), or the `connect` failure (`client-gone` when the client left meanwhile).
 */
async function connect(
  pool: OriginPool,
  options: AttemptOptions,
  clientSignal: AbortSignal,
): Promise<Connection | Failure> {
  const owner = pool.owner;
  const limit = Math.min(options.connectTimeout, options.timeout);
  const controller = new AbortController();
  let timedOut = false;
  let settled = false;
  let cancelLate: (() => void) | undefined;
  const deadline = afterDelay(limit, () => {
    cancelLate = afterPendingIo(() => {
      if (settled) return;
      timedOut = true;
      controller.abort();
    });
  });
  const onClientAbort = () => controller.abort();
  clientSignal.addEventListener("abort", onClientAbort);
  const dialing = dial(pool, owner.tls, controller.signal);
  dialing.then(() => settled = true, () => settled = true);
  owner.connecting.add(dialing);
  try {
    const conn = await dialing;
    if (owner.closed) {
      conn.close();
      return SHUTDOWN;
    }
    return new Connection(conn, pool);
  } catch (error) {
    if (clientSignal.aborted) return CLIENT_GONE;
    if (timedOut) {
      return { kind: "connect", detail: `connect timeout after ${limit}ms`, timedOut: true };
    }
    return { kind: "connect", detail: describeConnectError(error) };
  } finally {
    owner.connecting.delete(dialing);
    deadline.cancel();
    cancelLate?.();
    clientSignal.removeEventListener("abort", onClientAbort);
  }
}

/**
 * Opens the socket: TCP with TCP_NODELAY; for HTTPS, TLS (SNI and verification against the
 * backend host, ALPN http/1.1) with the handshake completed, so a certificate problem is a
 * `connect` failure (nothing was sent) rather than a failed write. `signal` aborts it all.
 *
 * Without a client certificate TLS is started on an abortable `Deno.connect` socket. With one,
 * only `Deno.connectTls` can present it (`Deno.startTls` takes no key pair, denoland/deno#21496), and
 * its TCP connect cannot be aborted: on timeout the attempt is given up and the socket closed
 * whenever the connect settles. TlsConn has no setNoDelay either, so mTLS connections keep Nagle.
 */
async function dial(
  pool: OriginPool,
  tls: NativeTlsOptions,
  signal: AbortSignal,
): Promise<Deno.Conn> {
  const hostname = pool.hostname;
  const port = pool.port;
  if (!pool.secure || tls.cert === undefined) {
    const tcp = await Deno.connect({ hostname, port, signal });
    tcp.setNoDelay(true);
    if (!pool.secure) return tcp;
    if (signal.aborted) {
      tcp.close();
      throw signal.reason;
    }
    const conn = await Deno.startTls(tcp, {
      hostname,
      caCerts: tls.ca === undefined ? [] : [tls.ca],
      alpnProtocols: ["http/1.1"],
    });
    return await handshake(conn, signal);
  }
  const connecting = Deno.connectTls({
    hostname,
    port,
    caCerts: tls.ca === undefined ? [] : [tls.ca],
    cert: tls.cert,
    key: tls.key!,
    alpnProtocols: ["http/1.1"],
  });
  const { promise: aborted, reject } = Promise.withResolvers<never>();
  const onAbort = () => reject(signal.reason);
  signal.addEventListener("abort", onAbort);
  aborted.catch(() => {});
  try {
    return await handshake(await Promise.race([connecting, aborted]), signal);
  } catch (error) {
    connecting.then((conn) => closeQuietly(conn), () => {});
    throw error;
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

/** Completes the TLS handshake (closing the socket when `signal` aborts) and checks ALPN. */
async function handshake(conn: Deno.TlsConn, signal: AbortSignal): Promise<Deno.TlsConn> {
  const onAbort = () => closeQuietly(conn);
  signal.addEventListener("abort", onAbort);
  try {
    const info = await conn.handshake();
    if (info.alpnProtocol !== null && info.alpnProtocol !== "http/1.1") {
      throw new Error(`backend chose ALPN ${info.alpnProtocol}`);
    }
    return conn;
  } catch (error) {
    closeQuietly(conn);
    if (signal.aborted) throw signal.reason;
    throw new Error(`TLS handshake failed: ${describe(error)}`);
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* closed already */ }
}

// ---------------------------------------------------------------------------------------------
// One request on one connection
// ---------------------------------------------------------------------------------------------

/**
 * Sends the request on `c` and reads the response head; returns the response (its body read
 * whole, or streaming) or the failure. When `c` was reused and ended before any response byte,
 * the request may go again on a new connection ({@linkcode resend}).
 *
 * The common case (a small request, its answer in one read) is this one function: one write,
 * one read, parsing and the body slice synchronous. Every further await costs a promise and a
 * microtask turn.
 */
async function exchange(
  c: Connection,
  head: RequestHead,
  body: RequestBody,
  request: AttemptRequest,
  clientSignal: AbortSignal,
  options: AttemptOptions,
): Promise<AttemptResult> {
  c.uses++;
  c.failure = undefined;
  c.streaming = false;
  c.headerTimeout = options.timeout;
  c.readTimeout = options.readTimeout ?? DEFAULT_READ_TIMEOUT;
  const now = performance.now();
  const inline = body === null ||
    (body instanceof Uint8Array && body.length <= BUFFER_BODY_LIMIT && !head.expectContinue);
  c.headed = false;
  // With a body still to send, the wait for the head starts once it is sent (c.bodySent()).
  c.headerDeadline = inline ? afterDelay(options.timeout, c.onHeaderTimeout, now) : undefined;
  c.watchClient(clientSignal, now);
  let response: ResponseHead;
  try {
    const bytes = encodeHead(
      head,
      inline ? body as Uint8Array | null : null,
      c.wbuf ??= new Uint8Array(WRITE_SIZE),
    );
    try {
      const written = await c.conn.write(bytes);
      if (written < bytes.length) await writeAll(c.conn, bytes.subarray(written));
    } catch (error) {
      if (c.failure !== undefined) throw error;
      // Nothing of a response can have come: on a reused connection, the backend closed it.
      throw new ExchangeError(`request write failed: ${describe(error)}`, true);
    }
    if (inline) c.writeState = Write.Done;
    else startBody(c, head, body!);
    // The first read: the one posted while idle, or one into the empty buffer.
    let n: number | null;
    try {
      const posted = c.posted;
      c.posted = undefined;
      n = await (posted ?? c.conn.read(c.buf));
    } catch (error) {
      if (c.failure !== undefined) throw error;
      throw new ExchangeError(`connection failed before any response: ${describe(error)}`, true);
    }
    if (n === null) throw new ExchangeError("connection closed before any response", true);
    c.end = n;
    const end = findHeadEnd(c.buf, 0, 0, n);
    if (end !== -1 && end <= MAX_HEAD_BYTES) {
      const text = latin1(c.buf, 0, end);
      c.start = end;
      response = parseHead(text, request.method);
      if (response.status < 200) response = await nextHead(c, request.method, response, 0);
    } else {
      response = await nextHead(c, request.method, undefined, 0);
    }
  } catch (error) {
    c.endHeaderWait();
    c.unwatchClient();
    c.close();
    c.gate?.(false);
    if (c.failure !== undefined) return { ok: false, failure: c.failure };
    if (error instanceof ExchangeError && error.nothingReceived && c.uses > 1) {
      return resend(c.pool, head, body, request, clientSignal, options);
    }
    return failed("maybe-sent", describe(error));
  }
  c.endHeaderWait();
  c.gate?.(false);
  let result: AttemptResult;
  try {
    let answer = respond(c, response, request);
    if (answer instanceof Promise) answer = await answer;
    result = { ok: true, value: answer, status: answer.status };
  } catch (error) {
    c.close();
    result = { ok: false, failure: c.failure ?? { kind: "maybe-sent", detail: describe(error) } };
  }
  // Before the connection can go back to the pool.
  c.unwatchClient();
  if (!c.streaming) finish(c, response.keepAlive);
  return result;
}

/**
 * Starts writing a body that does not go with the head (a stream, a large body, or one held
 * back by `Expect: 100-continue`) in the background: the response is read meanwhile, so an
 * early answer (413, 401) is relayed while the body is still going out.
 */
function startBody(
  c: Connection,
  head: RequestHead,
  body: Uint8Array | ReadableStream<Uint8Array>,
) {
  c.writeState = Write.Writing;
  let gate: Promise<boolean> | undefined;
  if (head.expectContinue) {
    const { promise, resolve } = Promise.withResolvers<boolean>();
    const wait = afterDelay(EXPECT_WAIT_MS, () => resolve(true));
    c.gate = (send) => {
      wait.cancel();
      c.gate = undefined;
      resolve(send);
    };
    gate = promise;
  }
  // Never rejects: its outcome is c.writeState (and c.failure when the source failed).
  writeBody(c, body, head.length, gate);
}

/** Writes the body (after `gate` opens, if any); records the outcome in `c.writeState`. */
async function writeBody(
  c: Connection,
  body: Uint8Array | ReadableStream<Uint8Array>,
  length: number,
  gate: Promise<boolean> | undefined,
): Promise<void> {
  const reader = body instanceof ReadableStream ? body.getReader() : undefined;
  try {
    if (gate !== undefined && !(await gate)) {
      c.writeState = Write.Skipped;
      return;
    }
    if (reader === undefined) await c.writeBodyPiece(body as Uint8Array);
    else await writeStream(c.conn, reader, length, (bytes) => c.writeBodyPiece(bytes));
    c.writeState = Write.Done;
    c.bodySent();
  } catch (error) {
    c.writeState = Write.Failed;
    if (error instanceof SourceError) {
      // The caller's body failed (the client broke off, or it did not match its length):
      // the backend must see an incomplete request, never a complete wrong one.
      c.abandon({ kind: "client-gone", detail: error.message });
    }
    // A write error on the socket is left to the read side, which may still get an answer.
  } finally {
    if (reader !== undefined) {
      if (c.writeState !== Write.Done) reader.cancel().catch(() => {});
      reader.releaseLock();
    }
  }
}

/**
 * Reads response heads until a final one: `previous` is an interim (1xx) head just parsed, or
 * undefined when the buffer holds the start of a head that has not all arrived. 1xx responses
 * are skipped; a 100 opens the `Expect: 100-continue` gate.
 */
async function nextHead(
  c: Connection,
  method: string,
  previous: ResponseHead | undefined,
  interim: number,
): Promise<ResponseHead> {
  let head = previous;
  for (;;) {
    if (head !== undefined) {
      if (head.status >= 200) return head;
      // The proxy strips Upgrade, so a 101 was never asked for.
      if (head.status === 101) throw new MalformedResponse("unexpected 101 Switching Protocols");
      if (head.status === 100) c.gate?.(true);
      if (++interim > MAX_INTERIM) throw new MalformedResponse("too many 1xx responses");
    }
    const end = await readHeadBytes(c);
    const text = latin1(c.buf, c.start, end);
    c.start = end;
    head = parseHead(text, method);
  }
}

/** Reads until `buf` holds a whole head (some bytes of the response have come); returns its end. */
async function readHeadBytes(c: Connection): Promise<number> {
  let scanned = c.start;
  for (;;) {
    const end = findHeadEnd(c.buf, c.start, scanned, c.end);
    if (end !== -1) {
      if (end - c.start > MAX_HEAD_BYTES) throw new MalformedResponse("head larger than 64 KiB");
      return end;
    }
    const received = c.end - c.start;
    if (received > MAX_HEAD_BYTES) throw new MalformedResponse("head larger than 64 KiB");
    let more: boolean;
    try {
      more = await c.fill();
    } catch (error) {
      if (c.failure !== undefined) throw error;
      throw new ExchangeError(`connection failed mid-head: ${describe(error)}`);
    }
    if (!more) throw new ExchangeError("connection closed mid-head");
    // fill() may have moved the bytes: resume the scan just before where it stopped.
    scanned = c.start + Math.max(0, received - 2);
  }
}

/**
 * The response for `head`: no body, a body read whole, or a streamed one (then
 * `c.streaming` is set and the stream finishes the exchange).
 */
function respond(
  c: Connection,
  head: ResponseHead,
  request: AttemptRequest,
): UpstreamResponse | Promise<UpstreamResponse> {
  let body: Uint8Array<ArrayBuffer> | ReadableStream<Uint8Array> | null = null;
  switch (head.framing) {
    case Framing.Length:
      if (head.length > BUFFER_BODY_LIMIT) body = stream(c, head, request, null, null);
      else if (c.end - c.start >= head.length) {
        body = bufferedBody(c, head.length);
      } else return readWhole(c, head.length).then((bytes) => toResponse(c, head, bytes));
      break;
    case Framing.Chunked: {
      const decoder = new ChunkedDecoder();
      const buffered = decodeBuffered(c, decoder);
      body = decoder.done
        ? buffered
        : stream(c, head, request, decoder, buffered.length > 0 ? buffered : null);
      break;
    }
    case Framing.Close:
      body = stream(c, head, request, null, null);
      break;
  }
  return toResponse(c, head, body);
}

function toResponse(
  c: Connection,
  head: ResponseHead,
  body: Uint8Array<ArrayBuffer> | ReadableStream<Uint8Array> | null,
): UpstreamResponse {
  if (head.status === 205 && body !== null) {
    // A Response with 205 cannot carry a body; RFC 9110 §15.3.6 says there is none.
    if (body instanceof ReadableStream || body.length > 0) c.abandon(UNUSABLE);
    body = null;
  }
  return new NativeResponse(head.status, head.statusText, head.headers, body);
}

/**
 * A response of this transport. parseHead() admits only what a Response can hold: a status of
 * 200-599 here, a reason phrase of field characters, token names, values trimmed and without
 * NUL, CR or LF. So `Headers.append` would take every field unchanged (once its name is lower
 * case) and the proxy skips its checks (`relay` in lib/proxy.ts).
 */
export class NativeResponse implements UpstreamResponse {
  /** This transport never decodes a body. */
  readonly decoded = false;
  readonly fieldsChecked = true;

  constructor(
    public status: number,
    public statusText: string,
    public headers: [string, string][],
    public body: Uint8Array<ArrayBuffer> | ReadableStream<Uint8Array> | null,
  ) {}
}

/** Closes a connection whose response was fine but whose body is dropped. */
const UNUSABLE: Failure = { kind: "client-gone", detail: "response body dropped" };

function stream(
  c: Connection,
  head: ResponseHead,
  request: AttemptRequest,
  decoder: ChunkedDecoder | null,
  pending: Uint8Array | null,
): ReadableStream<Uint8Array> {
  c.streaming = true;
  c.streamBuffer();
  return new ReadableStream(new BodySource(c, head, request, decoder, pending), {
    highWaterMark: 0,
  });
}

/** The exchange on `c` is over: pooled again when it can carry another request. */
function finish(c: Connection, keepAlive: boolean): void {
  if (keepAlive && c.writeState === Write.Done && c.failure === undefined) c.pool.release(c);
  else c.close();
}

/** The next `n` body bytes, all in the buffer, in an array of their own. */
function bufferedBody(c: Connection, n: number): Uint8Array<ArrayBuffer> {
  const bodies = c.pool.owner.bodies;
  let out: Uint8Array<ArrayBuffer>;
  if (bodies === undefined) out = c.buf.slice(c.start, c.start + n);
  else (out = bodies.take(n)).set(c.buf.subarray(c.start, c.start + n));
  c.start += n;
  return out;
}

/** Exactly `n` body bytes: what the buffer holds, then read straight into the result. */
async function readWhole(c: Connection, n: number): Promise<Uint8Array<ArrayBuffer>> {
  const available = c.end - c.start;
  if (available >= n) return bufferedBody(c, n);
  const out = c.pool.owner.bodies?.take(n) ?? new Uint8Array(n);
  out.set(c.buf.subarray(c.start, c.end));
  c.start = c.end = 0;
  let got = available;
  while (got < n) {
    // The last bytes are read into the connection's buffer, with room past the body: bytes the
    // backend sent after it are seen there (release() closes the connection for them).
    const room = c.buf.length >> 1;
    const direct = n - got > room;
    let read: number | null;
    try {
      read = await c.readBody(direct ? out.subarray(got, n - room) : c.buf);
    } catch (error) {
      throw c.failure === undefined
        ? new Error(`connection failed mid-body: ${describe(error)}`)
        : error;
    }
    if (read === null) throw new Error("connection closed mid-body");
    if (!direct) {
      const take = Math.min(read, n - got);
      out.set(c.buf.subarray(0, take), got);
      c.start = take;
      c.end = read;
      read = take;
    }
    got += read;
  }
  return out;
}

/** Content bytes of a chunked body already in the buffer, decoded (framing consumed). */
function decodeBuffered(c: Connection, decoder: ChunkedDecoder): Uint8Array<ArrayBuffer> {
  let parts: Uint8Array<ArrayBuffer>[] | undefined;
  let single: Uint8Array<ArrayBuffer> | undefined;
  let total = 0;
  while (c.start < c.end && !decoder.done) {
    c.start = decoder.advance(c.buf, c.start, c.end);
    if (decoder.dataLeft > 0 && c.start < c.end) {
      const take = Math.min(decoder.dataLeft, c.end - c.start);
      const part = c.buf.slice(c.start, c.start + take);
      c.start += take;
      decoder.took(take);
      total += take;
      if (single === undefined) single = part;
      else (parts ??= [single]).push(part);
    }
  }
  if (parts !== undefined) return concatBytes(parts);
  return single ?? EMPTY;
}

const EMPTY = new Uint8Array(0);

/**
 * A streamed response body (a large Content-Length, chunked, or close-delimited), pulled on
 * demand. Each read waits at most the read timeout. A failure (timeout, reset, EOF too early,
 * malformed chunk) errors the stream, so the client connection is aborted rather than given a
 * truncated body as complete, closes the backend connection and tells `onBodyFailure`. A
 * cancel (the client left) closes the connection without blaming the backend.
 */
class BodySource implements UnderlyingDefaultSource<Uint8Array> {
  #remaining: number;
  #done = false;

  constructor(
    readonly c: Connection,
    readonly head: ResponseHead,
    readonly request: AttemptRequest,
    readonly decoder: ChunkedDecoder | null,
    /** Content decoded before streaming started, given out first. */
    public pending: Uint8Array | null,
  ) {
    this.#remaining = head.length;
  }

  async pull(controller: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    if (this.#done) return;
    try {
      if (this.pending !== null) {
        controller.enqueue(this.pending);
        this.pending = null;
        return;
      }
      if (this.decoder !== null) return await this.#pullChunked(controller);
      const c = this.c;
      if (c.start === c.end) {
        c.start = c.end = 0;
        const n = await c.readBody(c.buf.subarray(0, this.#readSize(c.buf.length)));
        if (n === null) {
          if (this.head.framing === Framing.Close) return this.#end(controller, false);
          return this.#fail(controller, "backend closed the connection mid-body");
        }
        c.end = n;
      }
      const take = this.head.framing === Framing.Length
        ? Math.min(this.#remaining, c.end - c.start)
        : c.end - c.start;
      const chunk = c.buf.slice(c.start, c.start + take);
      c.start += take;
      controller.enqueue(chunk);
      if (this.head.framing === Framing.Length) {
        this.#remaining -= chunk.length;
        if (this.#remaining === 0) this.#end(controller, this.head.keepAlive);
      }
    } catch (error) {
      this.#fail(controller, error instanceof MalformedResponse ? error.message : describe(error));
    }
  }

  /**
   * How much one read may take: the read that ends a length-framed body has room past its end
   * (half the buffer), so that bytes the backend sent after the body show; an earlier read
   * stops short of the end.
   */
  #readSize(size: number): number {
    if (this.head.framing !== Framing.Length) return size;
    const room = size >> 1;
    const remaining = this.#remaining;
    return remaining > size - room ? Math.min(size, remaining - room) : size;
  }

  async #pullChunked(controller: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    const c = this.c;
    const decoder = this.decoder!;
    for (;;) {
      const data = decodeBuffered(c, decoder);
      if (decoder.done) {
        if (data.length > 0) controller.enqueue(data);
        return this.#end(controller, this.head.keepAlive);
      }
      if (data.length > 0) return controller.enqueue(data);
      if (!(await c.fillBody())) {
        return this.#fail(controller, "backend closed the connection mid-body");
      }
    }
  }

  cancel(): void {
    if (this.#done) return;
    this.#done = true;
    this.c.failure ??= CLIENT_GONE;
    this.c.close();
  }

  #end(controller: ReadableStreamDefaultController<Uint8Array>, keepAlive: boolean): void {
    this.#done = true;
    this.c.endStream();
    finish(this.c, keepAlive);
    controller.close();
  }

  #fail(controller: ReadableStreamDefaultController<Uint8Array>, why: string): void {
    if (this.#done) return;
    this.#done = true;
    const c = this.c;
    const cause = c.failure;
    c.close();
    const detail = cause?.detail ?? why;
    controller.error(new ResponseBodyError(`response body failed: ${detail}`));
    // The client's doing or a shutdown is not the backend's; a read timeout is.
    if (cause !== undefined && cause.kind === "client-gone") return;
    try {
      this.request.onBodyFailure?.(detail);
    } catch { /* a hook must not break the stream */ }
  }
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

function failed(kind: FailureKind, detail: string): AttemptResult {
  return { ok: false, failure: { kind, detail } };
}

function describeConnectError(error: unknown): string {
  if (error instanceof Deno.errors.ConnectionRefused) return "connection refused";
  return describe(error);
}

function describe(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  const single = text.replace(/\s+/g, " ").trim();
  return single.length > 200 ? `${single.slice(0, 197)}...` : single;
}
