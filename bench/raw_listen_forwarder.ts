/**
 * @module
 * The native front end's floor (issue 16's "70-line forwarder"): `Deno.listen` in front with its own
 * connection loop, a `Deno.connect` keep-alive pool per backend behind, round-robin, no features.
 * Request and response heads are found by their blank line and copied as bytes; only
 * Content-Length framing is read. It shows what a balancer with its own HTTP/1.1 front end could
 * cost at best on Deno; it is not a correct proxy (no header rewriting, no chunked bodies, no
 * timeouts, retries or health: an unsupported request or answer closes the client connection).
 *
 *     deno run --allow-net bench/raw_listen_forwarder.ts 3030 http://127.0.0.1:8081 http://127.0.0.1:8082
 *
 * An experiment for issue 16 (not the floor): `--read-slots=N` first lets only N connections read
 * or carry a request at a time, the others waiting their turn first come first served before they
 * post their read (docs/performance.md, "At fd4e3b6"). A connection holds its slot while its read
 * waits, so this suits wrk, whose connections always have a request ready, not idle clients.
 */

interface Side {
  conn: Deno.TcpConn;
  buf: Uint8Array;
  /** Bytes buffered in `buf`. */
  n: number;
}

const slotsFlag = Deno.args[0]?.startsWith("--read-slots=") ? Deno.args[0] : undefined;
const [port, ...origins] = slotsFlag === undefined ? Deno.args : Deno.args.slice(1);
const readSlots = slotsFlag === undefined ? Infinity : Number(slotsFlag.split("=")[1]);
let freeSlots = readSlots;
const slotQueue: (() => void)[] = [];

function takeSlot(): Promise<void> | undefined {
  if (freeSlots > 0) {
    freeSlots--;
    return undefined;
  }
  return new Promise<void>((resolve) => slotQueue.push(resolve));
}

function giveSlot(): void {
  const waiter = slotQueue.shift();
  if (waiter !== undefined) waiter();
  else freeSlots++;
}
const backends = origins.map((o) => ({ url: new URL(o), idle: [] as Side[] }));
let next = 0;

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await conn.write(bytes.subarray(done));
}

/** Reads until `side.buf` holds a head; returns its length (with the blank line), or 0 at EOF. */
async function readHead(side: Side): Promise<number> {
  for (let from = 3;;) {
    for (let i = from; i < side.n; i++) {
      if (side.buf[i] === 10 && side.buf[i - 3] === 13 && side.buf[i - 1] === 13) return i + 1;
    }
    if (side.n === side.buf.length) throw new Error("head too large");
    from = Math.max(3, side.n);
    const got = await side.conn.read(side.buf.subarray(side.n));
    if (got === null) return 0;
    side.n += got;
  }
}

const LENGTH = Array.from("\ncontent-length:", (c) => c.charCodeAt(0));
const CLOSE = Array.from("\nconnection: close", (c) => c.charCodeAt(0));

/** Where `field` (lower case, with its leading LF) ends in the head `buf[0, end)`, or -1. */
function find(buf: Uint8Array, end: number, field: number[]): number {
  outer: for (let i = 0; i + field.length < end; i++) {
    for (let k = 0; k < field.length; k++) {
      if (buf[i + k] !== field[k] && (buf[i + k] | 0x20) !== field[k]) continue outer;
    }
    return i + field.length;
  }
  return -1;
}

/** The Content-Length of the head in `buf[0, end)`, 0 when absent (scanned without allocating). */
function contentLength(buf: Uint8Array, end: number): number {
  let value = 0;
  for (let j = find(buf, end, LENGTH); j > 0 && buf[j] !== 13; j++) {
    if (buf[j] !== 32) value = value * 10 + buf[j] - 48;
  }
  return value;
}

/** Moves one message (head and Content-Length body) from `from` to `to`; false at EOF. */
async function relay(from: Side, to: Deno.Conn, noBody: boolean): Promise<boolean> {
  const end = await readHead(from);
  if (end === 0) return false;
  let left = end + (noBody ? 0 : contentLength(from.buf, end));
  for (;;) {
    const take = Math.min(left, from.n);
    await writeAll(to, from.buf.subarray(0, take));
    from.buf.copyWithin(0, take, from.n);
    from.n -= take;
    left -= take;
    if (left === 0) return true;
    const got = await from.conn.read(from.buf.subarray(from.n));
    if (got === null) throw new Error("closed mid-body");
    from.n += got;
  }
}

async function serve(conn: Deno.TcpConn): Promise<void> {
  conn.setNoDelay(true);
  const client: Side = { conn, buf: new Uint8Array(16384), n: 0 };
  try {
    for (;;) {
      if (readSlots < Infinity) await takeSlot();
      try {
        if (!await forwardOne(client)) return;
      } finally {
        if (readSlots < Infinity) giveSlot();
      }
    }
  } catch {
    // Not a correct proxy: anything unexpected closes the client connection.
  } finally {
    conn.close();
  }
}

/** Reads one request from `client` and relays it and its answer; false: close the connection. */
async function forwardOne(client: Side): Promise<boolean> {
  const conn = client.conn;
  const end = await readHead(client);
  if (end === 0) return false;
  const backend = backends[next];
  next = (next + 1) % backends.length;
  let upstream = backend.idle.pop();
  if (upstream === undefined) {
    const c = await Deno.connect({ hostname: backend.url.hostname, port: +backend.url.port });
    c.setNoDelay(true);
    upstream = { conn: c, buf: new Uint8Array(16384), n: 0 };
  }
  const isHead = client.buf[0] === 72 && client.buf[1] === 69; // "HE"
  const close = find(client.buf, end, CLOSE) > 0;
  if (!await relay(client, upstream.conn, false)) return false;
  if (!await relay(upstream, conn, isHead)) throw new Error("backend closed");
  // The backend got the client's `Connection: close` too.
  if (close) {
    upstream.conn.close();
    return false;
  }
  backend.idle.push(upstream);
  return true;
}

for await (const conn of Deno.listen({ hostname: "127.0.0.1", port: Number(port) })) serve(conn);
