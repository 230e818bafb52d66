/**
 * @module
 * A real ACME server for tests: Let's Encrypt's Pebble and its mock DNS, pebble-challtestsrv
 * (Debian packages `pebble` and `pebble-challtestsrv`), on loopback ports, killed by PID on
 * dispose. The mock DNS answers every A query with 127.0.0.1, so Pebble validates HTTP-01
 * challenges against `httpPort` on loopback whatever the domain.
 *
 * Ports are picked by {@linkcode closedPort} (helpers.ts) and closed before the tools bind them:
 * below the ephemeral range, so no bind to port 0 takes one in between, and never one twice (six
 * ports picked by binding port 0 and closing it held a repeat about once in 500 starts).
 */

import { closedPort } from "./helpers.ts";
import { installed, Pki } from "./pki.ts";

/** A running Pebble with its mock DNS. */
export interface Pebble extends AsyncDisposable {
  /** `https://127.0.0.1:PORT/dir`. */
  readonly directoryUrl: string;
  /** Path of the CA file that Pebble's own HTTPS certificate chains to (for `caFile`). */
  readonly caFile: string;
  /** PEM of that CA. */
  readonly caPem: string;
  /** PEM of the root that issues certificates (`/roots/0` on the management port). */
  root(): Promise<string>;
  /** Pebble's log lines so far (stdout and stderr). */
  readonly lines: string[];
}

/** How to start Pebble. */
export interface PebbleOptions {
  /** The port Pebble connects to for HTTP-01 challenges (the challenge responder's). */
  httpPort: number;
  /** Extra environment for Pebble. @default {} */
  env?: Record<string, string>;
  /** Extra keys of Pebble's config, e.g. `domainBlocklist`. @default {} */
  config?: Record<string, unknown>;
}

/** Why Pebble cannot run here, or undefined when it can (for `ignore` plus a printed reason). */
export async function pebbleMissing(): Promise<string | undefined> {
  for (const tool of ["pebble", "pebble-challtestsrv", "openssl"]) {
    if (!(await which(tool))) {
      return `${tool} is not installed (apt-get install pebble openssl)`;
    }
  }
  return undefined;
}

async function which(tool: string): Promise<boolean> {
  if (tool === "openssl") return await installed("openssl");
  try {
    const { code } = await new Deno.Command("sh", {
      args: ["-c", `command -v ${tool}`],
      stdout: "null",
      stderr: "null",
    }).output();
    return code === 0;
  } catch {
    return false;
  }
}

/** A port that was free a moment ago on 127.0.0.1 (see the module note). */
export function freePort(): number {
  return closedPort();
}

