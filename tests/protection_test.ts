/**
 * @module
 * Protection per route through a real balancer: access rules (allow/deny, IPv4 and IPv6, the
 * client address behind trusted proxies), and `--check` on bad values.
 */

import assert from "node:assert/strict";
import { startTestBackend, startTestBalancer } from "./helpers.ts";
import { runMain } from "./process.ts";

/** GET `path` on `base` with `headers`; the status and body. */
async function get(base: string, path: string, headers: Record<string, string> = {}) {
  const response = await fetch(`${base}${path}`, { headers });
  return { status: response.status, text: await response.text(), headers: response.headers };
}

Deno.test("allow and deny: refused requests get 403 and reach no backend; deny wins", async () => {
  await using backend = await startTestBackend(() => new Response("ok"));
  await using lb = await startTestBalancer([], {
    services: { app: { backends: [{ url: backend.url, weight: 1 }] } },
    routes: [
      { name: "private", pathPrefix: "/private", allow: ["10.0.0.0/8"], service: "app" },
      { name: "blocked", pathPrefix: "/blocked", deny: ["127.0.0.0/8"], service: "app" },
      {
        name: "both",
        pathPrefix: "/both",
        allow: ["127.0.0.0/8"],
        deny: ["127.0.0.1"],
        service: "app",
      },
      { name: "open", service: "app" },
    ],
  });
  const refused = await get(lb.url, "/private/x");
  assert.equal(refused.status, 403);
  assert.ok(refused.headers.get("x-request-id"), "the 403 carries a request id");
  assert.equal((await get(lb.url, "/blocked")).status, 403);
  assert.equal((await get(lb.url, "/both")).status, 403, "deny wins over allow");
  assert.equal((await get(lb.url, "/open")).status, 200);
  assert.deepEqual(backend.received.map((r) => new URL(r.url).pathname), ["/open"]);
  const metrics = lb.balancer.metrics.render();
  assert.match(metrics, /lb_route_refused_total\{route="private",reason="access"\} 1/);
  assert.match(metrics, /lb_route_refused_total\{route="both",reason="access"\} 1/);
});

Deno.test("top-level allow/deny apply to routes without lists of their own", async () => {
  await using backend = await startTestBackend(() => new Response("ok"));
  await using lb = await startTestBalancer([backend.url], {
    deny: ["127.0.0.1/32"],
    routes: [
      { name: "own", pathPrefix: "/own", deny: ["10.0.0.0/8"], service: "default" },
      { name: "rest", service: "default" },
    ],
  });
  assert.equal((await get(lb.url, "/x")).status, 403);
  assert.equal((await get(lb.url, "/own")).status, 200, "a route's own list replaces the default");
  assert.equal(backend.received.length, 1);
});

Deno.test("allow/deny use the client behind a trusted proxy, never an untrusted claim", async () => {
  await using backend = await startTestBackend(() => new Response("ok"));
  const routes = [{ name: "office", allow: ["10.0.0.0/8"], service: "default" }];
  await using trusting = await startTestBalancer([backend.url], {
    trustedProxies: ["127.0.0.1/32"],
    routes,
  });
  assert.equal((await get(trusting.url, "/", { "x-forwarded-for": "10.1.2.3" })).status, 200);
  // The client wrote 10.1.2.3 itself, then came through an untrusted hop (192.0.2.7).
  const spoofed = { "x-forwarded-for": "10.1.2.3, 192.0.2.7" };
  assert.equal((await get(trusting.url, "/", spoofed)).status, 403);
  await using untrusting = await startTestBalancer([backend.url], { routes });
  assert.equal((await get(untrusting.url, "/", { "x-forwarded-for": "10.1.2.3" })).status, 403);
});

Deno.test("allow/deny work for IPv6 clients", async (t) => {
  let probe: Deno.Listener;
  try {
    probe = Deno.listen({ hostname: "::1", port: 0 });
  } catch {
    t.step({ name: "skipped: no IPv6 loopback here", ignore: true, fn: () => {} });
    return;
  }
  probe.close();
  await using backend = await startTestBackend(() => new Response("ok"));
  await using lb = await startTestBalancer([backend.url], {
    host: "::1",
    routes: [
      { name: "v6-denied", pathPrefix: "/denied", deny: ["::1/128"], service: "default" },
      { name: "v6-allowed", allow: ["::1"], service: "default" },
    ],
  });
  const base = `http://[::1]:${lb.port}`;
  assert.equal((await get(base, "/denied")).status, 403);
  assert.equal((await get(base, "/ok")).status, 200);
});

Deno.test("--check names a bad address range in a route or at the top level by its path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/lb.jsonc`;
    await Deno.writeTextFile(
      path,
      `{
  "backends": ["http://127.0.0.1:1"],
  "deny": ["10.0.0.0/99"],
  "routes": [
    { "allow": ["not-an-address"], "service": "default" }
  ]
}
`,
    );
    const result = await runMain(["--config", path, "--check"], {
      permissions: [`--allow-read=${dir}`],
    });
    assert.equal(result.code, 2, result.stderr);
    assert.match(
      result.stderr,
      /:3:\d+: deny\[0\]: "10\.0\.0\.0\/99" is not an IP address or CIDR range/,
    );
    assert.match(
      result.stderr,
      /:5:\d+: routes\[0\]\.allow\[0\]: "not-an-address" is not an IP address or CIDR range/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
