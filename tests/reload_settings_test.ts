/**
 * @module
 * A reload applies global settings live, not only backends: the admin token, the access log
 * (file and format), the CA trusted for HTTPS backends, trusted proxies, a service's timeout,
 * the process log's level and format, and the drain timeout used at the next SIGTERM. The
 * in-process tests call `balancer.reload(config)`; the process tests rewrite the config file.
 */
import assert from "node:assert/strict";
import type { Config } from "../lib/config.ts";
import {
  delay,
  namedBackend,
  startTestBackend,
  startTestBalancer,
  startTlsBackend,
  testConfig,
  waitFor,
} from "./helpers.ts";
import { type BalancerProcess, configDir, spawnOnConfig } from "./process.ts";
import { installed, Pki } from "./pki.ts";

/** Generous: the machine is shared and loaded; a reload or a watch event may take seconds. */
const WAIT_MS = 20_000;

const HAS_OPENSSL = await installed("openssl");
if (!HAS_OPENSSL) {
  console.log(
    "reload_settings_test.ts: openssl is not installed, so no test certificates can be made: " +
      "the backendCa reload test is skipped (apt-get install -y openssl)",
  );
}

/** A backend that answers `text` after `ms` (bounded: the server's shutdown waits for it). */
function slowBackend(ms: number, text: string) {
  return startTestBackend(async () => {
    await delay(ms);
    return new Response(text);
  });
}

/** GETs `url` and returns the status; the body is always consumed. */
async function statusOf(url: string, init?: RequestInit): Promise<number> {
  const response = await fetch(url, init);
  await response.body?.cancel();
  return response.status;
}

/** A file's lines (without the empty string after the last newline); "" when it is missing. */
async function fileLines(path: string): Promise<string[]> {
  const text = await Deno.readTextFile(path).catch(() => "");
  return text.split("\n").filter((line, i, all) => !(line === "" && i === all.length - 1));
}

/** Polls `condition` every 50 ms until it holds or WAIT_MS passes; returns the last result. */
async function eventually(condition: () => Promise<boolean>): Promise<boolean> {
  const deadline = Date.now() + WAIT_MS;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await delay(50);
  }
  return await condition();
}

// ---------------------------------------------------------------------------------------------
// In-process reloads

Deno.test("reload() replaces the admin token: the old one gets 401, the new one 200", async () => {
  await using backend = await startTestBackend();
  const admin = { host: "127.0.0.1", port: 0 };
  const first = "first-token-0123456789";
  const second = "second-token-9876543210";
  await using lb = await startTestBalancer([backend.url], { admin, adminToken: first });
  const api = `http://127.0.0.1:${lb.balancer.adminPort}/api/backends`;
  const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
  assert.equal(await statusOf(api, bearer(first)), 200);
  assert.equal(await statusOf(api, bearer(second)), 401);

  const change = await lb.balancer.reload(
    testConfig([backend.url], { admin, adminToken: second }),
  );
  assert.deepEqual(change.restartNeeded, [], "the same admin address needs no restart");
  assert.equal(await statusOf(api, bearer(first)), 401, "the old token is refused");
  assert.equal(await statusOf(api, bearer(second)), 200, "the new token is accepted");
  assert.equal(await statusOf(api), 401, "no token is still refused");
});

/** One combined-format line, as lib/access_log.ts writes it, for `GET path` answered 200. */
const COMBINED = /^127\.0\.0\.1 - - \[[^\]]+\] "GET (\/\S+) HTTP\/1\.1" 200 \d+ "-" "[^"]*"/;

