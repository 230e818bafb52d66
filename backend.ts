/**
 * @module
 * A small demo backend: answers every request with a line naming itself and its port, and
 * `/health` with `ok`. Run it with `PORT=8081 deno run --allow-net --allow-env=PORT backend.ts`
 * or `--port 8081`. The balancer's `--demo` mode and the tests start it in-process.
 */

import { parseArgs } from "node:util";

/** Options for {@linkcode startBackend}. */
export interface BackendOptions {
  /** Port to listen on; 0 lets the OS pick. @default 8081 */
  port?: number;
  /** Address to bind. @default "127.0.0.1" */
  hostname?: string;
  /** Called once listening, with the actual port. @default none */
  onListen?: (port: number) => void;
}

/** The demo backend's answer for one request on `port`. */
export function backendResponse(req: Request, port: number): Response {
  const path = req.url.slice(req.url.indexOf("/", req.url.indexOf("://") + 3));
  if (path === "/health") return new Response("ok\n");
  return new Response(`Backend server on port ${port} is running\n`, {
    headers: { "content-type": "text/plain; charset=utf-8", "x-backend-port": String(port) },
  });
}

/** Starts a demo backend; close it with `shutdown()`. */
export function startBackend(options: BackendOptions = {}): Deno.HttpServer<Deno.NetAddr> {
  let port = options.port ?? 8081;
  return Deno.serve({
    port,
    hostname: options.hostname ?? "127.0.0.1",
    onListen: (addr) => {
      port = addr.port;
      options.onListen?.(addr.port);
    },
  }, (req) => backendResponse(req, port));
}

function portFromCommandLine(args: string[]): number {
  const { values } = parseArgs({
    args: args.map((a) => (/^-port(=|$)/.test(a) ? `-${a}` : a)),
    options: { port: { type: "string" } },
    strict: true,
  });
  const text = values.port ?? Deno.env.get("PORT") ?? "8081";
  const port = Number(text);
  if (!/^\d+$/.test(text) || port > 65535) throw new Error(`port "${text}" is not a port number`);
  return port;
}

if (import.meta.main) {
  let port: number;
  try {
    port = portFromCommandLine(Deno.args);
  } catch (error) {
    console.error(`backend: ${(error as Error).message}`);
    Deno.exit(2);
  }
  const server = startBackend({
    port,
    hostname: "0.0.0.0",
    onListen: (p) => console.error(`Backend server started at :${p}`),
  });
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => server.shutdown().then(() => Deno.exit(0)));
  }
}
