/**
 * @module
 * WebSocket relaying (lib/websocket.ts) over real sockets on 127.0.0.1: echo backends behind an
 * in-process balancer, a backend process killed mid-session, stickiness, in-flight accounting,
 * shutdown, failover and refused handshakes; plus the pure close-code and handshake rules.
 */

import assert from "node:assert/strict";
import { startBalancer } from "../lib/balancer.ts";
import { quietLog } from "../lib/log.ts";
import {
  classifyOpenError,
  clientCloseFor,
  handshakeHeaders,
  handshakeProblem,
  requestedProtocols,
  upstreamCloseFor,
} from "../lib/websocket.ts";
import {
  balancerOver,
  captureLog,
  rawRequest,
  rawServer,
  readHead,
  refusingUrl,
  startTestBackend,
  startTestBalancer,
  TEST_FRONTEND,
  type TestBackend,
  testConfig,
  waitFor,
  writeAll,
} from "./helpers.ts";
import { headerOf, rawResponse } from "./wire.ts";

/** Generous bound for every wait: the test machines are shared and loaded. */
const WAIT_MS = 10_000;

type Message = string | ArrayBuffer;

/**
 * The close code Deno 2.9.6's WebSocket client reports when the connection ends without a close
 * frame (browsers report 1006, RFC 6455 §7.1.5), with `wasClean` false.
 */
const ABNORMAL_CLOSURE = 0;

/** What an echo backend saw of one WebSocket session. */
interface Session {
  headers: Headers;
  /** The close the backend received: code and reason. */
  closed: Promise<{ code: number; reason: string }>;
}

interface EchoBackend extends TestBackend {
  readonly name: string;
  readonly sessions: Session[];
}

/**
 * A backend that answers HTTP with its name and upgrades WebSockets: it picks `chat.v2` when
 * offered, greets at once on `/greet`, answers `who` with its name, `close CODE REASON` by
 * closing so, and echoes the rest.
 */