Deno.test("reload() moves the access log to a new file and format; the old file stays whole", async () => {
  await using backend = await startTestBackend();
  const dir = await Deno.makeTempDir({ prefix: "lb-reload-log-" });
  try {
    const fileA = `${dir}/a.log`;
    const fileB = `${dir}/b.log`;
    const before = ["/before-1", "/before-2", "/before-3"];
    const after = ["/after-1", "/after-2", "/after-3"];
    {
      await using lb = await startTestBalancer([backend.url], {
        accessLog: fileA,
        accessLogFormat: "combined",
      });
      for (const path of before) assert.equal(await statusOf(`${lb.url}${path}`), 200);
      assert.ok(
        await eventually(async () => (await fileLines(fileA)).length >= before.length),
        "the first requests reach file A",
      );

      await lb.balancer.reload(
        testConfig([backend.url], { accessLog: fileB, accessLogFormat: "json" }),
      );
      for (const path of after) assert.equal(await statusOf(`${lb.url}${path}`), 200);
      assert.ok(
        await eventually(async () => (await fileLines(fileB)).length >= after.length),
        "the later requests reach file B",
      );
    } // the balancer has shut down: every log is flushed and closed

    const textA = await Deno.readTextFile(fileA);
    assert.ok(textA.endsWith("\n"), "file A ends with a complete line");
    const pathsA = (await fileLines(fileA)).map((line) => {
      const match = COMBINED.exec(line);
      assert.ok(match, `a complete combined line in A: ${line}`);
      return match[1];
    });
    assert.deepEqual(pathsA, before, "A holds the earlier requests only");

    const pathsB = (await fileLines(fileB)).map((line) => {
      let record;
      try {
        record = JSON.parse(line);
      } catch {
        throw new Error(`not a JSON line in B: ${line}`);
      }
      assert.equal(record.status, 200, line);
      return record.path;
    });
    assert.deepEqual(pathsB, after, "B holds the later requests only, as JSON");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "reload() applies backendCa: a private CA's backend goes from 502 to 200, and back",
  ignore: !HAS_OPENSSL,
  async fn() {
    await using pki = await Pki.create();
    const ca = await pki.ca("backend-ca");
    const leaf = await pki.leaf("backend", ca);
    await using server = startTlsBackend(leaf);
    const url = server.url;
    // Fast checks bring the backend back once they pass; the first rounds start at once.
    const settings = { healthInterval: 100, rise: 1, fall: 1 };
    await using lb = await startTestBalancer([url], settings);
    const backend = lb.balancer.pool.backends[0];
    assert.equal(await statusOf(`${lb.url}/`), 502, "the private CA is not trusted");
    assert.equal(server.requests(), 0, "nothing reached the backend");

    await lb.balancer.reload(testConfig([url], { ...settings, backendCa: ca.certPath }));
    assert.ok(
      await waitFor(() => backend.status === "up", WAIT_MS),
      `health checks with the new CA pass: ${backend.lastCheck?.detail}`,
    );
    const response = await fetch(`${lb.url}/`);
    assert.equal(response.status, 200);
    assert.equal(await response.text(), "tls ok");

    // Removing the CA: the kept-alive connection made with it must not serve new requests.
    const served = server.requests();
    await lb.balancer.reload(testConfig([url], settings));
    const status = await statusOf(`${lb.url}/`);
    assert.ok(status === 502 || status === 503, `refused again, got ${status}`);
    assert.equal(server.requests(), served, "no request reached the backend without the CA");
    assert.ok(await waitFor(() => backend.status === "down", WAIT_MS), "checks fail again");
    assert.match(backend.lastCheck?.detail ?? "", /UnknownIssuer/);
  },
});

Deno.test("reload() adding trustedProxies makes the balancer extend a client's X-Forwarded-For", async () => {
  await using backend = await startTestBackend();
  await using lb = await startTestBalancer([backend.url]);
  const init = { headers: { "x-forwarded-for": "203.0.113.7" } };
  const seen = () => backend.received.at(-1)!.headers.get("x-forwarded-for");

  assert.equal(await statusOf(`${lb.url}/`, init), 200);
  assert.equal(seen(), "127.0.0.1", "from an untrusted peer it is replaced");

  await lb.balancer.reload(testConfig([backend.url], { trustedProxies: ["127.0.0.1/32"] }));
  assert.equal(await statusOf(`${lb.url}/`, init), 200);
  assert.equal(seen(), "203.0.113.7, 127.0.0.1", "from a trusted peer it is kept and extended");

  await lb.balancer.reload(testConfig([backend.url]));
  assert.equal(await statusOf(`${lb.url}/`, init), 200);
  assert.equal(seen(), "127.0.0.1", "removing the range replaces it again");
});

Deno.test("reload() lowering the default service's timeout turns a slow answer into a 504", async () => {
  await using backend = await slowBackend(600, "slow");
  const settings: Partial<Config> = { retries: 0, timeout: 10_000 };
  await using lb = await startTestBalancer([backend.url], settings);
  const response = await fetch(`${lb.url}/`);
  assert.equal(response.status, 200);
  assert.equal(await response.text(), "slow");

  await lb.balancer.reload(testConfig([backend.url], { ...settings, timeout: 100 }));
  assert.equal(lb.balancer.services.get("default")?.config.timeout, 100);
  assert.equal(await statusOf(`${lb.url}/`), 504, "the lowered timeout applies");
});

// ---------------------------------------------------------------------------------------------
// As a process: the config file is rewritten

/** A config file's text: `settings` plus a loopback listener on an OS-picked port. */
function settingsText(settings: Record<string, unknown>): string {
  const text = JSON.stringify({ port: 0, host: "127.0.0.1", ...settings }, null, 2);
  return `// written by reload_settings_test.ts\n${text}\n`;
}

/** Index of the first line from `from` on that matches `pattern`, waiting for it. */
async function lineIndex(lb: BalancerProcess, pattern: RegExp, from = 0): Promise<number> {
  const found = () => lb.lines.findIndex((line, i) => i >= from && pattern.test(line));
  assert.ok(
    await waitFor(() => found() >= 0, WAIT_MS),
    `no line matching ${pattern} after line ${from}:\n${lb.lines.join("\n")}`,
  );
  return found();
}

Deno.test("as a process, a rewritten file switches the log to debug, then to JSON", async () => {
  await using a = await namedBackend("A");
  await using b = await namedBackend("B");
  await using cfg = await configDir("lb-reload-settings-");
  const base = { healthInterval: "100ms" };
  await cfg.write(settingsText({ ...base, backends: [a.url], logLevel: "info" }));
  await using lb = spawnOnConfig(cfg);
  await lb.port();
  // Health rounds have run at info: their debug lines were not written.
  assert.ok(await waitFor(() => a.healthChecks.count >= 3, WAIT_MS), "health rounds run");
  const debugLine = /DEBUG Starting health check\.\.\.$/;
  assert.ok(!lb.lines.some((l) => l.includes("Starting health check")), lb.lines.join("\n"));

  await cfg.write(settingsText({ ...base, backends: [a.url, b.url], logLevel: "debug" }));
  // main.ts starts watching the file only after its "started" line: SIGHUP is certain.
  lb.child.kill("SIGHUP");
  const reloaded = await lineIndex(lb, /INFO Reloaded: 1 added, 0 removed, 0 reweighted$/);
  // main.ts switches the log before it writes the reload's line, so debug lines follow it.
  assert.ok(await lineIndex(lb, debugLine) > reloaded, "debug lines come after the reload");
  assert.ok(
    !lb.lines.slice(0, reloaded).some((l) => l.includes("Starting health check")),
    lb.lines.join("\n"),
  );
  assert.ok(lb.lines.some((l) => l.endsWith(`INFO Configured server: ${b.url}`)));

  // No signal this time: the file watcher (running by now) picks the edit up on its own.
  await cfg.write(
    settingsText({ ...base, backends: [a.url, b.url], logLevel: "debug", logFormat: "json" }),
  );
  const json = await lineIndex(lb, /^\{.*"message":"Reloaded: 0 added, 0 removed/, reloaded + 1);
  // Later debug rounds come as JSON too.
  await lineIndex(lb, /^\{.*"level":"debug","message":"Starting health check\.\.\."\}$/, json);
  lb.child.kill("SIGTERM");
  assert.equal(await lb.exited, 0);
  const later = lb.lines.slice(json).filter((line) => line !== "");
  for (const line of later) {
    let record;
    try {
      record = JSON.parse(line);
    } catch {
      throw new Error(`not JSON after the reload to json: ${line}`);
    }
    assert.deepEqual(Object.keys(record), ["time", "level", "message"], line);
  }
  assert.equal(JSON.parse(later.at(-1)!).message, "Load balancer stopped");
});

Deno.test("as a process, a reload raising drainTimeout lets a 1 s request finish on SIGTERM", async () => {
  await using backend = await slowBackend(1000, "finished after a second");
  await using cfg = await configDir("lb-reload-settings-");
  await cfg.write(
    settingsText({ backends: [backend.url], healthInterval: "1m", drainTimeout: "100ms" }),
  );
  await using lb = spawnOnConfig(cfg);
  const port = await lb.port();
  await cfg.write(
    settingsText({ backends: [backend.url], healthInterval: "1m", drainTimeout: "5s" }),
  );
  // main.ts starts watching the file only after its "started" line: SIGHUP is certain.
  lb.child.kill("SIGHUP");
  await lb.waitForLine(/INFO Reloaded: 0 added, 0 removed, 0 reweighted$/, WAIT_MS);

  const answer = fetch(`http://127.0.0.1:${port}/slow`).then(async (response) => ({
    status: response.status,
    text: await response.text(),
  }));
  // In flight: the backend has the request and answers in a second.
  assert.ok(await waitFor(() => backend.received.length === 1, WAIT_MS), "the request arrived");
  lb.child.kill("SIGTERM");
  const { status, text } = await answer;
  assert.equal(status, 200);
  assert.equal(text, "finished after a second", "the response is complete");
  assert.equal(await lb.exited, 0);
  assert.ok(!lb.lines.some((l) => l.includes("Drain timeout")), lb.lines.join("\n"));
  assert.ok(lb.lines.at(-1)?.endsWith("INFO Load balancer stopped"), lb.lines.join("\n"));
});
