/**
 * @module
 * Several balancer instances with the same configuration make the same choice where it matters:
 * with `--policy=hash`, two separate processes send each key to the same backend, so a client
 * whose requests land on either instance (DNS round-robin, an L4 balancer) keeps its backend.
 */
import assert from "node:assert/strict";
import { startBackend } from "../backend.ts";
import { spawnBalancer } from "./process.ts";

const KEYS = Array.from({ length: 50 }, (_, i) => `user-${i}`);

/** The port of the backend that answered, from the demo backend's reply. */
async function backendPortFor(lbPort: number, user: string): Promise<number> {
  const response = await fetch(`http://127.0.0.1:${lbPort}/`, { headers: { "x-user": user } });
  const text = await response.text();
  assert.equal(response.status, 200, `${user}: ${text}`);
  const port = /^Backend server on port (\d+) is running\n$/.exec(text)?.[1];
  assert.ok(port !== undefined, `${user}: unexpected answer ${JSON.stringify(text)}`);
  return Number(port);
}

Deno.test("two balancer processes with --policy=hash send each of 50 keys to the same backend", async () => {
  const backends = [0, 1, 2].map(() => startBackend({ port: 0, hostname: "127.0.0.1" }));
  try {
    const urls = backends.map((server) => `http://127.0.0.1:${server.addr.port}`);
    const common = ["--port=0", "--host=127.0.0.1", "--policy=hash", "--hash-key=header:x-user"];
    // The second instance lists the backends in another order, as two DNS answers may: the
    // hash depends on each backend's URL, not on its position.
    await using first = spawnBalancer([`--backends=${urls.join(",")}`, ...common]);
    await using second = spawnBalancer([`--backends=${urls.toReversed().join(",")}`, ...common]);
    const [firstPort, secondPort] = await Promise.all([first.port(), second.port()]);

    const viaFirst = new Map<string, number>();
    const viaSecond = new Map<string, number>();
    for (const user of KEYS) {
      viaFirst.set(user, await backendPortFor(firstPort, user));
      viaSecond.set(user, await backendPortFor(secondPort, user));
    }
    assert.deepEqual(viaSecond, viaFirst);
    // Asking again changes nothing: the choice is a function of the key, not of history.
    for (const user of KEYS.slice(0, 10)) {
      assert.equal(await backendPortFor(secondPort, user), viaFirst.get(user), user);
    }
    // And the keys are spread, not all sent to one backend (which would agree trivially).
    const used = new Set(viaFirst.values());
    assert.ok(used.size >= 2, `all 50 keys went to ${[...used]}`);
    for (const port of used) {
      assert.ok(backends.some((server) => server.addr.port === port), `unknown backend ${port}`);
    }
  } finally {
    await Promise.all(backends.map((server) => server.shutdown()));
  }
});
