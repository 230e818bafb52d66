/**
 * @module
 * The platform's floor (issue 12's "60-line forwarder"): `Deno.serve` in front, a `Deno.connect`
 * keep-alive pool per backend behind, round-robin, no features. Each backend connection reads
 * into one reused buffer with `conn.read`, the request head goes out in one `conn.write`, and
 * Content-Length bodies are read whole and answered as `new Response(bytes, {status, headers})`.
 * It shows what a balancer on Deno could cost at best; it is not a correct proxy (no hop-by-hop
 * rules besides framing, no timeouts, retries or health; answers without a Content-Length are
 * refused with 502). Bodies pass through undecoded, so gzip answers arrive intact.
 *
 *     deno run --allow-net bench/raw_minimal_forwarder.ts 3030 http://127.0.0.1:8081 http://127.0.0.1:8082
 */

interface Upstream {
  conn: Deno.TcpConn;
  buf: Uint8Array;
}

const [port, ...origins] = Deno.args;
const backends = origins.map((o) => ({ url: new URL(o), idle: [] as Upstream[] }));
const FRAMING = new Set(["connection", "keep-alive", "content-length", "transfer-encoding"]);
const encoder = new TextEncoder(), decoder = new TextDecoder();
let next = 0;

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await conn.write(bytes.subarray(done));
}

/** Reads the response head; returns [its length with the blank line, bytes buffered]. */
async function readHead({ conn, buf }: Upstream): Promise<[number, number]> {
  for (let n = 0;;) {
    const got = await conn.read(buf.subarray(n));
    if (got === null) throw new Error(n === 0 ? "stale" : "closed mid-head");
    for (let i = Math.max(3, n); i < n + got; i++) {
      if (buf[i] === 10 && buf[i - 1] === 13 && buf[i - 2] === 10 && buf[i - 3] === 13) {
        return [i + 1, n + got];
      }
    }
    n += got;
    if (n === buf.length) throw new Error("response head too large");
  }
}

/** Sends one request on `u`; returns the response and whether `u` may be reused. */
async function exchange(req: Request, head: Uint8Array, u: Upstream): Promise<[Response, boolean]> {
  await writeAll(u.conn, head);
  if (req.body !== null) { for await (const chunk of req.body) await writeAll(u.conn, chunk); }
  const [end, n] = await readHead(u);
  const lines = decoder.decode(u.buf.subarray(0, end - 4)).split("\r\n");
  const status = Number(lines[0].slice(9, 12));
  const headers: [string, string][] = [];
  let length = -1, keep = true;
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    const name = line.slice(0, colon).toLowerCase(), value = line.slice(colon + 1).trim();
    if (name === "content-length") length = Number(value);
    else if (name === "connection") keep = value.toLowerCase() !== "close";
    if (!FRAMING.has(name)) headers.push([name, value]);
  }
  if (req.method === "HEAD" || status === 204 || status === 304) length = 0;
  if (!(length >= 0) || n - end > length) throw new Error("unsupported response framing");
  const body = new Uint8Array(length);
  body.set(u.buf.subarray(end, n));
  for (let got = n - end; got < length;) {
    const r = await u.conn.read(body.subarray(got));
    if (r === null) throw new Error("closed mid-body");
    got += r;
  }
  return [new Response(length === 0 ? null : body, { status, headers }), keep];
}

Deno.serve({ hostname: "127.0.0.1", port: Number(port), onListen() {} }, async (req) => {
  const backend = backends[next];
  next = (next + 1) % backends.length;
  const target = req.url.slice(req.url.indexOf("/", req.url.indexOf("://") + 3));
  let head = `${req.method} ${target} HTTP/1.1\r\n`;
  for (const [name, value] of req.headers) if (!FRAMING.has(name)) head += `${name}: ${value}\r\n`;
  const length = req.headers.get("content-length");
  if (req.body !== null && length === null) throw new Error("chunked uploads are not supported");
  head += req.body === null ? "\r\n" : `content-length: ${length}\r\n\r\n`;
  const bytes = encoder.encode(head);
  let u = backend.idle.pop();
  let mayResend = u !== undefined && req.body === null;
  for (;;) {
    if (u === undefined) {
      const conn = await Deno.connect({ hostname: backend.url.hostname, port: +backend.url.port });
      conn.setNoDelay(true);
      u = { conn, buf: new Uint8Array(16384) };
    }
    try {
      const [response, keep] = await exchange(req, bytes, u);
      if (keep) backend.idle.push(u);
      else u.conn.close();
      return response;
    } catch (error) {
      u.conn.close();
      // A kept-alive connection the backend closed while idle: resend once when nothing streamed.
      if (!mayResend || (error as Error).message !== "stale") {
        return new Response(`bad gateway: ${(error as Error).message}\n`, { status: 502 });
      }
      [u, mayResend] = [undefined, false];
    }
  }
});
