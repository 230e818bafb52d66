/**
 * @module
 * Unit tests of lib/acme_domains.ts: which names an HTTP-01 certificate can cover.
 */

import assert from "node:assert/strict";
import { domainProblem } from "../lib/acme_domains.ts";

Deno.test("domainProblem() accepts DNS names and refuses wildcards, IPs, bare and bad labels", () => {
  for (const name of ["a.example.com", "xn--bcher-kva.example", "a-b.c0.example.org"]) {
    assert.equal(domainProblem(name), undefined, name);
  }
  for (
    const [name, reason] of [
      ["-bad-.example", "invalid DNS name"],
      ["*.example.com", "wildcard"],
      ["127.0.0.1", "IP addresses"],
      ["::1", "IP addresses"],
      ["localhost", "no dot"],
      ["a..example.com", "invalid DNS name"],
      ["a_b.example.com", "invalid DNS name"],
      ["example.123", "numeric"],
    ]
  ) {
    assert.match(domainProblem(name) ?? "", new RegExp(reason.replace("*", "\\*")), name);
  }
});

Deno.test("domainProblem() refuses a name over 253 characters, naming only its start", () => {
  const long = `${"a".repeat(60)}.`.repeat(5) + "example";
  assert.equal(domainProblem(long), `${long.slice(0, 20)}...: longer than 253 characters`);
  const label63 = `${"a".repeat(63)}.example.com`;
  assert.equal(domainProblem(label63), undefined);
  assert.match(domainProblem(`${"a".repeat(64)}.example.com`) ?? "", /invalid DNS name/);
});
