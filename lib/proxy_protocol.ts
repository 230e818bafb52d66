/**
 * @module
 * The PROXY protocol header (HAProxy's spec, versions 1 and 2) that an L4 balancer sends
 * before the client's bytes to tell who the client is. Pure: {@linkcode parseProxyHeader} reads
 * bytes that may arrive in any number of pieces and says "need more", "done, the client is X,
 * the header was N bytes", or throws {@linkcode MalformedProxyHeader}.
 *
 * Policies (as HAProxy's `accept-proxy`):
 * - A peer that is trusted must send a header: anything else is malformed (the connection
 *   closes). Trust is the caller's business (lib/frontend_native.ts).
 * - v1: at most 107 bytes, CRLF-terminated, `TCP4`/`TCP6` with both addresses and ports in
 *   their canonical forms, or `UNKNOWN` (the rest of the line ignored). IPv6 addresses are
 *   given back in RFC 5952 form, as v2's are, so one client is one address whatever its text.
 * - v2: `PROXY` command with an AF_INET/AF_INET6 address block gives the source; `LOCAL`
 *   (health checks from the proxy itself) and other families (UNIX, UNSPEC) give none, so the
 *   socket peer stays the client. TLVs are skipped, but each must fit in the header (as
 *   HAProxy checks); the whole header is bounded by {@linkcode MAX_V2_BYTES}.
 */

import { parseAddress } from "./cidr.ts";

/** The v2 signature: `\r\n\r\n\0\r\nQUIT\n`. */
export const V2_SIGNATURE = new Uint8Array([
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
]);
const V1_PREFIX = new Uint8Array([0x50, 0x52, 0x4f, 0x58, 0x59, 0x20]); // "PROXY "
/** Longest v1 line, CRLF included (spec §2.1). */
export const MAX_V1_BYTES = 107;
/** Longest v2 header accepted (16-byte preamble, addresses and TLVs), as HAProxy's bufsize. */
export const MAX_V2_BYTES = 16 * 1024;

/** A PROXY header that breaks the spec; the message says why. */
export class MalformedProxyHeader extends Error {
  override name = "MalformedProxyHeader";
  constructor(why: string) {
    super(`malformed PROXY protocol header: ${why}`);
  }
}

/** A complete header. */
export interface ProxyHeader {
  /** Bytes the header took: the client's own bytes start there. */
  length: number;
  version: 1 | 2;
  /** The original client, or undefined (v1 UNKNOWN, v2 LOCAL or a non-IP family). */
  source?: { hostname: string; port: number };
  /** The address the client connected to, when given. */
  destination?: { hostname: string; port: number };
}

/**
 * Parses the PROXY header at the start of `buf[0, end)`. Returns undefined while more bytes
 * are needed (never past {@linkcode MAX_V1_BYTES} / {@linkcode MAX_V2_BYTES}), the header once
 * complete, or throws {@linkcode MalformedProxyHeader} as soon as the bytes cannot begin one.
 */
export function parseProxyHeader(buf: Uint8Array, end: number): ProxyHeader | undefined {
  if (end === 0) return undefined;
  if (buf[0] === V2_SIGNATURE[0]) return parseV2(buf, end);
  if (buf[0] === V1_PREFIX[0]) return parseV1(buf, end);
  throw new MalformedProxyHeader("no PROXY signature");
}

function expectPrefix(buf: Uint8Array, end: number, prefix: Uint8Array, what: string): boolean {
  const n = Math.min(end, prefix.length);
  for (let i = 0; i < n; i++) {
    if (buf[i] !== prefix[i]) throw new MalformedProxyHeader(`bad ${what} signature`);
  }
  return end >= prefix.length;
}

function parseV1(buf: Uint8Array, end: number): ProxyHeader | undefined {
  if (!expectPrefix(buf, end, V1_PREFIX, "v1")) return undefined;
  let lf = -1;
  for (let i = V1_PREFIX.length; i < Math.min(end, MAX_V1_BYTES); i++) {
    const c = buf[i];
    if (c === 0x0a) {
      lf = i;
      break;
    }
    // Printable ASCII only, CR only right before the LF.
    if ((c < 0x20 && c !== 0x0d) || c > 0x7e) throw new MalformedProxyHeader("v1 control byte");
  }
  if (lf === -1) {
    if (end >= MAX_V1_BYTES) throw new MalformedProxyHeader("v1 line longer than 107 bytes");
    return undefined;
  }
  if (buf[lf - 1] !== 0x0d) throw new MalformedProxyHeader("v1 line without CRLF");
  const line = String.fromCharCode(...buf.subarray(V1_PREFIX.length, lf - 1));
  if (line.includes("\r")) throw new MalformedProxyHeader("v1 bare CR");
  const parts = line.split(" ");
  if (parts[0] === "UNKNOWN") return { length: lf + 1, version: 1 };
  if (parts.length !== 5 || (parts[0] !== "TCP4" && parts[0] !== "TCP6")) {
    throw new MalformedProxyHeader(`v1 line ${JSON.stringify(line.slice(0, 60))}`);
  }
  const [family, src, dst, sport, dport] = parts;
  return {
    length: lf + 1,
    version: 1,
    source: { hostname: v1Address(family, src), port: v1Port(sport) },
    destination: { hostname: v1Address(family, dst), port: v1Port(dport) },
  };
}

