/**
 * @module
 * Unit tests of lib/service.ts: a `Service` over real backends on 127.0.0.1, driven through a
 * one-route dispatcher, and the two halves of a reload: `prepare()` changes nothing until
 * `commit()` swaps settings, pool, policy and proxy at once; `abort()` leaves the old state.
 */

import assert from "node:assert/strict";
import { Service, type ServiceDeps } from "../lib/service.ts";
import { type ServiceConfig, serviceConfigs } from "../lib/setting_table.ts";
import { createDispatcher } from "../lib/dispatch.ts";
import { RouteTable } from "../lib/routes.ts";
import { createNativeTransport } from "../lib/upstream_native.ts";
import { WebSocketRelays } from "../lib/websocket.ts";
import { quietLog } from "../lib/log.ts";
import { namedBackend, testConfig } from "./helpers.ts";

/** The `default` service's resolved settings over `backends` (`overrides` on the config). */
function settings(
  backends: string[],
  overrides: Parameters<typeof testConfig>[1] = {},
): ServiceConfig {
  return serviceConfigs(testConfig(backends, overrides)).get("default")!;
}

/** A service started over `config`, served on 127.0.0.1 through one catch-all route. */
async function startService(config: ServiceConfig) {
  const client = Deno.createHttpClient({ allowHost: true });
  const freshClient = Deno.createHttpClient({ allowHost: true, poolMaxIdlePerHost: 0 });
  const native = createNativeTransport();
  const deps: ServiceDeps = {
    log: quietLog,
    client,
    freshClient,
    native,
    observer: { outcome: () => {}, retry: () => {}, budgetExhausted: () => {} },
    webSockets: new WebSocketRelays(),
    proto: "http",
    trustedProxies: [],
    forwarded: false,
    discoverInterval: 60_000,
    dnsServer: undefined,
    runsHealthChecks: false,
    listeners: () => ({}),
    onHealthResult: () => {},
  };
  const service = await Service.start(config, deps);
  const table = new RouteTable([{ service: "default" }]);
  const handler = createDispatcher({
    state: () => ({
      table,
      services: new Map([["default", service]]),
      guards: [],
      trustedProxies: [],
    }),
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  return {
    service,
    /** The bodies of `count` GETs through the service. */
    async answers(count: number): Promise<string[]> {
      const out: string[] = [];
      for (let i = 0; i < count; i++) {
        out.push(await (await fetch(`http://127.0.0.1:${server.addr.port}/`)).text());
      }
      return out;
    },
    async [Symbol.asyncDispose]() {
      await server.shutdown();
      await service.stop();
      await native.close();
      client.close();
      freshClient.close();
    },
  };
}

Deno.test("Service.start() builds the pool from the settings and forwards to its backends", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  await using running = await startService(settings([a.url, b.url]));
  const { service } = running;
  assert.equal(service.name, "default");
  assert.equal(service.policyName, "round-robin");
  assert.deepEqual(service.pool.backends.map((x) => x.url), [a.url, b.url]);
  assert.deepEqual((await running.answers(4)).sort(), ["a", "a", "b", "b"]);
});

Deno.test("Service.prepare() changes nothing; commit() swaps backends, settings, policy and proxy", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  await using c = await namedBackend("c");
  const before = settings([a.url, b.url]);
  await using running = await startService(before);
  const { service } = running;
  await running.answers(2);
  const kept = service.pool.find(b.url)!;
  const policy = service.pool.policy;
  const proxy = service.proxy;
  const next = settings([b.url, c.url], { policy: "least-conn", retries: 0 });

  const change = await service.prepare(next);
  assert.equal(service.config, before, "prepare() applies nothing");
  assert.equal(service.pool.policy, policy);
  assert.equal(service.proxy, proxy);
  assert.deepEqual(service.pool.backends.map((x) => x.url), [a.url, b.url]);

  assert.deepEqual(change.commit(), { added: [c.url], removed: [a.url], reweighted: [] });
  await change.cleanup();
  assert.equal(service.config, next);
  assert.equal(service.policyName, "least-conn");
  assert.notEqual(service.pool.policy, policy, "a changed policy is a new one");
  assert.notEqual(service.proxy, proxy, "requests from now on get the new proxy");
  assert.equal(service.pool.find(b.url), kept, "a backend kept by URL keeps its record");
  assert.equal(kept.requests, 1, "and its counters");
  // least-conn breaks ties at random: sixteen sequential requests reach both (all but 2^-15).
  const answers = await running.answers(16);
  assert.deepEqual([...new Set(answers)].sort(), ["b", "c"], "only the new set answers, all of it");
});

Deno.test("Service.prepare() then abort() leaves the service as it was", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  const before = settings([a.url]);
  await using running = await startService(before);
  const { service } = running;
  const policy = service.pool.policy;
  const proxy = service.proxy;
  const change = await service.prepare(settings([b.url], { policy: "random" }));
  await change.abort();
  assert.equal(service.config, before);
  assert.equal(service.policyName, "round-robin");
  assert.equal(service.pool.policy, policy);
  assert.equal(service.proxy, proxy);
  assert.deepEqual(service.pool.backends.map((x) => x.url), [a.url]);
  assert.deepEqual(await running.answers(2), ["a", "a"]);
});

Deno.test("Service.prepare() keeps the running policy when its settings are unchanged", async () => {
  await using a = await namedBackend("a");
  await using b = await namedBackend("b");
  await using running = await startService(settings([a.url]));
  const { service } = running;
  const policy = service.pool.policy;
  const change = await service.prepare(settings([a.url, b.url], { retries: 3 }));
  assert.deepEqual(change.commit(), { added: [b.url], removed: [], reweighted: [] });
  await change.cleanup();
  assert.equal(service.pool.policy, policy, "its cursor carries on over the new set");
  assert.equal(service.config.retries, 3);
  assert.deepEqual((await running.answers(2)).sort(), ["a", "b"]);
});
