/**
 * @module
 * The JSONC parser (lib/jsonc.ts) called directly: plain JSON as JSON.parse reads it, comments
 * and trailing commas, syntax errors with line and column, and the locations it records.
 */

import assert from "node:assert/strict";
import { JsoncSyntaxError, type Location, parseJsonc } from "../lib/jsonc.ts";

function syntaxError(text: string): JsoncSyntaxError {
  try {
    parseJsonc(text);
  } catch (error) {
    assert.ok(error instanceof JsoncSyntaxError, `not a JsoncSyntaxError: ${error}`);
    return error;
  }
  assert.fail(`parsed without error: ${text}`);
}

Deno.test("parseJsonc() reads plain JSON exactly as JSON.parse does", () => {
  for (
    const text of [
      "0",
      "-1.5e+3",
      "1E2",
      '"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00"',
      "true",
      "false",
      "null",
      "[]",
      "{}",
      ' { "a" : [ 1 , { "b" : null } ] , "c" : "" } ',
      '"é 😀 \u2028"',
    ]
  ) {
    assert.deepEqual(parseJsonc(text), JSON.parse(text), text);
  }
});

Deno.test("parseJsonc() skips line and block comments anywhere between tokens", () => {
  const text = `// leading
    /* block */ { // after brace
      "a": /* before value */ 1, // after comma
      /* multi
         line */ "b" /* before colon */ : [ /* in array */ 2 /* after element */ ]
    } // trailing
    /* at the end */`;
  assert.deepEqual(parseJsonc(text), { a: 1, b: [2] });
  assert.deepEqual(parseJsonc("1//no newline at end"), 1);
  assert.deepEqual(parseJsonc("/**/1/***/"), 1);
  assert.deepEqual(parseJsonc("[1, // CRLF\r\n2]"), [1, 2]);
});

Deno.test("parseJsonc() accepts trailing commas in objects and arrays", () => {
  assert.deepEqual(parseJsonc('{ "a": [1, 2,], "b": { "c": 3, }, }'), {
    a: [1, 2],
    b: { c: 3 },
  });
  assert.deepEqual(parseJsonc("[1, /* c */ ] "), [1]);
});

Deno.test("parseJsonc() keeps // and /* inside strings, including after escaped quotes", () => {
  assert.deepEqual(
    parseJsonc('{ "url": "http://a:1//x", "c": "/* not a comment */", "q": "a\\"//b" }'),
    { url: "http://a:1//x", c: "/* not a comment */", q: 'a"//b' },
  );
  assert.deepEqual(parseJsonc('["\\\\", "//"] // real comment'), ["\\", "//"]);
});

Deno.test("parseJsonc() skips a byte-order mark and makes __proto__ an own key", () => {
  assert.deepEqual(parseJsonc('\ufeff{"a":1}'), { a: 1 });
  const value = parseJsonc('{"__proto__": {"polluted": true}}') as Record<string, unknown>;
  assert.equal(Object.getPrototypeOf(value), Object.prototype);
  assert.deepEqual(Object.keys(value), ["__proto__"]);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

Deno.test("parseJsonc() reports syntax errors with line and column", () => {
  const cases: [string, number, number, string][] = [
    ['{\n  "a": 1\n  "b": 2\n}', 3, 3, 'expected "," or "}" after a member, found "\\""'],
    ["[1, 2", 1, 6, 'expected "," or "]" after an element, found the end of the text'],
    ["[,]", 1, 2, 'expected a value or "]", found ","'],
    ["[1,,]", 1, 4, 'expected a value or "]", found ","'],
    ["{,}", 1, 2, 'expected a double-quoted key or "}", found ","'],
    ["{a: 1}", 1, 2, 'expected a double-quoted key or "}", found "a"'],
    ["{'a': 1}", 1, 2, 'expected a double-quoted key or "}", found "\'"'],
    ["{\"a\": 'x'}", 1, 7, "strings must be in double quotes"],
    ['{"a" 1}', 1, 6, 'expected ":" after the key, found "1"'],
    ["\n\n  /* open", 3, 3, "unterminated /* comment"],
    ['{"a": "b\nc"}', 1, 9, "control character in a string (escape it, e.g. \\n)"],
    ['  "abc', 1, 3, "unterminated string"],
    ['"\\x"', 1, 2, "invalid escape \\x in a string"],
    ['"\\u12g4"', 1, 2, "\\u must be followed by four hex digits"],
    ["01", 1, 1, 'invalid number "01"'],
    ["1.", 1, 1, 'invalid number "1."'],
    ["NaN", 1, 1, 'expected a value, found "N"'],
    ["-Infinity", 1, 1, 'invalid number "-Infinity"'],
    ["truex", 1, 1, 'expected a value, found "t"'],
    ["", 1, 1, "expected a value, found the end of the text"],
    ["// only a comment\n", 2, 1, "expected a value, found the end of the text"],
    ["{} {}", 1, 4, 'unexpected "{" after the value'],
    ["1 / 2", 1, 3, 'unexpected "/" after the value'],
    ['{"a": 1, "a": 2}', 1, 10, 'duplicate key "a"'],
    ["\r\n\r\n [}", 3, 3, 'expected a value, found "}"'],
    ["é😀 x", 1, 1, 'expected a value, found "é"'],
  ];
  for (const [text, line, column, reason] of cases) {
    const error = syntaxError(text);
    assert.deepEqual(
      { line: error.line, column: error.column, reason: error.reason },
      { line, column, reason },
      JSON.stringify(text),
    );
    assert.equal(error.message, `${line}:${column}: ${reason}`);
  }
});

Deno.test("parseJsonc() refuses deep nesting instead of overflowing the stack", () => {
  const error = syntaxError("[".repeat(100_000));
  assert.match(error.reason, /nested more than \d+ levels deep/);
});

Deno.test("parseJsonc() records where each member's key and each element are when asked", () => {
  const locations = new Map<string, Location>();
  parseJsonc('{\n  "a": [10, {"b c": true}],\n  "d": 1\n}', { locations });
  assert.deepEqual(Object.fromEntries(locations), {
    "": { line: 1, column: 1 },
    a: { line: 2, column: 3 },
    "a[0]": { line: 2, column: 9 },
    "a[1]": { line: 2, column: 13 },
    'a[1]["b c"]': { line: 2, column: 14 },
    d: { line: 3, column: 3 },
  });
});
