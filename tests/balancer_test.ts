/**
 * @module
 * Unit tests of lib/balancer.ts's two halves: Balancer.build (services, routing state, handler;
 * no sockets) with its reload, and listen (the listeners, shutdown). The built handler is called
 * in-process; listeners and backends are real, on 127.0.0.1 with OS-picked ports.
 */
import assert from "node:assert/strict";
import type { Config } from "../lib/config.ts";
import { quietLog } from "../lib/log.ts";
import type { RouteSpec } from "../lib/routes.ts";
import { Balancer, listen } from "../lib/balancer.ts";
import { startTestBackend, testConfig, waitFor } from "./helpers.ts";

/** Routes answering `/status` with `body`, everything else from the default service. */
function statusRoutes(body: string): RouteSpec[] {
  return [
    { pathPrefix: "/status", respond: { status: 200, body } },
    { service: "default" },
  ];
}

/** A ServeHandlerInfo for in-process calls, its exchange already complete. */
const INFO: Deno.ServeHandlerInfo = {
  remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 40_000 },
  completed: Promise.resolve(),
};

/** Builds a balancer for `config`; disposing stops its services and closes what it opened. */
async function built(config: Config) {
  const balancer = await Balancer.build(config, quietLog, "test", {});
  return {
    balancer,
    /** The built handler's answer to GET `path`, as status and text. */
    async get(path: string): Promise<{ status: number; text: string }> {
      const response = await balancer.handler(
        new Request(`http://example.test${path}`, { headers: { host: "example.test" } }),
        INFO,
      );
      return { status: response.status, text: await response.text() };
    },
    async [Symbol.asyncDispose]() {
      await balancer.stop();
      await balancer.close();
    },
  };
}

Deno.test("Balancer.build() binds nothing: it succeeds on a port in use, where listen() then fails", async () => {
  await using backend = await startTestBackend(() => new Response("from backend"));
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  await using lb = await built(
    testConfig([backend.url], { port: taken.addr.port, routes: statusRoutes("v1") }),
  );
  // The built handler already serves, in-process.
  assert.deepEqual(await lb.get("/status"), { status: 200, text: "v1" });
  assert.deepEqual(await lb.get("/x"), { status: 200, text: "from backend" });
  assert.throws(() => listen(lb.balancer), /cannot listen on 127\.0\.0\.1:\d+/);
});

Deno.test("listen() with SO_REUSEPORT refuses a port another process's SO_REUSEPORT socket holds, on both front ends", async () => {
  await using backend = await startTestBackend();
  // What an old instance left running with --workers or TLS holds: the kernel would let a
  // second SO_REUSEPORT socket join it and silently share its connections.
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0, reusePort: true });
  for (const frontend of ["deno", "native"] as const) {
    const balancer = await Balancer.build(
      testConfig([backend.url], { port: taken.addr.port, frontend }),
      quietLog,
      "test",
      { reusePort: true },
    );
    try {
      assert.throws(
        () => listen(balancer),
        (error: Error) =>
          /^cannot listen on 127\.0\.0\.1:\d+: Address already in use/.test(error.message) &&
          error.message.indexOf("cannot listen") === error.message.lastIndexOf("cannot listen"),
        frontend,
      );
    } finally {
      await balancer.stop();
      await balancer.close();
    }
  }
});

Deno.test("Balancer.reload() swaps the routes for the next request through the same handler", async () => {
  await using backend = await startTestBackend();
  const config = testConfig([backend.url], { routes: statusRoutes("v1") });
  await using lb = await built(config);
  const before = lb.balancer.routing;
  assert.equal((await lb.get("/status")).text, "v1");
  const change = await lb.balancer.reload({ ...config, routes: statusRoutes("v2") });
  assert.deepEqual(change.restartNeeded, []);
  assert.notEqual(lb.balancer.routing, before);
  assert.equal((await lb.get("/status")).text, "v2");
});

Deno.test("Balancer.reload() reports backends added and removed, and keeps a restart-only setting as it was", async () => {
  await using a = await startTestBackend(() => new Response("a"));
  await using b = await startTestBackend(() => new Response("b"));
  const config = testConfig([a.url]);
  await using lb = await built(config);
  const next = testConfig([b.url], { port: config.port + 1 });
  const change = await lb.balancer.reload(next);
  assert.deepEqual(change.added, [b.url]);
  assert.deepEqual(change.removed, [a.url]);
  assert.deepEqual(change.restartNeeded, ["port"]);
  assert.equal(lb.balancer.config.port, config.port, "the port in force stays");
  assert.deepEqual(lb.balancer.pool.backends.map((backend) => backend.url), [b.url]);
  assert.equal((await lb.get("/")).text, "b");
});

Deno.test("Balancer.reload() that drops a backend and names it again keeps its requests in flight and max-conns", async () => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  let arrived = 0;
  await using b = await startTestBackend(async (req) => {
    if (new URL(req.url).pathname === "/hold") {
      arrived++;
      await released;
    }
    return new Response("b");
  });
  await using other = await startTestBackend(() => new Response("other"));
  const config = testConfig([b.url], { maxConns: 2 });
  await using lb = await built(config);
  // Released whatever happens: a held request would keep the servers from closing.
  using _release = { [Symbol.dispose]: () => release() };
  const held = [lb.get("/hold"), lb.get("/hold")];
  assert.ok(await waitFor(() => arrived === 2), "two requests are held on b");
  const backend = lb.balancer.pool.find(b.url)!;
  await lb.balancer.reload(testConfig([other.url], { maxConns: 2 }));
  const change = await lb.balancer.reload(config);
  assert.deepEqual(change.added, [b.url]);
  assert.equal(lb.balancer.pool.find(b.url), backend, "the draining backend came back");
  assert.deepEqual(lb.balancer.pool.backends.map((x) => [x.url, x.inflight]), [[b.url, 2]]);
  assert.equal((await lb.get("/")).status, 503, "max-conns 2 still counts the two held");
  release();
  for (const answer of await Promise.all(held)) assert.equal(answer.text, "b");
  assert.equal(backend.inflight, 0);
  assert.equal((await lb.get("/")).text, "b");
});

