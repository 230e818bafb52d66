/**
 * @module
 * lib/body_pool.ts: response body buffers taken by the native transport and given back by the
 * native front end once written; and, through the balancer with `--frontend native`, that bodies
 * served from reused buffers reach every client intact.
 */

import assert from "node:assert/strict";
import { BodyPool } from "../lib/body_pool.ts";
import { writeResponse } from "../lib/http1_response.ts";
import { responseOver } from "../lib/response_body.ts";
import { parseRequestHead } from "../lib/http1_request_head.ts";
import { startTestBackend, startTestBalancer } from "./helpers.ts";

const KiB = 1024;

/** idleCounts() with `count` idle buffers in the size class of `bytes` (128 B, 256 B, ... 64 KiB). */
function idleAt(bytes: number, count = 1): number[] {
  const counts = new Array(10).fill(0);
  counts[Math.log2(bytes / 128)] = count;
  return counts;
}

Deno.test("a buffer given back is reused by the next take of its size class, not before", () => {
  const pool = new BodyPool();
  const first = pool.take(40 * KiB);
  assert.equal(first.length, 40 * KiB);
  assert.equal(first.buffer.byteLength, 64 * KiB);
  // Not given back yet: a second take gets a buffer of its own.
  const second = pool.take(40 * KiB);
  assert.notEqual(second.buffer, first.buffer);
  pool.giveBack(first);
  const third = pool.take(33 * KiB);
  assert.equal(third.buffer, first.buffer);
  assert.equal(third.length, 33 * KiB);
  // Another size class does not take it.
  pool.giveBack(third);
  assert.notEqual(pool.take(5 * KiB).buffer, first.buffer);
  assert.deepEqual(pool.idleCounts(), idleAt(64 * KiB));
  // The smallest class serves a few bytes too.
  const tiny = pool.take(3);
  assert.equal(tiny.buffer.byteLength, 128);
  pool.giveBack(tiny);
  assert.equal(pool.take(100).buffer, tiny.buffer);
});

Deno.test("a view is taken back once, and arrays the pool did not lend are ignored", () => {
  const pool = new BodyPool();
  const lent = pool.take(10 * KiB);
  pool.giveBack(lent);
  pool.giveBack(lent);
  assert.deepEqual(pool.idleCounts(), idleAt(16 * KiB));
  // Taken again, then the stale view given back: the buffer is in use and stays lent.
  const again = pool.take(10 * KiB);
  assert.equal(again.buffer, lent.buffer);
  pool.giveBack(lent);
  assert.deepEqual(pool.idleCounts(), idleAt(16 * KiB, 0));
  pool.giveBack(new Uint8Array(16 * KiB));
  pool.giveBack(new Uint8Array(new ArrayBuffer(64 * KiB), 0, 20 * KiB));
  assert.deepEqual(pool.idleCounts(), idleAt(16 * KiB, 0));
});

Deno.test("bodies over 64 KiB are plain arrays, and idle buffers are capped (4 MiB or 512 a size class)", () => {
  const pool = new BodyPool();
  for (const size of [64 * KiB + 1, 1024 * KiB]) {
    const bytes = pool.take(size);
    assert.equal(bytes.length, size);
    assert.equal(bytes.buffer.byteLength, size);
    pool.giveBack(bytes);
  }
  assert.deepEqual(pool.idleCounts(), idleAt(128, 0));
  const large = Array.from({ length: 100 }, () => pool.take(64 * KiB));
  for (const bytes of large) pool.giveBack(bytes);
  assert.deepEqual(pool.idleCounts(), idleAt(64 * KiB, 64));
  const small = Array.from({ length: 600 }, () => pool.take(128));
  for (const bytes of small) pool.giveBack(bytes);
  assert.equal(pool.idleCounts()[0], 512);
});

