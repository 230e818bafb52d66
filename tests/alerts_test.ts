import assert from "node:assert/strict";
import { alertBackoff, alertBody, AlertWebhook, type BackendStateEvent } from "../lib/alerts.ts";

const event: BackendStateEvent = {
  backend: "http://127.0.0.1:8081",
  from: "up",
  to: "down",
  reason: '3 failed health checks: "connection refused"',
  time: new Date("2026-11-25T13:20:59.123Z"),
};

const EXPECTED_BODY = '{"event":"backend_state_change","backend":"http://127.0.0.1:8081",' +
  '"from":"up","to":"down","reason":"3 failed health checks: \\"connection refused\\"",' +
  '"time":"2026-11-25T13:20:59.123Z"}';

interface Received {
  method: string;
  contentType: string | null;
  path: string;
  body: string;
}

/** A webhook receiver on 127.0.0.1:0; `answer` decides each reply (n counts from 1). */
function receiver(answer: (n: number) => Response | Promise<Response>) {
  const received: Received[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    received.push({
      method: req.method,
      contentType: req.headers.get("content-type"),
      path: new URL(req.url).pathname,
      body: await req.text(),
    });
    return await answer(received.length);
  });
  return { url: `http://127.0.0.1:${server.addr.port}/hook`, received, server };
}

/**
 * A receiver that holds every request until `release()`: a webhook that hangs. `answered()`
 * counts the replies sent. Call `release()` before shutting the server down, or the shutdown
 * waits for the held handlers.
 */
function hangingReceiver() {
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  let answered = 0;
  const hook = receiver(async () => {
    await released;
    answered++;
    return new Response("late");
  });
  return { ...hook, release, answered: () => answered };
}

function recordingLog() {
  const warn: string[] = [];
  const info: string[] = [];
  return {
    warn,
    info,
    log: { warn: (m: string) => warn.push(m), info: (m: string) => info.push(m) },
  };
}

