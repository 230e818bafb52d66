/**
 * @module
 * How acme-client talks to the ACME server on Deno: an axios adapter over Deno's `fetch`.
 *
 * acme-client 5.4 sends every request through one shared axios instance (`acme.axios`) with
 * axios's node `http` adapter. Two things about that instance decide this module:
 * - Its error interceptor retries network failures and 5xx/429 up to 5 times with sleeps of
 *   5-25 s that nothing can cancel, then reads `error.response.status` of a failure that has
 *   no response: a refused connection surfaces as "Cannot read properties of undefined".
 *   This adapter resolves every HTTP response (acme-client checks statuses itself) and rejects
 *   network failures with an error that carries no `config`, which that interceptor passes on
 *   untouched: the caller sees "cannot reach https://...: connection refused" at once, and
 *   retrying is left to the manager's backoff.
 * - A private CA for the ACME server's HTTPS (Pebble's) goes through `Deno.createHttpClient`
 *   `caCerts` (added to the default roots), registered per server origin, since the instance
 *   is shared. Without a registered client, fetch uses the default roots.
 *
 * Every request has a deadline ({@linkcode REQUEST_TIMEOUT_MS}); axios's default is none.
 */

import acme from "npm:acme-client@^5.4.0";

/** Longest wait for one ACME request, headers and body. */
export const REQUEST_TIMEOUT_MS = 30_000;

/** A network failure talking to the ACME server; the message is one line naming the URL. */
export class AcmeNetworkError extends Error {
  override name = "AcmeNetworkError";
}

const clients = new Map<string, Deno.HttpClient>();
let installed = false;

/** The axios request config fields this adapter reads. */
interface AdapterConfig {
  url?: string;
  method?: string;
  data?: unknown;
  headers?: { toJSON?: () => Record<string, unknown> } & Record<string, unknown>;
}

/**
 * Routes acme-client's requests through Deno's fetch (once per process) and, when `caPem` is
 * given, trusts it for `origin`. Returns a function that undoes the registration.
 */
export function useDenoFetch(origin: string, caPem: string | undefined): () => void {
  if (!installed) {
    // Set on the library's shared instance: acme-client offers no per-client HTTP options.
    acme.axios.defaults.adapter = denoFetchAdapter as never;
    installed = true;
  }
  if (caPem === undefined) return () => {};
  const client = Deno.createHttpClient({ caCerts: [caPem] });
  clients.get(origin)?.close();
  clients.set(origin, client);
  return () => {
    if (clients.get(origin) === client) clients.delete(origin);
    client.close();
  };
}

/** Requests in flight, so that a shutdown can end them at once (see {@linkcode abortAll}). */
const inFlight = new Set<AbortController>();

/** Ends every ACME request in flight: a shutdown must not wait for a server that never answers. */
export function abortAll(): void {
  for (const controller of inFlight) controller.abort(new Error("shutting down"));
}

async function denoFetchAdapter(config: AdapterConfig) {
  const url = config.url ?? "";
  const method = (config.method ?? "get").toUpperCase();
  const controller = new AbortController();
  inFlight.add(controller);
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  let origin = "";
  try {
    origin = new URL(url).origin;
  } catch { /* fetch reports the bad URL */ }
  try {
    const response = await fetch(url, {
      method,
      headers: requestHeaders(config),
      body: method === "GET" || method === "HEAD" ? null : (config.data as BodyInit | null),
      client: clients.get(origin),
      redirect: "manual",
      signal: controller.signal,
    });
    const data = method === "HEAD" ? "" : await response.text();
    return {
      data,
      status: response.status,
      statusText: response.statusText,
      headers: Object.fromEntries(response.headers),
      config,
      request: {},
    };
  } catch (error) {
    const reason = controller.signal.aborted
      ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`
      : networkReason(error);
    throw new AcmeNetworkError(`cannot reach ${url}: ${reason}`);
  } finally {
    clearTimeout(timer);
    inFlight.delete(controller);
  }
}

function requestHeaders(config: AdapterConfig): Headers {
  const raw = config.headers?.toJSON?.() ?? config.headers ?? {};
  const headers = new Headers();
  for (const [name, value] of Object.entries(raw)) {
    if (typeof value === "string" || typeof value === "number") headers.set(name, String(value));
  }
  return headers;
}

/** `tcp connect error: Connection refused (os error 111)` -> `connection refused`. */
export function networkReason(error: unknown): string {
  const cause = (error as Error)?.cause as Error | undefined;
  const text = cause?.message ?? (error as Error)?.message ?? String(error);
  const reason = text
    .replace(/^error sending request for url \([^)]*\):\s*/, "")
    .replace(/^client error \(Connect\):\s*/, "")
    .replace(/^tcp connect error:\s*/, "")
    .replace(/\s*\(os error \d+\)/g, "")
    .replace(/\s+/g, " ")
    .trim();
  return reason.charAt(0).toLowerCase() + reason.slice(1);
}