function startEchoBackend(name: string): EchoBackend {
  const sessions: Session[] = [];
  const healthChecks = { count: 0 };
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, (req) => {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") return new Response(name);
    // Read before the upgrade: the request's headers are gone afterwards.
    const headers = new Headers(req.headers);
    const offered = headers.get("sec-websocket-protocol")?.split(/\s*,\s*/) ?? [];
    const { socket, response } = Deno.upgradeWebSocket(req, {
      protocol: offered.includes("chat.v2") ? "chat.v2" : undefined,
    });
    socket.binaryType = "arraybuffer";
    const closed = Promise.withResolvers<{ code: number; reason: string }>();
    sessions.push({ headers, closed: closed.promise });
    socket.onmessage = (event) => {
      const match = typeof event.data === "string" ? /^close (\d+) (.*)$/.exec(event.data) : null;
      if (event.data === "who") socket.send(name);
      else if (match) socket.close(Number(match[1]), match[2]);
      else socket.send(event.data);
    };
    socket.onclose = (event) => closed.resolve({ code: event.code, reason: event.reason });
    if (req.url.endsWith("/greet")) socket.onopen = () => socket.send(`welcome from ${name}`);
    return response;
  });
  const close = () => server.shutdown();
  return {
    name,
    sessions,
    url: `http://127.0.0.1:${server.addr.port}`,
    port: server.addr.port,
    received: [],
    healthChecks,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** A WebSocket client with an inbox; `closed()` waits (bounded) for the close event. */
interface Client {
  socket: WebSocket;
  next(): Promise<Message>;
  closed(): Promise<CloseEvent>;
}

async function openClient(
  url: string,
  options: { protocols?: string[]; headers?: HeadersInit } = {},
): Promise<Client> {
  const socket = new WebSocket(url, options);
  socket.binaryType = "arraybuffer";
  const inbox: Message[] = [];
  const waiting: ((m: Message) => void)[] = [];
  socket.onmessage = (event) => {
    const waiter = waiting.shift();
    if (waiter) waiter(event.data);
    else inbox.push(event.data);
  };
  const closed = new Promise<CloseEvent>((resolve) => (socket.onclose = resolve));
  const opened = await bounded(
    new Promise<string | undefined>((resolve) => {
      socket.onopen = () => resolve(undefined);
      socket.onerror = (event) => resolve((event as ErrorEvent).message);
    }),
    "open",
  );
  if (opened !== undefined) {
    await bounded(closed, "close after a failed open");
    throw new Error(opened);
  }
  return {
    socket,
    next: () =>
      bounded(
        inbox.length > 0
          ? Promise.resolve(inbox.shift()!)
          : new Promise<Message>((resolve) => waiting.push(resolve)),
        "message",
      ),
    closed: () => bounded(closed, "close"),
  };
}

/** `promise`, or a rejection naming `what` after WAIT_MS. */
async function bounded<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS}ms`)), WAIT_MS);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

function wsUrl(httpUrl: string, path = "/"): string {
  return httpUrl.replace(/^http/, "ws") + path;
}

/** Closes `client` normally and waits for the close to finish. */
async function closeClient(client: Client): Promise<void> {
  client.socket.close();
  await client.closed();
}

/**
 * A raw HTTP/1.1 upgrade request with the given extra header lines. `Connection: close` along
 * with `Upgrade` makes a refused upgrade end the connection, so the answer is read at once.
 */
function upgradeRequest(port: number, lines: string[]): string {
  return [
    "GET /chat HTTP/1.1",
    `Host: 127.0.0.1:${port}`,
    "Upgrade: websocket",
    "Connection: Upgrade, close",
    ...lines,
    "",
    "",
  ].join("\r\n");
}

const KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

Deno.test("WebSocket: text and binary frames pass both ways, with the negotiated subprotocol", async () => {
  await using backend = startEchoBackend("a");
  await using lb = await startTestBalancer([backend.url]);
  const client = await openClient(wsUrl(lb.url, "/chat?room=1"), {
    protocols: ["chat.v1", "chat.v2"],
  });
  assert.equal(client.socket.protocol, "chat.v2", "the backend's choice reaches the client");
  client.socket.send("hello");
  assert.equal(await client.next(), "hello");
  client.socket.send(new Uint8Array([0, 1, 2, 255]));
  const binary = await client.next();
  assert.ok(binary instanceof ArrayBuffer, "a binary frame stays binary");
  assert.deepEqual([...new Uint8Array(binary)], [0, 1, 2, 255]);
  const big = "x".repeat(200_000);
  client.socket.send(big);
  assert.equal(await client.next(), big);
  const seen = backend.sessions[0].headers;
  assert.equal(seen.get("sec-websocket-protocol"), "chat.v1, chat.v2");
  await closeClient(client);
});

Deno.test({
  name:
    "WebSocket: a backend that chooses a subprotocol the client did not offer gets the client a 502",
  // The native front end relays the backend's 101 as it is: the client refuses it (RFC 6455 §4.1).
  ignore: TEST_FRONTEND === "native",
}, async () => {
  // A raw backend: Deno's own server would refuse to choose a protocol that was not offered.
  await using backend = rawServer(async (conn) => {
    const head = await readHead(conn);
    const key = /sec-websocket-key: *(\S+)/i.exec(head)?.[1] ?? "";
    const digest = await crypto.subtle.digest(
      "SHA-1",
      new TextEncoder().encode(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`),
    );
    const accept = btoa(String.fromCharCode(...new Uint8Array(digest)));
    await writeAll(
      conn,
      new TextEncoder().encode(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: evil\r\n\r\n`,
      ),
    );
    await conn.read(new Uint8Array(1024)).catch(() => null);
    conn.close();
  });
  const log = captureLog();
  await using lb = await startTestBalancer([backend.url], {}, log);
  const raw = await rawResponse(
    lb.port,
    "GET /chat HTTP/1.1\r\nHost: ok\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
      "Sec-WebSocket-Protocol: chat.v1\r\nConnection: close\r\n\r\n",
  );
  assert.equal(raw.status, 502);
  assert.ok(
    log.lines.some((l) =>
      /chose WebSocket subprotocol "evil", which the client did not offer/.test(l)
    ),
    log.lines.join("\n"),
  );
});

Deno.test("WebSocket: what the backend sends before the client's upgrade completes is not lost", async () => {
  await using backend = startEchoBackend("a");
  await using lb = await startTestBalancer([backend.url]);
  for (let i = 0; i < 5; i++) {
    const client = await openClient(wsUrl(lb.url, "/greet"));
    assert.equal(await client.next(), "welcome from a");
    client.socket.send("after");
    assert.equal(await client.next(), "after");
    await closeClient(client);
  }
});

Deno.test("WebSocket: the backend gets the client's headers, X-Forwarded-*, X-Request-Id and Host", async () => {
  await using backend = startEchoBackend("a");
  await using lb = await startTestBalancer([backend.url]);
  const client = await openClient(wsUrl(lb.url), {
    headers: {
      cookie: "session=s1",
      authorization: "Bearer t0ken",
      origin: "https://app.example",
      "x-request-id": "ws-req-1",
      "x-forwarded-for": "6.6.6.6",
    },
  });
  const seen = backend.sessions[0].headers;
  assert.equal(seen.get("cookie"), "session=s1");
  assert.equal(seen.get("authorization"), "Bearer t0ken");
  assert.equal(seen.get("origin"), "https://app.example");
  assert.equal(seen.get("x-request-id"), "ws-req-1");
  assert.equal(seen.get("x-forwarded-for"), "127.0.0.1", "a client's X-Forwarded-For is replaced");
  assert.equal(seen.get("x-forwarded-proto"), "http");
  assert.equal(seen.get("host"), `127.0.0.1:${lb.port}`, "the client's Host, not the backend's");
  assert.equal(seen.get("x-forwarded-host"), `127.0.0.1:${lb.port}`);
  await closeClient(client);
});

Deno.test("WebSocket: a close code and reason from the client reach the backend", async () => {
  await using backend = startEchoBackend("a");
  await using lb = await startTestBalancer([backend.url]);
  const client = await openClient(wsUrl(lb.url));
  client.socket.close(4002, "client bye");
  const closed = await client.closed();
  assert.equal(closed.code, 4002);
  const atBackend = await bounded(backend.sessions[0].closed, "backend close");
  assert.deepEqual(atBackend, { code: 4002, reason: "client bye" });
});

Deno.test("WebSocket: a close code and reason from the backend reach the client", async () => {
  await using backend = startEchoBackend("a");
  await using lb = await startTestBalancer([backend.url]);
  for (const [code, reason] of [[4001, "server bye"], [1011, "backend broke"], [1000, ""]]) {
    const client = await openClient(wsUrl(lb.url));
    client.socket.send(`close ${code} ${reason}`);
    const closed = await client.closed();
    assert.equal(closed.code, code);
    assert.equal(closed.reason, reason);
    assert.equal(closed.wasClean, true);
  }
});

Deno.test("WebSocket: a backend process killed mid-session closes the client with 1011 (native: no close frame)", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: (a) => console.log(a.port) },
        (req) => {
          if (req.headers.get("upgrade") !== "websocket") return new Response("ok");
          const { socket, response } = Deno.upgradeWebSocket(req);
          socket.onmessage = (e) => socket.send(e.data);
          return response;
        });`,
    ],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).spawn();
  const exited = child.status;
  try {
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await bounded(reader.read(), "backend port");
      if (done) break;
      text += value;
    }
    await reader.cancel();
    await using lb = await startTestBalancer([`http://127.0.0.1:${Number(text.trim())}`]);
    const client = await openClient(wsUrl(lb.url));
    client.socket.send("ping");
    assert.equal(await client.next(), "ping");
    const backend = lb.balancer.pool.backends[0];
    assert.equal(backend.inflight, 1);
    child.kill("SIGKILL");
    const closed = await client.closed();
    // The native front end's byte tunnel sends no frames of its own: the client's TCP connection
    // ends without a close frame (docs/frontend.md), where the frame relay sends 1011.
    assert.equal(closed.code, TEST_FRONTEND === "native" ? ABNORMAL_CLOSURE : 1011);
    assert.equal(closed.wasClean, TEST_FRONTEND !== "native");
    assert.ok(await waitFor(() => backend.inflight === 0, WAIT_MS), "released when it ended");
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await exited;
  }
});

