/**
 * @module
 * The secret comparison (lib/constant_time.ts) called directly: equal only when every character
 * and the length agree, wherever the difference is.
 */

import assert from "node:assert/strict";
import { constantTimeEqual } from "../lib/constant_time.ts";

Deno.test("constantTimeEqual() is true only for the same string", () => {
  const secret = "s3cr3t-token-0123456789";
  assert.equal(constantTimeEqual(secret, secret), true);
  assert.equal(constantTimeEqual(secret.slice(0, 5) + secret.slice(5), secret), true, "a copy");
  assert.equal(constantTimeEqual("", ""), true);
  // A difference at each position, the first and the last included, is found.
  for (let i = 0; i < secret.length; i++) {
    const changed = secret.slice(0, i) + (secret[i] === "x" ? "y" : "x") + secret.slice(i + 1);
    assert.equal(constantTimeEqual(changed, secret), false, `position ${i}`);
  }
});

Deno.test("constantTimeEqual() refuses a prefix of the secret and the secret with more after it", () => {
  const secret = "abcdef";
  assert.equal(constantTimeEqual("abcde", secret), false);
  assert.equal(constantTimeEqual("abcdefg", secret), false);
  assert.equal(constantTimeEqual("", secret), false);
  assert.equal(constantTimeEqual(secret, ""), false);
  // A missing last character is not read as a NUL one (only the length check tells them apart).
  assert.equal(constantTimeEqual("abcde", "abcde\0"), false);
});
