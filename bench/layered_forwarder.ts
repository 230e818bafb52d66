/**
 * @module
 * The native path taken apart, to see what each layer costs per request between the native
 * front end's floor (bench/raw_listen_forwarder.ts, heads copied as bytes) and the balancer
 * (`main.ts --frontend native`). Each `--layer` keeps the layers below it and drops the rest:
 *
 * - `front`: the native front end (lib/frontend_native.ts) answering `200 ok` itself, no
 *   backend: parsing, the request object, the handler call, the response write.
 * - `mini`: the front end, and a handler that forwards over a keep-alive `Deno.connect` pool
 *   with a fixed request head and a response read like the floor reads it (blank line,
 *   Content-Length; small bodies only): the cost of a handler-and-Response design with the
 *   least possible upstream code.
 * - `transport`: the front end, and the native transport (lib/upstream_native.ts) with its
 *   body pool, the response made by the proxy's `relay` (its fields, an X-Request-Id): everything
 *   but the proxy's own work (routing, policies, the attempt loop, header rewriting, metrics).
 *
 *     deno run --allow-net bench/layered_forwarder.ts --layer=mini 3030 http://127.0.0.1:8081 http://127.0.0.1:8082
 *
 * Not a correct proxy (no forwarding headers, errors close the connection): a measuring tool.
 */

import { serveNative } from "../lib/frontend_native.ts";
import { createNativeTransport } from "../lib/upstream_native.ts";
import { BodyPool } from "../lib/body_pool.ts";
import { relay } from "../lib/proxy.ts";

const LAYERS = ["front", "mini", "transport"] as const;
type Layer = typeof LAYERS[number];

const layerFlag = Deno.args[0]?.startsWith("--layer=") ? Deno.args[0].slice(8) : undefined;
if (!LAYERS.includes(layerFlag as Layer)) {
  console.error(`usage: layered_forwarder.ts --layer=${LAYERS.join("|")} PORT BACKEND_URL...`);
  Deno.exit(2);
}
const layer = layerFlag as Layer;
const [port, ...origins] = Deno.args.slice(1);
const backends = origins.map((origin) => new URL(origin));
const pool = new BodyPool();
const transport = createNativeTransport({ bodyPool: pool });
const attemptOptions = {
  timeout: 30_000,
  connectTimeout: 5_000,
};
const never = new AbortController().signal;
const REQUEST_HEADERS: [string, string][] = [["host", "127.0.0.1"], [
  "x-forwarded-for",
  "127.0.0.1",
]];
const OK = new TextEncoder().encode("ok\n");
let next = 0;

/** One kept-alive upstream connection of the `mini` layer. */
interface Upstream {
  conn: Deno.TcpConn;
  /** Reads land in the first half, the request head is encoded into the second. */
  buf: Uint8Array;
}

const idle: Upstream[][] = backends.map(() => []);
const encoder = new TextEncoder();
const LENGTH = Array.from("content-length:", (c) => c.charCodeAt(0));
const HALF = 8192;

async function miniExchange(index: number): Promise<Response> {
  let upstream = idle[index].pop();
  if (upstream === undefined) {
    const url = backends[index];
    const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port) });
    conn.setNoDelay(true);
    upstream = { conn, buf: new Uint8Array(2 * HALF) };
  }
  const out = upstream.buf.subarray(HALF);
  const { written } = encoder.encodeInto(
    "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nx-forwarded-for: 127.0.0.1\r\n\r\n",
    out,
  );
  await upstream.conn.write(out.subarray(0, written));
  const buf = upstream.buf;
  let filled = 0;
  let end = -1;
  for (let reads = 0; end < 0; reads++) {
    const got = reads < 64 ? await upstream.conn.read(buf.subarray(filled, HALF)) : null;
    if (got === null) throw new Error("backend closed");
    filled += got;
    for (let i = 3; i < filled; i++) {
      if (buf[i] === 10 && buf[i - 1] === 13 && buf[i - 3] === 13) {
        end = i + 1;
        break;
      }
    }
  }
  const status = (buf[9] - 48) * 100 + (buf[10] - 48) * 10 + (buf[11] - 48);
  const length = contentLength(buf, end);
  for (let reads = 0; filled < end + length; reads++) {
    const got = reads < 64 ? await upstream.conn.read(buf.subarray(filled, HALF)) : null;
    if (got === null) throw new Error("backend closed");
    filled += got;
  }
  const body = pool.take(length);
  body.set(buf.subarray(end, end + length));
  idle[index].push(upstream);
  return new Response(body, { status });
}

/** The Content-Length of the head in `buf[0, end)`, 0 when absent (no strings made). */
function contentLength(buf: Uint8Array, end: number): number {
  outer: for (let i = 0; i + LENGTH.length + 1 < end; i++) {
    if (buf[i] !== 10) continue;
    for (let k = 0; k < LENGTH.length; k++) {
      if ((buf[i + 1 + k] | 0x20) !== LENGTH[k]) continue outer;
    }
    let value = 0;
    for (let j = i + 1 + LENGTH.length; j < end && buf[j] !== 13; j++) {
      if (buf[j] !== 32) value = value * 10 + buf[j] - 48;
    }
    return value;
  }
  return 0;
}

serveNative({ hostname: "127.0.0.1", port: Number(port), bodyPool: pool }, async () => {
  if (layer === "front") return new Response(OK);
  const index = next;
  next = (next + 1) % backends.length;
  if (layer === "mini") return await miniExchange(index);
  const origin = origins[index];
  const result = await transport.send(
    origin,
    `${origin}/`,
    { method: "GET", headers: REQUEST_HEADERS, body: null },
    never,
    attemptOptions,
  );
  if (!result.ok) return new Response(null, { status: 502 });
  const trace = { backend: undefined, attempts: 1, contentLength: undefined };
  return relay(result.value, REQUEST_HEADERS, "GET", undefined, "layered-forwarder", trace);
});
