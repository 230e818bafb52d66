/** Pure unit tests of lib/host.ts: IPv6 brackets and ports in host names. */

import assert from "node:assert/strict";
import { hostWithoutPort, unbracket } from "../lib/host.ts";

Deno.test("unbracket() strips the brackets of an IPv6 literal and nothing else", () => {
  assert.equal(unbracket("[::1]"), "::1");
  assert.equal(unbracket("[2001:db8::1]"), "2001:db8::1");
  assert.equal(unbracket("::"), "::");
  assert.equal(unbracket("127.0.0.1"), "127.0.0.1");
  assert.equal(unbracket("example.com"), "example.com");
  assert.equal(unbracket("["), "[");
  assert.equal(unbracket("[::1"), "[::1");
});

Deno.test("hostWithoutPort() drops the port of names, IPv4 and IPv6 literals", () => {
  assert.equal(hostWithoutPort("example.com:80"), "example.com");
  assert.equal(hostWithoutPort("example.com"), "example.com");
  assert.equal(hostWithoutPort("Example.COM.:80"), "Example.COM.");
  assert.equal(hostWithoutPort("10.0.0.1:8080"), "10.0.0.1");
  assert.equal(hostWithoutPort("[::1]:80"), "[::1]");
  assert.equal(hostWithoutPort("[::1]"), "[::1]");
  assert.equal(hostWithoutPort("[::1"), "[::1");
  assert.equal(hostWithoutPort(""), "");
});
