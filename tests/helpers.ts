/**
 * @module
 * Test fixtures: backends on 127.0.0.1 with OS-picked ports, an in-process balancer, a raw
 * socket client, and a refusing address. Every fixture is an AsyncDisposable so `await using`
 * closes it even when an assertion fails.
 */

import { type Config, DEFAULTS } from "../lib/config.ts";
import { type Log, quietLog } from "../lib/log.ts";
import { type RunningBalancer, startBalancer } from "../lib/balancer.ts";
import type { BackendSpec } from "../lib/pool.ts";
import { HEALTH_CHECK_USER_AGENT } from "../lib/health.ts";
import { concatBytes as concat } from "../lib/body.ts";
import { type ForwardedFacts, upstreamRequestHeaders } from "../lib/headers.ts";

/** A backend started by a test. */
export interface TestBackend extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  /** Health checks received (kept out of `received`). */
  readonly healthChecks: { count: number };
  /** Requests received, in order (a snapshot: a served Request is unreadable once answered). */
  readonly received: ReceivedRequest[];
  close(): Promise<void>;
}

/** What a test backend saw of one request. */
export interface ReceivedRequest {
  method: string;
  /** `req.url` as Deno built it. */
  url: string;
  /** Path and query as sent on the wire. */
  path: string;
  headers: Headers;
}

/**
 * A backend that holds every client request until `release()`, then answers `body`; health
 * checks are answered at once and not counted (one arriving at start-up is no client request).
 */
export async function heldBackend(body: string) {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let firstArrived!: () => void;
  const arrived = new Promise<void>((resolve) => (firstArrived = resolve));
  let arrivals = 0;
  const backend = await startTestBackend(async (req) => {
    if (req.headers.get("user-agent") === HEALTH_CHECK_USER_AGENT) return new Response("up");
    arrivals++;
    firstArrived();
    await released;
    return new Response(body);
  });
  return Object.assign(backend, {
    /** Settles when the first client request has arrived. */
    arrived,
    /** Client requests arrived so far. */
    arrivals: () => arrivals,
    release,
  });
}

/** Starts a backend whose answers come from `handler`; every request is recorded first. */
export function startTestBackend(
  handler: (req: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response> = () =>
    new Response("ok"),
): Promise<TestBackend> {
  const received: ReceivedRequest[] = [];
  const healthChecks = { count: 0 };
  const server = Deno.serve({
    port: 0,
    hostname: "127.0.0.1",
    onListen: () => {},
    onError: () => new Response("backend handler error", { status: 500 }),
  }, (req, info) => {
    const url = req.url;
    if (req.headers.get("user-agent") === HEALTH_CHECK_USER_AGENT) {
      healthChecks.count++;
      return handler(req, info);
    }
    received.push({
      method: req.method,
      url,
      path: url.slice(url.indexOf("/", url.indexOf("://") + 3)),
      headers: new Headers(req.headers),
    });
    return handler(req, info);
  });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await server.shutdown();
  };
  return Promise.resolve({
    url: `http://127.0.0.1:${server.addr.port}`,
    port: server.addr.port,
    received,
    healthChecks,
    close,
    [Symbol.asyncDispose]: close,
  });
}

/**
 * An HTTPS backend on 127.0.0.1 serving `issued` (a certificate and key in PEM), answering with
 * `handler` ("tls ok" by default); `requests()` counts what reached it.
 */
