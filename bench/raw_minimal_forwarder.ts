/**
 * @module
 * {@linkcode ./minimal_forwarder.ts} on the Deno.connect transport (bench/raw_transport.ts):
 * round-robin, no features, client headers passed as they are. With the fetch forwarder it
 * separates the cost of the transport from the cost of the balancer's features (issue 6).
 * Not a correct proxy (hop-by-hop headers pass), but bodies pass through undecoded, so gzip
 * answers do arrive intact.
 *
 *     deno run --allow-net bench/raw_minimal_forwarder.ts 3030 http://127.0.0.1:8081 http://127.0.0.1:8082
 */

import { createRawTransport } from "./raw_transport.ts";

const [port, ...backends] = Deno.args;
const transport = createRawTransport({ decode: "none" });
const options = {
  client: undefined as unknown as Deno.HttpClient,
  timeout: 30000,
  connectTimeout: 3000,
};
let next = 0;

Deno.serve({ hostname: "127.0.0.1", port: Number(port), onListen() {} }, async (req) => {
  const url = req.url;
  const path = url.slice(url.indexOf("/", url.indexOf("://") + 3));
  const backend = backends[next];
  next = (next + 1) % backends.length;
  const result = await transport.send(
    backend,
    backend + path,
    { method: req.method, headers: req.headers, body: req.body },
    req.signal,
    options,
  );
  return result.ok ? result.response : new Response(result.failure.detail, { status: 502 });
});
