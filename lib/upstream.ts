/**
 * @module
 * One attempt against one backend: `fetch` with the balancer's timeouts, turning every outcome
 * into either a response (headers received) or a classified {@linkcode Failure}.
 */

import { unbracket } from "./host.ts";
import type { HeaderPairs } from "./headers.ts";
import { classifyFetchError, type Failure, isIdempotent } from "./retry.ts";
import { ResponseBodyError } from "./errors.ts";

/** Timeouts and transport for attempts. */
export interface AttemptOptions {
  /**
   * fetch's shared keep-alive client, created with `allowHost: true` so the client's Host
   * passes. The native transport has its own connections and takes none.
   * @default fetch's default client
   */
  client?: Deno.HttpClient;
  /**
   * The same client without connection reuse, for non-idempotent requests: fetch resends a
   * request whose reused connection closed before the answer, whatever its method (hyper's
   * retry of canceled requests), which would send a POST twice. @default `client`
   */
  freshClient?: Deno.HttpClient;
  /** Time from sending the request to receiving response headers (ms). */
  timeout: number;
  /** Time allowed to establish a connection (ms); see {@linkcode sendAttempt}. */
  connectTimeout: number;
  /**
   * Longest pause between two reads of a response body (ms), as nginx's `proxy_read_timeout`:
   * when it passes, the body errors (the client connection is aborted, never a truncated body
   * passed off as complete) and {@linkcode AttemptRequest.onBodyFailure} is told. fetch has no
   * such timeout and ignores it. @default 60000
   */
  readTimeout?: number;
}

/** The request to send: method, headers and a body fetch may consume once. */
export interface AttemptRequest {
  method: string;
  /** Fields to send, names in lower case (lib/headers.ts's `upstreamRequestHeaders`). */
  headers: HeaderPairs;
  body: BodyInit | null;
  /**
   * Told when the response body fails after its headers were returned, by the backend's doing
   * (read timeout, reset, malformed chunk): the proxy counts it against the backend. Not told
   * when the client goes away. @default none
   */
  onBodyFailure?: (detail: string) => void;
}

/**
 * A backend's answer in parts, from which the proxy builds the client's Response once: a
 * Response per hop, and copying its headers into the next, cost more than the rest of the
 * relay.
 */
export interface UpstreamResponse {
  status: number;
  statusText: string;
  /** Header fields as received, names in any case; fetch's Headers for its responses. */
  headers: HeaderPairs | Headers;
  /** A body read whole, a stream, or none (HEAD, 204, 304). */
  body: Uint8Array<ArrayBuffer> | ReadableStream<Uint8Array> | null;
  /**
   * Whether the transport already decoded the body from its Content-Encoding (the proxy must
   * then drop that header and the length); left out, the proxy assumes fetch's rules
   * (`fetchDecodedBody` in lib/headers.ts), which is what {@linkcode sendAttempt} gives.
   */
  decoded?: boolean;
  /**
   * Whether the transport's parser admitted only fields `Headers.append` takes unchanged (token
   * names, values trimmed and without NUL, CR or LF): the proxy then adds them without append's
   * checks. Left out: not checked.
   */
  fieldsChecked?: boolean;
}

/**
 * An attempt either produced response headers (`value`, and its `status`) or failed in a known
 * way: an outcome as lib/attempt_loop.ts's loop takes it, so a transport's is passed on as is.
 */
export type AttemptResult =
  | { ok: true; value: UpstreamResponse; status: number }
  | { ok: false; failure: Failure };

/**
 * How attempts reach backends: the native transport (lib/upstream_native.ts) or
 * {@linkcode sendAttempt} (fetch).
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
 * attempt keeps waiting for `timeout`. Only for idempotent requests: the probe says whether
 * the backend accepts connections now, not whether fetch's own connection got through before
 * (a backend closing its listener while it works on the request), so a request that must not
 * run twice is never abandoned on its word, and waits for `timeout`.
 */