export function startTlsBackend(
  issued: { cert: string; key: string },
  handler = (_req: Request) => new Response("tls ok"),
) {
  let requests = 0;
  const server = Deno.serve({
    port: 0,
    hostname: "127.0.0.1",
    cert: issued.cert,
    key: issued.key,
    onListen: () => {},
  }, (req) => {
    requests++;
    return handler(req);
  });
  return {
    url: `https://127.0.0.1:${server.addr.port}`,
    requests: () => requests,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

/** A backend that answers with its `name`, health checks included. */
export function namedBackend(name: string): Promise<TestBackend> {
  return startTestBackend(() => new Response(name));
}

/** Ports {@linkcode closedPort} has handed out: never handed out again. */
const handedOut = new Set<number>();

/** The low end of the kernel's ephemeral port range (Linux), or undefined where unknown. */
function ephemeralLow(): number | undefined {
  try {
    const text = Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range");
    const low = Number(text.trim().split(/\s+/)[0]);
    return Number.isInteger(low) ? low : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A port on 127.0.0.1 that was free when checked (bound, then closed), below the kernel's
 * ephemeral range where one exists: a later bind to port 0 (the next backend or balancer) or an
 * outgoing connection's own port cannot take it. An ephemeral port just closed was handed out
 * again by a later bind to port 0 about once in 5,000 binds here. Never the same port twice.
 */
export function closedPort(): number {
  const high = ephemeralLow();
  const low = 10_000;
  for (let attempt = 0; high !== undefined && high - low >= 1_000 && attempt < 1_000; attempt++) {
    const port = low + Math.floor(Math.random() * (high - low));
    if (handedOut.has(port)) continue;
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
    } catch {
      continue; // in use
    }
    handedOut.add(port);
    return port;
  }
  // No range known (not Linux): the kernel's pick, at least not one handed out before.
  for (let attempt = 0; attempt < 1_000; attempt++) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = listener.addr.port;
    listener.close();
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error("no free port found in 1,000 tries");
}

/** An address on 127.0.0.1 that refuses connections: {@linkcode closedPort}. */
export function refusingUrl(): string {
  return `http://127.0.0.1:${closedPort()}`;
}

/** A balancer started in-process for a test. */
export interface TestBalancer extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  readonly balancer: RunningBalancer;
}

/**
 * The upstream transport the tests' balancers use: `native` (the default), or `fetch` when
 * `LB_TEST_TRANSPORT=fetch` (`deno task test:fetch` runs the wire tests that apply that way).
 */
export const TEST_TRANSPORT: "native" | "fetch" = Deno.env.get("LB_TEST_TRANSPORT") === "fetch"
  ? "fetch"
  : "native";

/**
 * The front end the tests' balancers use: `deno` (Deno.serve, the default), or `native` when
 * `LB_TEST_FRONTEND=native` (`deno task test:frontend-native` runs the wire tests that way).
 */
export const TEST_FRONTEND: "deno" | "native" = Deno.env.get("LB_TEST_FRONTEND") === "native"
  ? "native"
  : "deno";

/** Config for tests: fast defaults, port 0, loopback only. Override anything. */
export function testConfig(backends: string[], overrides: Partial<Config> = {}): Config {
  const specs: BackendSpec[] = backends.map((url) => ({ url, weight: 1 }));
  return {
    ...DEFAULTS,
    backends: specs,
    port: 0,
    host: "127.0.0.1",
    healthInterval: 60_000,
    demo: false,
    transport: TEST_TRANSPORT,
    frontend: TEST_FRONTEND,
    ...overrides,
  };
}

/**
 * Starts the balancer in-process over `backends`. It logs nowhere unless given a `log`
 * (see {@linkcode captureLog}).
 */
export async function startTestBalancer(
  backends: string[],
  overrides: Partial<Config> = {},
  log: Log = quietLog,
): Promise<TestBalancer> {
  const balancer = await startBalancer(testConfig(backends, overrides), log);
  return {
    url: `http://127.0.0.1:${balancer.port}`,
    port: balancer.port,
    balancer,
    [Symbol.asyncDispose]: async () => {
      await balancer.shutdown(1000);
    },
  };
}

/**
 * One backend answering with `handler` behind an in-process balancer (`overrides` applied);
 * disposing stops the balancer, then the backend.
 */
export async function balancerOver(
  handler: (req: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>,
  overrides: Partial<Config> = {},
) {
  const backend = await startTestBackend(handler);
  const lb = await startTestBalancer([backend.url], overrides).catch(async (error) => {
    await backend.close();
    throw error;
  });
  return {
    backend,
    lb,
    async [Symbol.asyncDispose]() {
      await lb[Symbol.asyncDispose]();
      await backend.close();
    },
  };
}

/**
 * Backends "a" and "b" behind an in-process balancer with fast health checks (every 50 ms, rise
 * 2, fall 1; `overrides` on top), then "b" closed. `restartB(body)` starts a backend answering
 * `body` on b's port: the pool knows a backend by its address, so that is "b" coming back.
 * Disposing stops everything.
 */
export async function balancerWithBClosed(overrides: Partial<Config> = {}) {
  const a = await startTestBackend(() => new Response("a"));
  const b = await startTestBackend(() => new Response("b"));
  const lb = await startTestBalancer([a.url, b.url], {
    healthInterval: 50,
    healthTimeout: 500,
    rise: 2,
    fall: 1,
    ...overrides,
  });
  await b.close();
  const restarted: Deno.HttpServer[] = [];
  return {
    lb,
    /** The pool's record of "b". */
    backendB: lb.balancer.pool.backends[1],
    restartB(body: string): void {
      restarted.push(
        Deno.serve(
          { port: b.port, hostname: "127.0.0.1", onListen() {} },
          () => new Response(body),
        ),
      );
    },
    async [Symbol.asyncDispose]() {
      for (const server of restarted) await server.shutdown();
      await lb[Symbol.asyncDispose]();
      await a[Symbol.asyncDispose]();
    },
  };
}

/** A {@linkcode Log} that keeps info, warn and error lines, as `LEVEL message`, for assertions. */
export function captureLog(): Log & { readonly lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    debug: () => {},
    info: (message) => lines.push(`INFO ${message}`),
    warn: (message) => lines.push(`WARN ${message}`),
    error: (message) => lines.push(`ERROR ${message}`),
    debugEnabled: false,
  };
}

/** GETs `url` and returns status and text; the body is always consumed. */
export async function getText(
  url: string,
  init?: RequestInit & { client?: Deno.HttpClient },
): Promise<{ status: number; text: string; headers: Headers }> {
  const response = await fetch(url, init);
  return { status: response.status, text: await response.text(), headers: response.headers };
}

/** What {@linkcode rawExchange} read, and who ended the connection. */
export interface RawExchange {
  bytes: Uint8Array;
  /** The peer closed or reset the connection; false when `timeoutMs` ran out and we closed it. */
  closed: boolean;
}

/**
 * Sends `data` to 127.0.0.1:port and returns every byte read until the peer closes or resets
 * the connection or `timeoutMs` passes (then the socket is closed by us), and which it was.
 */
export async function rawExchange(
  port: number,
  data: string | Uint8Array,
  timeoutMs = 2000,
): Promise<RawExchange> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let timedOut = false;
  let ended = false; // by the peer, or by our timer
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      conn.close();
    } catch { /* already closed */ }
  }, timeoutMs);
  const chunks: Uint8Array[] = [];
  try {
    await writeAll(conn, typeof data === "string" ? new TextEncoder().encode(data) : data);
    const buffer = new Uint8Array(64 * 1024);
    for (let i = 0; i < 100_000 && !ended; i++) {
      const n = await conn.read(buffer);
      if (n === null) ended = true;
      else chunks.push(buffer.slice(0, n));
    }
  } catch {
    // closed by the timer or reset by the peer: return what arrived
    ended = true;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* already closed */ }
  }
  return { bytes: concat(chunks), closed: ended && !timedOut };
}

