/**
 * @module
 * Opening a tunnel to a backend (lib/tunnel_upstream.ts) called directly, against a raw backend
 * on 127.0.0.1 with a port from the OS (the relay through the native front end is tested in
 * tests/frontend_native_test.ts).
 */

import assert from "node:assert/strict";
import { openTunnel } from "../lib/tunnel_upstream.ts";
import { rawServer, readHead, refusingUrl, writeAll } from "./helpers.ts";

const encoder = new TextEncoder();

Deno.test("openTunnel() returns the backend's status when it refuses the upgrade, and a connect failure as such", async () => {
  await using upstream = rawServer(async (conn) => {
    await readHead(conn);
    await writeAll(conn, encoder.encode("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"));
    conn.close();
  });
  const opened = await openTunnel(upstream.url, "/", "websocket", [[
    "sec-websocket-version",
    "13",
  ]]);
  assert.deepEqual(opened, { ok: false, status: 403 });
  // A refused connect sent nothing: another backend may be tried.
  const refused = await openTunnel(refusingUrl(), "/", "websocket", []);
  assert.ok(!refused.ok && "failure" in refused && refused.failure.kind === "connect");
});