export const sendAttempt: Transport = async (origin, url, request, clientSignal, options) => {
  if (clientSignal.aborted) return clientGone();
  const controller = new AbortController();
  let abandoned: Failure | undefined;
  const abandon = (failure: Failure) => {
    abandoned = failure;
    controller.abort();
  };
  // fetch does not say whether it has connected: a separate TCP connect tells.
  const probe = isIdempotent(request.method);
  const disarm = guardAttempt(
    clientSignal,
    options,
    abandon,
    async () =>
      probe && abandoned === undefined && !controller.signal.aborted &&
      !(await canConnect(origin, options.connectTimeout)),
  );
  try {
    const response = await fetch(url, {
      method: request.method,
      headers: request.headers,
      body: request.body,
      redirect: "manual",
      signal: controller.signal,
      client: isIdempotent(request.method) ? options.client : options.freshClient ?? options.client,
    });
    if (abandoned !== undefined) {
      await response.body?.cancel();
      return { ok: false, failure: abandoned };
    }
    const { status, statusText, headers } = response;
    if (headers.get("transfer-encoding") !== null && headers.get("content-length") !== null) {
      // fetch reads such a body by one framing and would pass it off as complete (RFC 9112 §6.1).
      await response.body?.cancel();
      const detail = "malformed response: Content-Length with Transfer-Encoding";
      return { ok: false, failure: { kind: "maybe-sent", detail } };
    }
    const body = reportBodyFailure(response.body, request, clientSignal);
    return { ok: true, value: { status, statusText, headers, body }, status };
  } catch (error) {
    return { ok: false, failure: abandoned ?? classifyFetchError(error) };
  } finally {
    disarm();
  }
};

/**
 * `body`, telling `request.onBodyFailure` when it breaks off by the backend's doing (not when the
 * client left): fetch's own stream fails without a word to the proxy. The stream then fails with
 * a {@linkcode ResponseBodyError}, as the native transport's do.
 */
