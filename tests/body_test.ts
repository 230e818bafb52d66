/**
 * @module
 * lib/body.ts: which requests carry a body, and bodies offered to more than one attempt.
 * Streams here stand in for Deno.serve's request bodies; the wire behaviour (fetch reading
 * ahead while connecting) is covered in forwarding_test.ts.
 */

import assert from "node:assert/strict";
import { declaresBody, KEEP_LIMIT, prepareBody, REPLAY_LIMIT } from "../lib/body.ts";
import { concat } from "./helpers.ts";

const URL_ = "http://127.0.0.1/upload";

/** A source whose chunks the test releases one by one; records whether it was cancelled. */
function controlledSource() {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const state = { cancelled: false };
  const stream = new ReadableStream<Uint8Array>({
    start: (c) => {
      controller = c;
    },
    cancel: () => {
      state.cancelled = true;
    },
  });
  return {
    stream,
    state,
    push: (bytes: Uint8Array) => controller.enqueue(bytes),
    end: () => controller.close(),
  };
}

/** A POST whose body streams from `stream`, marked chunked as Deno.serve marks HTTP/1.1 ones. */
function chunkedPost(stream: ReadableStream<Uint8Array>): Request {
  return new Request(URL_, {
    method: "POST",
    body: stream,
    headers: { "transfer-encoding": "chunked" },
  });
}

async function readAll(body: BodyInit | null): Promise<Uint8Array> {
  assert.ok(body instanceof ReadableStream, "a streamed body");
  const chunks: Uint8Array[] = [];
  for await (const chunk of body as ReadableStream<Uint8Array>) chunks.push(chunk);
  return concat(chunks);
}

function bytesOf(length: number, fill: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(length).fill(fill);
}

Deno.test("declaresBody() follows Content-Length and Transfer-Encoding", () => {
  assert.equal(declaresBody(new Headers()), false);
  assert.equal(declaresBody(new Headers({ "content-length": "0" })), false);
  assert.equal(declaresBody(new Headers({ "content-length": "5" })), true);
  assert.equal(declaresBody(new Headers({ "transfer-encoding": "chunked" })), true);
});

Deno.test("prepareBody() gives no body for a request without one", async () => {
  const body = await prepareBody(new Request(URL_));
  assert.equal(body.forAttempt(), null);
  assert.equal(body.replayable, true);
});

Deno.test("prepareBody() turns an empty stream without length headers into no body", async () => {
  // Deno.serve hands a bodiless HTTP/1.1 POST a stream of one empty chunk; it must not go
  // upstream chunked.
  const empty = ReadableStream.from([new Uint8Array(0)]);
  const body = await prepareBody(new Request(URL_, { method: "POST", body: empty }));
  assert.equal(body.forAttempt(), null);
  assert.equal(body.replayable, true);
});

Deno.test("prepareBody() keeps a body without length headers that has bytes (HTTP/2)", async () => {
  const source = controlledSource();
  source.push(bytesOf(3, 1));
  source.push(bytesOf(4, 2));
  source.end();
  const body = await prepareBody(new Request(URL_, { method: "POST", body: source.stream }));
  assert.deepEqual(await readAll(body.forAttempt()), concat([bytesOf(3, 1), bytesOf(4, 2)]));
});

Deno.test("prepareBody() buffers a small body of known length for every attempt", async () => {
  const payload = bytesOf(REPLAY_LIMIT, 7);
  const body = await prepareBody(
    new Request(URL_, {
      method: "POST",
      body: payload,
      headers: { "content-length": String(payload.length) },
    }),
  );
  assert.deepEqual(body.forAttempt(), payload);
  assert.deepEqual(body.forAttempt(), payload);
  assert.equal(body.replayable, true);
});

