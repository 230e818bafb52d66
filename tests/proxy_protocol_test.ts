/** Unit tests of lib/proxy_protocol.ts: whole headers, every split, malformed input. */

import assert from "node:assert/strict";
import {
  encodeProxyV1,
  encodeProxyV2,
  MalformedProxyHeader,
  MAX_V1_BYTES,
  parseProxyHeader,
  type ProxyHeader,
  V2_SIGNATURE,
} from "../lib/proxy_protocol.ts";

const encoder = new TextEncoder();
const SRC4 = { hostname: "192.0.2.7", port: 51234 };
const DST4 = { hostname: "10.0.0.1", port: 443 };
const SRC6 = { hostname: "2001:db8::7", port: 4000 };
const DST6 = { hostname: "2001:db8::1", port: 80 };

/** Feeds `bytes` cut at `cuts` (ascending offsets), as a socket would deliver them. */
function feed(bytes: Uint8Array, cuts: number[]): ProxyHeader {
  const buf = new Uint8Array(bytes.length);
  let end = 0;
  for (const cut of [...cuts, bytes.length]) {
    buf.set(bytes.subarray(end, cut), end);
    end = cut;
    const header = parseProxyHeader(buf, end);
    if (header !== undefined) return header;
  }
  throw new Error("header never completed");
}

