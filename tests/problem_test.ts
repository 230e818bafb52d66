/**
 * @module
 * The helpers every configuration check reports with (lib/problem.ts) called directly: values
 * shown in one short line, and unknown keys named with the key they most likely meant.
 */

import assert from "node:assert/strict";
import { checkKeys, closestKey, isObject, type Problem, show } from "../lib/problem.ts";

Deno.test("show() renders any value in one short line", () => {
  assert.equal(show("ftp://x"), '"ftp://x"');
  assert.equal(show(7), "7");
  assert.equal(show(null), "null");
  assert.equal(show(undefined), "undefined");
  assert.equal(show([1, 2]), "a list");
  assert.equal(show({ a: 1 }), "an object");
  assert.equal(show("a\nb"), '"a\\nb"', "escaped: one line");
  assert.equal(show("x".repeat(200)), `"${"x".repeat(75)}..."`, "cut short, still quoted");
  assert.equal(show("x".repeat(200)).length, 80, "never longer than 80 characters");
  const fits = "x".repeat(78); // 80 characters once quoted
  assert.equal(show(fits), `"${fits}"`, "80 characters are shown whole");
});

Deno.test("isObject() is true only for a plain JSON object", () => {
  assert.equal(isObject({}), true);
  assert.equal(isObject([]), false);
  assert.equal(isObject(null), false);
  assert.equal(isObject("{}"), false);
});

Deno.test("closestKey() ignores case, dashes and underscores first, then allows two edits", () => {
  const keys = ["healthInterval", "healthPath", "logLevel", "port"];
  assert.equal(closestKey("health-interval", keys), "healthInterval");
  assert.equal(closestKey("LOG_LEVEL", keys), "logLevel");
  assert.equal(closestKey("healthIntervall", keys), "healthInterval");
  assert.equal(closestKey("prot", keys), "port", "two edits");
  assert.equal(closestKey("potato", keys), undefined, "too far from every key");
  assert.equal(closestKey("port", []), undefined);
});

Deno.test("checkKeys() reports each unknown key at its path, with a suggestion when one is close", () => {
  const problems: Problem[] = [];
  checkKeys({ url: "x", wieght: 2, "odd key": 1 }, ["url", "weight"], "backends[1]", problems);
  assert.deepEqual(problems, [
    { path: "backends[1].wieght", message: 'unknown key (did you mean "weight"?)' },
    { path: 'backends[1]["odd key"]', message: "unknown key" },
  ]);
  const top: Problem[] = [];
  checkKeys({ port: 1, prot: 2 }, ["port"], "", top);
  assert.deepEqual(top, [{ path: "prot", message: 'unknown key (did you mean "port"?)' }]);
});
