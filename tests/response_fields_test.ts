/**
 * @module
 * Unit tests of lib/response_fields.ts: a Response's fields read from Deno's header list are what
 * Deno.serve writes (or, while Deno keeps them lazily, what iterating `headers` gives), and later
 * changes are seen; fields pushed to that list are what `headers` and Deno.serve show.
 */

import assert from "node:assert/strict";
import { headerListOf, wireFields } from "../lib/response_fields.ts";

/** Responses built every way the balancer builds them, and some it does not. */
function samples(): [string, () => Response][] {
  const bytes = new Uint8Array([1, 2, 3]);
  return [
    ["a string body", () => new Response("text")],
    ["a string body with headers", () => new Response("text", { headers: { "X-A": "1" } })],
    ["bytes and a status", () => new Response(bytes, { status: 201, statusText: "Made" })],
    ["no body", () => new Response(null, { status: 204 })],
    ["a stream", () => new Response(new ReadableStream(), { headers: [["b", "2"], ["a", "1"]] })],
    ["Response.json", () => Response.json({ a: 1 }, { headers: { "x-z": "z" } })],
    ["Response.redirect", () => Response.redirect("http://127.0.0.1/next", 302)],
    ["a Blob", () => new Response(new Blob(["x"], { type: "text/x-blob" }))],
    ["form parameters", () => new Response(new URLSearchParams("a=1"))],
    ["repeated and mixed-case fields", () =>
      new Response(bytes, {
        headers: [
          ["Vary", "accept"],
          ["set-cookie", "b=2"],
          ["x-b", "1"],
          ["Set-Cookie", "a=1"],
          ["vary", "origin"],
          ["X-B", "2"],
          ["content-type", "text/plain"],
        ],
      })],
    ["fields appended after construction, as the proxy's relay builds them", () => {
      const r = new Response(bytes, { status: 200 });
      for (const [n, v] of [["server", "nginx"], ["date", "x"], ["content-length", "3"]]) {
        r.headers.append(n, v);
      }
      r.headers.append("x-request-id", "id");
      r.headers.append("set-cookie", "lb=1");
      return r;
    }],
    ["fields changed after construction (set, delete)", () => {
      const r = new Response("text", { headers: [["x-a", "1"], ["x-b", "2"], ["x-a", "3"]] });
      r.headers.set("x-a", "new");
      r.headers.delete("x-b");
      r.headers.append("cache-control", "no-store");
      return r;
    }],
    ["a consumed body", () => {
      const r = new Response("gone", { headers: { "x-a": "1" } });
      r.body!.cancel();
      return r;
    }],
  ];
}

/** The samples whose fields Deno keeps in its header list from the start (the fast path). */
const LISTED = new Set([
  "a string body with headers",
  "bytes and a status",
  "no body",
  "a stream",
  "Response.redirect",
  "a Blob",
  "form parameters",
  "repeated and mixed-case fields",
  "fields appended after construction, as the proxy's relay builds them",
]);

/** Fields a server writes its own way (framing, Date). */
const SERVER_FIELDS = ["content-length", "date", "transfer-encoding", "connection"];

/** The header lines Deno.serve writes for `make()`'s Response, but {@linkcode SERVER_FIELDS}. */
async function servedFields(make: () => Response): Promise<[string, string][]> {
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, make);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  try {
    await conn.write(
      new TextEncoder().encode("GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"),
    );
    let text = "";
    const buf = new Uint8Array(4096);
    for (let i = 0; i < 100 && !text.includes("\r\n\r\n"); i++) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    return text.slice(0, text.indexOf("\r\n\r\n")).split("\r\n").slice(1)
      .map((line) => [line.slice(0, line.indexOf(":")), line.slice(line.indexOf(":") + 1).trim()])
      .filter(([name]) => !SERVER_FIELDS.includes(name.toLowerCase()))
      .map(([name, value]) => [name.toLowerCase(), value] as [string, string]);
  } finally {
    conn.close();
  }
}

/** Fields with names lower-cased, as lines sorted (for comparing what is written, not where). */
function sortedLines(fields: readonly (readonly [string, string])[]): string[] {
  return fields.map(([name, value]) => `${name.toLowerCase()}: ${value}`).sort();
}

