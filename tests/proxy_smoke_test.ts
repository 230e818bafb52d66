import assert from "node:assert/strict";
import { getText, startTestBackend, startTestBalancer } from "./helpers.ts";

Deno.test("proxy forwards a GET to a backend and relays its answer", async () => {
  await using backend = await startTestBackend(() => new Response("hello"));
  await using lb = await startTestBalancer([backend.url]);
  const { status, text } = await getText(`${lb.url}/x?y=1`);
  assert.equal(status, 200);
  assert.equal(text, "hello");
  assert.equal(backend.received[0].path, "/x?y=1");
});
