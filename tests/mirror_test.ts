/**
 * @module
 * lib/mirror.ts: the `mirror` key's check, sampling, the in-flight limit, body limits, the
 * body tee, and on real sockets that a stalled or dead mirror costs the client nothing.
 */

import assert from "node:assert/strict";
import { prepareBody, type RequestBody } from "../lib/body.ts";
import type { HeaderPairs } from "../lib/headers.ts";
import {
  checkMirror,
  createServiceMirrorTarget,
  InFlightLimit,
  Mirror,
  MIRROR_DEFAULTS,
  MIRROR_SCHEMA,
  type MirroredRequest,
  type MirrorSpec,
  type MirrorTarget,
} from "../lib/mirror.ts";
import { Pool } from "../lib/pool.ts";
import { createPolicy } from "../lib/policies/mod.ts";
import type { Problem } from "../lib/problem.ts";
import { parseSize } from "../lib/setting_values.ts";
import { type AttemptOptions, sendAttempt, type Transport } from "../lib/upstream.ts";
import { createNativeTransport, type NativeTransport } from "../lib/upstream_native.ts";
import { concat, refusingUrl, waitFor } from "./helpers.ts";

const SPEC: MirrorSpec = { service: "shadow", percent: 100, maxBody: 1024 };
const HEAD = { method: "POST", path: "/api/x?q=1", headers: [["host", "example.com"]] } as {
  method: string;
  path: string;
  headers: HeaderPairs;
};
const NEVER = new Promise<never>(() => {});

/** A target that answers every copy with `status` at once, recording it. */
function recordingTarget(status = 200): MirrorTarget & { got: MirroredRequest[] } {
  const got: MirroredRequest[] = [];
  return {
    got,
    send(request) {
      got.push(request);
      return Promise.resolve(status);
    },
  };
}

/** A target whose copies stay in flight until the test answers them. */
function stallingTarget() {
  const pending: ((status: number) => void)[] = [];
  return {
    pending,
    send: () => new Promise<number>((resolve) => pending.push(resolve)),
    answerAll(status = 200) {
      for (const answer of pending.splice(0)) answer(status);
    },
  };
}

/** Uniform numbers 0, 1/n, 2/n, ... (n-1)/n, repeating. */
function evenly(n: number): () => number {
  let i = 0;
  return () => (i++ % n) / n;
}

function bytesOf(length: number, fill: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(length).fill(fill);
}

/** A chunked POST whose body is `chunks`, as Deno.serve hands HTTP/1.1 ones over. */
function chunkedPost(chunks: Uint8Array[]): Request {
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  return new Request("http://127.0.0.1/upload", {
    method: "POST",
    body: stream,
    headers: { "transfer-encoding": "chunked" },
  });
}

/** Reads an attempt's body to its end. */
async function readAttempt(body: RequestBody): Promise<Uint8Array> {
  const init = body.forAttempt();
  assert.ok(init instanceof ReadableStream, "a streamed body");
  const chunks: Uint8Array[] = [];
  for await (const chunk of init as ReadableStream<Uint8Array>) chunks.push(chunk);
  return concat(chunks);
}

// ---------------------------------------------------------------------------------------------
// checkMirror

Deno.test("checkMirror() applies the defaults and reads sizes", () => {
  const problems: Problem[] = [];
  assert.deepEqual(checkMirror({ service: "shadow" }, "mirror", problems), {
    service: "shadow",
    percent: MIRROR_DEFAULTS.percent,
    maxBody: 64 * 1024,
  });
  assert.deepEqual(
    checkMirror({ service: "s", percent: 12.5, maxBody: "1MiB" }, "mirror", problems),
    { service: "s", percent: 12.5, maxBody: 1024 * 1024 },
  );
  assert.deepEqual(checkMirror({ service: "s", percent: 0, maxBody: 0 }, "m", problems), {
    service: "s",
    percent: 0,
    maxBody: 0,
  });
  assert.deepEqual(problems, []);
});

