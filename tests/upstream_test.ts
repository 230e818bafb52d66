/**
 * @module
 * Unit tests of lib/upstream.ts: sendAttempt (fetch) against real backends on 127.0.0.1,
 * guardAttempt's deadlines, afterDelay's shared timer, and canConnect. fetchRewritesTarget is
 * tested in tests/exact_path_test.ts next to the wire tests it serves; afterDelay's ordering in
 * tests/failover_test.ts.
 */
import assert from "node:assert/strict";
import type { Failure } from "../lib/retry.ts";
import {
  afterDelay,
  type AttemptOptions,
  type AttemptRequest,
  canConnect,
  guardAttempt,
  sendAttempt,
} from "../lib/upstream.ts";
import { delay, readHead, refusingUrl, startTestBackend, waitFor, writeAll } from "./helpers.ts";

/** Attempt options over a client the test closes; `timeout` and `connectTimeout` as given. */
function attemptOptions(client: Deno.HttpClient, timeout = 2_000, connectTimeout = timeout) {
  return { client, timeout, connectTimeout } satisfies AttemptOptions;
}

/** A client that never leaves. */
const NEVER = new AbortController().signal;
const GET: AttemptRequest = { method: "GET", headers: [["host", "example.test"]], body: null };

Deno.test("sendAttempt() returns the backend's status, headers and body, with the client's Host", async () => {
  await using backend = await startTestBackend(() =>
    new Response("body", { status: 203, headers: { "x-from": "backend" } })
  );
  using client = Deno.createHttpClient({ allowHost: true });
  const result = await sendAttempt(
    backend.url,
    `${backend.url}/p?q=1`,
    GET,
    new AbortController().signal,
    attemptOptions(client),
  );
  assert.ok(result.ok);
  assert.equal(result.status, 203);
  const { headers, body } = result.value;
  assert.equal((headers as Headers).get("x-from"), "backend");
  assert.equal(await new Response(body).text(), "body");
  assert.equal(backend.received[0].path, "/p?q=1");
  assert.equal(backend.received[0].headers.get("host"), "example.test");
});

Deno.test("sendAttempt() fails as connect on a refusing address, and as client-gone without sending when the client left", async () => {
  await using backend = await startTestBackend();
  using client = Deno.createHttpClient({ allowHost: true });
  const refused = refusingUrl();
  const result = await sendAttempt(
    refused,
    `${refused}/`,
    GET,
    new AbortController().signal,
    attemptOptions(client),
  );
  assert.ok(!result.ok);
  assert.equal(result.failure.kind, "connect");
  const gone = new AbortController();
  gone.abort();
  const left = await sendAttempt(
    backend.url,
    `${backend.url}/`,
    GET,
    gone.signal,
    attemptOptions(client),
  );
  assert.ok(!left.ok);
  assert.equal(left.failure.kind, "client-gone");
  assert.equal(backend.received.length, 0, "nothing was sent");
});

Deno.test("sendAttempt() fails as timeout when headers do not come, and as client-gone when the client leaves meanwhile", async () => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  await using backend = await startTestBackend(async () => {
    await released;
    return new Response("late");
  });
  using client = Deno.createHttpClient({ allowHost: true });
  try {
    const late = await sendAttempt(
      backend.url,
      `${backend.url}/`,
      GET,
      new AbortController().signal,
      attemptOptions(client, 100),
    );
    assert.ok(!late.ok);
    assert.equal(late.failure.kind, "timeout");
    const leaving = new AbortController();
    const pending = sendAttempt(
      backend.url,
      `${backend.url}/`,
      GET,
      leaving.signal,
      attemptOptions(client, 10_000),
    );
    assert.ok(await waitFor(() => backend.received.length === 2, 5_000), "second request arrived");
    leaving.abort();
    const left = await pending;
    assert.ok(!left.ok);
    assert.equal(left.failure.kind, "client-gone");
  } finally {
    release();
  }
});