/** A seeded generator (mulberry32), so a failing split can be replayed. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomCuts(length: number, next: () => number): number[] {
  const cuts = new Set<number>();
  const count = Math.floor(next() * 6);
  for (let i = 0; i < count; i++) cuts.add(1 + Math.floor(next() * (length - 1)));
  return [...cuts].sort((a, b) => a - b);
}

function malformed(bytes: Uint8Array | string, why: RegExp): void {
  const data = typeof bytes === "string" ? encoder.encode(bytes) : bytes;
  assert.throws(() => parseProxyHeader(data, data.length), (e: unknown) => {
    assert.ok(e instanceof MalformedProxyHeader);
    assert.match((e as Error).message, why);
    return true;
  });
}

Deno.test("parseProxyHeader() reads v1 TCP4 and TCP6 lines and says where the client's bytes start", () => {
  const v4 = concatBytes(encodeProxyV1(SRC4, DST4), encoder.encode("GET / HTTP/1.1\r\n"));
  const header = parseProxyHeader(v4, v4.length)!;
  assert.equal(header.version, 1);
  assert.deepEqual(header.source, SRC4);
  assert.deepEqual(header.destination, DST4);
  assert.equal(new TextDecoder().decode(v4.subarray(header.length, header.length + 3)), "GET");
  const v6 = encodeProxyV1(SRC6, DST6);
  assert.deepEqual(parseProxyHeader(v6, v6.length)!.source, SRC6);
});

Deno.test("parseProxyHeader() gives no source for v1 UNKNOWN", () => {
  const line = encoder.encode("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
  assert.deepEqual(parseProxyHeader(line, line.length), { length: line.length, version: 1 });
});

Deno.test("parseProxyHeader() reads v2 PROXY over IPv4 and IPv6, skipping TLVs", () => {
  const tlv = new Uint8Array([0x04, 0x00, 0x03, 1, 2, 3]); // PP2_TYPE_NOOP, 3 bytes
  const v4 = encodeProxyV2(SRC4, DST4, tlv);
  const h4 = parseProxyHeader(v4, v4.length)!;
  assert.deepEqual([h4.version, h4.length, h4.source, h4.destination], [2, v4.length, SRC4, DST4]);
  const v6 = encodeProxyV2(SRC6, DST6);
  const h6 = parseProxyHeader(v6, v6.length)!;
  assert.deepEqual([h6.source, h6.destination], [SRC6, DST6]);
});

Deno.test("parseProxyHeader() gives no source for v2 LOCAL and for UNIX/UNSPEC families", () => {
  const local = encodeProxyV2(SRC4, DST4);
  local[12] = 0x20;
  assert.equal(parseProxyHeader(local, local.length)!.source, undefined);
  const unspec = new Uint8Array([...V2_SIGNATURE, 0x21, 0x00, 0, 0]);
  assert.deepEqual(parseProxyHeader(unspec, unspec.length), { length: 16, version: 2 });
  const unix = new Uint8Array([...V2_SIGNATURE, 0x21, 0x31, 0, 216, ...new Uint8Array(216)]);
  assert.deepEqual(parseProxyHeader(unix, unix.length), { length: 232, version: 2 });
});

Deno.test("parseProxyHeader() writes v2 IPv4-mapped and zero-run IPv6 sources as the rest of the balancer does", () => {
  const bytes = encodeProxyV2({ hostname: "2001:db8:0:0:1:0:0:1", port: 1 }, DST6);
  assert.equal(parseProxyHeader(bytes, bytes.length)!.source!.hostname, "2001:db8::1:0:0:1");
  const mapped = encodeProxyV2({ hostname: "2001:db8::9", port: 1 }, DST6);
  mapped.set([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 4], 16);
  assert.equal(parseProxyHeader(mapped, mapped.length)!.source!.hostname, "198.51.100.4");
});

Deno.test("parseProxyHeader() gives v1 IPv6 sources in the form v2 gives them", () => {
  const forms = ["2001:DB8::1", "2001:db8:0:0:0:0:0:1", "2001:0db8::0001"];
  for (const text of forms) {
    const line = encoder.encode(`PROXY TCP6 ${text} ::1 1000 80\r\n`);
    assert.equal(parseProxyHeader(line, line.length)!.source!.hostname, "2001:db8::1", text);
  }
  const mapped = encoder.encode("PROXY TCP6 ::ffff:198.51.100.4 ::1 1000 80\r\n");
  assert.equal(parseProxyHeader(mapped, mapped.length)!.source!.hostname, "198.51.100.4");
});

Deno.test("parseProxyHeader() refuses v2 TLVs that do not fit in the header", () => {
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array([0x04, 0x00, 0x09, 1, 2, 3]), /TLV longer than the header/],
    [new Uint8Array([0x04, 0x00, 0x01, 7, 0x04]), /TLV cut short/],
  ];
  for (const [tlvs, reason] of cases) {
    const header = encodeProxyV2(SRC4, DST4, tlvs);
    assert.throws(() => parseProxyHeader(header, header.length), reason);
  }
});

Deno.test("parseProxyHeader() gives the same result for every split of the input (random, seeded)", () => {
  const next = random(16);
  const samples = [
    encodeProxyV1(SRC4, DST4),
    encodeProxyV1(SRC6, DST6),
    encodeProxyV2(SRC4, DST4, new Uint8Array([0x04, 0x00, 37, ...new Uint8Array(37)])),
    encodeProxyV2(SRC6, DST6),
  ];
  for (const sample of samples) {
    const whole = parseProxyHeader(sample, sample.length);
    // Byte by byte, then 500 random splits each.
    assert.deepEqual(feed(sample, [...Array(sample.length - 1).keys()].map((i) => i + 1)), whole);
    for (let i = 0; i < 500; i++) {
      assert.deepEqual(feed(sample, randomCuts(sample.length, next)), whole);
    }
  }
});

Deno.test("parseProxyHeader() asks for more bytes only while a header can still follow", () => {
  const v1 = encodeProxyV1(SRC4, DST4);
  for (let end = 0; end < v1.length; end++) assert.equal(parseProxyHeader(v1, end), undefined);
  const v2 = encodeProxyV2(SRC4, DST4);
  for (let end = 0; end < v2.length; end++) assert.equal(parseProxyHeader(v2, end), undefined);
});

Deno.test("parseProxyHeader() refuses input that is not a PROXY header, at its first wrong byte", () => {
  malformed("GET / HTTP/1.1\r\n", /no PROXY signature/);
  malformed("PROXZ", /bad v1 signature/);
  malformed(new Uint8Array([0x0d, 0x0a, 0x0d, 0x0a, 0x01]), /bad v2 signature/);
  malformed("\x16\x03\x01", /no PROXY signature/); // a TLS ClientHello
});

Deno.test("parseProxyHeader() refuses malformed v1 lines", () => {
  const cases: [string, RegExp][] = [
    ["PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\n", /without CRLF/],
    ["PROXY TCP4 192.0.2.7 10.0.0.1 51234\r\n", /v1 line/],
    ["PROXY TCP4  192.0.2.7 10.0.0.1 51234 443\r\n", /v1 line/],
    ["PROXY TCP5 192.0.2.7 10.0.0.1 51234 443\r\n", /v1 line/],
    ["PROXY TCP4 2001:db8::1 10.0.0.1 1 443\r\n", /TCP4 address/],
    ["PROXY TCP6 192.0.2.7 2001:db8::1 1 443\r\n", /TCP6 address/],
    ["PROXY TCP4 192.0.2.256 10.0.0.1 1 443\r\n", /TCP4 address/],
    ["PROXY TCP4 192.0.2.07 10.0.0.1 1 443\r\n", /TCP4 address/],
    ["PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n", /port/],
    ["PROXY TCP4 192.0.2.7 10.0.0.1 0443 443\r\n", /port/],
    ["PROXY TCP4 192.0.2.7 10.0.0.1 -1 443\r\n", /port/],
    ["PROXY TCP4 192.0.2.7\r10.0.0.1 1 443\r\n", /bare CR/],
    ["PROXY TCP4 192.0.2.7\t10.0.0.1 1 443\r\n", /control byte/],
    [`PROXY UNKNOWN ${"x".repeat(MAX_V1_BYTES)}`, /longer than 107/],
  ];
  for (const [line, why] of cases) malformed(line, why);
});

Deno.test("parseProxyHeader() refuses malformed v2 headers", () => {
  const good = encodeProxyV2(SRC4, DST4);
  const with_ = (at: number, value: number) => {
    const copy = good.slice();
    copy[at] = value;
    return copy;
  };
  malformed(with_(12, 0x11), /v2 version 1/);
  malformed(with_(12, 0x22), /v2 command 2/);
  malformed(with_(13, 0x41), /family byte/);
  malformed(with_(13, 0x13), /family byte/);
  malformed(with_(15, 4), /address block too short/);
  malformed(with_(13, 0x21), /address block too short/); // IPv6 family, IPv4-sized block
  malformed(new Uint8Array([...V2_SIGNATURE, 0x21, 0x11, 0xff, 0xff]), /v2 header of 65551 bytes/);
});

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
