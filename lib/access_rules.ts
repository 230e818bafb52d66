/**
 * @module
 * Allow and deny lists of address ranges for a route: deny wins; with an allow list, only
 * addresses in it get through. Refused requests get 403 and never reach a backend.
 */

import { type Cidr, cidrContains, parseCidr } from "./cidr.ts";
import type { Problem } from "./problem.ts";

/** A route's compiled rules. */
export interface AccessRules {
  readonly allow: readonly Cidr[];
  readonly deny: readonly Cidr[];
}

/** The JSON Schema of an `allow` or `deny` list. */
export const CIDR_LIST_SCHEMA = {
  type: "array",
  items: { type: "string", description: "an IPv4 or IPv6 address or CIDR range" },
  description: "Address ranges (CIDR), IPv4 or IPv6.",
};

/** Checks an `allow` or `deny` list: strings that are addresses or CIDR ranges. */
export function checkCidrList(
  value: unknown,
  path: string,
  problems: Problem[],
): string[] | undefined {
  if (!Array.isArray(value)) {
    problems.push({ path, message: `${JSON.stringify(value)} is not a list of address ranges` });
    return undefined;
  }
  const before = problems.length;
  value.forEach((item, i) => {
    if (typeof item !== "string" || parseCidr(item) === undefined) {
      problems.push({
        path: `${path}[${i}]`,
        message: `${JSON.stringify(item)} is not an IP address or CIDR range`,
      });
    }
  });
  return problems.length === before ? value as string[] : undefined;
}

/** Compiles validated lists (each entry parses). */
export function compileAccessRules(
  allow: readonly string[] | undefined,
  deny: readonly string[] | undefined,
): AccessRules | undefined {
  if ((allow ?? []).length === 0 && (deny ?? []).length === 0) return undefined;
  return {
    allow: (allow ?? []).map((text) => parseCidr(text)!),
    deny: (deny ?? []).map((text) => parseCidr(text)!),
  };
}

/** Whether `address` may pass: not in any deny range, and in an allow range when there are some. */
export function admits(rules: AccessRules, address: string): boolean {
  for (const range of rules.deny) if (cidrContains(range, address)) return false;
  if (rules.allow.length === 0) return true;
  for (const range of rules.allow) if (cidrContains(range, address)) return true;
  return false;
}
