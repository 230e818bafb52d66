/** Pure unit tests of lib/http_token.ts: the RFC 9110 token. */

import assert from "node:assert/strict";
import { isToken, isTokenChar, TCHAR } from "../lib/http_token.ts";

const TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

Deno.test("isTokenChar() accepts exactly the tchar of RFC 9110 §5.6.2", () => {
  for (let c = 0; c < 300; c++) {
    assert.equal(isTokenChar(c), TCHARS.includes(String.fromCharCode(c)), `code ${c}`);
  }
});

Deno.test("isToken() accepts methods and header names, not empty or separated text", () => {
  for (const text of ["GET", "X-Forwarded-For", "gzip", "a.b~c", "!#$%&'*+-.^_`|~"]) {
    assert.equal(isToken(text), true, text);
  }
  for (const text of ["", "a b", "a,b", '"q"', "a:b", "x\u00e9", "tab\t", "a/b", "(c)"]) {
    assert.equal(isToken(text), false, JSON.stringify(text));
  }
});

Deno.test("TCHAR as a pattern agrees with isTokenChar()", () => {
  const pattern = new RegExp(`^${TCHAR}$`);
  for (let c = 0; c < 300; c++) {
    const char = String.fromCharCode(c);
    assert.equal(pattern.test(char), isTokenChar(c), `code ${c}`);
  }
});
