/**
 * @module
 * The value parsers behind the settings table (lib/setting_values.ts) called directly: backend
 * items and DNS discovery targets (the checks themselves run through validateFileSettings() in
 * tests/config_file_test.ts).
 */

import assert from "node:assert/strict";
import { parseBackend, parseDiscoveryTarget } from "../lib/setting_values.ts";

Deno.test("parseBackend() normalises origins and reads URL*WEIGHT", () => {
  assert.deepEqual(parseBackend("http://Example.COM:80/"), {
    url: "http://example.com",
    weight: 1,
  });
  assert.deepEqual(parseBackend("http://[::1]:8081*0"), { url: "http://[::1]:8081", weight: 0 });
  assert.deepEqual(parseBackend("https://a:8443*12"), { url: "https://a:8443", weight: 12 });
});

Deno.test("parseDiscoveryTarget() reads dns+srv and dns+a targets, and refuses a bad port or scheme", () => {
  assert.deepEqual(parseDiscoveryTarget("dns+srv://_http._tcp.app.example."), {
    kind: "srv",
    name: "_http._tcp.app.example",
  });
  assert.deepEqual(parseDiscoveryTarget("dns+a://app.example:8080"), {
    kind: "a",
    name: "app.example",
    port: 8080,
  });
  assert.equal(parseDiscoveryTarget("dns+a://app.example.:65535")?.name, "app.example");
  for (
    const bad of [
      "dns+a://app.example",
      "dns+a://app.example:0",
      "dns+a://app.example:65536",
      "dns+srv://app.example:53",
      "dns+srv://a b",
      "http://app.example:80",
      "",
    ]
  ) {
    assert.equal(parseDiscoveryTarget(bad), undefined, bad);
  }
});