Deno.test("WebSocket: the sticky cookie pins a WebSocket to the backend of the HTTP requests", async () => {
  await using a = startEchoBackend("a");
  await using b = startEchoBackend("b");
  await using lb = await startTestBalancer([a.url, b.url], { stickyCookie: "lb" });
  const first = await fetch(lb.url);
  const pinnedTo = await first.text();
  const cookie = first.headers.get("set-cookie")!.split(";")[0];
  const who = async (headers: HeadersInit) => {
    const client = await openClient(wsUrl(lb.url), { headers });
    client.socket.send("who");
    const name = await client.next();
    await closeClient(client);
    return name;
  };
  for (let i = 0; i < 4; i++) assert.equal(await who({ cookie }), pinnedTo, `WebSocket ${i}`);
  // Without the cookie, round-robin spreads them: the pin above was not a coincidence.
  const spread = new Set();
  for (let i = 0; i < 4; i++) spread.add(await who({}));
  assert.deepEqual([...spread].sort(), ["a", "b"]);
  const http = await fetch(lb.url, { headers: { cookie } });
  assert.equal(await http.text(), pinnedTo);
  // A WebSocket without the cookie gets one on its 101, as an HTTP response would.
  const answer = await rawRequest(
    lb.port,
    upgradeRequest(lb.port, [KEY, "Sec-WebSocket-Version: 13"]).replace(", close", ""),
    500,
  );
  assert.match(answer, /^HTTP\/1\.1 101 /);
  assert.match(answer, /\r\nset-cookie: lb=[^;]+; Path=\/; HttpOnly; SameSite=Lax\r\n/i);
});

