/**
 * @module
 * Request body limits on real sockets: `maxBody` (413 before any upstream request for a declared
 * length, a cut-off upstream request for a chunked or HTTP/2 body that grows past it) and
 * `bodyTimeout` (408 for a client that stalls mid-body, with its slot and upstream request
 * freed). Uploads that must stall or overrun on purpose go over raw sockets; the backend records
 * whether each body it received was complete or broken off.
 */

import assert from "node:assert/strict";
import { prepareBody } from "../lib/body.ts";
import { HttpError } from "../lib/errors.ts";
import { delay, startTestBackend, startTestBalancer, TEST_FRONTEND, waitFor } from "./helpers.ts";
import { headEnd, parseHead, statusOf } from "./wire.ts";
import { parseExposition } from "./prometheus.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Generous bound for anything awaited here: the test machine is shared and loaded. */
const WAIT_MS = 10_000;

/** How a backend's read of one request body ended. */
interface BodyOutcome {
  path: string;
  /** True when the body ended cleanly; false when reading it failed (the upload was cut off). */
  complete: boolean;
  bytes: number;
}

/** A recording backend that reads every body to its end and notes how that went. */
async function bodyRecordingBackend(
  options: { delayBeforeReadMs?: number } = {},
) {
  const bodies: BodyOutcome[] = [];
  const backend = await startTestBackend(async (req) => {
    const path = req.url.slice(req.url.indexOf("/", req.url.indexOf("://") + 3));
    if (req.body === null) return new Response("no body");
    if (options.delayBeforeReadMs) await delay(options.delayBeforeReadMs);
    let bytes = 0;
    try {
      for await (const chunk of req.body) bytes += chunk.length;
    } catch {
      bodies.push({ path, complete: false, bytes });
      return new Response("broken body", { status: 400 });
    }
    bodies.push({ path, complete: true, bytes });
    return new Response(`got ${bytes}`);
  });
  return Object.assign(backend, { bodies });
}

/** A parsed response head, plus the body when it has a Content-Length. */
interface ClientResponse {
  status: number;
  headers: Map<string, string>;
  body: string;
}

/**
 * One raw HTTP/1.1 connection to the balancer, for uploads that stall or overrun on purpose:
 * the test decides what is written when, then reads one response.
 */
class RawClient implements Disposable {
  readonly #conn: Deno.Conn;
  #buffered = new Uint8Array(0);
  #closed = false;

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  static async open(port: number): Promise<RawClient> {
    return new RawClient(await Deno.connect({ hostname: "127.0.0.1", port }));
  }

