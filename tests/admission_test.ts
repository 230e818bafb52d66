/**
 * @module
 * lib/admission.ts: the gate's limit follows the thread's busy share, queued requests are
 * admitted first come first served, requests older than the previous sampling period stop
 * holding a place, and the wrapped handler leaves the gate whatever the handler does.
 */

import assert from "node:assert/strict";
import { AdmissionGate, admitted, arrivalTime } from "../lib/admission.ts";

/** Enters `n` requests; each must be admitted at once. Returns their periods. */
function enterNow(gate: AdmissionGate, n: number): number[] {
  return Array.from({ length: n }, () => {
    const period = gate.enter();
    assert.equal(typeof period, "number", "admitted at once");
    return period as number;
  });
}

Deno.test("AdmissionGate admits everything while the thread keeps up", () => {
  const gate = new AdmissionGate();
  enterNow(gate, 5000);
  gate.observe(0.5);
  gate.observe(0.8);
  assert.equal(gate.limit, Infinity);
  enterNow(gate, 10);
  assert.equal(gate.queued, 0);
});

Deno.test("AdmissionGate on a saturated thread lowers the limit to 3/4 of the requests at work, never below 64", () => {
  const gate = new AdmissionGate();
  enterNow(gate, 1000);
  gate.observe(0.95);
  assert.equal(gate.limit, 750);
  gate.observe(1);
  // The 1,000 were admitted two periods ago: they wait on backends now and no longer count.
  assert.equal(gate.active, 0);
  assert.equal(gate.limit, 64);
});

Deno.test("AdmissionGate queues beyond the limit and admits first come first served as places free", async () => {
  const gate = new AdmissionGate();
  const working = enterNow(gate, 100);
  gate.observe(1); // limit 75: the 100 at work stay, newcomers wait
  assert.equal(gate.limit, 75);
  const order: number[] = [];
  const waiting = [0, 1, 2].map((i) => {
    const entered = gate.enter();
    assert.ok(entered instanceof Promise, `request ${i} waits`);
    return entered.then(() => order.push(i));
  });
  assert.equal(gate.queued, 3);
  for (let i = 0; i < 25; i++) gate.leave(working[i]);
  await Promise.resolve();
  assert.deepEqual(order, [], "75 still at work: nobody admitted");
  gate.leave(working[25]);
  gate.leave(working[26]);
  await Promise.all(waiting.slice(0, 2));
  assert.deepEqual(order, [0, 1]);
  assert.equal(gate.queued, 1);
  gate.leave(working[27]);
  await waiting[2];
  assert.deepEqual(order, [0, 1, 2]);
});

Deno.test("AdmissionGate stops counting a request after the previous period: slow ones do not block", async () => {
  const gate = new AdmissionGate();
  const slow = enterNow(gate, 200);
  gate.observe(1); // limit 150 with 200 at work
  const queued = gate.enter();
  assert.ok(queued instanceof Promise);
  gate.observe(1); // the 200 leave the count: the newcomer is admitted
  assert.equal(await queued, gate.epoch);
  assert.equal(gate.active, 1);
  // An expired request finishing changes nothing.
  gate.leave(slow[0]);
  assert.equal(gate.active, 1);
});

Deno.test("AdmissionGate with time to spare raises the limit, then lifts it", () => {
  const gate = new AdmissionGate();
  enterNow(gate, 100);
  gate.observe(1);
  assert.equal(gate.limit, 75);
  gate.observe(0.95);
  assert.equal(gate.limit, 64);
  gate.observe(0.5); // nothing at work any more: far above it, so no limit
  assert.equal(gate.limit, Infinity);
  const busy = new AdmissionGate();
  enterNow(busy, 100);
  busy.observe(1);
  busy.observe(0.8); // between the thresholds: held
  assert.equal(busy.limit, 75);
});

Deno.test("AdmissionGate open() lifts the limit and admits everyone waiting", async () => {
  const gate = new AdmissionGate();
  enterNow(gate, 100);
  gate.observe(1);
  const waiting = Array.from({ length: 5 }, () => gate.enter());
  assert.equal(gate.queued, 5);
  gate.open();
  await Promise.all(waiting);
  assert.equal(gate.queued, 0);
  assert.equal(gate.limit, Infinity);
});

Deno.test("admitted() leaves the gate when the handler answers and when it throws", async () => {
  const gate = new AdmissionGate();
  const failing = admitted(() => Promise.reject(new Error("boom")), gate);
  const answering = admitted(() => Promise.resolve(new Response("ok")), gate);
  try {
    const req = new Request("http://example.test/");
    const info = {
      remoteAddr: { transport: "tcp" as const, hostname: "127.0.0.1", port: 1 },
      completed: Promise.resolve(),
    };
    assert.equal(await (await answering.handler(req, info)).text(), "ok");
    await assert.rejects(failing.handler(req, info), /boom/);
    assert.equal(gate.active, 0);
  } finally {
    failing.stop();
    answering.stop();
  }
});

Deno.test("admitted() tells a request that waited when it arrived (arrivalTime), and hands on its info unchanged", async () => {
  const gate = new AdmissionGate();
  enterNow(gate, 100);
  gate.observe(1); // limit 75 with 100 at work: the next request waits
  const seen: { arrivedAt: number; info: Deno.ServeHandlerInfo }[] = [];
  const wrapped = admitted((req, info) => {
    seen.push({ arrivedAt: arrivalTime(req), info });
    return Promise.resolve(new Response("ok"));
  }, gate);
  try {
    // The native front end's info carries more than Deno's (the PROXY protocol's address).
    const info = {
      remoteAddr: { transport: "tcp" as const, hostname: "192.0.2.7", port: 1 },
      completed: Promise.resolve(),
      clientAddress: "198.51.100.9",
    };
    const before = performance.now();
    const answer = wrapped.handler(new Request("http://example.test/"), info);
    assert.equal(gate.queued, 1);
    await new Promise((r) => setTimeout(r, 20));
    const released = performance.now();
    gate.open();
    await answer;
    assert.ok(
      seen[0].arrivedAt >= before && seen[0].arrivedAt < released,
      "when it reached the gate",
    );
    assert.equal(seen[0].info, info, "the same info, every field kept");
    const unqueued = performance.now();
    await wrapped.handler(new Request("http://example.test/"), info);
    assert.ok(seen[1].arrivedAt >= unqueued, "now, for one that did not wait");
  } finally {
    wrapped.stop();
  }
});