Deno.test("checkMirror() reports each mistake at its path, with the value", () => {
  const cases: [unknown, string, RegExp][] = [
    ["shadow", "routes[1].mirror", /"shadow" is not an object/],
    [{}, "routes[1].mirror.service", /missing/],
    [{ service: "" }, "routes[1].mirror.service", /"" is not a service name/],
    [{ service: 3 }, "routes[1].mirror.service", /3 is not a service name/],
    [
      { service: "s", percent: 101 },
      "routes[1].mirror.percent",
      /101 is out of range \(0 to 100\)/,
    ],
    [{ service: "s", percent: -1 }, "routes[1].mirror.percent", /-1 is out of range/],
    [{ service: "s", percent: "10%" }, "routes[1].mirror.percent", /"10%" is not a number/],
    [{ service: "s", maxBody: "64 parsecs" }, "routes[1].mirror.maxBody", /is not a size/],
    [{ service: "s", maxBody: -1 }, "routes[1].mirror.maxBody", /-1 is not a size/],
    [{ service: "s", maxBody: "1GiB" }, "routes[1].mirror.maxBody", /more than 16MiB/],
    [{ service: "s", precent: 5 }, "routes[1].mirror.precent", /unknown key.*percent/],
  ];
  for (const [value, path, message] of cases) {
    const problems: Problem[] = [];
    assert.equal(checkMirror(value, "routes[1].mirror", problems), undefined, path);
    assert.equal(problems.length, 1, JSON.stringify(problems));
    assert.equal(problems[0].path, path);
    assert.match(problems[0].message, message);
  }
});

Deno.test("checkMirror() reads maxBody as setting_values.ts parseSize() reads sizes", () => {
  const samples = [
    "0",
    "65536",
    "64KiB",
    "64k",
    "1.5MiB",
    "1MB",
    "2kb",
    " 8 KiB ",
    "10 parsecs",
    "",
  ];
  for (const text of samples) {
    const expected = parseSize(text);
    const problems: Problem[] = [];
    const spec = checkMirror({ service: "s", maxBody: text }, "m", problems);
    assert.equal(spec?.maxBody, expected, JSON.stringify(text));
  }
});

Deno.test("MIRROR_SCHEMA names the keys checkMirror() accepts, with its defaults", () => {
  assert.deepEqual(Object.keys(MIRROR_SCHEMA.properties).sort(), ["maxBody", "percent", "service"]);
  assert.equal(MIRROR_SCHEMA.properties.percent.default, MIRROR_DEFAULTS.percent);
  const problems: Problem[] = [];
  const spec = checkMirror(
    { service: "s", maxBody: MIRROR_SCHEMA.properties.maxBody.default },
    "m",
    problems,
  );
  assert.equal(spec?.maxBody, MIRROR_DEFAULTS.maxBody);
});

// ---------------------------------------------------------------------------------------------
// Mirror: sampling, limits, headers

Deno.test("Mirror.copy() copies exactly the configured share of requests", async () => {
  for (const [percent, expected] of [[10, 100], [12.5, 125], [0, 0], [100, 1000]]) {
    const target = recordingTarget();
    const mirror = new Mirror({ ...SPEC, percent }, target, {
      random: evenly(1000),
      maxInFlight: 1000,
    });
    for (let i = 0; i < 1000; i++) mirror.copy({ ...HEAD, body: null });
    await mirror.close();
    assert.equal(mirror.stats().sent, expected, `${percent}%`);
    assert.equal(target.got.length, expected);
    assert.deepEqual(mirror.stats().statuses, expected === 0 ? {} : { "200": expected });
  }
});

Deno.test("Mirror.copy() drops and counts copies beyond maxInFlight, then frees places", async () => {
  const target = stallingTarget();
  const mirror = new Mirror(SPEC, target, { maxInFlight: 3 });
  for (let i = 0; i < 5; i++) mirror.copy({ ...HEAD, body: null });
  assert.equal(target.pending.length, 3);
  assert.deepEqual(mirror.stats().dropped, { full: 2, tooLarge: 0, incomplete: 0 });
  target.answerAll(503);
  assert.ok(await waitFor(() => mirror.stats().statuses["503"] === 3));
  mirror.copy({ ...HEAD, body: null });
  assert.equal(target.pending.length, 1);
  target.answerAll(200);
  await mirror.close();
  const stats = mirror.stats();
  assert.equal(stats.sent, 4);
  assert.deepEqual(stats.statuses, { "503": 3, "200": 1 });
});

