/**
 * @module
 * Small rules for host names as they appear in URLs and Host headers, where an IPv6 literal is
 * written in brackets (`[::1]:8080`, RFC 3986 §3.2.2) but sockets want it bare.
 */

/** `[::1]` -> `::1` (as `Deno.connect` and listeners want it); any other host unchanged. */
export function unbracket(hostname: string): string {
  return hostname.length > 1 && hostname.startsWith("[") && hostname.endsWith("]")
    ? hostname.slice(1, -1)
    : hostname;
}

/**
 * `example.com:80` -> `example.com`, `[::1]:80` -> `[::1]` (brackets kept); case and a trailing
 * dot are kept as given.
 */
export function hostWithoutPort(host: string): string {
  if (host.startsWith("[")) return host.slice(0, host.indexOf("]") + 1 || host.length);
  const colon = host.indexOf(":");
  return colon === -1 ? host : host.slice(0, colon);
}
