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

/** Parses `a.b.c.d[/n]` or `ipv6[/n]`; returns undefined when it is not a range. */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf("/");
  const address = slash === -1 ? text : text.slice(0, slash);
  const bytes = parseAddress(address);
  if (bytes === undefined) return undefined;
  const max = bytes.length * 8;
  if (slash === -1) return { bytes, prefix: max, text };
  const prefixText = text.slice(slash + 1);
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) return undefined;
  return { bytes, prefix: Number(prefixText), text };
}

/** Parses an IPv4 or IPv6 address (IPv4-mapped IPv6 counts as IPv4). */
export function parseAddress(text: string): Uint8Array | undefined {
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (v4) {
    const parts = v4.slice(1).map(Number);
    return parts.every((p) => p <= 255) ? new Uint8Array(parts) : undefined;
  }
  if (!text.includes(":") || !/^[0-9A-Fa-f:.]+$/.test(text)) return undefined;
  const mapped = /^::ffff:(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/i.exec(text);
  if (mapped) return parseAddress(mapped[1]);
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
  return bytes;
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
