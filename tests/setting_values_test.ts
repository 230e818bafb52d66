/**
 * @module
 * The value parsers behind the settings table (lib/setting_values.ts) called directly: backend
 * items and DNS discovery targets (the checks themselves run through validateFileSettings() in
 * tests/config_file_test.ts).
 */

import assert from "node:assert/strict";
import { parseBackend, parseDiscoveryTarget } from "../lib/setting_values.ts";

Deno.test("parseBackend() refuses a space or control character inside the URL", () => {
  // The URL parser would drop the newline and read port 21003.
  for (
    const text of [
      "http://127.0.0.1:2100\n3",
      "http://a\tb:80",
      "http://a b:80",
      "http://a:80\u0000",
    ]
  ) {
    assert.throws(
      () => parseBackend(text),
      /contains a space or a control character/,
      JSON.stringify(text),
    );
  }
  assert.deepEqual(
    parseBackend(" http://a:80 "),
    { url: "http://a", weight: 1 },
    "around it: trimmed",
  );
});

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