Deno.test("prepareBody() refuses a small body that ends before its Content-Length (400)", async () => {
  // What Deno.serve hands over when an HTTP/2 client cancels its stream mid-body: a stream that
  // simply ends. Sent on, it would be a whole request with a smaller length.
  const short = ReadableStream.from([bytesOf(10, 1)]);
  const req = {
    method: "POST",
    url: URL_,
    headers: new Headers({ "content-length": "100" }),
    body: short,
    signal: new AbortController().signal,
  };
  await assert.rejects(prepareBody(req), (error: Error & { status?: number }) => {
    assert.equal(error.status, 400);
    assert.match(error.message, /ended before its Content-Length/);
    return true;
  });
});

Deno.test("prepareBody() fails a body without length whose end comes with a cancel (HTTP/2 RST_STREAM)", async () => {
  // What Deno.serve does when an HTTP/2 client cancels a stream with no Content-Length: the body
  // ends as if complete, and the request's signal aborts a moment later.
  const cancel = new AbortController();
  const source = controlledSource();
  const req = {
    method: "POST",
    url: URL_,
    headers: new Headers(),
    body: source.stream,
    signal: cancel.signal,
  };
  source.push(bytesOf(5, 1));
  const body = await prepareBody(req);
  const reading = readAll(body.forAttempt());
  source.end();
  setTimeout(() => cancel.abort(), 0);
  await assert.rejects(reading, /cancelled the request body/);
  assert.equal(body.clientError?.status, 400);
  // Without a cancel the same end is an end.
  const kept = controlledSource();
  kept.push(bytesOf(5, 1));
  const whole = await prepareBody({
    ...req,
    body: kept.stream,
    signal: new AbortController().signal,
  });
  const all = readAll(whole.forAttempt());
  kept.end();
  assert.deepEqual(await all, bytesOf(5, 1));
});

Deno.test("prepareBody() lets a later attempt resend chunks an earlier one consumed", async () => {
  const source = controlledSource();
  const chunks = [bytesOf(65536, 1), bytesOf(65536, 2), bytesOf(1000, 3)];
  for (const chunk of chunks) source.push(chunk);
  source.end();
  const body = await prepareBody(chunkedPost(source.stream));

  // The first attempt reads ahead two chunks, then fails (as fetch does on a refused connect).
  const first = (body.forAttempt() as ReadableStream<Uint8Array>).getReader();
  await first.read();
  await first.read();
  await first.cancel();
  assert.equal(body.replayable, true);

  assert.deepEqual(await readAll(body.forAttempt()), concat(chunks));
  assert.equal(source.state.cancelled, false);
});

Deno.test("prepareBody() gives a chunk read for an abandoned attempt to the next one", async () => {
  const source = controlledSource();
  const body = await prepareBody(chunkedPost(source.stream));
  source.push(bytesOf(10, 1));
  const first = (body.forAttempt() as ReadableStream<Uint8Array>).getReader();
  await first.read();
  const pending = first.read(); // in flight when the attempt is given up
  const second = body.forAttempt();
  source.push(bytesOf(20, 2));
  source.end();
  assert.deepEqual(await readAll(second), concat([bytesOf(10, 1), bytesOf(20, 2)]));
  await first.cancel();
  assert.deepEqual(await pending, { done: true, value: undefined });
});

Deno.test("prepareBody() stops offering replays once more than KEEP_LIMIT was read", async () => {
  const source = controlledSource();
  const chunk = bytesOf(64 * 1024, 9);
  const count = KEEP_LIMIT / chunk.length + 2;
  for (let i = 0; i < count; i++) source.push(chunk);
  source.end();
  const body = await prepareBody(chunkedPost(source.stream));
  const all = await readAll(body.forAttempt());
  assert.equal(all.length, chunk.length * count);
  assert.equal(body.replayable, false);
});

Deno.test("prepareBody() discard() cancels the client's stream", async () => {
  const source = controlledSource();
  source.push(bytesOf(1, 1));
  const body = await prepareBody(chunkedPost(source.stream));
  await body.discard();
  assert.equal(source.state.cancelled, true);
});
