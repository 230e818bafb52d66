/**
 * @module
 * Address ranges (lib/cidr.ts) called directly: what parses as a range or an address, and which
 * addresses a range contains.
 */

import assert from "node:assert/strict";
import { cidrContains, parseAddress, parseCidr } from "../lib/cidr.ts";

/** The range `text` parses to; fails the test when it does not parse. */
function range(text: string) {
  const parsed = parseCidr(text);
  assert.ok(parsed !== undefined, `${text} did not parse`);
  return parsed;
}

Deno.test("parseCidr() takes IPv4 and IPv6 ranges and bare addresses, and refuses the rest", () => {
  assert.deepEqual(range("10.0.0.0/8"), {
    bytes: new Uint8Array([10, 0, 0, 0]),
    prefix: 8,
    text: "10.0.0.0/8",
  });
  assert.equal(range("192.0.2.7").prefix, 32, "a bare IPv4 address is a /32");
  assert.equal(range("::1").prefix, 128, "a bare IPv6 address is a /128");
  assert.equal(range("2001:db8::/32").bytes.length, 16);
  assert.equal(range("0.0.0.0/0").prefix, 0);
  for (
    const bad of [
      "10.0.0.0/33",
      "::/129",
      "10.0.0.0/",
      "10.0.0.0/-1",
      "10.0.0.0/1a",
      "256.0.0.1",
      "10.0.0",
      "",
      "/8",
      "example.com/8",
    ]
  ) {
    assert.equal(parseCidr(bad), undefined, bad);
  }
});

Deno.test("parseAddress() reads IPv6 forms, IPv4-mapped as IPv4, and refuses malformed ones", () => {
  assert.deepEqual(parseAddress("::ffff:192.0.2.1"), new Uint8Array([192, 0, 2, 1]));
  assert.deepEqual(parseAddress("::"), new Uint8Array(16));
  const full = parseAddress("2001:DB8:0:0:0:0:0:1");
  assert.deepEqual(full, parseAddress("2001:db8::1"), "case and :: do not matter");
  assert.deepEqual([...full!.subarray(0, 2)], [0x20, 0x01]);
  assert.equal(full![15], 1);
  for (
    const bad of [
      "1::2::3",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7",
      "1:2:3:4::5:6:7:8",
      "12345::",
      "g::1",
      "[::1]",
      "1.2.3.4.5",
    ]
  ) {
    assert.equal(parseAddress(bad), undefined, bad);
  }
});

Deno.test("cidrContains() compares only the prefix's bits, within one address family", () => {
  const twelve = range("172.16.0.0/12");
  assert.equal(cidrContains(twelve, "172.16.0.1"), true);
  assert.equal(cidrContains(twelve, "172.31.255.255"), true, "the last address of a /12");
  assert.equal(cidrContains(twelve, "172.32.0.0"), false, "the first one after it");
  assert.equal(cidrContains(twelve, "172.15.255.255"), false);
  assert.equal(cidrContains(range("0.0.0.0/0"), "203.0.113.9"), true);
  assert.equal(cidrContains(range("0.0.0.0/0"), "::1"), false, "IPv6 is not in an IPv4 range");
  assert.equal(cidrContains(range("::/0"), "192.0.2.1"), false, "nor IPv4 in an IPv6 one");
  assert.equal(cidrContains(range("10.0.0.0/8"), "::ffff:10.1.2.3"), true, "mapped is IPv4");
  assert.equal(cidrContains(range("fd00::/8"), "fdff::1"), true);
  assert.equal(cidrContains(range("fd00::/8"), "fe00::1"), false);
  assert.equal(cidrContains(range("192.0.2.1"), "192.0.2.2"), false, "a bare address is a /32");
  assert.equal(cidrContains(range("10.0.0.0/8"), "not an address"), false);
});

Deno.test("IPv4-mapped IPv6 in every spelling is its IPv4 address, and mapped ranges are IPv4 ranges", () => {
  const v4 = new Uint8Array([127, 0, 0, 1]);
  for (
    const text of [
      "::ffff:127.0.0.1",
      "::ffff:7f00:1",
      "::FFFF:7F00:0001",
      "0:0:0:0:0:ffff:127.0.0.1",
    ]
  ) {
    assert.deepEqual(parseAddress(text), v4, text);
  }
  // A deny list written in any of these forms matches the client it names.
  for (const rule of ["::ffff:7f00:1", "::ffff:0:0/96", "::ffff:7f00:0/104", "::ffff:127.0.0.1"]) {
    for (const peer of ["127.0.0.1", "::ffff:127.0.0.1", "::ffff:7f00:1"]) {
      assert.ok(cidrContains(range(rule), peer), `${rule} contains ${peer}`);
    }
  }
  assert.equal(range("::ffff:0:0/96").prefix, 0, "the whole mapped block is all of IPv4");
  assert.ok(!cidrContains(range("::ffff:7f00:0/104"), "10.0.0.1"));
  // Wider than the mapped block: an IPv6 range, which IPv4 peers are not in.
  assert.ok(!cidrContains(range("::/0"), "127.0.0.1"));
  assert.ok(cidrContains(range("::/0"), "2001:db8::1"));
  assert.equal(parseCidr("::ffff:0:0/129"), undefined);
});