/** {@linkcode rawExchange}'s bytes only, for tests that do not ask who closed. */
export async function rawExchangeBytes(
  port: number,
  data: string | Uint8Array,
  timeoutMs = 2000,
): Promise<Uint8Array> {
  return (await rawExchange(port, data, timeoutMs)).bytes;
}

/** {@linkcode rawExchangeBytes} with the answer as text. */
export async function rawRequest(port: number, data: string, timeoutMs = 2000): Promise<string> {
  return new TextDecoder().decode(await rawExchangeBytes(port, data, timeoutMs));
}

/** Writes all of `data` (a single write may take only part of it). */
export async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let offset = 0; offset < data.length;) offset += await conn.write(data.subarray(offset));
}

/**
 * A TCP server on 127.0.0.1 (TLS with `tls`) that runs `onConnection` for each connection,
 * numbered from 1. A connection stays open until its handler closes it or the server is disposed
 * (a black-hole backend just returns); disposing closes the listener and every connection, then
 * waits for the handlers.
 */
export function rawServer(
  onConnection: (conn: Deno.Conn, id: number) => Promise<void>,
  tls?: { cert: string; key: string },
) {
  const listener = tls === undefined
    ? Deno.listen({ hostname: "127.0.0.1", port: 0 })
    : Deno.listenTls({ hostname: "127.0.0.1", port: 0, ...tls });
  const conns = new Set<Deno.Conn>();
  const handlers: Promise<void>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      handlers.push(onConnection(conn, conns.size).catch(() => {}));
    }
  })().catch(() => {});
  return {
    url: `${tls === undefined ? "http" : "https"}://127.0.0.1:${listener.addr.port}`,
    /** Connections accepted so far. */
    connections: () => conns.size,
    async [Symbol.asyncDispose]() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed already */ }
      }
      await accepting;
      await Promise.all(handlers);
    },
  };
}

/**
 * A backend on a raw socket that reads a request head on each connection, answers `response`
 * and closes: for answers Deno.serve would not let a handler write (repeated Connection,
 * chunked with a trailer, a body shorter than its Content-Length).
 */
export function rawReplyBackend(response: string | Uint8Array) {
  const bytes = typeof response === "string" ? new TextEncoder().encode(response) : response;
  return rawServer(async (conn) => {
    try {
      if ((await readHead(conn)).includes("\r\n\r\n")) await writeAll(conn, bytes);
    } finally {
      try {
        conn.close();
      } catch { /* closed by dispose */ }
    }
  });
}