/** Starts pebble-challtestsrv and Pebble, waits until Pebble's directory answers. */
export async function startPebble(options: PebbleOptions): Promise<Pebble> {
  const pki = await Pki.create();
  const children: Deno.ChildProcess[] = [];
  const lines: string[] = [];
  const reading: Promise<void>[] = [];
  let client: Deno.HttpClient | undefined;
  const dispose = async () => {
    client?.close();
    for (const child of children) {
      try {
        child.kill("SIGKILL");
      } catch { /* already exited */ }
      await child.status;
    }
    await Promise.all(reading);
    await pki[Symbol.asyncDispose]();
  };
  try {
    const ca = await pki.ca("pebble-test-ca");
    const leaf = await pki.leaf("pebble-https", ca);
    const dnsPort = freePort();
    children.push(
      spawn(
        "pebble-challtestsrv",
        [
          ...["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
          ...["-dns01", `127.0.0.1:${dnsPort}`, "-http01", "", "-https01", "", "-tlsalpn01", ""],
          ...["-management", `127.0.0.1:${freePort()}`],
        ],
        {},
        lines,
        reading,
      ),
    );
    const port = freePort();
    const managementPort = freePort();
    const configPath = `${pki.dir}/pebble-config.json`;
    await Deno.writeTextFile(
      configPath,
      JSON.stringify({
        pebble: {
          listenAddress: `127.0.0.1:${port}`,
          managementListenAddress: `127.0.0.1:${managementPort}`,
          certificate: leaf.certPath,
          privateKey: leaf.keyPath,
          httpPort: options.httpPort,
          // Not used (no TLS-ALPN-01 here) but required by Pebble; nothing listens on it.
          tlsPort: freePort(),
          ocspResponderURL: "",
          externalAccountBindingRequired: false,
          ...options.config,
        },
      }),
    );
    children.push(
      spawn(
        "pebble",
        ["-config", configPath, "-dnsserver", `127.0.0.1:${dnsPort}`],
        {
          PEBBLE_VA_NOSLEEP: "1",
          PEBBLE_VA_ALWAYS_VALID: "0",
          // Pebble rejects 5% of good nonces by default to exercise clients' retries.
          PEBBLE_WFE_NONCEREJECT: "0",
          ...options.env,
        },
        lines,
        reading,
      ),
    );
    client = Deno.createHttpClient({ caCerts: [ca.cert] });
    const directoryUrl = `https://127.0.0.1:${port}/dir`;
    await waitUntilAnswering(directoryUrl, client, lines);
    const httpClient = client;
    return {
      directoryUrl,
      caFile: ca.certPath,
      caPem: ca.cert,
      lines,
      async root() {
        const response = await fetch(`https://127.0.0.1:${managementPort}/roots/0`, {
          client: httpClient,
        });
        const text = await response.text();
        if (!response.ok) throw new Error(`pebble /roots/0: ${response.status} ${text}`);
        return text;
      },
      [Symbol.asyncDispose]: dispose,
    };
  } catch (error) {
    await dispose();
    throw error;
  }
}

function spawn(
  command: string,
  args: string[],
  env: Record<string, string>,
  lines: string[],
  reading: Promise<void>[],
): Deno.ChildProcess {
  const child = new Deno.Command(command, {
    args,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  reading.push(collect(child.stdout, lines), collect(child.stderr, lines));
  return child;
}

async function collect(stream: ReadableStream<Uint8Array>, lines: string[]): Promise<void> {
  let partial = "";
  try {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (partial + chunk).split("\n");
      partial = parts.pop()!;
      lines.push(...parts);
    }
  } catch { /* the process was killed */ }
}

async function waitUntilAnswering(
  url: string,
  client: Deno.HttpClient,
  lines: string[],
): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (let attempt = 0; attempt < 300 && Date.now() < deadline; attempt++) {
    try {
      const response = await fetch(url, { client, signal: AbortSignal.timeout(1000) });
      await response.body?.cancel();
      if (response.ok) return;
    } catch { /* not listening yet */ }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`pebble did not answer at ${url}; its log:\n${lines.join("\n")}`);
}

/**
 * One HTTP/1.1 GET over TLS to 127.0.0.1:port with `name` as SNI and verified name, trusting
 * only `root`; the whole answer as text, or "" when the server closed or reset the connection
 * without a byte of answer (Deno's fetch resolves names itself, so the connection is made by
 * hand), or reset while connecting. Rejects when the certificate does not chain to `root` or does
 * not cover `name`.
 */
export async function tlsGet(
  port: number,
  name: string,
  root: string,
  path = "/",
): Promise<string> {
  let tcp: Deno.TcpConn;
  try {
    tcp = await Deno.connect({ hostname: "127.0.0.1", port });
  } catch (error) {
    // Reset while connecting: queued on a swap's old listener as it closed. Nothing was sent.
    if (error instanceof Deno.errors.ConnectionReset) return "";
    throw error;
  }
  const timer = setTimeout(() => tcp.close(), 5000);
  let conn: Deno.Conn = tcp;
  let text = "";
  try {
    conn = await Deno.startTls(tcp, { hostname: name, caCerts: [root] });
    await conn.write(
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: ${name}\r\nConnection: close\r\n\r\n`,
      ),
    );
    const decoder = new TextDecoder();
    const buffer = new Uint8Array(16 * 1024);
    for (let i = 0; i < 1000; i++) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += decoder.decode(buffer.subarray(0, n), { stream: true });
    }
    return text + decoder.decode();
  } catch (error) {
    // Closed before any answer (a certificate swap's old listener closing, during the handshake
    // or before the request was read): unanswered, like "".
    const closed = error instanceof Deno.errors.ConnectionReset ||
      error instanceof Deno.errors.UnexpectedEof || error instanceof Deno.errors.BrokenPipe;
    if (closed && text === "") return "";
    throw error;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}
