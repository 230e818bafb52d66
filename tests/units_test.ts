/**
 * @module
 * Unit tests of lib/units.ts: durations and sizes as the settings and bench flags take them.
 */

import assert from "node:assert/strict";
import { parseDuration, sizeValue } from "../lib/units.ts";

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

Deno.test("parseDuration() takes ms, s, m, h and refuses bare numbers", () => {
  assert.equal(parseDuration("500ms"), 500);
  assert.equal(parseDuration("2s"), 2000);
  assert.equal(parseDuration("1.5m"), 90000);
  assert.equal(parseDuration("1h"), 3600000);
  for (const bad of ["5", "", "s", "-1s", "1 s", "1sec", "1e3ms", "NaNs"]) {
    assert.equal(parseDuration(bad), undefined, bad);
  }
});