Deno.test("Mirror: one InFlightLimit bounds every mirror to the same target together", async () => {
  const target = stallingTarget();
  const limit = new InFlightLimit(2);
  const a = new Mirror(SPEC, target, { limit });
  const b = new Mirror(SPEC, target, { limit });
  a.copy({ ...HEAD, body: null });
  b.copy({ ...HEAD, body: null });
  b.copy({ ...HEAD, body: null });
  assert.equal(target.pending.length, 2);
  assert.equal(b.stats().dropped.full, 1);
  target.answerAll();
  await Promise.all([a.close(), b.close()]);
  assert.equal(limit.inFlight, 0);
  assert.throws(() => new InFlightLimit(0), /maxInFlight/);
});

Deno.test("Mirror.copy() drops and counts a body larger than maxBody", async () => {
  const target = recordingTarget();
  const mirror = new Mirror({ ...SPEC, maxBody: 10 }, target);
  mirror.copy({ ...HEAD, body: bytesOf(11, 1) });
  mirror.copy({ ...HEAD, body: bytesOf(10, 2) });
  await mirror.close();
  assert.equal(mirror.stats().dropped.tooLarge, 1);
  assert.equal(target.got.length, 1);
  assert.deepEqual(target.got[0].body, bytesOf(10, 2));
});

Deno.test("Mirror.copy() marks the copy and drops Expect and framing headers", async () => {
  const target = recordingTarget();
  const mirror = new Mirror(SPEC, target, { route: "api" });
  const headers: HeaderPairs = [
    ["host", "example.com"],
    ["content-length", "3"],
    ["expect", "100-continue"],
    ["x-mirrored-from", "forged"],
    ["x-request-id", "abc"],
  ];
  mirror.copy({ method: "PUT", path: "/v1/x", headers, body: bytesOf(3, 7) });
  await mirror.close();
  assert.deepEqual(target.got[0].headers, [
    ["host", "example.com"],
    ["x-request-id", "abc"],
    ["x-mirrored-from", "api"],
  ]);
  assert.equal(target.got[0].method, "PUT");
  assert.equal(target.got[0].path, "/v1/x");
  assert.equal(headers.length, 5, "the caller's headers are left alone");
});

Deno.test("Mirror counts a copy that fails, also one whose target throws at once", async () => {
  const errors: unknown[] = [];
  const rejecting = new Mirror(SPEC, { send: () => Promise.reject(new Error("refused")) }, {
    onFailure: (error) => errors.push(error),
  });
  const throwing = new Mirror(SPEC, {
    send: () => {
      throw new Error("no backend");
    },
  });
  rejecting.copy({ ...HEAD, body: null });
  throwing.copy({ ...HEAD, body: null });
  await Promise.all([rejecting.close(), throwing.close()]);
  assert.equal(rejecting.stats().failed, 1);
  assert.equal(throwing.stats().failed, 1);
  assert.match(String(errors[0]), /refused/);
});

Deno.test("Mirror.close() waits for copies in flight; later requests are not copied", async () => {
  const target = stallingTarget();
  const mirror = new Mirror(SPEC, target);
  mirror.copy({ ...HEAD, body: null });
  let closed = false;
  const closing = mirror.close().then(() => closed = true);
  await Promise.resolve();
  assert.equal(closed, false);
  mirror.copy({ ...HEAD, body: null });
  assert.equal(target.pending.length, 1);
  target.answerAll();
  await closing;
  assert.deepEqual(mirror.stats().statuses, { "200": 1 });
  assert.equal(mirror.stats().sent, 1);
});

