/**
 * @module
 * A minimal Deno front for the compression benchmark (bench/compress.ts): `Deno.serve` + `fetch`
 * to one backend, answering through {@linkcode encodeResponse} with `"compress": true`'s
 * defaults, or (`plain`) without it, so that the difference between the two is what compression
 * costs. Not a correct proxy (no hop-by-hop handling, one backend).
 *
 *     deno run --allow-net bench/compress_front.ts PORT BACKEND_URL compress|plain
 */

import { type CompressSpec, DEFAULT_COMPRESS, encodeResponse } from "../lib/compress.ts";

if (import.meta.main) {
  const [portText, backend, mode] = Deno.args;
  if (!/^\d+$/.test(portText ?? "") || !backend || !["compress", "plain"].includes(mode)) {
    console.error("usage: compress_front.ts PORT BACKEND_URL compress|plain");
    Deno.exit(2);
  }
  const spec = structuredClone(DEFAULT_COMPRESS) as CompressSpec;
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 256 });
  Deno.serve({ hostname: "127.0.0.1", port: Number(portText), onListen() {} }, async (req) => {
    const url = new URL(req.url);
    // identity upstream: fetch would otherwise ask for gzip and decode it itself.
    const upstream = await fetch(`${backend}${url.pathname}${url.search}`, {
      client,
      headers: { "accept-encoding": "identity" },
      redirect: "manual",
    });
    const response = new Response(upstream.body, upstream);
    return mode === "compress"
      ? encodeResponse(spec, req.method, req.headers, response, req.signal)
      : response;
  });
}
