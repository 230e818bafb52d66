/**
 * @module
 * Micro-benchmarks of the per-request work the CPU profile (`bench/cpu_profile.ts`) points at,
 * each next to a cheaper way to do the same thing. Run with `deno bench bench/hot_path_bench.ts`.
 *
 * - iterating a `Headers` with for..of (what `new Headers(h)` and fetch's init conversion do):
 *   quadratic on Deno 2.9 for every guard but "immutable", because each `next()` sorts and
 *   combines the whole list again (denoland/deno#36063); `forEach` sorts once;
 * - how headers are handed to `fetch` (a `Headers` object goes through WebIDL's
 *   sequence<sequence<ByteString>> conversion, i.e. that iterator; a record does not);
 * - building upstream and downstream headers by copying a `Headers` and deleting from it, versus
 *   one pass that keeps what passes;
 * - two timers per attempt versus one shared deadline list;
 * - an AbortController plus listener per attempt;
 * - Host validation versus a cache of values already validated.
 */

import {
  downstreamResponseHeaders,
  HOP_BY_HOP,
  isValidHost,
  upstreamRequestHeaders,
} from "../lib/headers.ts";

/** What wrk sends: one header. */
const WRK = new Headers({ host: "127.0.0.1:3030" });
/** What a browser sends: about a dozen. */
const BROWSER = new Headers({
  host: "shop.example.com",
  "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
  accept: "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
  "accept-language": "en-GB,en;q=0.9",
  "accept-encoding": "gzip, deflate, br",
  cookie: "session=abc123; theme=dark; consent=yes",
  referer: "https://shop.example.com/cart",
  "sec-fetch-mode": "navigate",
  "sec-fetch-site": "same-origin",
  "upgrade-insecure-requests": "1",
  connection: "keep-alive",
  "cache-control": "max-age=0",
});
/** What nginx answers with. */
const NGINX_RESPONSE = new Headers({
  server: "nginx/1.22.1",
  date: "Wed, 25 Nov 2026 13:37:55 GMT",
  "content-type": "text/plain",
  "content-length": "3",
  connection: "keep-alive",
});

for (const n of [1, 6, 12, 24]) {
  const h = new Headers();
  for (let i = 0; i < n; i++) h.set(`x-header-${i}`, `value number ${i}`);
  const group = `iterate ${n} headers`;
  Deno.bench(`for..of [${n}]`, { group, baseline: true }, () => {
    for (const _ of h) { /* nothing */ }
  });
  Deno.bench(`forEach [${n}]`, { group }, () => {
    h.forEach(() => {});
  });
  Deno.bench(`new Headers(headers) [${n}]`, { group }, () => {
    new Headers(h);
  });
}

const FACTS = { clientIp: "127.0.0.1", proto: "http", host: "127.0.0.1:3030" };
const URL_ = "http://127.0.0.1:8081/";

/** Names never forwarded (hop-by-hop plus the ones the proxy sets itself). */
const DROP_REQUEST = new Set<string>([
  ...HOP_BY_HOP,
  "forwarded",
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  "host",
]);

/** One pass over `incoming` into a plain record (request headers never repeat but cookie). */
function upstreamRecord(incoming: Headers, facts: typeof FACTS): Record<string, string> {
  const out: Record<string, string> = {};
  const connection = incoming.get("connection");
  const named = connection === null
    ? undefined
    : new Set(connection.toLowerCase().split(",").map((s) => s.trim()));
  let acceptEncoding = false;
  // forEach, not for..of: Deno 2.9's Headers iterator re-sorts the list on every next() for
  // mutable guards (quadratic; denoland/deno#36063); forEach sorts once.
  incoming.forEach((value, name) => {
    if (DROP_REQUEST.has(name) || named?.has(name)) return;
    if (name === "accept-encoding") acceptEncoding = true;
    out[name] = value;
  });
  out["x-forwarded-for"] = facts.clientIp;
  out["x-forwarded-proto"] = facts.proto;
  out["host"] = facts.host;
  out["x-forwarded-host"] = facts.host;
  if (!acceptEncoding) out["accept-encoding"] = "identity";
  return out;
}