Deno.test("Mirror.close() still copies a request chosen before it whose body was arriving", async () => {
  const target = recordingTarget();
  const mirror = new Mirror(SPEC, target);
  const chunks = [bytesOf(100, 1), bytesOf(200, 2)];
  // Chosen and teed before the close (a reload in the middle of an upload)...
  const body = mirror.tee(HEAD, await prepareBody(chunkedPost(chunks)), NEVER);
  await mirror.close();
  // ...and its body completes after it.
  assert.deepEqual(await readAttempt(body), concat(chunks));
  assert.ok(await waitFor(() => target.got.length === 1, 2000), "the copy was sent");
  assert.deepEqual(target.got[0].body, concat(chunks));
  assert.equal(mirror.stats().sent, 1);
  // A request that arrives after the close is not chosen: its body is left as it is.
  const late = await prepareBody(chunkedPost(chunks));
  assert.equal(mirror.tee(HEAD, late, NEVER), late);
  await readAttempt(late);
  assert.equal(mirror.stats().sent, 1);
});

// ---------------------------------------------------------------------------------------------
// Mirror.tee: bodies from lib/body.ts

Deno.test("Mirror.tee() copies a buffered body at once and leaves it to the attempts", async () => {
  const target = recordingTarget();
  const mirror = new Mirror(SPEC, target);
  // Content-Length as Deno.serve gives it: a small body with one is read whole.
  const req = new Request("http://127.0.0.1/", {
    method: "POST",
    body: "hello",
    headers: { "content-length": "5" },
  });
  const body = await prepareBody(req);
  assert.equal(mirror.tee(HEAD, body, NEVER), body);
  await mirror.close();
  assert.deepEqual(target.got[0].body, new TextEncoder().encode("hello"));
  assert.deepEqual(body.forAttempt(), new TextEncoder().encode("hello"));
});

Deno.test("Mirror.tee() copies a streamed body once an attempt has read it whole", async () => {
  const target = recordingTarget();
  const mirror = new Mirror(SPEC, target);
  const chunks = [bytesOf(100, 1), bytesOf(200, 2), bytesOf(300, 3)];
  const body = mirror.tee(HEAD, await prepareBody(chunkedPost(chunks)), NEVER);
  assert.equal(target.got.length, 0, "nothing is sent before the body has been read");
  assert.deepEqual(await readAttempt(body), concat(chunks));
  await mirror.close();
  assert.equal(target.got.length, 1);
  assert.deepEqual(target.got[0].body, concat(chunks));
});

Deno.test("Mirror.tee() keeps copying from the attempt that replays the body", async () => {
  const target = recordingTarget();
  const mirror = new Mirror(SPEC, target);
  const chunks = [bytesOf(100, 1), bytesOf(200, 2), bytesOf(300, 3)];
  const body = mirror.tee(HEAD, await prepareBody(chunkedPost(chunks)), NEVER);
  // The first attempt reads one chunk, then fails (its stream cancelled); the next replays.
  const first = (body.forAttempt() as ReadableStream<Uint8Array>).getReader();
  assert.equal((await first.read()).value?.length, 100);
  await first.cancel();
  assert.deepEqual(await readAttempt(body), concat(chunks));
  await mirror.close();
  assert.equal(target.got.length, 1);
  assert.deepEqual(target.got[0].body, concat(chunks));
});

Deno.test("Mirror.tee() drops a streamed body that grows past maxBody, not the primary's", async () => {
  const target = recordingTarget();
  const mirror = new Mirror({ ...SPEC, maxBody: 250 }, target);
  const chunks = [bytesOf(100, 1), bytesOf(200, 2), bytesOf(300, 3)];
  const body = mirror.tee(HEAD, await prepareBody(chunkedPost(chunks)), NEVER);
  assert.deepEqual(await readAttempt(body), concat(chunks));
  await mirror.close();
  assert.equal(target.got.length, 0);
  assert.equal(mirror.stats().dropped.tooLarge, 1);
});

Deno.test("Mirror.tee() drops a body whose declared length is over maxBody, unread", async () => {
  const target = recordingTarget();
  const mirror = new Mirror({ ...SPEC, maxBody: 10 }, target);
  const req = new Request("http://127.0.0.1/", {
    method: "POST",
    body: bytesOf(100_000, 1),
    headers: { "content-length": "100000" },
  });
  const body = await prepareBody(req);
  const head = { ...HEAD, headers: [["content-length", "100000"]] as HeaderPairs };
  assert.equal(mirror.tee(head, body, NEVER), body);
  assert.equal(mirror.stats().dropped.tooLarge, 1);
  await body.discard();
});

