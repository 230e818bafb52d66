/**
 * @module
 * Unit tests of lib/acme_setup.ts: where ACME state lives by default, and what `setUpAcme()`
 * wires before the first order (TLS files, the HTTP port for challenges, the placeholder).
 * Nothing here reaches an ACME server: the manager is built, not started.
 */

import assert from "node:assert/strict";
import { defaultAcmeDir, setUpAcme } from "../lib/acme_setup.ts";
import { placeholderCertificate } from "../lib/acme_placeholder.ts";
import { writePair } from "../lib/acme_store.ts";
import { captureLog, tempDir, testConfig } from "./helpers.ts";

/** A loopback directory URL: the manager is never started, and must never reach the Internet. */
const NEVER_CONTACTED = "https://127.0.0.1:1/directory";

Deno.test("defaultAcmeDir() is acme/ beside the config file, else under the user's data folder", () => {
  assert.equal(defaultAcmeDir("/etc/lb/config.jsonc"), "/etc/lb/acme");
  assert.equal(defaultAcmeDir("config.jsonc"), "acme");
  assert.equal(defaultAcmeDir("/config.jsonc"), "/acme");
  const saved = Deno.env.get("XDG_DATA_HOME");
  try {
    Deno.env.set("XDG_DATA_HOME", "/data");
    assert.equal(defaultAcmeDir(undefined), "/data/load-balancer/acme");
  } finally {
    if (saved === undefined) Deno.env.delete("XDG_DATA_HOME");
    else Deno.env.set("XDG_DATA_HOME", saved);
  }
});

Deno.test("setUpAcme() points TLS at the manager's files, takes port 80 for challenges and starts on a placeholder", async () => {
  await using dir = await tempDir("lb-acme-setup-");
  const config = testConfig([], {
    acmeDomains: ["a.example.com"],
    acmeDir: dir.path,
    acmeDirectory: NEVER_CONTACTED,
  });
  const setup = await setUpAcme(config, undefined, captureLog(), () => {});
  assert.equal(config.tlsCert, setup.manager.files.cert);
  assert.equal(config.tlsKey, setup.manager.files.key);
  assert.ok(config.tlsCert!.startsWith(`${dir.path}/certificates/`));
  assert.equal(config.redirectHttp, 80, "HTTP-01 challenges come on port 80");
  assert.equal((await Deno.stat(setup.manager.files.dir)).isDirectory, true, "watched folder made");
  assert.equal(setup.extras.issued(), false);
  assert.ok(setup.extras.placeholder !== undefined, "a listener needs a certificate to start");
  assert.equal(setup.extras.challenge("/"), undefined, "only challenge paths are answered");
  await setup.manager.stop();
});

Deno.test("setUpAcme() serves a stored certificate that is still valid: no placeholder, issued", async () => {
  await using dir = await tempDir("lb-acme-setup-");
  const config = testConfig([], {
    acmeDomains: ["a.example.com"],
    acmeDir: dir.path,
    acmeDirectory: NEVER_CONTACTED,
    redirectHttp: 8080,
  });
  const first = await setUpAcme(structuredClone(config), undefined, captureLog(), () => {});
  const pair = await placeholderCertificate(["a.example.com"]);
  await writePair(first.manager.files, pair.cert, pair.key);
  await first.manager.stop();
  const setup = await setUpAcme(config, undefined, captureLog(), () => {});
  assert.equal(setup.extras.issued(), true);
  assert.equal(setup.extras.placeholder, undefined);
  assert.equal(config.redirectHttp, 8080, "a configured HTTP port is kept");
  await setup.manager.stop();
});
