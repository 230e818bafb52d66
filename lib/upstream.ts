/**
 * @module
 * One attempt against one backend: `fetch` with the balancer's timeouts, turning every outcome
 * into either a response (headers received) or a classified {@linkcode Failure}.
 */

import { classifyFetchError, type Failure } from "./retry.ts";

/** Timeouts and transport for attempts. */
export interface AttemptOptions {
  /** Shared keep-alive client created with `allowHost: true` so the client's Host passes. */
  client: Deno.HttpClient;
  /** Time from sending the request to receiving response headers (ms). */
  timeout: number;
  /** Time allowed to establish a connection (ms); see {@linkcode sendAttempt}. */
  connectTimeout: number;
}

/** The request to send: method, headers and a body fetch may consume once. */
export interface AttemptRequest {
  method: string;
  headers: Headers;
  body: BodyInit | null;
}

/** An attempt either produced response headers or failed in a known way. */
export type AttemptResult =
  | { ok: true; response: Response }
  | { ok: false; failure: Failure };

/**
 * How attempts reach backends: {@linkcode sendAttempt} (fetch) by default; the benchmark plugs
 * in other transports behind the same signature to compare them (bench/raw_transport.ts).
 */
export type Transport = (
  origin: string,
  url: string,
  request: AttemptRequest,
  clientSignal: AbortSignal,
  options: AttemptOptions,
) => Promise<AttemptResult>;

/**
 * Sends one attempt. The `clientSignal` cancels it when the client disconnects.
 *
 * fetch has no connect timeout of its own. When `connectTimeout` passes without response
 * headers, a separate TCP connect to the backend tells the two cases apart: if that connect
 * fails within `connectTimeout` too, the backend is not accepting connections and the attempt
 * is abandoned as a `connect` failure; if it succeeds, the backend is up but slow, and the
 * attempt keeps waiting for `timeout`.
 */
export async function sendAttempt(
  origin: string,
  url: string,
  request: AttemptRequest,
  clientSignal: AbortSignal,
  options: AttemptOptions,
): Promise<AttemptResult> {
  if (clientSignal.aborted) return clientGone();
  const controller = new AbortController();
  let abandoned: Failure | undefined;
  const abandon = (failure: Failure) => {
    abandoned = failure;
    controller.abort();
  };
  const onClientAbort = () => abandon({ kind: "client-gone", detail: "client disconnected" });
  clientSignal.addEventListener("abort", onClientAbort);
  const headerTimer = setTimeout(
    () => abandon({ kind: "timeout", detail: `no response headers within ${options.timeout}ms` }),
    options.timeout,
  );
  const connectTimer = options.connectTimeout < options.timeout
    ? setTimeout(async () => {
      if (abandoned !== undefined || controller.signal.aborted) return;
      if (!(await canConnect(origin, options.connectTimeout))) {
        abandon({ kind: "connect", detail: `connect timeout after ${options.connectTimeout}ms` });
      }
    }, options.connectTimeout)
    : undefined;
  try {
    const response = await fetch(url, {
      method: request.method,
      headers: request.headers,
      body: request.body,
      redirect: "manual",
      signal: controller.signal,
      client: options.client,
    });
    if (abandoned !== undefined) {
      await response.body?.cancel();
      return { ok: false, failure: abandoned };
    }
    return { ok: true, response };
  } catch (error) {
    return { ok: false, failure: abandoned ?? classifyFetchError(error) };
  } finally {
    clearTimeout(headerTimer);
    clearTimeout(connectTimer);
    clientSignal.removeEventListener("abort", onClientAbort);
  }
}

function clientGone(): AttemptResult {
  return { ok: false, failure: { kind: "client-gone", detail: "client disconnected" } };
}

/** Whether a TCP connection to the origin's host and port can be made within `timeoutMs`. */
export async function canConnect(origin: string, timeoutMs: number): Promise<boolean> {
  const url = new URL(origin);
  const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  try {
    const conn = await Deno.connect({ hostname, port, signal: AbortSignal.timeout(timeoutMs) });
    conn.close();
    return true;
  } catch {
    return false;
  }
}
