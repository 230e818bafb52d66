/**
 * @module
 * The client's address (lib/client_address.ts) called directly: the socket peer, or the
 * X-Forwarded-For walk from the right past trusted proxies, and bare addresses from entries.
 */

import assert from "node:assert/strict";
import { bareAddress, clientAddress } from "../lib/client_address.ts";
import { parseCidr } from "../lib/cidr.ts";

Deno.test("clientAddress() is the socket peer unless the peer is a trusted proxy", () => {
  const trusted = [parseCidr("10.0.0.0/8")!];
  assert.equal(clientAddress("192.0.2.1", "203.0.113.9", trusted), "192.0.2.1");
  assert.equal(clientAddress("10.0.0.2", null, trusted), "10.0.0.2");
  assert.equal(clientAddress("10.0.0.2", "203.0.113.9", []), "10.0.0.2");
});

Deno.test("clientAddress() walks X-Forwarded-For from the right, skipping trusted proxies", () => {
  const trusted = [parseCidr("10.0.0.0/8")!, parseCidr("fd00::/8")!];
  // A client-supplied left part ("1.1.1.1") is never believed past an untrusted hop.
  assert.equal(clientAddress("10.0.0.2", "1.1.1.1, 203.0.113.9, 10.0.0.7", trusted), "203.0.113.9");
  assert.equal(clientAddress("10.0.0.2", "10.0.0.9, 10.0.0.7", trusted), "10.0.0.9");
  assert.equal(clientAddress("fd00::2", "[2001:db8::5]:443", trusted), "2001:db8::5");
  assert.equal(clientAddress("10.0.0.2", "198.51.100.4:5678", trusted), "198.51.100.4");
  // A malformed hop ends the walk at the last well-formed one.
  assert.equal(clientAddress("10.0.0.2", "203.0.113.9, garbage, 10.0.0.7", trusted), "10.0.0.7");
});

Deno.test("bareAddress() strips brackets and ports and refuses what is not an address", () => {
  assert.equal(bareAddress("192.0.2.1"), "192.0.2.1");
  assert.equal(bareAddress("192.0.2.1:80"), "192.0.2.1");
  assert.equal(bareAddress("[::1]:80"), "::1");
  assert.equal(bareAddress("2001:db8::1"), "2001:db8::1");
  assert.equal(bareAddress("unknown"), undefined);
  assert.equal(bareAddress("[::1"), undefined);
});