Deno.test("Mirror.tee() counts a streamed body the request ended without reading", async () => {
  const target = recordingTarget();
  const mirror = new Mirror(SPEC, target);
  let finish!: () => void;
  const completed = new Promise<void>((resolve) => finish = resolve);
  const body = mirror.tee(HEAD, await prepareBody(chunkedPost([bytesOf(10, 1)])), completed);
  finish();
  await completed;
  assert.deepEqual(mirror.stats().dropped, { full: 0, tooLarge: 0, incomplete: 1 });
  // Read afterwards, the body still reaches the primary, and is not copied.
  assert.deepEqual(await readAttempt(body), bytesOf(10, 1));
  await mirror.close();
  assert.equal(target.got.length, 0);
});

Deno.test("Mirror.tee() returns the body untouched for a request it does not copy", async () => {
  const mirror = new Mirror({ ...SPEC, percent: 0 }, recordingTarget());
  const body = await prepareBody(chunkedPost([bytesOf(10, 1)]));
  assert.equal(mirror.tee(HEAD, body, NEVER), body);
  await body.discard();
});

// ---------------------------------------------------------------------------------------------
// On the wire

/** A backend that records every body it reads and answers when `gate` opens. */
function mirrorBackend() {
  const bodies: Uint8Array[] = [];
  const headers: Headers[] = [];
  let open!: () => void;
  const gate = new Promise<void>((resolve) => open = resolve);
  const state = { answered: 0 };
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    bodies.push(await req.bytes());
    headers.push(new Headers(req.headers));
    await gate;
    state.answered++;
    return new Response("mirror");
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    bodies,
    headers,
    state,
    open,
    close: async () => {
      open();
      await server.shutdown();
    },
  };
}

/** The pieces the proxy will wire: a pool and a transport for the mirror service. */
function serviceTarget(
  url: string,
  native: NativeTransport,
  client: Deno.HttpClient,
  transport: Transport = native.send,
) {
  const pool = new Pool([{ url, weight: 1 }], {
    rise: 2,
    fall: 3,
    policy: createPolicy("round-robin"),
  });
  const attempt: AttemptOptions = { client, timeout: 30_000, connectTimeout: 3_000 };
  return { pool, target: createServiceMirrorTarget({ pool, transport, attempt }) };
}

/**
 * A front like the proxy's request path: the body prepared by lib/body.ts, teed by the mirror,
 * sent to `primary` by the native transport, the primary's answer relayed.
 */