Deno.test("WebSocket: the hash policy sends a WebSocket where HTTP requests with its key go", async () => {
  await using a = startEchoBackend("a");
  await using b = startEchoBackend("b");
  await using c = startEchoBackend("c");
  await using lb = await startTestBalancer([a.url, b.url, c.url], {
    policy: "hash",
    hashKey: { kind: "header", name: "x-user" },
  });
  for (const user of ["u1", "u2", "u3", "u4"]) {
    const http = await (await fetch(lb.url, { headers: { "x-user": user } })).text();
    const client = await openClient(wsUrl(lb.url), { headers: { "x-user": user } });
    client.socket.send("who");
    assert.equal(await client.next(), http, user);
    await closeClient(client);
  }
});

Deno.test("WebSocket: counts as in flight on its backend for its whole life (least-conn sees it)", async () => {
  await using a = startEchoBackend("a");
  await using b = startEchoBackend("b");
  await using lb = await startTestBalancer([a.url, b.url], { policy: "least-conn" });
  const client = await openClient(wsUrl(lb.url));
  client.socket.send("who");
  const holder = await client.next();
  const [backendA, backendB] = lb.balancer.pool.backends;
  const busy = holder === "a" ? backendA : backendB;
  assert.equal(busy.inflight, 1, "open WebSocket is in flight");
  // Least-conn now sends every request to the other backend.
  for (let i = 0; i < 3; i++) {
    assert.notEqual(await (await fetch(lb.url)).text(), holder);
  }
  await closeClient(client);
  assert.ok(await waitFor(() => busy.inflight === 0, WAIT_MS));
});