Deno.test("Balancer.reload() failing in phase one leaves the routes, services and outputs in force", async () => {
  await using backend = await startTestBackend();
  const config = testConfig([backend.url], { routes: statusRoutes("v1") });
  await using lb = await built(config);
  const { routing, services } = lb.balancer;
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      lb.balancer.reload({
        ...config,
        routes: statusRoutes("v2"),
        accessLog: `${dir}/no/such/dir/access.log`,
      }),
      Deno.errors.NotFound,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(lb.balancer.routing, routing);
  assert.equal(lb.balancer.services, services);
  assert.equal(lb.balancer.outputs.accessLog, undefined);
  assert.equal(lb.balancer.config, config);
  assert.equal((await lb.get("/status")).text, "v1");
});

Deno.test("listen() serves the built handler on a socket; shutdown() drains and refuses later reloads", async () => {
  await using backend = await startTestBackend(() => new Response("from backend"));
  const config = testConfig([backend.url], { routes: statusRoutes("v1") });
  const running = listen(await Balancer.build(config, quietLog, "test", {}));
  try {
    assert.ok(running.port > 0);
    assert.equal(running.adminPort, undefined);
    const status = await fetch(`http://127.0.0.1:${running.port}/status`);
    assert.equal(await status.text(), "v1");
    const proxied = await fetch(`http://127.0.0.1:${running.port}/p`);
    assert.equal(await proxied.text(), "from backend");
    // Nothing saturates this thread: nothing waits for admission (lib/admission.ts).
    assert.match(running.metrics.render(), /^lb_admission_queued 0$/m);
  } finally {
    assert.equal(await running.shutdown(1_000), 0, "nothing was left open");
  }
  await assert.rejects(running.reload(config), /shutting down/);
});

Deno.test("maxIdleBackendConnections caps the idle keep-alive connections per backend; 0 keeps them all", async () => {
  for (const [cap, connections] of [[1, 5], [0, 3]] as const) {
    const ports = new Set<number>();
    let arrived = 0;
    let all = Promise.withResolvers<void>();
    await using backend = await startTestBackend(async (req, info) => {
      // Health checks come on connections of their own.
      if (new URL(req.url).pathname !== "/x") return new Response("up");
      ports.add((info.remoteAddr as Deno.NetAddr).port);
      if (++arrived % 3 === 0) all.resolve();
      await all.promise;
      return new Response("ok");
    });
    await using lb = await built(
      testConfig([backend.url], { maxIdleBackendConnections: cap, transport: "native" }),
    );
    // Two rounds of three requests at once: with a cap of 1, two of the first round's three
    // connections are closed when released, and the second round opens two again.
    for (let round = 0; round < 2; round++) {
      const answers = await Promise.all([0, 1, 2].map(() => lb.get("/x")));
      assert.deepEqual(answers.map((a) => a.status), [200, 200, 200]);
      all = Promise.withResolvers<void>();
    }
    assert.equal(ports.size, connections, `cap ${cap}`);
  }
});

Deno.test("listen() gives the main listener the configured backlog, on both front ends", async (t) => {
  const ss = await new Deno.Command("ss", { args: ["-V"], stdout: "null", stderr: "null" })
    .output().then((o) => o.success, () => false);
  if (!ss) {
    console.log("backlog test skipped: no `ss` (Debian: iproute2)");
    return;
  }
  await using backend = await startTestBackend();
  for (const frontend of ["deno", "native"] as const) {
    await t.step(frontend, async () => {
      const running = listen(
        await Balancer.build(
          testConfig([backend.url], { frontend, backlog: 1234 }),
          quietLog,
          "test",
          {},
        ),
      );
      try {
        const out = await new Deno.Command("ss", {
          args: ["-ltnH", `sport = :${running.port}`],
          stdout: "piped",
        }).output();
        // ss shows a listener's backlog in the Send-Q column.
        const columns = new TextDecoder().decode(out.stdout).trim().split(/\s+/);
        assert.equal(columns[0], "LISTEN");
        assert.equal(columns[2], "1234");
      } finally {
        await running.shutdown(1_000);
      }
    });
  }
});

Deno.test('Balancer.reload() takes workers "auto" and the count it stands for as the same setting', async () => {
  await using a = await startTestBackend(() => new Response("a"));
  const cores = Math.max(1, navigator.hardwareConcurrency || 1);
  await using lb = await built(testConfig([a.url], { workers: cores }));
  assert.deepEqual(
    (await lb.balancer.reload(testConfig([a.url], { workers: "auto" }))).restartNeeded,
    [],
  );
  const change = await lb.balancer.reload(testConfig([a.url], { workers: cores + 1 }));
  assert.deepEqual(change.restartNeeded, ["workers"]);
});