const HOP: ReadonlySet<string> = new Set(HOP_BY_HOP);

/** One pass over the backend's headers into pairs (Set-Cookie may repeat). */
function downstreamPairs(upstream: Headers): [string, string][] {
  const out: [string, string][] = [];
  const connection = upstream.get("connection");
  const named = connection === null
    ? undefined
    : new Set(connection.toLowerCase().split(",").map((s) => s.trim()));
  upstream.forEach((value, name) => {
    if (HOP.has(name) || named?.has(name)) return;
    out.push([name, value]);
  });
  return out;
}

for (const [label, headers] of [["wrk", WRK], ["browser", BROWSER]] as const) {
  const asHeaders = upstreamRequestHeaders(headers, FACTS);
  const asRecord = upstreamRecord(headers, FACTS);
  const asPairs = Object.entries(asRecord);
  const group = `Request init headers (${label})`;
  Deno.bench(`new Request(url, {headers: Headers}) [${label}]`, { group, baseline: true }, () => {
    new Request(URL_, { headers: asHeaders });
  });
  Deno.bench(`new Request(url, {headers: record}) [${label}]`, { group }, () => {
    new Request(URL_, { headers: asRecord });
  });
  Deno.bench(`new Request(url, {headers: pairs}) [${label}]`, { group }, () => {
    new Request(URL_, { headers: asPairs });
  });

  const build = `upstream headers (${label})`;
  Deno.bench(`upstreamRequestHeaders() [${label}]`, { group: build, baseline: true }, () => {
    upstreamRequestHeaders(headers, FACTS);
  });
  Deno.bench(`one pass into a record [${label}]`, { group: build }, () => {
    upstreamRecord(headers, FACTS);
  });
  Deno.bench(`upstreamRequestHeaders() + new Request [${label}]`, { group: build }, () => {
    new Request(URL_, { headers: upstreamRequestHeaders(headers, FACTS) });
  });
  Deno.bench(`one pass into a record + new Request [${label}]`, { group: build }, () => {
    new Request(URL_, { headers: upstreamRecord(headers, FACTS) });
  });
}

Deno.bench(
  "downstreamResponseHeaders() + new Response",
  { group: "downstream", baseline: true },
  () => {
    new Response(null, { status: 200, headers: downstreamResponseHeaders(NGINX_RESPONSE, false) });
  },
);
Deno.bench("one pass into pairs + new Response", { group: "downstream" }, () => {
  new Response(null, { status: 200, headers: downstreamPairs(NGINX_RESPONSE) });
});

Deno.bench("2 x setTimeout + clearTimeout", { group: "timers", baseline: true }, () => {
  clearTimeout(setTimeout(() => {}, 30000));
  clearTimeout(setTimeout(() => {}, 3000));
});
const deadlines = new Map<object, number>();
Deno.bench("deadline list: Map set + delete (one shared sweep timer)", { group: "timers" }, () => {
  const key = {};
  deadlines.set(key, performance.now() + 30000);
  deadlines.delete(key);
});

const clientSignal = new AbortController().signal;
Deno.bench("AbortController + add/removeEventListener", { group: "abort" }, () => {
  const controller = new AbortController();
  const onAbort = () => controller.abort();
  clientSignal.addEventListener("abort", onAbort);
  clientSignal.removeEventListener("abort", onAbort);
});
Deno.bench("performance.now()", { group: "abort" }, () => {
  performance.now();
});

const validHosts = new Map<string, boolean>();
Deno.bench("isValidHost()", { group: "host", baseline: true }, () => {
  isValidHost("shop.example.com:8443");
});
Deno.bench("isValidHost() behind a Map cache", { group: "host" }, () => {
  const host = "shop.example.com:8443";
  let ok = validHosts.get(host);
  if (ok === undefined) {
    ok = isValidHost(host);
    if (validHosts.size < 1024) validHosts.set(host, ok);
  }
});