/**
 * Echo backend "a" behind a balancer started for shutting down (not disposed by the fixture),
 * with two relayed clients that have each echoed "up". Disposing closes the backend.
 */
async function twoRelays() {
  const backend = startEchoBackend("a");
  const balancer = await startBalancer(testConfig([backend.url]), quietLog);
  const url = `ws://127.0.0.1:${balancer.port}/`;
  const clients = [await openClient(url), await openClient(url)];
  for (const client of clients) {
    client.socket.send("up");
    assert.equal(await client.next(), "up");
  }
  return { backend, balancer, clients, [Symbol.asyncDispose]: () => backend.close() };
}

Deno.test({
  name: "WebSocket: shutdown closes open relays with 1001 going away, backends included",
  // The native front end keeps its tunnels open until the deadline: the next test.
  ignore: TEST_FRONTEND === "native",
}, async () => {
  await using relays = await twoRelays();
  const { backend, balancer, clients } = relays;
  const started = performance.now();
  const left = await balancer.shutdown(2000);
  assert.equal(left, 0, "no HTTP request was cut off");
  // Relays are closed at the start (see the Deno.serve test below), so nothing waits for 2 s.
  assert.ok(performance.now() - started < 1500, `shutdown took ${performance.now() - started}ms`);
  await assert.rejects(
    Deno.connect({ hostname: "127.0.0.1", port: balancer.port }),
    Deno.errors.ConnectionRefused,
  );
  for (const client of clients) {
    const closed = await client.closed();
    assert.equal(closed.code, 1001);
    assert.equal(closed.reason, "going away");
    assert.equal(closed.wasClean, true);
  }
  for (const session of backend.sessions) {
    const atBackend = await bounded(session.closed, "backend close");
    assert.deepEqual(atBackend, { code: 1000, reason: "going away" });
  }
  assert.equal(balancer.pool.backends[0].inflight, 0);
});

Deno.test({
  name: "WebSocket: shutdown keeps native tunnels open until the drain deadline, and counts them",
  ignore: TEST_FRONTEND !== "native",
}, async () => {
  await using relays = await twoRelays();
  const { backend, balancer, clients } = relays;
  const stopping = balancer.shutdown(1500);
  // Draining: the tunnels still carry messages both ways.
  for (const client of clients) {
    client.socket.send("still up");
    assert.equal(await bounded(client.next(), "echo while draining"), "still up");
  }
  const left = await bounded(stopping, "shutdown");
  assert.equal(left, 2, "both tunnels were open at the deadline");
  await assert.rejects(
    Deno.connect({ hostname: "127.0.0.1", port: balancer.port }),
    Deno.errors.ConnectionRefused,
  );
  // Cut at the deadline: a tunnel sends no close frame of its own (docs/frontend.md).
  for (const client of clients) {
    const closed = await client.closed();
    assert.equal(closed.code, ABNORMAL_CLOSURE);
    assert.equal(closed.wasClean, false);
  }
  for (const session of backend.sessions) await bounded(session.closed, "backend close");
  assert.ok(await waitFor(() => balancer.pool.backends[0].inflight === 0, WAIT_MS));
});

/**
 * Why the balancer cannot keep relays open through `--drain-timeout` (issue 5), pinned so that a
 * Deno upgrade that changes it is noticed: in Deno 2.9.6 the only way to stop a `Deno.serve`
 * listener is `shutdown()` (op_http_close), and it sends every WebSocket upgraded on that server
 * a close frame, 1001 "Server shutting down", at once (denoland/deno#35105). A certificate
 * reload's second SO_REUSEPORT listener does not help: shutting the first one down closes its
 * WebSockets the same way. When this test fails, `shutdown()` in lib/balancer.ts can stop
 * accepting first and close the relays at the deadline instead.
 */