  /** Writes everything; false when the peer no longer accepts bytes (reset or closed). */
  async write(data: string | Uint8Array): Promise<boolean> {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    try {
      for (let offset = 0; offset < bytes.length;) {
        offset += await this.#conn.write(bytes.subarray(offset));
      }
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Reads one response (head, and a Content-Length body) within `timeoutMs`; fails naming
   * what arrived when the time is up or the peer closes first.
   */
  async response(timeoutMs = WAIT_MS): Promise<ClientResponse> {
    const timer = setTimeout(() => this.close(), timeoutMs);
    try {
      const complete = await this.#readUntil((bytes) => headEnd(bytes) !== -1);
      const end = headEnd(this.#buffered);
      assert.ok(complete, `no complete response head: ${JSON.stringify(this.text())}`);
      const { line, fields } = parseHead(decoder.decode(this.#buffered.subarray(0, end)));
      const headers = new Map<string, string>();
      for (const [name, value] of fields) {
        headers.set(name, headers.has(name) ? `${headers.get(name)}, ${value}` : value);
      }
      const length = Number(headers.get("content-length") ?? 0);
      await this.#readUntil((bytes) => bytes.length >= end + 4 + length);
      const body = decoder.decode(this.#buffered.subarray(end + 4, end + 4 + length));
      this.#buffered = this.#buffered.subarray(end + 4 + length);
      return { status: statusOf(line), headers, body };
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reads until the peer closes or resets (true), or `timeoutMs` passes (false). */
  async untilClosed(timeoutMs = WAIT_MS): Promise<boolean> {
    const timer = setTimeout(() => this.close(), timeoutMs);
    try {
      await this.#readUntil(() => false);
      return !this.#closed;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Whatever has been read and not yet consumed, as text. */
  text(): string {
    return decoder.decode(this.#buffered);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Reads until `done(buffered)`; false on EOF, reset or close first. */
  async #readUntil(done: (bytes: Uint8Array) => boolean): Promise<boolean> {
    const chunk = new Uint8Array(64 * 1024);
    while (!done(this.#buffered)) {
      let n: number | null;
      try {
        n = await this.#conn.read(chunk);
      } catch {
        return false;
      }
      if (n === null) return false;
      const next = new Uint8Array(this.#buffered.length + n);
      next.set(this.#buffered);
      next.set(chunk.subarray(0, n), this.#buffered.length);
      this.#buffered = next;
    }
    return true;
  }
}

/** One chunk of a chunked body, framed. */
function chunk(size: number, fill = "x"): string {
  return `${size.toString(16)}\r\n${fill.repeat(size)}\r\n`;
}

const MAX = 100_000;

/** A request whose body streams from chunks the test pushes; records cancellation. */
function streamedPost(headers: Record<string, string>) {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const state = { cancelled: false };
  const stream = new ReadableStream<Uint8Array>({
    start: (c) => void (controller = c),
    cancel: () => void (state.cancelled = true),
  });
  const req = new Request("http://127.0.0.1/upload", { method: "POST", body: stream, headers });
  return { req, state, push: (n: number) => controller.enqueue(new Uint8Array(n)), controller };
}

async function drain(body: BodyInit | null): Promise<number> {
  let bytes = 0;
  for await (const part of body as ReadableStream<Uint8Array>) bytes += part.length;
  return bytes;
}

Deno.test("prepareBody() refuses a declared length over maxBody before reading anything", async () => {
  const { req, state } = streamedPost({ "content-length": String(MAX + 1) });
  await assert.rejects(
    prepareBody(req, { maxBody: MAX, bodyTimeout: Infinity }),
    (error: unknown) => error instanceof HttpError && error.status === 413,
  );
  assert.equal(req.bodyUsed, false);
  assert.equal(state.cancelled, false);
});

Deno.test("prepareBody() cuts a streamed body off with 413 once it grows past maxBody", async () => {
  const { req, state, push } = streamedPost({ "transfer-encoding": "chunked" });
  const body = await prepareBody(req, { maxBody: 100, bodyTimeout: Infinity });
  push(60);
  push(60);
  await assert.rejects(drain(body.forAttempt()));
  assert.equal(body.clientError?.status, 413);
  assert.equal(body.signal.aborted, true);
  assert.equal(body.replayable, false);
  assert.equal(state.cancelled, true, "the client's stream is released");
});

Deno.test("prepareBody() gives up with 408 when the client stalls longer than bodyTimeout", async () => {
  const { req, state, push } = streamedPost({ "transfer-encoding": "chunked" });
  const body = await prepareBody(req, { maxBody: Infinity, bodyTimeout: 50 });
  push(10);
  await assert.rejects(drain(body.forAttempt()));
  assert.equal(body.clientError?.status, 408);
  assert.equal(body.signal.aborted, true);
  assert.equal(state.cancelled, true);
});

Deno.test("prepareBody() turns a body the client breaks off into a 400, not an upstream failure", async () => {
  const { req, controller } = streamedPost({ "content-length": "10" });
  controller.error(new Error("connection reset"));
  await assert.rejects(
    prepareBody(req, { maxBody: MAX, bodyTimeout: Infinity }),
    (error: unknown) => error instanceof HttpError && error.status === 400,
  );
});

Deno.test("maxBody: a declared Content-Length over the limit gets 413 before any upstream request", async () => {
  await using backend = await bodyRecordingBackend();
  await using lb = await startTestBalancer([backend.url], { maxBody: MAX });
  using client = await RawClient.open(lb.port);
  // Only the head is sent: the answer must not wait for a body it is going to refuse.
  await client.write(`POST /big HTTP/1.1\r\nHost: ok\r\nContent-Length: ${MAX + 1}\r\n\r\n`);
  const response = await client.response();
  assert.equal(response.status, 413);
  assert.equal(response.body, "413 Content Too Large\n");
  assert.equal(backend.received.length, 0, "nothing reached the backend");
  assert.equal(lb.balancer.pool.backends[0].requests, 0);
});

Deno.test("maxBody: Expect: 100-continue with a length over the limit: 100 first (Deno.serve), none (native)", async () => {
  await using backend = await bodyRecordingBackend();
  await using lb = await startTestBalancer([backend.url], { maxBody: MAX });
  using client = await RawClient.open(lb.port);
  await client.write(
    `PUT /big HTTP/1.1\r\nHost: ok\r\nContent-Length: ${MAX + 1}\r\nExpect: 100-continue\r\n\r\n`,
  );
  if (TEST_FRONTEND === "native") {
    // The native front end sends 100 only when the handler reads the body: the 413 comes at
    // once and the client never uploads (RFC 9110 §10.1.1 lets a server answer instead).
    const response = await client.response();
    assert.equal(response.status, 413);
    assert.equal(response.body, "413 Content Too Large\n");
  } else {
    // Pinned Deno 2.9.6 behaviour: Deno.serve sends `100 Continue` by itself, before the
    // handler can look at the length, so the client uploads anyway; the 413 follows.
    assert.equal((await client.response()).status, 100);
    assert.equal((await client.response()).status, 413);
  }
  assert.equal(backend.received.length, 0);
});

Deno.test("maxBody: a declared length well over the limit is refused the same way (1 TiB)", async () => {
  await using backend = await bodyRecordingBackend();
  await using lb = await startTestBalancer([backend.url], { maxBody: MAX });
  using client = await RawClient.open(lb.port);
  await client.write(`PUT /huge HTTP/1.1\r\nHost: ok\r\nContent-Length: ${2 ** 40}\r\n\r\nabc`);
  assert.equal((await client.response()).status, 413);
  assert.equal(backend.received.length, 0);
});

Deno.test("maxBody: bodies of exactly the limit pass, declared and chunked", async () => {
  await using backend = await bodyRecordingBackend();
  await using lb = await startTestBalancer([backend.url], { maxBody: MAX });
  {
    using client = await RawClient.open(lb.port);
    await client.write(
      `POST /declared HTTP/1.1\r\nHost: ok\r\nContent-Length: ${MAX}\r\n\r\n${"y".repeat(MAX)}`,
    );
    const response = await client.response();
    assert.equal(response.status, 200);
    assert.equal(response.body, `got ${MAX}`);
  }
  {
    using client = await RawClient.open(lb.port);
    await client.write(
      "POST /chunked HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n" +
        chunk(MAX / 2) + chunk(MAX / 2) + "0\r\n\r\n",
    );
    const response = await client.response();
    assert.equal(response.status, 200);
    assert.equal(response.body, `got ${MAX}`);
  }
  assert.deepEqual(backend.bodies, [
    { path: "/declared", complete: true, bytes: MAX },
    { path: "/chunked", complete: true, bytes: MAX },
  ]);
});

Deno.test("maxBody: a chunked body crossing the limit gets 413 and the upstream body is cut off", async () => {
  await using backend = await bodyRecordingBackend();
  await using lb = await startTestBalancer([backend.url], { maxBody: MAX });
  using client = await RawClient.open(lb.port);
  await client.write("POST /grow HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n");
  // 20 KiB chunks up to twice the limit; no last chunk, so the body never ends by itself.
  for (let sent = 0; sent < 2 * MAX; sent += 20_000) {
    if (!(await client.write(chunk(20_000)))) break;
  }
  const response = await client.response();
  assert.equal(response.status, 413);
  // The backend had started receiving the body: it must see it broken off, never complete.
  assert.ok(await waitFor(() => backend.bodies.length === 1, WAIT_MS), "backend finished reading");
  assert.equal(backend.bodies[0].complete, false);
  assert.ok(backend.bodies[0].bytes <= MAX, `backend got ${backend.bodies[0].bytes} bytes`);
  assert.ok(await waitFor(() => lb.balancer.pool.backends[0].inflight === 0, WAIT_MS));
  // The client's fault: the backend is not blamed, in its state or in the metrics.
  assert.equal(lb.balancer.pool.backends[0].failures, 0);
  const requests = parseExposition(lb.balancer.metrics.render()).get("lb_requests_total")!;
  const count = (code: string) =>
    requests.samples.find((s) => s.labels.backend === backend.url && s.labels.code === code)
      ?.value ?? 0;
  assert.equal(count("error"), 0, "no error booked against the backend");
  assert.equal(count("4xx"), 1, "the client's 413, under the backend it was sent to");
});

Deno.test("maxBody: no retry after a limit error, on any backend", async () => {
  const backends = await Promise.all([1, 2, 3].map(() => bodyRecordingBackend()));
  try {
    await using lb = await startTestBalancer(backends.map((b) => b.url), {
      maxBody: MAX,
      retries: 2,
    });
    using client = await RawClient.open(lb.port);
    // PUT is idempotent: a retry would be allowed after an ordinary failure, not after this.
    await client.write("PUT /grow HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (let sent = 0; sent < 2 * MAX; sent += 20_000) {
      if (!(await client.write(chunk(20_000)))) break;
    }
    assert.equal((await client.response()).status, 413);
    assert.ok(await waitFor(() => backends.some((b) => b.bodies.length > 0), WAIT_MS));
    // Give a (wrong) retry time to show up before counting.
    await delay(300);
    const requests = backends.reduce((n, b) => n + b.received.length, 0);
    assert.equal(requests, 1, "exactly one attempt reached a backend");
    assert.equal(lb.balancer.metrics.retries.value, 0);
    for (const backend of lb.balancer.pool.backends) assert.equal(backend.failures, 0);
  } finally {
    await Promise.all(backends.map((b) => b.close()));
  }
});

Deno.test("maxBody: a limit crossed after the backend answered cuts the response off", async () => {
  // Headers already sent cannot become a 413: the response is aborted instead, so the client
  // cannot take it for complete, and the upstream request is cancelled all the same.
  const outcomes: string[] = [];
  await using backend = await startTestBackend((req) => {
    if (req.body === null) return new Response("no body");
    const reading = (async () => {
      let bytes = 0;
      try {
        for await (const part of req.body!) bytes += part.length;
        outcomes.push(`complete ${bytes}`);
      } catch {
        outcomes.push(`broken ${bytes}`);
      }
    })();
    let lines = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    return new Response(
      new ReadableStream<Uint8Array>({
        async pull(controller) {
          await new Promise((resolve) => (timer = setTimeout(resolve, 50)));
          if (++lines <= 100) return controller.enqueue(encoder.encode(`line ${lines}\n`));
          await reading;
          controller.close();
        },
        cancel: () => clearTimeout(timer),
      }),
    );
  });
  await using lb = await startTestBalancer([backend.url], { maxBody: MAX });
  using client = await RawClient.open(lb.port);
  await client.write("POST /early HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n");
  const response = await client.response();
  assert.equal(response.status, 200);
  for (let sent = 0; sent < 2 * MAX; sent += 20_000) {
    if (!(await client.write(chunk(20_000)))) break;
  }
  assert.ok(await client.untilClosed(), "the balancer closed the connection");
  assert.doesNotMatch(client.text(), /\r\n0\r\n\r\n$/, "the chunked response never ended");
  assert.ok(await waitFor(() => outcomes.length === 1, WAIT_MS), "backend done reading");
  assert.match(outcomes[0], /^broken /);
});

Deno.test({
  name: "maxBody: an HTTP/2 body without a length crossing the limit gets 413, upstream cut off",
  // The native front end offers HTTP/1.1 only (docs/frontend.md): HTTP/2 is --frontend deno's.
  ignore: TEST_FRONTEND === "native",
}, async () => {
  await using backend = await bodyRecordingBackend();
  await using lb = await startTestBalancer([backend.url], { maxBody: MAX });
  using client = Deno.createHttpClient({ http1: false, http2: true });
  let pulls = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      // Far more than the limit, so the upload cannot finish before the 413 arrives.
      if (pulls++ < 200) controller.enqueue(new Uint8Array(20_000));
      else controller.close();
    },
  });
  const response = await fetch(`${lb.url}/h2`, { method: "POST", body, client });
  assert.equal(response.status, 413);
  assert.equal(await response.text(), "413 Content Too Large\n");
  assert.ok(await waitFor(() => backend.bodies.length === 1, WAIT_MS), "backend finished reading");
  assert.equal(backend.bodies[0].complete, false);
});

Deno.test({
  name: "maxBody: an HTTP/2 body with a declared length over the limit never reaches a backend",
  // The native front end offers HTTP/1.1 only (docs/frontend.md): HTTP/2 is --frontend deno's.
  ignore: TEST_FRONTEND === "native",
}, async () => {
  await using backend = await bodyRecordingBackend();
  await using lb = await startTestBalancer([backend.url], { maxBody: MAX });
  using client = Deno.createHttpClient({ http1: false, http2: true });
  const response = await fetch(`${lb.url}/h2`, {
    method: "POST",
    body: new Uint8Array(MAX + 1),
    client,
  });
  assert.equal(response.status, 413);
  await response.body?.cancel();
  assert.equal(backend.received.length, 0);
});

Deno.test("bodyTimeout: a chunked upload that stalls gets 408; upstream cut off, slot freed", async () => {
  await using backend = await bodyRecordingBackend();
  const lb = await startTestBalancer([backend.url], { bodyTimeout: 200 });
  let left: number | undefined;
  try {
    using client = await RawClient.open(lb.port);
    await client.write(
      "POST /slow HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(5),
    );
    // ...and nothing more: the client keeps its connection open and silent.
    const response = await client.response();
    assert.equal(response.status, 408);
    assert.equal(response.body, "408 Request Timeout\n");
    assert.ok(await waitFor(() => backend.bodies.length === 1, WAIT_MS), "backend done reading");
    assert.deepEqual(backend.bodies[0], { path: "/slow", complete: false, bytes: 5 });
    const [pooled] = lb.balancer.pool.backends;
    assert.ok(await waitFor(() => pooled.inflight === 0, WAIT_MS), "in-flight count released");
    assert.equal(pooled.failures, 0, "the backend is not blamed for a slow client");
    // While the silent client still holds its socket, the balancer has nothing left open: a
    // drain finds no request in flight (and does not wait for that socket past its deadline).
    left = await lb.balancer.shutdown(500);
  } finally {
    if (left === undefined) await lb[Symbol.asyncDispose]();
  }
  assert.equal(left, 0);
});

Deno.test("bodyTimeout: a small declared body that stalls gets 408 and never reaches a backend", async () => {
  await using backend = await bodyRecordingBackend();
  await using lb = await startTestBalancer([backend.url], { bodyTimeout: 200 });
  using client = await RawClient.open(lb.port);
  // Small enough to be buffered for replay, so it is read whole before any attempt.
  await client.write("POST /slow HTTP/1.1\r\nHost: ok\r\nContent-Length: 100\r\n\r\n0123456789");
  const response = await client.response();
  assert.equal(response.status, 408);
  assert.equal(backend.received.length, 0);
});

Deno.test("bodyTimeout: a client that sends its body before the timeout passes", async () => {
  await using backend = await bodyRecordingBackend();
  await using lb = await startTestBalancer([backend.url], { bodyTimeout: 2000 });
  using client = await RawClient.open(lb.port);
  await client.write("POST /steady HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n");
  for (let i = 0; i < 3; i++) {
    await client.write(chunk(10));
    await delay(100);
  }
  await client.write("0\r\n\r\n");
  const response = await client.response();
  assert.equal(response.status, 200);
  assert.equal(response.body, "got 30");
});

Deno.test("bodyTimeout: a backend that is slow to read the body is not charged to the client", async () => {
  // The timeout runs only while the balancer waits for the client, never while it waits for
  // the backend to take more.
  await using backend = await bodyRecordingBackend({ delayBeforeReadMs: 800 });
  await using lb = await startTestBalancer([backend.url], { bodyTimeout: 200 });
  using client = await RawClient.open(lb.port);
  const size = 1024 * 1024;
  await client.write(
    "POST /patient HTTP/1.1\r\nHost: ok\r\nTransfer-Encoding: chunked\r\n\r\n" +
      chunk(size / 4) + chunk(size / 4) + chunk(size / 4) + chunk(size / 4) + "0\r\n\r\n",
  );
  const response = await client.response();
  assert.equal(response.status, 200);
  assert.equal(response.body, `got ${size}`);
});