Deno.test("wireFields() gives a Response's fields as Deno.serve writes them: insertion order, repeats on lines of their own", async () => {
  for (const [what, make] of samples()) {
    // Deno.serve refuses a Response whose body was consumed (it answers 500).
    if (what === "a consumed body") continue;
    const served = await servedFields(make);
    // Deno.serve writes the framing fields and Date its own way; the writer does too.
    const fields = wireFields(make()).map(([name, value]) => [name.toLowerCase(), value] as const)
      .filter(([name]) => !SERVER_FIELDS.includes(name));
    // Fields Deno keeps lazily (a string body's type) come through the iterator, sorted.
    if (LISTED.has(what)) assert.deepEqual(fields, served, what);
    else assert.deepEqual(sortedLines(fields), sortedLines(served), what);
  }
});

Deno.test("wireFields() reads the live list: changes after an earlier read are seen", () => {
  const r = new Response(new Uint8Array([1]), { headers: { "x-a": "1" } });
  assert.deepEqual(wireFields(r), [["x-a", "1"]]);
  r.headers.set("x-a", "2");
  r.headers.append("x-b", "3");
  assert.deepEqual(wireFields(r), [["x-a", "2"], ["x-b", "3"]]);
  r.headers.delete("x-a");
  assert.deepEqual(wireFields(r), [["x-b", "3"]]);
});

Deno.test("wireFields() reads Deno's header list without the Headers object on this Deno (the fast path)", () => {
  // Deno internals (2.9.6): when this fails after an upgrade, responses still go out, through
  // the iterator (sorted); re-check lib/response_fields.ts's symbols.
  class Untouchable extends Response {
    override get headers(): Headers {
      throw new Error("the Headers object was read");
    }
  }
  const r = new Untouchable(new Uint8Array([1]), { headers: [["x-b", "2"], ["X-A", "1"]] });
  assert.deepEqual(wireFields(r), [["x-b", "2"], ["X-A", "1"]]);
});

Deno.test("headerListOf() gives the live list on this Deno (the proxy's fast path): pushed fields are in headers", () => {
  // Deno internals (2.9.6): when this fails after an upgrade, the proxy appends through
  // Headers as before; re-check lib/response_fields.ts's symbols.
  const r = new Response(new Uint8Array([1]), { status: 201, statusText: "Made" });
  const headers = r.headers;
  const list = headerListOf(r);
  assert.ok(list !== undefined, "the fast path is not taken on this Deno");
  list.push(["x-b", "2"], ["set-cookie", "a=1"], ["x-a", "1"], ["set-cookie", "b=2"]);
  assert.equal(headers.get("x-b"), "2");
  assert.deepEqual([...headers], [
    ["set-cookie", "a=1"],
    ["set-cookie", "b=2"],
    ["x-a", "1"],
    ["x-b", "2"],
  ]);
  headers.append("x-c", "3");
  assert.deepEqual(wireFields(r).map(([name]) => name), [
    "x-b",
    "set-cookie",
    "x-a",
    "set-cookie",
    "x-c",
  ]);
});

Deno.test("headerListOf(): Deno.serve writes the pushed fields, for a body held in memory and a stream", async () => {
  const bodies = [
    () => new TextEncoder().encode("bytes"),
    () =>
      new ReadableStream({ start: (c) => (c.enqueue(new TextEncoder().encode("st")), c.close()) }),
    () => null,
  ];
  let next = 0;
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    const r = new Response(bodies[next++](), { status: next === 3 ? 404 : 200 });
    r.headers;
    headerListOf(r)!.push(["x-pushed", String(next)], ["content-type", "text/x-test"]);
    return r;
  });
  for (const [status, text] of [[200, "bytes"], [200, "st"], [404, ""]] as const) {
    const response = await fetch(`http://127.0.0.1:${server.addr.port}/`);
    assert.equal(response.status, status);
    assert.equal(await response.text(), text);
    assert.equal(response.headers.get("x-pushed"), String(next));
    assert.equal(response.headers.get("content-type"), "text/x-test");
  }
});