Deno.test("Deno.serve's shutdown() still closes upgraded WebSockets at once (why relays close at the start of the drain)", async () => {
  const serve = (port: number) =>
    Deno.serve({ port, hostname: "127.0.0.1", reusePort: true, onListen: () => {} }, (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (event) => socket.send(event.data);
      return response;
    });
  const old = serve(0);
  let next: Deno.HttpServer | undefined;
  let stopping: Promise<void> | undefined;
  try {
    const client = await openClient(`ws://127.0.0.1:${old.addr.port}/`);
    client.socket.send("up");
    assert.equal(await client.next(), "up");
    // As a certificate reload does: a second listener on the port, then the first one stops.
    next = serve(old.addr.port);
    stopping = old.shutdown();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stillOpen = new Promise<"open">((r) => (timer = setTimeout(() => r("open"), 2000)));
    const outcome = await Promise.race([client.closed(), stillOpen]);
    clearTimeout(timer);
    if (outcome === "open") {
      await closeClient(client);
      assert.fail(
        "Deno.serve's shutdown() no longer closes upgraded WebSockets: lib/balancer.ts can keep " +
          "relays open until --drain-timeout (issue 5)",
      );
    }
    assert.equal(outcome.code, 1001);
    assert.equal(outcome.reason, "Server shutting down");
  } finally {
    await Promise.all([stopping, old.shutdown(), next?.shutdown()].map((p) => p?.catch(() => {})));
  }
});

Deno.test("WebSocket: a refused connect is retried on another backend", async () => {
  await using good = startEchoBackend("good");
  await using lb = await startTestBalancer([refusingUrl(), good.url], { retries: 1 });
  const client = await openClient(wsUrl(lb.url));
  client.socket.send("who");
  assert.equal(await client.next(), "good");
  assert.equal(lb.balancer.pool.backends[0].failures, 1, "the first attempt hit the refusing one");
  await closeClient(client);
});

Deno.test("WebSocket: 502 when every backend fails, 503 when none is available", async () => {
  await using lb = await startTestBalancer([refusingUrl(), refusingUrl()], { retries: 1 });
  const first = await rawRequest(
    lb.port,
    upgradeRequest(lb.port, [KEY, "Sec-WebSocket-Version: 13"]),
  );
  assert.match(first, /^HTTP\/1\.1 502 /);
  assert.match(first, /x-request-id: \S+/i);
  // Both refused connects took their backends down: nothing is left to try.
  const second = await rawRequest(
    lb.port,
    upgradeRequest(lb.port, [KEY, "Sec-WebSocket-Version: 13"]),
  );
  assert.match(second, /^HTTP\/1\.1 503 /);
});

Deno.test("WebSocket: a malformed handshake gets 400 (426 for a version) and reaches no backend", async () => {
  await using backend = await startTestBackend();
  {
    await using lb = await startTestBalancer([backend.url]);
    const noKey = await rawRequest(lb.port, upgradeRequest(lb.port, ["Sec-WebSocket-Version: 13"]));
    assert.match(noKey, /^HTTP\/1\.1 400 /);
    const badKey = await rawRequest(
      lb.port,
      upgradeRequest(lb.port, ["Sec-WebSocket-Key: short", "Sec-WebSocket-Version: 13"]),
    );
    assert.match(badKey, /^HTTP\/1\.1 400 /);
    const badProtocol = await rawRequest(
      lb.port,
      upgradeRequest(lb.port, [KEY, "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: a b"]),
    );
    assert.match(badProtocol, /^HTTP\/1\.1 400 /);
    const version = await rawRequest(
      lb.port,
      upgradeRequest(lb.port, [KEY, "Sec-WebSocket-Version: 8"]),
    );
    assert.match(version, /^HTTP\/1\.1 426 /);
    assert.match(version, /sec-websocket-version: 13/i);
    assert.equal(backend.received.length, 0, "no backend was contacted");
  }
});

