/**
 * @module
 * X-Request-Id (lib/request_id.ts): the rule for keeping a client's id, and over real sockets
 * that the id reaches the backend, comes back to the client (also on the balancer's own
 * errors), and is written in both access log formats.
 */

import assert from "node:assert/strict";
import { startBalancer } from "../lib/balancer.ts";
import { quietLog } from "../lib/log.ts";
import { isWellFormedRequestId, requestIdOf } from "../lib/request_id.ts";
import {
  rawRequest,
  refusingUrl,
  startTestBackend,
  startTestBalancer,
  TEST_FRONTEND,
  testConfig,
} from "./helpers.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

Deno.test("isWellFormedRequestId() keeps 1-128 characters of letters, digits and -_.:+/=", () => {
  for (
    const good of [
      "a",
      "f47ac10b-58cc-4372-a567-0e02b2c3d479",
      "01ARZ3NDEKTSV4RRFFQ69G5FAV",
      "trace:span.1_2",
      "dGVzdA+/==",
      "x".repeat(128),
    ]
  ) assert.equal(isWellFormedRequestId(good), true, good);
  for (
    const bad of [
      "",
      "x".repeat(129),
      "has space",
      "a, b",
      'quote"d',
      "semi;colon",
      "ünïcode",
      "tab\there",
      "<script>",
    ]
  ) assert.equal(isWellFormedRequestId(bad), false, bad);
});

Deno.test("requestIdOf() keeps a well-formed id and generates a UUID otherwise", () => {
  assert.equal(requestIdOf(new Headers({ "x-request-id": "abc-123" })), "abc-123");
  assert.match(requestIdOf(new Headers()), UUID);
  assert.match(requestIdOf(new Headers({ "x-request-id": "bad id" })), UUID);
  const two = new Headers([["x-request-id", "a"], ["x-request-id", "b"]]);
  assert.match(requestIdOf(two), UUID, "two ids read as `a, b`: replaced");
  assert.notEqual(requestIdOf(new Headers()), requestIdOf(new Headers()), "fresh each time");
});

Deno.test("a client's well-formed X-Request-Id is sent upstream and returned", async () => {
  await using backend = await startTestBackend();
  await using lb = await startTestBalancer([backend.url]);
  const response = await fetch(lb.url, { headers: { "x-request-id": "client-id.42" } });
  await response.body?.cancel();
  assert.equal(response.headers.get("x-request-id"), "client-id.42");
  assert.equal(backend.received[0].headers.get("x-request-id"), "client-id.42");
});

Deno.test("without X-Request-Id, one is generated, sent upstream and returned", async () => {
  await using backend = await startTestBackend();
  await using lb = await startTestBalancer([backend.url]);
  const ids = [];
  for (let i = 0; i < 2; i++) {
    const response = await fetch(lb.url);
    await response.body?.cancel();
    const id = response.headers.get("x-request-id")!;
    assert.match(id, UUID);
    assert.equal(backend.received[i].headers.get("x-request-id"), id);
    ids.push(id);
  }
  assert.notEqual(ids[0], ids[1]);
});

Deno.test("a malformed X-Request-Id is replaced, upstream and in the response", async () => {
  await using backend = await startTestBackend();
  await using lb = await startTestBalancer([backend.url]);
  const sent = ["has spaces", "x".repeat(129), "semi;colon"];
  for (const [i, bad] of sent.entries()) {
    const response = await fetch(lb.url, { headers: { "x-request-id": bad } });
    await response.body?.cancel();
    const id = response.headers.get("x-request-id")!;
    assert.match(id, UUID, bad);
    assert.equal(backend.received[i].headers.get("x-request-id"), id);
  }
  // Two X-Request-Id headers on the wire are one malformed value.
  const raw = await rawRequest(
    lb.port,
    `GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n` +
      "Connection: close\r\n\r\n",
  );
  const returned = /\r\nx-request-id: (\S+)\r\n/i.exec(raw)?.[1] ?? "";
  assert.match(returned, UUID);
  assert.equal(backend.received[3].headers.get("x-request-id"), returned);
});

Deno.test("a backend's own X-Request-Id is replaced: the client gets exactly one, the balancer's", async () => {
  await using backend = await startTestBackend(() =>
    new Response("ok", { headers: { "x-request-id": "backend-id" } })
  );
  await using lb = await startTestBalancer([backend.url]);
  const raw = await rawRequest(
    lb.port,
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: client-1\r\nConnection: close\r\n\r\n",
  );
  assert.match(raw, /^HTTP\/1\.1 200 /);
  assert.deepEqual([...raw.matchAll(/\r\nx-request-id: ([^\r]*)/gi)].map((m) => m[1]), [
    "client-1",
  ]);
});

Deno.test("the balancer's own error responses carry the request id too", async () => {
  await using lb = await startTestBalancer([refusingUrl()], { retries: 0 });
  const failed = await fetch(lb.url, { headers: { "x-request-id": "err-1" } });
  await failed.body?.cancel();
  assert.equal(failed.status, 502);
  assert.equal(failed.headers.get("x-request-id"), "err-1");
  // The refused connect took the only backend down: now the balancer answers 503 itself.
  const none = await fetch(lb.url);
  await none.body?.cancel();
  assert.equal(none.status, 503);
  assert.match(none.headers.get("x-request-id")!, UUID);
  const bad = await rawRequest(
    lb.port,
    "GET / HTTP/1.1\r\nHost: bad/host\r\nX-Request-Id: err-3\r\nConnection: close\r\n\r\n",
  );
  assert.match(bad, /^HTTP\/1\.1 400 /);
  if (TEST_FRONTEND === "native") {
    // The native parser refuses the head before any handler runs, as hyper does for the heads it
    // refuses: no id, nothing logged (docs/frontend.md, differences).
    assert.doesNotMatch(bad, /x-request-id/i);
    assert.match(bad, /\r\nconnection: close\r\n/i);
  } else {
    assert.match(bad, /\r\nx-request-id: err-3\r\n/i);
  }
});

Deno.test("the request id is written in the access log, JSON and combined", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await using backend = await startTestBackend();
    for (const format of ["json", "combined"] as const) {
      const path = `${dir}/${format}.log`;
      const balancer = await startBalancer(
        testConfig([backend.url], { accessLog: path, accessLogFormat: format }),
        quietLog,
      );
      const kept = await fetch(`http://127.0.0.1:${balancer.port}/a`, {
        headers: { "x-request-id": "logged-1" },
      });
      await kept.body?.cancel();
      const generated = await fetch(`http://127.0.0.1:${balancer.port}/b`);
      await generated.body?.cancel();
      const generatedId = generated.headers.get("x-request-id")!;
      await balancer.shutdown(1000);
      const lines = (await Deno.readTextFile(path)).trim().split("\n");
      assert.equal(lines.length, 2, format);
      if (format === "json") {
        assert.equal(JSON.parse(lines[0]).requestId, "logged-1");
        assert.equal(JSON.parse(lines[1]).requestId, generatedId);
      } else {
        assert.match(lines[0], / request_id=logged-1$/);
        assert.ok(lines[1].endsWith(` request_id=${generatedId}`), lines[1]);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