function reportBodyFailure(
  body: ReadableStream<Uint8Array> | null,
  request: AttemptRequest,
  clientSignal: AbortSignal,
): ReadableStream<Uint8Array> | null {
  const onFailure = request.onBodyFailure;
  if (body === null || onFailure === undefined) return body;
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (error) {
        const detail = (error as Error)?.message ?? String(error);
        if (!clientSignal.aborted) {
          try {
            onFailure(detail);
          } catch { /* a hook must not break the stream */ }
        }
        controller.error(new ResponseBodyError(`response body failed: ${detail}`));
        return;
      }
      if (chunk.done) controller.close();
      else controller.enqueue(chunk.value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
}

/**
 * Arms what ends an attempt before its response headers, for every transport: the client
 * hanging up (`client-gone`), no headers within `options.timeout` (`timeout`), and, when
 * `options.connectTimeout` is shorter, a `connect` failure if `unreachable()` says so once the
 * connect timeout has passed. Returns the function that disarms them all.
 */
export function guardAttempt(
  clientSignal: AbortSignal,
  options: AttemptOptions,
  abandon: (failure: Failure) => void,
  unreachable: () => boolean | Promise<boolean>,
): () => void {
  let disarmed = false;
  const onClientAbort = () => abandon({ kind: "client-gone", detail: "client disconnected" });
  clientSignal.addEventListener("abort", onClientAbort);
  const headerDeadline = afterDelay(
    options.timeout,
    () => abandon({ kind: "timeout", detail: `no response headers within ${options.timeout}ms` }),
  );
  const connectDeadline = options.connectTimeout < options.timeout
    ? afterDelay(options.connectTimeout, async () => {
      // The probe takes time: the response may have come meanwhile, and must not be cut off.
      if (await unreachable() && !disarmed) {
        abandon({
          kind: "connect",
          detail: `connect timeout after ${options.connectTimeout}ms`,
          timedOut: true,
        });
      }
    })
    : undefined;
  return () => {
    disarmed = true;
    headerDeadline.cancel();
    connectDeadline?.cancel();
    clientSignal.removeEventListener("abort", onClientAbort);
  };
}

/**
 * Characters that can make the WHATWG URL parser (fetch's) change a path or query: a dot
 * segment (`/.`, `/%2e`, any case), and anything outside the characters it always leaves as
 * they are (`\` becomes `/`; space, quotes, `<>`, `` ` ``, `{}` and non-ASCII are
 * percent-encoded, `'` in the query too). Only a cheap first test: a match is confirmed by
 * parsing, so an ordinary path costs one regular-expression scan.
 */
const MAY_BE_REWRITTEN = /\/(?:\.|%2e)|[^A-Za-z0-9\-._~!$&()*+,;=:@/?%]/i;
/** Origin the path is parsed against; only the part after it is compared. */
const PARSE_ORIGIN = "http://h";

/**
 * Whether fetch would put a different request target on the wire than `pathAndQuery` (a
 * path starting with `/`, then an optional query): the URL parser resolves `.`/`..` segments
 * (also spelt `%2e`), turns `\` into `/` and percent-encodes some characters. The path is
 * appended to an origin rather than resolved against one: `//x` must stay a path, not become
 * a host.
 */
export function fetchRewritesTarget(pathAndQuery: string): boolean {
  if (!MAY_BE_REWRITTEN.test(pathAndQuery)) return false;
  // A fragment is never sent (lib/target.ts drops it before this is asked).
  if (pathAndQuery.includes("#")) return true;
  const written = PARSE_ORIGIN + pathAndQuery;
  return URL.parse(written)?.href !== written;
}

/** A pending deadline; `cancel()` removes it (a no-op once it has fired). */
export interface Deadline {
  cancel(): void;
}

/**
 * Runs `fire` after `ms` unless cancelled first: what setTimeout/clearTimeout do, cheaper, for
 * the two or three deadlines every attempt arms. Deadlines of one duration fall due in the order
 * they were added, so each duration keeps a linked list (insert and unlink are O(1)) and one
 * timer serves all the lists, armed for the earliest head. It is cleared whenever every list is
 * empty, so an idle balancer (or a finished test) has no timer pending. `now` saves a clock read
 * when the caller has one from the same synchronous run (an older one would break the order).
 */
export function afterDelay(
  ms: number,
  fire: () => void,
  now: number = performance.now(),
): Deadline {
  let list = DEADLINE_LISTS.get(ms);
  if (list === undefined) {
    list = new DeadlineList(ms);
    DEADLINE_LISTS.set(ms, list);
    LISTS.push(list);
  }
  const entry = list.add(fire, now);
  // The new entry is due no sooner than its list's head, but maybe sooner than other lists'.
  if (timerAt === undefined || entry.at < timerAt) arm(entry.at);
  return entry;
}

/** Deadlines of one duration, oldest (first due) at the head. */
class DeadlineList {
  readonly #ms: number;
  head: Entry | undefined;
  #tail: Entry | undefined;

  constructor(ms: number) {
    this.#ms = ms;
  }

  add(fire: () => void, now: number): Entry {
    const entry = new Entry(this, now + this.#ms, fire);
    entry.prev = this.#tail;
    if (this.#tail === undefined) this.head = entry;
    else this.#tail.next = entry;
    this.#tail = entry;
    return entry;
  }

  unlink(entry: Entry): void {
    if (entry.prev === undefined) this.head = entry.next;
    else entry.prev.next = entry.next;
    if (entry.next === undefined) this.#tail = entry.prev;
    else entry.next.prev = entry.prev;
    entry.prev = entry.next = entry.list = undefined;
  }
}

class Entry implements Deadline {
  prev: Entry | undefined;
  next: Entry | undefined;
  list: DeadlineList | undefined;
  readonly at: number;
  readonly fire: () => void;

  constructor(list: DeadlineList, at: number, fire: () => void) {
    this.list = list;
    this.at = at;
    this.fire = fire;
  }

  cancel(): void {
    if (this.list === undefined) return;
    this.list.unlink(this);
    // Only an empty set of lists clears the timer: otherwise it fires early now and then and
    // re-arms, which costs less than re-arming on every cancel.
    if (timer !== undefined && LISTS.every((list) => list.head === undefined)) {
      clearTimeout(timer);
      timer = timerAt = undefined;
    }
  }
}

/** One list per distinct duration: the proxy uses three (timeout, connect, client watch). */
const DEADLINE_LISTS = new Map<number, DeadlineList>();
const LISTS: DeadlineList[] = [];
let timer: ReturnType<typeof setTimeout> | undefined;
/** When `timer` is due (performance.now() ms). */
let timerAt: number | undefined;

function arm(at: number): void {
  if (timer !== undefined) clearTimeout(timer);
  timerAt = at;
  timer = setTimeout(expire, Math.max(1, at - performance.now()));
}

/** Fires every entry that is due, then re-arms for the earliest one left. */
function expire(): void {
  timer = timerAt = undefined;
  const now = performance.now();
  let next = Infinity;
  for (const list of LISTS) {
    while (list.head !== undefined && list.head.at <= now) {
      const entry = list.head;
      list.unlink(entry);
      try {
        entry.fire();
      } catch (error) {
        // One failing callback must not leave the others unfired or the timer unarmed.
        reportError(error);
      }
    }
    if (list.head !== undefined) next = Math.min(next, list.head.at);
  }
  // A callback may have added an entry (and armed the timer) meanwhile.
  if (next !== Infinity && (timerAt === undefined || next < timerAt)) arm(next);
}

function clientGone(): AttemptResult {
  return { ok: false, failure: { kind: "client-gone", detail: "client disconnected" } };
}

/** Whether a TCP connection to the origin's host and port can be made within `timeoutMs`. */
export async function canConnect(origin: string, timeoutMs: number): Promise<boolean> {
  const url = new URL(origin);
  const hostname = unbracket(url.hostname);
  const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  try {
    const conn = await Deno.connect({ hostname, port, signal: AbortSignal.timeout(timeoutMs) });
    conn.close();
    return true;
  } catch {
    return false;
  }
}