/** Reads from `conn` until the end of a request head (or EOF); returns the text read. */
export async function readHead(conn: Deno.Conn): Promise<string> {
  const buffer = new Uint8Array(65536);
  let text = "";
  for (let i = 0; i < 100 && !text.includes("\r\n\r\n"); i++) {
    const n = await conn.read(buffer);
    if (n === null) break;
    text += new TextDecoder().decode(buffer.subarray(0, n));
  }
  return text;
}

/** Joins byte chunks: the proxy's own helper, under the name the tests use. */
export { concat };

/** A temp directory named `prefix…`, removed with its contents on dispose. */
export async function tempDir(prefix = "lb-test-"): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** Makes a FIFO (named pipe) at `path` with mkfifo(1); throws with its stderr when it fails. */
export async function makeFifo(path: string): Promise<void> {
  const { code, stderr } = await new Deno.Command("mkfifo", { args: [path], stderr: "piped" })
    .output();
  if (code !== 0) throw new Error(`mkfifo ${path}: ${new TextDecoder().decode(stderr)}`);
}

/** Resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves like `promise`, or rejects naming `what` after `ms`; the timer never outlives it. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms}ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The SHA-256 of `bytes` in hex, to compare large bodies in one line of a failure message. */
export async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new Uint8Array(bytes));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Polls `condition` every 20 ms until true or `timeoutMs` passes; returns the last result. */
export async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (condition()) return true;
    await delay(20);
  }
  return condition();
}

/**
 * Sequential GETs to `url`, one after the other, until stopped (at most `maxRequests`). Every
 * answer other than a 200 is a failure, recorded with what was seen. For "zero failed requests
 * while X changes" tests.
 */
export class SequentialTraffic {
  ok = 0;
  readonly failures: string[] = [];
  #stopped = false;
  #finished = false;
  readonly #done: Promise<void>;

  constructor(
    readonly url: string,
    readonly maxRequests = 50_000,
    readonly waitMs = 20_000,
  ) {
    this.#done = this.#run();
  }

  async #run(): Promise<void> {
    for (let i = 0; i < this.maxRequests && !this.#stopped; i++) {
      try {
        const response = await fetch(this.url);
        const text = await response.text();
        if (response.status === 200) this.ok++;
        else this.failures.push(`request ${i + 1}: ${response.status} ${text.trim()}`);
      } catch (error) {
        this.failures.push(`request ${i + 1}: ${error}`);
      }
      await delay(2); // leave the CPU to the balancer and the test now and then
    }
    this.#finished = true;
  }

  /** Waits until `n` more requests have succeeded since the call. */
  async more(n: number): Promise<void> {
    const target = this.ok + n;
    const deadline = Date.now() + this.waitMs;
    while (this.ok < target) {
      if (this.#finished) throw new Error(`traffic ended early: ${this.failures.join("; ")}`);
      if (Date.now() > deadline) throw new Error(`${n} more requests took over ${this.waitMs}ms`);
      await delay(20);
    }
  }

  /** Stops after the request in flight. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#done;
  }
}

/**
 * `upstreamRequestHeaders()` read back as Headers, after checking that it wrote no field twice
 * (Headers would join repeats, hiding a duplicate Host or X-Forwarded-For).
 */
export function upstreamHeadersOf(incoming: Headers, facts: ForwardedFacts): Headers {
  const pairs = upstreamRequestHeaders(incoming, facts);
  const names = pairs.map(([name]) => name);
  if (new Set(names).size !== names.length) throw new Error(`a field written twice: ${names}`);
  return new Headers(pairs);
}

/**
 * A listener whose accept queue is full: new connects hang (SYNs are dropped), the loopback
 * stand-in for an unreachable host. Python's listen(0) and one parked connection make it.
 */
export async function hangingConnectUrl() {
  const child = new Deno.Command("python3", {
    args: [
      "-c",
      "import socket,sys,time\n" +
      "s=socket.socket();s.bind(('127.0.0.1',0));s.listen(0)\n" +
      "print(s.getsockname()[1],flush=True)\n" +
      "sys.stdin.read()",
    ],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let printed = "";
  // The port may arrive in pieces on a loaded machine: read up to the newline.
  for (let i = 0; i < 100 && !printed.includes("\n"); i++) {
    const { value, done } = await reader.read();
    if (done) break;
    printed += value;
  }
  await reader.cancel();
  const port = Number(printed.trim());
  if (!(port > 0)) throw new Error(`python3 listener printed no port: ${JSON.stringify(printed)}`);
  // Fill the queue: this connection completes; the next ones hang in SYN-SENT.
  const parked = await Deno.connect({ hostname: "127.0.0.1", port });
  return {
    url: `http://127.0.0.1:${port}`,
    async [Symbol.asyncDispose]() {
      parked.close();
      await child.stdin.close();
      await child.status;
    },
  };
}