function startFront(
  primary: string,
  mirror: Mirror,
  native: NativeTransport,
  client: Deno.HttpClient,
) {
  const attempt: AttemptOptions = { client, timeout: 30_000, connectTimeout: 3_000 };
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen: () => {} },
    async (req, info) => {
      const path = new URL(req.url).pathname;
      const headers: HeaderPairs = [...req.headers];
      const prepared = await prepareBody(req);
      const body = mirror.tee({ method: req.method, path, headers }, prepared, info.completed);
      const result = await native.send(
        primary,
        primary + path,
        {
          method: req.method,
          headers,
          body: body.forAttempt(),
        },
        req.signal,
        attempt,
      );
      if (!result.ok) return new Response(result.failure.detail, { status: 502 });
      return new Response(result.value.body, { status: result.value.status });
    },
  );
  return { url: `http://127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

function primaryBackend() {
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen: () => {} },
    async (req) => new Response(`primary got ${(await req.bytes()).length} bytes`),
  );
  return { url: `http://127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

Deno.test("a stalled mirror adds nothing: the client is answered while it stalls, and it gets the same body", async () => {
  const native = createNativeTransport();
  const client = Deno.createHttpClient({});
  const primary = primaryBackend();
  const shadow = mirrorBackend();
  const { pool, target } = serviceTarget(shadow.url, native, client);
  const mirror = new Mirror(SPEC, target, { route: "api" });
  const front = startFront(primary.url, mirror, native, client);
  try {
    const payload = bytesOf(1000, 42);
    const response = await fetch(`${front.url}/upload`, { method: "POST", body: payload, client });
    assert.equal(await response.text(), "primary got 1000 bytes");
    assert.equal(shadow.state.answered, 0, "the client's answer came while the mirror stalled");
    assert.ok(await waitFor(() => shadow.bodies.length === 1), "the mirror got the copy");
    assert.deepEqual(shadow.bodies[0], payload);
    assert.equal(shadow.headers[0].get("x-mirrored-from"), "api");
    assert.equal(pool.backends[0].inflight, 1);
    shadow.open();
    assert.ok(await waitFor(() => mirror.stats().statuses["200"] === 1));
    assert.equal(pool.backends[0].inflight, 0);
  } finally {
    shadow.open();
    await mirror.close();
    await front.close();
    await Promise.all([primary.close(), shadow.close()]);
    await native.close();
    client.close();
  }
});

Deno.test("a streamed client body reaches the primary and the mirror byte for byte", async () => {
  const native = createNativeTransport();
  const client = Deno.createHttpClient({});
  const primary = primaryBackend();
  const shadow = mirrorBackend();
  shadow.open();
  const { target } = serviceTarget(shadow.url, native, client);
  const mirror = new Mirror({ ...SPEC, maxBody: 300_000 }, target);
  const front = startFront(primary.url, mirror, native, client);
  try {
    const chunks = [bytesOf(70_000, 1), bytesOf(70_000, 2), bytesOf(70_000, 3)];
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const chunk of chunks) controller.enqueue(chunk);
        controller.close();
      },
    });
    const response = await fetch(`${front.url}/upload`, { method: "POST", body: stream, client });
    assert.equal(await response.text(), "primary got 210000 bytes");
    assert.ok(await waitFor(() => mirror.stats().statuses["200"] === 1));
    assert.deepEqual(shadow.bodies[0], concat(chunks));
  } finally {
    await mirror.close();
    await front.close();
    await Promise.all([primary.close(), shadow.close()]);
    await native.close();
    client.close();
  }
});

for (const [name, transport] of [["native", undefined], ["fetch", sendAttempt]] as const) {
  Deno.test(`a dead mirror costs the client nothing and is counted as failed (${name})`, async () => {
    const native = createNativeTransport();
    const client = Deno.createHttpClient({});
    const primary = primaryBackend();
    const { target } = serviceTarget(refusingUrl(), native, client, transport ?? native.send);
    const errors: string[] = [];
    const mirror = new Mirror(SPEC, target, { onFailure: (e) => errors.push(String(e)) });
    const front = startFront(primary.url, mirror, native, client);
    try {
      for (let i = 0; i < 3; i++) {
        const response = await fetch(`${front.url}/x`, { method: "POST", body: "abc", client });
        assert.equal(response.status, 200);
        assert.equal(await response.text(), "primary got 3 bytes");
      }
      assert.ok(await waitFor(() => mirror.stats().failed === 3), JSON.stringify(mirror.stats()));
      assert.deepEqual(mirror.stats().statuses, {});
      assert.match(errors[0], /MirrorError: http:\/\/127\.0\.0\.1:\d+: /);
    } finally {
      await mirror.close();
      await front.close();
      await primary.close();
      await native.close();
      client.close();
    }
  });
}

Deno.test("createServiceMirrorTarget() gives up on a copy at its deadline and frees the backend", async () => {
  const native = createNativeTransport();
  const client = Deno.createHttpClient({});
  const shadow = mirrorBackend();
  const pool = new Pool([{ url: shadow.url, weight: 1 }], {
    rise: 2,
    fall: 3,
    policy: createPolicy("round-robin"),
  });
  const target = createServiceMirrorTarget({
    pool,
    transport: native.send,
    attempt: { client, timeout: 30_000, connectTimeout: 3_000 },
    timeout: 200,
  });
  try {
    await assert.rejects(
      target.send({ method: "GET", path: "/", headers: [], body: null }),
      /no answer within 200ms/,
    );
    assert.equal(pool.backends[0].inflight, 0);
  } finally {
    await shadow.close();
    await native.close();
    client.close();
  }
});
