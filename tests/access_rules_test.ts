import assert from "node:assert/strict";
import { admits, checkCidrList, compileAccessRules } from "../lib/access_rules.ts";
import type { Problem } from "../lib/problem.ts";

const rules = (allow: string[], deny: string[]) => compileAccessRules(allow, deny)!;

Deno.test("admits() lets deny win over allow, for IPv4 and IPv6", () => {
  const r = rules(["10.0.0.0/8", "2001:db8::/32"], ["10.6.0.0/16", "2001:db8:6::/48"]);
  assert.equal(admits(r, "10.1.2.3"), true);
  assert.equal(admits(r, "10.6.2.3"), false);
  assert.equal(admits(r, "192.0.2.1"), false, "not in the allow list");
  assert.equal(admits(r, "2001:db8:1::5"), true);
  assert.equal(admits(r, "2001:db8:6::5"), false);
  assert.equal(admits(r, "2001:db9::1"), false);
  // An IPv4-mapped IPv6 peer is its IPv4 address: a deny cannot be dodged by the mapped form.
  assert.equal(admits(r, "::ffff:10.6.0.1"), false);
  assert.equal(admits(r, "::ffff:10.1.0.1"), true);
});

Deno.test("admits() with only a deny list lets everyone else through", () => {
  const r = rules([], ["192.0.2.0/24", "::1"]);
  assert.equal(admits(r, "192.0.2.9"), false);
  assert.equal(admits(r, "::1"), false);
  assert.equal(admits(r, "198.51.100.1"), true);
  assert.equal(admits(r, "2001:db8::1"), true);
});

Deno.test("compileAccessRules() is undefined when both lists are empty (no check per request)", () => {
  assert.equal(compileAccessRules([], undefined), undefined);
  assert.equal(compileAccessRules(undefined, undefined), undefined);
});

Deno.test("checkCidrList() names each bad entry by path", () => {
  const problems: Problem[] = [];
  assert.equal(
    checkCidrList(["10.0.0.0/8", "10.0.0.0/33", "nope", 7], "allow", problems),
    undefined,
  );
  assert.deepEqual(problems.map((p) => `${p.path}: ${p.message}`), [
    'allow[1]: "10.0.0.0/33" is not an IP address or CIDR range',
    'allow[2]: "nope" is not an IP address or CIDR range',
    "allow[3]: 7 is not an IP address or CIDR range",
  ]);
  const more: Problem[] = [];
  assert.equal(checkCidrList("10.0.0.0/8", "routes[0].deny", more), undefined);
  assert.deepEqual(more.map((p) => p.path), ["routes[0].deny"]);
  assert.deepEqual(checkCidrList(["::1", "fd00::/8"], "deny", []), ["::1", "fd00::/8"]);
});
