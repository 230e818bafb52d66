/**
 * @module
 * The floor for a `Deno.serve` + `fetch` design: round-robin forwarding with no features at all
 * (no header rules, timeouts, retries, health, metrics). It passes the client's headers as they
 * are and returns fetch's response object untouched, so it is not a correct proxy (hop-by-hop
 * headers pass, gzip bodies arrive decoded under `Content-Encoding: gzip`). It exists only to
 * show, in `bench/run.ts --baseline`, how much of this balancer's cost is fetch and Deno.serve.
 *
 *     deno run --allow-net bench/minimal_forwarder.ts 3030 http://127.0.0.1:8081 http://127.0.0.1:8082
 */

const [port, ...backends] = Deno.args;
const client = Deno.createHttpClient({});
let next = 0;

Deno.serve({ hostname: "127.0.0.1", port: Number(port), onListen() {} }, (req) => {
  const url = req.url;
  const path = url.slice(url.indexOf("/", url.indexOf("://") + 3));
  const backend = backends[next];
  next = (next + 1) % backends.length;
  return fetch(backend + path, {
    method: req.method,
    headers: req.headers,
    body: req.body,
    redirect: "manual",
    client,
  });
});
