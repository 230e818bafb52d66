/**
 * @module
 * The backend half of a tunnel (HAProxy's tunnel mode) for the native front end: open a
 * connection to a backend, send the client's upgrade request (a WebSocket handshake, key and
 * all), and read the backend's answer. A 101 hands back the raw connection and any bytes the
 * backend sent after its head, for {@linkcode switchProtocols} (lib/http1_response.ts) to
 * relay; any other status is returned for the caller to judge, the connection closed.
 *
 * Unlike the two-WebSocket relay of lib/websocket.ts, the handshake is end to end: the
 * backend's Sec-WebSocket-Accept, subprotocol, extensions (compression) and Set-Cookie reach
 * the client, and frames and close codes pass untouched.
 */

import { findHeadEnd, latin1, MAX_HEAD_BYTES, parseHead } from "./http1_parse.ts";
import type { FailureKind } from "./retry.ts";
import { unbracket } from "./host.ts";

export { canTunnel, switchProtocols } from "./http1_response.ts";

/** Options of {@linkcode openTunnel}. */
export interface OpenTunnelOptions {
  /** Aborts the attempt (the client left). Unset: none. */
  signal?: AbortSignal;
  /**
   * Most milliseconds from connecting to the backend's complete response head.
   * @default 10000
   */
  timeoutMs?: number;
  /** CA certificates (PEM) trusted for an `https` backend. Unset: the system's. */
  caCerts?: string[];
  /** Client certificate and key (PEM) presented to an `https` backend that asks. Unset: none. */
  clientCert?: { cert: string; key: string };
}

/** What {@linkcode openTunnel} got. */
export type TunnelOpen =
  /** The backend switched protocols: relay `conn`, after sending the client `head` first. */
  | { ok: true; conn: Deno.Conn; headers: [string, string][]; head: Uint8Array }
  /** The backend answered with another status (the connection is closed). */
  | { ok: false; status: number }
  /** No answer: `connect` when nothing was sent (safe to try another backend). */
  | { ok: false; failure: { kind: FailureKind; detail: string } };

const encoder = new TextEncoder();

/**
 * Connects to `origin` (`http://host:port` or `https://...`), sends `GET target` with
 * `headers` (Host from them, else `origin`'s; Connection, Upgrade and framing fields are
 * replaced by `Connection: upgrade`, `Upgrade: upgrade`), and reads the response head. Never throws: a failure says whether anything was sent (`connect`: no).
 */
export async function openTunnel(
  origin: string,
  target: string,
  upgrade: string,
  headers: Iterable<[string, string]>,
  options: OpenTunnelOptions = {},
): Promise<TunnelOpen> {
  if (options.signal?.aborted) {
    return { ok: false, failure: { kind: "client-gone", detail: "client disconnected" } };
  }
  const url = new URL(origin);
  const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  const hostname = unbracket(url.hostname);
  const timeoutMs = options.timeoutMs ?? 10_000;
  let timedOut = false;
  let conn: Deno.Conn | undefined;
  const timer = setTimeout(() => {
    timedOut = true;
    if (conn !== undefined) close(conn);
  }, timeoutMs);
  const onAbort = () => conn !== undefined && close(conn);
  options.signal?.addEventListener("abort", onAbort);
  try {
    try {
      conn = url.protocol === "https:"
        ? await Deno.connectTls({
          hostname,
          port,
          caCerts: options.caCerts,
          ...(options.clientCert ?? {}),
          alpnProtocols: ["http/1.1"],
        })
        : await Deno.connect({ hostname, port });
      if (url.protocol === "https:") await (conn as Deno.TlsConn).handshake();
    } catch (error) {
      if (conn !== undefined) close(conn);
      return { ok: false, failure: { kind: "connect", detail: (error as Error).message } };
    }
    if (timedOut || options.signal?.aborted) throw new Error("gave up before sending");
    return await exchange(conn, url.host, target, upgrade, headers);
  } catch (error) {
    if (conn !== undefined) close(conn);
    if (options.signal?.aborted) {
      return { ok: false, failure: { kind: "client-gone", detail: "client disconnected" } };
    }
    const detail = timedOut
      ? `no upgrade response within ${timeoutMs}ms`
      : (error as Error).message;
    return { ok: false, failure: { kind: "maybe-sent", detail } };
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  }
}

/** Sends the upgrade request on `conn` and reads the answer's head; throws on broken bytes. */
async function exchange(
  conn: Deno.Conn,
  host: string,
  target: string,
  upgrade: string,
  headers: Iterable<[string, string]>,
): Promise<TunnelOpen> {
  let fields = "";
  for (const [name, value] of headers) {
    const lower = name.toLowerCase();
    if (/[\r\n\0]/.test(value)) throw new TypeError(`CR, LF or NUL in ${lower}`);
    // The proxy's Host (the client's, as for any request) wins over the backend's address.
    if (lower === "host") host = value;
    else if (!SET_HERE.has(lower)) fields += `${name}: ${value}\r\n`;
  }
  const text = `GET ${target} HTTP/1.1\r\nhost: ${host}\r\nconnection: upgrade\r\n` +
    `upgrade: ${upgrade}\r\n${fields}\r\n`;
  await writeAll(conn, encoder.encode(text));
  const buf = new Uint8Array(MAX_HEAD_BYTES);
  let end = 0;
  let headEnd = -1;
  for (let scan = 0; headEnd === -1;) {
    if (end === buf.length) throw new Error("backend response head larger than 64 KiB");
    const n = await conn.read(buf.subarray(end));
    if (n === null) throw new Error("backend closed the connection before its response head");
    end += n;
    headEnd = findHeadEnd(buf, 0, scan, end);
    scan = Math.max(0, end - 1);
  }
  const head = parseHead(latin1(buf, 0, headEnd), "GET");
  if (head.status !== 101) {
    close(conn);
    return { ok: false, status: head.status };
  }
  return { ok: true, conn, headers: head.headers, head: buf.slice(headEnd, end) };
}

/** Request fields {@linkcode openTunnel} writes itself or drops. */
const SET_HERE = new Set(["connection", "upgrade", "content-length", "transfer-encoding"]);

function close(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* closed already */ }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let offset = 0; offset < data.length;) offset += await conn.write(data.subarray(offset));
}
