/**
 * @module
 * The client's address as rate limits, access rules and logs must see it: the socket peer, or,
 * when the peer is a trusted proxy, the address that proxy saw, found by walking
 * X-Forwarded-For from the right and skipping trusted proxies (nginx's `real_ip_recursive on`).
 * Only the rightmost entries were written by proxies we trust; anything left of the first
 * untrusted one could have been sent by the client itself.
 */

import { type Cidr, cidrContains, parseAddress } from "./cidr.ts";

/**
 * The client address of a request from `peer` carrying `forwardedFor` (X-Forwarded-For as
 * received, all fields joined by commas), given the `trusted` proxies.
 */
export function clientAddress(
  peer: string,
  forwardedFor: string | null,
  trusted: readonly Cidr[],
): string {
  if (trusted.length === 0 || forwardedFor === null || !isTrusted(peer, trusted)) return peer;
  let client = peer;
  const entries = forwardedFor.split(",");
  for (let i = entries.length - 1; i >= 0; i--) {
    const address = bareAddress(entries[i].trim());
    // A malformed entry ends the walk: the last well-formed hop is the best known client.
    if (address === undefined) return client;
    client = address;
    if (!isTrusted(address, trusted)) return address;
  }
  return client;
}

function isTrusted(address: string, trusted: readonly Cidr[]): boolean {
  for (const range of trusted) if (cidrContains(range, address)) return true;
  return false;
}

/**
 * The IP address of an X-Forwarded-For entry, without brackets or a port (`[2001:db8::1]:443`,
 * `192.0.2.1:8080`), or undefined when it is not an address.
 */
export function bareAddress(entry: string): string | undefined {
  let text = entry;
  if (text.startsWith("[")) {
    const end = text.indexOf("]");
    if (end === -1) return undefined;
    text = text.slice(1, end);
  } else if (text.indexOf(":") !== -1 && text.indexOf(":") === text.lastIndexOf(":")) {
    // One colon: IPv4 with a port. Two or more: an IPv6 address without brackets.
    text = text.slice(0, text.indexOf(":"));
  }
  return parseAddress(text) === undefined ? undefined : text;
}