/** Polls `condition` every few ms; fails after `ms`. Every timer it starts has fired by return. */
async function waitFor(condition: () => boolean, what: string, ms = 5_000): Promise<void> {
  const start = Date.now();
  while (!condition()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

Deno.test("alertBody() is the exact documented JSON", () => {
  assert.equal(alertBody(event), EXPECTED_BODY);
  assert.equal(JSON.parse(alertBody({ ...event, time: new Date(NaN) })).time, null);
});

Deno.test("alertBackoff() doubles from baseMs, keeps half as floor, and stops at maxMs", () => {
  assert.equal(alertBackoff(1, 500, 30_000, () => 0), 250);
  assert.equal(alertBackoff(1, 500, 30_000, () => 0.999999), 500);
  assert.equal(alertBackoff(3, 500, 30_000, () => 0), 1_000);
  assert.equal(alertBackoff(3, 500, 30_000, () => 0.5), 1_500);
  assert.equal(alertBackoff(20, 500, 30_000, () => 0), 15_000);
  assert.equal(alertBackoff(2_000, 500, 30_000, () => 0.999999), 30_000); // 2**n overflow
});

Deno.test("new AlertWebhook() rejects bad options with the value", () => {
  assert.throws(() => new AlertWebhook({ url: "not a url" }), /absolute http\(s\) URL/);
  assert.throws(() => new AlertWebhook({ url: "ftp://x/secret" }), /got "ftp:"/);
  assert.throws(() => new AlertWebhook({ url: "http://x", maxAttempts: 0 }), /maxAttempts.*got 0/);
  assert.throws(
    () => new AlertWebhook({ url: "http://x", baseDelayMs: 100, maxDelayMs: 50 }),
    /maxDelayMs must be a whole number >= 100, got 50/,
  );
  assert.throws(() => new AlertWebhook({ url: "http://x", timeoutMs: 1.5 }), /timeoutMs/);
  assert.throws(() => new AlertWebhook({ url: "http://x", maxQueue: -1 }), /maxQueue/);
});

Deno.test("AlertWebhook.notify() POSTs the JSON body to a real receiver", async () => {
  const hook = receiver(() => new Response("ok"));
  const alerts = new AlertWebhook({ url: hook.url });
  try {
    alerts.notify(event);
    await waitFor(() => hook.received.length === 1, "delivery");
    assert.deepEqual(hook.received[0], {
      method: "POST",
      contentType: "application/json",
      path: "/hook",
      body: EXPECTED_BODY,
    });
  } finally {
    await alerts.close();
    await hook.server.shutdown();
  }
});

Deno.test("AlertWebhook retries a failing receiver and delivers on try 3", async () => {
  const hook = receiver((n) => new Response(null, { status: n <= 2 ? 503 : 204 }));
  const { warn, info, log } = recordingLog();
  const alerts = new AlertWebhook({ url: hook.url, log, baseDelayMs: 10, maxDelayMs: 40 });
  try {
    alerts.notify(event);
    await waitFor(() => info.length === 1, "success after retries");
    assert.equal(hook.received.length, 3);
    assert.ok(hook.received.every((r) => r.body === EXPECTED_BODY), "same body every try");
    assert.equal(warn.length, 2);
    assert.match(
      warn[0],
      /try 1\/5 for http:\/\/127\.0\.0\.1:8081 up -> down failed: HTTP 503; retrying in \d+ms/,
    );
    assert.match(warn[1], /try 2\/5 .* failed: HTTP 503; retrying/);
    assert.equal(info[0], "alert webhook: delivered http://127.0.0.1:8081 up -> down on try 3");
    assert.ok(warn.every((line) => !line.includes("/hook")), "webhook URL never logged");
  } finally {
    await alerts.close();
    await hook.server.shutdown();
  }
});

Deno.test("AlertWebhook gives up with a log line after maxAttempts", async () => {
  const hook = receiver(() => new Response("nope", { status: 500 }));
  const { warn, log } = recordingLog();
  const alerts = new AlertWebhook({ url: hook.url, log, maxAttempts: 3, baseDelayMs: 5 });
  try {
    alerts.notify(event);
    await waitFor(() => warn.some((l) => l.includes("giving up")), "give-up line");
    assert.equal(hook.received.length, 3);
    assert.deepEqual(warn.map((l) => l.replace(/\d+ms/, "Nms")), [
      "alert webhook: try 1/3 for http://127.0.0.1:8081 up -> down failed: HTTP 500; retrying in Nms",
      "alert webhook: try 2/3 for http://127.0.0.1:8081 up -> down failed: HTTP 500; retrying in Nms",
      "alert webhook: try 3/3 for http://127.0.0.1:8081 up -> down failed: HTTP 500",
      "alert webhook: giving up on http://127.0.0.1:8081 up -> down after 3 tries",
    ]);
  } finally {
    await alerts.close();
    await hook.server.shutdown();
  }
});

Deno.test("AlertWebhook counts a refused connection as a failed try", async () => {
  // A refusing address: bind port 0, then close it.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const { warn, log } = recordingLog();
  const alerts = new AlertWebhook({
    url: `http://127.0.0.1:${port}/`,
    log,
    maxAttempts: 2,
    baseDelayMs: 1,
  });
  try {
    alerts.notify(event);
    await waitFor(() => warn.some((l) => l.includes("giving up")), "give-up line");
    assert.match(warn[0], /try 1\/2 .* failed: .*(refused|Connect)/i);
  } finally {
    await alerts.close();
  }
});

Deno.test("AlertWebhook.notify() returns before a hanging receiver answers", async () => {
  const hook = hangingReceiver();
  const alerts = new AlertWebhook({ url: hook.url });
  try {
    assert.equal(alerts.notify(event), undefined);
    alerts.notify({ ...event, from: "down", to: "up" });
    assert.equal(hook.answered(), 0, "notify() returned before any answer");
    await waitFor(() => hook.received.length === 1, "first request");
    assert.equal(hook.answered(), 0);
    assert.equal(alerts.pending, 1, "second event waits its turn: one sender, in order");
    hook.release();
    await waitFor(() => hook.received.length === 2 && hook.answered() === 2, "both delivered");
    assert.deepEqual(hook.received.map((r) => JSON.parse(r.body).to), ["down", "up"]);
  } finally {
    hook.release();
    await alerts.close();
    await hook.server.shutdown();
  }
});

Deno.test("AlertWebhook delivers events in order even when one needs retries", async () => {
  const hook = receiver((n) => new Response(null, { status: n === 1 ? 500 : 200 }));
  const alerts = new AlertWebhook({ url: hook.url, baseDelayMs: 5 });
  try {
    for (let i = 0; i < 5; i++) alerts.notify({ ...event, backend: `http://b${i}` });
    await waitFor(() => hook.received.length === 6, "all events");
    assert.deepEqual(
      hook.received.map((r) => JSON.parse(r.body).backend),
      ["http://b0", "http://b0", "http://b1", "http://b2", "http://b3", "http://b4"],
    );
  } finally {
    await alerts.close();
    await hook.server.shutdown();
  }
});

Deno.test("AlertWebhook times out a try that gets no response", async () => {
  const hook = hangingReceiver();
  const { warn, log } = recordingLog();
  const alerts = new AlertWebhook({ url: hook.url, log, maxAttempts: 1, timeoutMs: 50 });
  try {
    alerts.notify(event);
    await waitFor(() => warn.some((l) => l.includes("giving up")), "give-up line");
    assert.match(warn[0], /try 1\/1 .* failed: no response within 50ms/);
  } finally {
    hook.release();
    await alerts.close();
    await hook.server.shutdown();
  }
});

Deno.test("AlertWebhook.close() aborts a hanging try after closeTimeoutMs and drops the queue", async () => {
  const hook = hangingReceiver();
  const { warn, log } = recordingLog();
  const alerts = new AlertWebhook({ url: hook.url, log, closeTimeoutMs: 30 });
  try {
    alerts.notify(event);
    alerts.notify({ ...event, backend: "http://queued-1" });
    alerts.notify({ ...event, backend: "http://queued-2" });
    await waitFor(() => hook.received.length === 1, "first request");
    await alerts.close();
    assert.equal(alerts.dropped, 2);
    assert.match(warn.join("\n"), /try 1\/5 .* failed: alert webhook closed/);
    assert.match(
      warn.join("\n"),
      /giving up on http:\/\/127\.0\.0\.1:8081 up -> down after 1 tries/,
    );
    assert.match(warn.join("\n"), /closing with 2 undelivered alert\(s\)/);
    alerts.notify(event); // after close: dropped, no new loop, no timers
    assert.equal(alerts.dropped, 3);
    assert.equal(hook.received.length, 1);
  } finally {
    hook.release();
    await hook.server.shutdown();
  }
});

Deno.test("AlertWebhook.close() ends a long backoff wait at once, leaving no timers", async () => {
  const hook = receiver(() => new Response(null, { status: 500 }));
  const { warn, log } = recordingLog();
  // A 10-minute backoff: if close() left its timer, the sanitizer would fail this test.
  const alerts = new AlertWebhook({
    url: hook.url,
    log,
    baseDelayMs: 600_000,
    maxDelayMs: 600_000,
  });
  try {
    alerts.notify(event);
    await waitFor(() => warn.length === 1, "first failure");
    assert.match(warn[0], /retrying in \d+ms/);
    await alerts.close();
    assert.match(warn.at(-1)!, /giving up on .* after 1 tries/);
    assert.equal(hook.received.length, 1);
  } finally {
    await hook.server.shutdown();
  }
});

Deno.test("AlertWebhook.notify() drops the oldest event when the queue is full", async () => {
  const gates: Array<() => void> = [];
  const sent: string[] = [];
  // An injected fetch that answers only when the test says so.
  const fakeFetch = ((_url: string, init: RequestInit) => {
    sent.push(JSON.parse(init.body as string).backend);
    return new Promise<Response>((resolve) => gates.push(() => resolve(new Response(null))));
  }) as typeof fetch;
  const { warn, log } = recordingLog();
  const alerts = new AlertWebhook({
    url: "http://alerts.invalid/",
    log,
    fetch: fakeFetch,
    maxQueue: 2,
  });
  for (let i = 0; i < 5; i++) alerts.notify({ ...event, backend: `http://b${i}` });
  await waitFor(() => sent.length === 1, "first send");
  // The sender starts only after notify() returns, so b0..b4 met a queue with room for 2:
  // b0, b1 and b2 were dropped, oldest first.
  assert.equal(alerts.dropped, 3);
  assert.equal(warn.length, 1, "one warning per overflow episode");
  assert.match(warn[0], /queue full \(2\), dropping http:\/\/b0 up -> down/);
  while (sent.length < 2 || gates.length > 0) {
    gates.shift()?.();
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  assert.deepEqual(sent, ["http://b3", "http://b4"]);
  await alerts.close();
});