Deno.test("WebSocket: a backend refusing the handshake with 403 gives the client 403; a plain 200 gives 502", async () => {
  await using refusing = await balancerOver((req) =>
    new URL(req.url).pathname === "/private"
      ? new Response("no", { status: 403 })
      : new Response("plain")
  );
  const forbidden = await rawRequest(
    refusing.lb.port,
    upgradeRequest(refusing.lb.port, [KEY, "Sec-WebSocket-Version: 13"]).replace(
      "/chat",
      "/private",
    ),
  );
  assert.match(forbidden, /^HTTP\/1\.1 403 /);
  const plain = await rawRequest(
    refusing.lb.port,
    upgradeRequest(refusing.lb.port, [KEY, "Sec-WebSocket-Version: 13"]),
  );
  assert.match(plain, /^HTTP\/1\.1 502 /);
  assert.equal(refusing.lb.balancer.pool.backends[0].inflight, 0);
});

Deno.test("WebSocket: the 101 carries X-Request-Id and is in the access log as 101", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await using backend = startEchoBackend("a");
    const balancer = await startBalancer(
      testConfig([backend.url], { accessLog: `${dir}/access.log`, accessLogFormat: "json" }),
      quietLog,
    );
    const answer = await rawResponse(
      balancer.port,
      upgradeRequest(balancer.port, [KEY, "Sec-WebSocket-Version: 13", "X-Request-Id: ws-42"]),
      1000,
    );
    assert.equal(answer.status, 101);
    assert.equal(headerOf(answer, "x-request-id"), "ws-42");
    await balancer.shutdown(1000);
    const line = JSON.parse((await Deno.readTextFile(`${dir}/access.log`)).trim());
    assert.equal(line.status, 101);
    assert.equal(line.requestId, "ws-42");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Whether `command` can be run here. */
async function installed(command: string): Promise<boolean> {
  try {
    await new Deno.Command(command, { args: ["version"], stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    return false;
  }
}

/** A throw-away self-signed leaf for 127.0.0.1 (CA:FALSE, which Deno needs of a server cert). */
async function selfSignedCertificate(dir: string): Promise<{ cert: string; key: string }> {
  const cert = `${dir}/cert.pem`;
  const key = `${dir}/key.pem`;
  const result = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "2",
      "-subj",
      "/CN=127.0.0.1",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
      "-addext",
      "basicConstraints=CA:FALSE",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!result.success) throw new Error(new TextDecoder().decode(result.stderr));
  return { cert, key };
}

Deno.test({
  name: "WebSocket: a wss backend is verified: 502 without backendCa, relayed with it",
  ignore: !(await installed("openssl")),
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const files = await selfSignedCertificate(dir);
    const server = Deno.serve({
      port: 0,
      hostname: "127.0.0.1",
      cert: await Deno.readTextFile(files.cert),
      key: await Deno.readTextFile(files.key),
      onListen: () => {},
    }, (req) => {
      if (req.headers.get("upgrade") !== "websocket") return new Response("ok");
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (event) => socket.send(`tls: ${event.data}`);
      return response;
    });
    const backendUrl = `https://127.0.0.1:${server.addr.port}`;
    try {
      {
        await using untrusting = await startTestBalancer([backendUrl], { retries: 0 });
        const answer = await rawRequest(
          untrusting.port,
          upgradeRequest(untrusting.port, [KEY, "Sec-WebSocket-Version: 13"]),
        );
        assert.match(answer, /^HTTP\/1\.1 502 /);
        assert.equal(untrusting.balancer.pool.backends[0].state, "down", "like a refused connect");
      }
      await using lb = await startTestBalancer([backendUrl], { backendCa: files.cert });
      const client = await openClient(wsUrl(lb.url));
      client.socket.send("hello");
      assert.equal(await client.next(), "tls: hello");
      await closeClient(client);
    } finally {
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("classifyOpenError() tells a refused handshake, no connection, and a later failure apart", () => {
  assert.deepEqual(
    classifyOpenError("NetworkError: failed to connect to WebSocket: Invalid status code: 403"),
    { ok: false, status: 403 },
  );
  for (
    const message of [
      "NetworkError: failed to connect to WebSocket: tcp connect error",
      "NetworkError: failed to connect to WebSocket: invalid peer certificate: UnknownIssuer",
    ]
  ) {
    const result = classifyOpenError(message);
    assert.ok(!result.ok && "failure" in result && result.failure.kind === "connect", message);
  }
  const reset = classifyOpenError("NetworkError: failed to connect to WebSocket: connection reset");
  assert.ok(!reset.ok && "failure" in reset && reset.failure.kind === "maybe-sent");
});

Deno.test("clientCloseFor() passes server codes, keeps no-status, and maps a lost backend to 1011", () => {
  assert.deepEqual(clientCloseFor(4001, "bye", true), { code: 4001, reason: "bye" });
  assert.deepEqual(clientCloseFor(1001, "restart", true), { code: 1001, reason: "restart" });
  assert.deepEqual(clientCloseFor(1005, "", true), {});
  assert.equal(clientCloseFor(1006, "", false).code, 1011);
  assert.equal(clientCloseFor(1000, "", false).code, 1011, "unclean is lost, whatever the code");
  assert.equal(clientCloseFor(1015, "", true).code, 1011);
});

Deno.test("upstreamCloseFor() passes client-sendable codes and maps the rest to 1000", () => {
  assert.deepEqual(upstreamCloseFor(1000, "done"), { code: 1000, reason: "done" });
  assert.deepEqual(upstreamCloseFor(4999, "x"), { code: 4999, reason: "x" });
  assert.deepEqual(upstreamCloseFor(1005, ""), {});
  assert.deepEqual(upstreamCloseFor(1001, ""), { code: 1000, reason: "client closed with 1001" });
  assert.deepEqual(upstreamCloseFor(1001, "left"), { code: 1000, reason: "left" });
  assert.deepEqual(upstreamCloseFor(1006, ""), { code: 1000, reason: "client closed with 1006" });
  // Deno's code for a client gone without a close frame.
  assert.deepEqual(upstreamCloseFor(0, ""), { code: 1000, reason: "client closed with 1006" });
});

Deno.test("handshakeProblem() accepts RFC 6455 handshakes and names what is wrong", () => {
  const good = {
    connection: "keep-alive, Upgrade",
    upgrade: "websocket",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-version": "13",
  };
  assert.equal(handshakeProblem(new Headers(good)), undefined);
  assert.equal(handshakeProblem(new Headers({ ...good, connection: "close" }))?.status, 400);
  assert.equal(handshakeProblem(new Headers({ ...good, "sec-websocket-key": "abc" }))?.status, 400);
  assert.equal(
    handshakeProblem(new Headers({ ...good, "sec-websocket-version": "7" }))?.status,
    426,
  );
  assert.deepEqual(requestedProtocols(new Headers({ "sec-websocket-protocol": "a, b" })), [
    "a",
    "b",
  ]);
  assert.equal(requestedProtocols(new Headers({ "sec-websocket-protocol": "a, a" })), undefined);
  assert.equal(requestedProtocols(new Headers({ "sec-websocket-protocol": "a;b" })), undefined);
});

Deno.test("handshakeHeaders() drops the client's Sec-WebSocket-* (extensions included)", () => {
  const headers = handshakeHeaders(
    new Headers({
      "sec-websocket-key": "k",
      "sec-websocket-version": "13",
      "sec-websocket-extensions": "permessage-deflate",
      "sec-websocket-protocol": "chat",
      cookie: "a=b",
      "x-forwarded-for": "127.0.0.1",
    }),
  );
  assert.deepEqual([...headers.keys()], ["cookie", "x-forwarded-for"]);
});
