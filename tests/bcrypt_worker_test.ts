/**
 * @module
 * Unit tests of lib/bcrypt_worker.ts, the thread `BasicAuthVerifier` runs bcrypt on: spoken to
 * directly with its messages (`BcryptRequest` in, `BcryptAnswer` out).
 */

import assert from "node:assert/strict";
import { hashSync } from "npm:bcryptjs@^3.0.3";
import { BCRYPT_WORKER_MODULE, type BcryptAnswer } from "../lib/basic_auth.ts";

/** The worker, and the next message it posts (bounded: a silent worker fails the test). */
function startWorker() {
  const worker = new Worker(BCRYPT_WORKER_MODULE, { type: "module", name: "bcrypt-test" });
  const queue: BcryptAnswer[] = [];
  let waiting: ((answer: BcryptAnswer) => void) | undefined;
  worker.onmessage = (event: MessageEvent<BcryptAnswer>) => {
    if (waiting === undefined) return void queue.push(event.data);
    waiting(event.data);
    waiting = undefined;
  };
  return {
    worker,
    next(): Promise<BcryptAnswer> {
      if (queue.length > 0) return Promise.resolve(queue.shift()!);
      let timer: ReturnType<typeof setTimeout> | undefined;
      return Promise.race([
        new Promise<BcryptAnswer>((resolve) => (waiting = resolve)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error("no message from the worker in 10 s")), 10_000);
        }),
      ]).finally(() => clearTimeout(timer));
    },
    [Symbol.dispose]: () => worker.terminate(),
  };
}

Deno.test("bcrypt worker says ready, then answers each check by id: right, wrong, malformed", async () => {
  using thread = startWorker();
  assert.deepEqual(await thread.next(), { type: "ready" });
  const hash = hashSync("secret", 4);
  thread.worker.postMessage({ id: 1, password: "secret", hash });
  thread.worker.postMessage({ id: 2, password: "guess", hash });
  thread.worker.postMessage({ id: 3, password: "secret", hash: "$2b$04$not-a-hash" });
  assert.deepEqual(await thread.next(), { type: "answer", id: 1, ok: true });
  assert.deepEqual(await thread.next(), { type: "answer", id: 2, ok: false });
  assert.deepEqual(await thread.next(), { type: "answer", id: 3, ok: false });
});

Deno.test("bcrypt worker reads $2a$, $2b$ and $2y$ hashes alike", async () => {
  using thread = startWorker();
  assert.deepEqual(await thread.next(), { type: "ready" });
  const hash = hashSync("pw", 4);
  const prefixes = ["$2a$", "$2b$", "$2y$"];
  for (const [id, prefix] of prefixes.entries()) {
    thread.worker.postMessage({ id, password: "pw", hash: prefix + hash.slice(4) });
  }
  for (const id of prefixes.keys()) {
    assert.deepEqual(await thread.next(), { type: "answer", id, ok: true });
  }
});
