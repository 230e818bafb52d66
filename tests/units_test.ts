/** Pure unit tests of lib/units.ts helpers not covered through the settings checks. */

import assert from "node:assert/strict";
import { sizeValue } from "../lib/units.ts";

Deno.test("sizeValue() takes whole bytes as a number or a size string", () => {
  assert.equal(sizeValue(0), 0);
  assert.equal(sizeValue(65536), 65536);
  assert.equal(sizeValue("64KiB"), 65536);
  assert.equal(sizeValue("1048576"), 1048576);
});

Deno.test("sizeValue() refuses negative, fractional, unsafe and other values", () => {
  for (const value of [-1, 1.5, Number.MAX_SAFE_INTEGER + 2, NaN, "ten", "", null, true, [1]]) {
    assert.equal(sizeValue(value), undefined, String(value));
  }
});