/** A connection that takes part of each write, late, as a full socket would, checking `during`. */
function slowConn(
  during: () => void,
): { conn: Deno.Conn; written: number[]; writes: () => number } {
  const written: number[] = [];
  let writes = 0;
  const conn = {
    async write(data: Uint8Array): Promise<number> {
      writes++;
      await new Promise((resolve) => setTimeout(resolve, 2));
      during();
      const n = Math.min(data.length, 3000);
      written.push(...data.subarray(0, n));
      return n;
    },
  } as unknown as Deno.Conn;
  return { conn, written, writes: () => writes };
}

Deno.test("writeResponse() gives pooled heads and bodies back only after their last write has completed", async () => {
  const head = parseRequestHead("GET / HTTP/1.1\r\nhost: a\r\n\r\n");
  // A body over 16 KiB goes after its head, in writes of its own.
  const pool = new BodyPool();
  const body = pool.take(20 * KiB);
  body.fill(7);
  const large = slowConn(() => {
    assert.equal(pool.idleCounts()[8], 0, "body given back while being written");
  });
  const response = responseOver(body, 200, "OK");
  assert.equal(await writeResponse(large.conn, response, head, true, pool), true);
  // Marked read once written, as Deno.serve marks it: the buffer went back to the pool.
  assert.equal(response.bodyUsed, true);
  await assert.rejects(response.arrayBuffer());
  assert.ok(large.writes() > 5);
  const text = new TextDecoder("latin1").decode(new Uint8Array(large.written));
  const bodyStart = text.indexOf("\r\n\r\n") + 4;
  assert.match(text.slice(0, bodyStart), /content-length: 20480\r\n/);
  assert.equal(large.written.length - bodyStart, 20 * KiB);
  assert.ok(large.written.slice(bodyStart).every((b) => b === 7));
  // The body's buffer and the head's are back.
  assert.equal(pool.idleCounts()[8], 1);
  assert.equal(pool.idleCounts().reduce((a, b) => a + b), 2);
  // A small body leaves with its head, from one pooled buffer, and both go back after it.
  const small = pool.take(3);
  small.set([111, 107, 10]);
  const before = pool.idleCounts().reduce((a, b) => a + b);
  const coalesced = slowConn(() => {
    assert.equal(pool.idleCounts().reduce((a, b) => a + b), before, "given back early");
  });
  await writeResponse(coalesced.conn, responseOver(small, 200, "OK"), head, true, pool);
  assert.ok(new TextDecoder().decode(new Uint8Array(coalesced.written)).endsWith("\r\n\r\nok\n"));
  assert.equal(pool.idleCounts().reduce((a, b) => a + b), before + 2);
});

/** The body the backend sends for `/n/size`: bytes that differ per request and per position. */
function expectedBody(n: number, size: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (n * 31 + i * 7 + (i >> 8)) & 0xff;
  return bytes;
}

Deno.test("--frontend native: concurrent responses of 3 B to 64 KiB, served from reused buffers, reach each client intact", async () => {
  await using backend = await startTestBackend((req) => {
    const [, n, size] = new URL(req.url).pathname.split("/");
    return new Response(expectedBody(Number(n), Number(size)));
  });
  await using lb = await startTestBalancer([backend.url], { frontend: "native" });
  const sizes = [3, 4 * KiB, 4 * KiB + 1, 9000, 16 * KiB, 40 * KiB, 64 * KiB];
  const clients = 24;
  const perClient = 12;
  const mismatches: string[] = [];
  await Promise.all(Array.from({ length: clients }, async (_, client) => {
    for (let i = 0; i < perClient; i++) {
      const n = client * perClient + i;
      const size = sizes[n % sizes.length];
      const response = await fetch(`${lb.url}/${n}/${size}`);
      const got = await response.bytes();
      const want = expectedBody(n, size);
      if (got.length !== want.length || got.some((b, k) => b !== want[k])) {
        mismatches.push(`request ${n} (${size} B)`);
      }
    }
  }));
  assert.deepEqual(mismatches, []);
});
