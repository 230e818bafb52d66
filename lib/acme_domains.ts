/**
 * @module
 * Which names automatic HTTPS can get a certificate for, in a module of its own (no npm
 * import) so that the settings' validator can check `acmeDomains` without loading the ACME
 * client.
 */

/** Why `name` cannot be a domain of an HTTP-01 certificate, or undefined when it can. */
export function domainProblem(name: string): string | undefined {
  if (name.startsWith("*.")) {
    return `${name}: wildcard names need the DNS-01 challenge, which is not supported`;
  }
  if (/^[0-9.]+$/.test(name) || name.includes(":")) {
    return `${name}: IP addresses are not supported, only DNS names`;
  }
  if (name.length > 253) return `${name.slice(0, 20)}...: longer than 253 characters`;
  const labels = name.split(".");
  if (labels.length < 2) return `${name}: not a fully qualified domain name (no dot)`;
  for (const label of labels) {
    if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(label)) {
      return `${name}: invalid DNS name (labels are 1-63 letters, digits or inner hyphens)`;
    }
  }
  if (/^[0-9]+$/.test(labels.at(-1)!)) return `${name}: the last label is numeric`;
  return undefined;
}
