/**
 * @module
 * IPv4/IPv6 address ranges in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address),
 * for deciding whether a peer is a trusted proxy.
 */

/** A parsed range: the address as bytes, and how many leading bits must match. */
export interface Cidr {
  bytes: Uint8Array;
  prefix: number;
  /** The text it was parsed from, for messages. */
  text: string;
}

/**
 * Parses `a.b.c.d[/n]` or `ipv6[/n]`; returns undefined when it is not a range. A range inside
 * the IPv4-mapped block (`::ffff:0:0/96` and narrower, in any spelling) is the IPv4 range it
 * maps, since addresses are compared with mapped ones folded to IPv4 ({@linkcode parseAddress}).
 */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf("/");
  const address = slash === -1 ? text : text.slice(0, slash);
  const bytes = parseAddress(address);
  if (bytes === undefined) return undefined;
  // An IPv6 text that folded to IPv4: its prefix counts 128 bits, 96 of them the mapped block.
  const mapped = address.includes(":") && bytes.length === 4;
  const max = mapped ? 128 : bytes.length * 8;
  if (slash === -1) return { bytes, prefix: bytes.length * 8, text };
  const prefixText = text.slice(slash + 1);
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) return undefined;
  const prefix = Number(prefixText);
  if (!mapped) return { bytes, prefix, text };
  if (prefix >= 96) return { bytes, prefix: prefix - 96, text };
  // Wider than the mapped block: an IPv6 range (it matches IPv6 peers only).
  const wide = new Uint8Array(16);
  wide.set([0xff, 0xff, ...bytes], 10);
  return { bytes: wide, prefix, text };
}

/**
 * Parses an IPv4 or IPv6 address. IPv4-mapped IPv6 (`::ffff:1.2.3.4`, `::ffff:102:304`,
 * `0:0:0:0:0:ffff:1.2.3.4`...) counts as the IPv4 address it maps.
 */
export function parseAddress(text: string): Uint8Array | undefined {
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (v4) {
    const parts = v4.slice(1).map(Number);
    return parts.every((p) => p <= 255) ? new Uint8Array(parts) : undefined;
  }
  if (!text.includes(":") || !/^[0-9A-Fa-f:.]+$/.test(text)) return undefined;
  // A dotted quad may end an IPv6 text (RFC 4291 §2.2): as its last two words.
  const dotted = /^(.*:)(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/.exec(text);
  if (dotted) {
    const quad = parseAddress(dotted[2]);
    if (quad === undefined) return undefined;
    const hex = (hi: number, lo: number) => ((hi << 8) | lo).toString(16);
    return parseAddress(`${dotted[1]}${hex(quad[0], quad[1])}:${hex(quad[2], quad[3])}`);
  }
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const words = (part: string) => (part === "" ? [] : part.split(":"));
  const head = words(halves[0]);
  const tail = halves.length === 2 ? words(halves[1]) : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const all = [...head, ...Array(halves.length === 2 ? missing : 0).fill("0"), ...tail];
  if (!all.every((w) => /^[0-9A-Fa-f]{1,4}$/.test(w))) return undefined;
  const bytes = new Uint8Array(16);
  all.forEach((w, i) => {
    const n = parseInt(w, 16);
    bytes[i * 2] = n >> 8;
    bytes[i * 2 + 1] = n & 0xff;
  });
  const isMapped = bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff &&
    bytes[11] === 0xff;
  return isMapped ? bytes.slice(12) : bytes;
}

/** Whether `address` (text) lies in `range`. Different address families never match. */
export function cidrContains(range: Cidr, address: string): boolean {
  const bytes = parseAddress(address);
  if (bytes === undefined || bytes.length !== range.bytes.length) return false;
  let bits = range.prefix;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((bytes[i] & mask) !== (range.bytes[i] & mask)) return false;
  }
  return true;
}