Deno.test("guardAttempt() abandons on a client abort until disarmed, and not after", () => {
  const options = {
    timeout: 60_000,
    connectTimeout: 60_000,
  };
  const silent: Failure[] = [];
  const client = new AbortController();
  const disarm = guardAttempt(client.signal, options, (f) => silent.push(f), () => false);
  disarm();
  client.abort();
  assert.equal(silent.length, 0, "a disarmed guard stays silent");
  const told: Failure[] = [];
  const second = new AbortController();
  const disarmSecond = guardAttempt(second.signal, options, (f) => told.push(f), () => false);
  second.abort();
  disarmSecond();
  assert.deepEqual(told.map((f) => f.kind), ["client-gone"]);
});

Deno.test("guardAttempt() turns a connect timeout into a connect failure only when unreachable() says so", async () => {
  const options = {
    timeout: 60_000,
    connectTimeout: 20,
  };
  for (const unreachable of [true, false]) {
    const failures: Failure[] = [];
    let asked = false;
    const disarm = guardAttempt(
      new AbortController().signal,
      options,
      (failure) => failures.push(failure),
      () => (asked = true, unreachable),
    );
    try {
      assert.ok(await waitFor(() => asked, 5_000), "unreachable() was asked");
      await Promise.resolve();
      if (unreachable) {
        assert.equal(failures.length, 1);
        assert.equal(failures[0].kind, "connect");
        assert.equal(failures[0].timedOut, true);
      } else {
        assert.equal(failures.length, 0, "a slow but reachable backend is waited for");
      }
    } finally {
      disarm();
    }
  }
});

Deno.test("afterDelay() fires a deadline added by another's callback, and never one cancelled by it", async () => {
  const fired: string[] = [];
  afterDelay(15, () => {
    fired.push("first");
    doomed.cancel();
    // Due after the cancelled one would have been: had the cancel failed, it fired first.
    afterDelay(60, () => fired.push("added"));
  });
  const doomed = afterDelay(40, () => fired.push("cancelled"));
  assert.ok(await waitFor(() => fired.length === 2, 5_000));
  assert.deepEqual(fired, ["first", "added"]);
});

Deno.test("canConnect() is true for a listening port and false for a refusing one", async () => {
  await using backend = await startTestBackend();
  assert.equal(await canConnect(backend.url, 2_000), true);
  assert.equal(await canConnect(refusingUrl(), 2_000), false);
});

/**
 * A backend that takes one request, stops accepting connections (its listener closed, as a
 * graceful drain does), and answers 1 s later: the connect probe fails while the request runs.
 */
function drainingBackend() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${listener.addr.port}`;
  const served = (async () => {
    const conn = await listener.accept();
    listener.close();
    try {
      await readHead(conn);
      await delay(1000);
      await writeAll(
        conn,
        new TextEncoder().encode(
          "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone",
        ),
      );
    } finally {
      conn.close();
    }
  })();
  return { url, served };
}

Deno.test("sendAttempt() (fetch) never abandons a POST on the connect probe's word; a GET it may", async () => {
  using client = Deno.createHttpClient({ allowHost: true });
  const options = attemptOptions(client, 10_000, 200);
  const post: AttemptRequest = { ...GET, method: "POST", body: new TextEncoder().encode("pay") };
  const posted = await drainingBackend();
  const answer = await sendAttempt(posted.url, `${posted.url}/pay`, post, NEVER, options);
  await posted.served;
  assert.ok(answer.ok, `the POST got its answer: ${JSON.stringify(!answer.ok && answer.failure)}`);
  assert.equal(await new Response(answer.value.body).text(), "done");
  // An idempotent request may be abandoned (and retried elsewhere) when the probe fails.
  const got = await drainingBackend();
  const abandoned = await sendAttempt(got.url, `${got.url}/`, GET, NEVER, options);
  await got.served.catch(() => {});
  assert.ok(!abandoned.ok);
  assert.equal(abandoned.failure.kind, "connect");
});