function v1Address(family: string, text: string): string {
  const bytes = parseAddress(text);
  // parseAddress reads ::ffff:a.b.c.d as IPv4; TCP6 must still carry an IPv6 text.
  const v6 = text.includes(":");
  if (
    bytes === undefined || (family === "TCP4") === v6 ||
    (family === "TCP4" && /(^|\.)0\d/.test(text))
  ) {
    throw new MalformedProxyHeader(`v1 ${family} address ${JSON.stringify(text)}`);
  }
  return bytes.length === 4 ? bytes.join(".") : ipv6Text(bytes, 0);
}

function v1Port(text: string): number {
  // No leading zeros, no sign: the spec's canonical decimal.
  if (!/^(0|[1-9]\d{0,4})$/.test(text) || Number(text) > 65535) {
    throw new MalformedProxyHeader(`v1 port ${JSON.stringify(text)}`);
  }
  return Number(text);
}

function parseV2(buf: Uint8Array, end: number): ProxyHeader | undefined {
  if (!expectPrefix(buf, end, V2_SIGNATURE, "v2")) return undefined;
  if (end < 16) {
    if (end > 12) checkVersionCommand(buf[12]);
    return undefined;
  }
  const command = checkVersionCommand(buf[12]);
  const family = buf[13];
  const length = 16 + ((buf[14] << 8) | buf[15]);
  if (length > MAX_V2_BYTES) throw new MalformedProxyHeader(`v2 header of ${length} bytes`);
  const needed = family === 0x11 || family === 0x12
    ? 12
    : family === 0x21 || family === 0x22
    ? 36
    : 0;
  if (length - 16 < needed) throw new MalformedProxyHeader("v2 address block too short");
  if (family >> 4 > 3 || (family & 0x0f) > 2) {
    throw new MalformedProxyHeader(`v2 family byte 0x${family.toString(16)}`);
  }
  if (end < length) return undefined;
  if (needed > 0) checkTlvs(buf, 16 + needed, length);
  // LOCAL: the proxy's own connection (a health check); the addresses, if any, mean nothing.
  if (command === 0 || needed === 0) return { length, version: 2 };
  if (needed === 12) {
    return {
      length,
      version: 2,
      source: { hostname: buf.subarray(16, 20).join("."), port: port16(buf, 24) },
      destination: { hostname: buf.subarray(20, 24).join("."), port: port16(buf, 26) },
    };
  }
  return {
    length,
    version: 2,
    source: { hostname: ipv6Text(buf, 16), port: port16(buf, 48) },
    destination: { hostname: ipv6Text(buf, 32), port: port16(buf, 50) },
  };
}

/** Throws unless the bytes from `at` to `end` are whole TLVs (type, 16-bit length, value). */
function checkTlvs(buf: Uint8Array, at: number, end: number): void {
  while (at < end) {
    if (end - at < 3) throw new MalformedProxyHeader("v2 TLV cut short");
    at += 3 + port16(buf, at + 1);
    if (at > end) throw new MalformedProxyHeader("v2 TLV longer than the header");
  }
}

/** 0 for LOCAL, 1 for PROXY; throws for another version or command. */
function checkVersionCommand(byte: number): number {
  if (byte >> 4 !== 2) throw new MalformedProxyHeader(`v2 version ${byte >> 4}`);
  const command = byte & 0x0f;
  if (command > 1) throw new MalformedProxyHeader(`v2 command ${command}`);
  return command;
}

function port16(buf: Uint8Array, at: number): number {
  return (buf[at] << 8) | buf[at + 1];
}

/** RFC 5952 text of the 16 bytes at `at` (compressed, lower case; mapped IPv4 as a.b.c.d). */
function ipv6Text(buf: Uint8Array, at: number): string {
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push(port16(buf, at + i * 2));
  if (words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff) {
    // The rest of the balancer compares IPv4 clients as dotted quads.
    return buf.subarray(at + 12, at + 16).join(".");
  }
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (bestStart === -1) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

/** A v1 header line for `source` to `destination` (tests and tools). */
export function encodeProxyV1(
  source: { hostname: string; port: number },
  destination: { hostname: string; port: number },
): Uint8Array {
  const family = source.hostname.includes(":") ? "TCP6" : "TCP4";
  return new TextEncoder().encode(
    `PROXY ${family} ${source.hostname} ${destination.hostname} ${source.port} ${destination.port}\r\n`,
  );
}

/** A v2 PROXY header for `source` to `destination`, with `tlvs` bytes appended (tests, tools). */
export function encodeProxyV2(
  source: { hostname: string; port: number },
  destination: { hostname: string; port: number },
  tlvs: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const src = parseAddress(source.hostname);
  const dst = parseAddress(destination.hostname);
  if (src === undefined || dst === undefined || src.length !== dst.length) {
    throw new TypeError("encodeProxyV2: two addresses of one family");
  }
  const block = src.length * 2 + 4;
  const out = new Uint8Array(16 + block + tlvs.length);
  out.set(V2_SIGNATURE);
  out[12] = 0x21;
  out[13] = src.length === 4 ? 0x11 : 0x21;
  out[14] = (block + tlvs.length) >> 8;
  out[15] = (block + tlvs.length) & 0xff;
  out.set(src, 16);
  out.set(dst, 16 + src.length);
  const ports = 16 + src.length * 2;
  out.set(
    [source.port >> 8, source.port & 0xff, destination.port >> 8, destination.port & 0xff],
    ports,
  );
  out.set(tlvs, 16 + block);
  return out;
}
