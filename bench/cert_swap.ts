/**
 * @module
 * Certificate swaps under HTTPS traffic, measured: how many connections does a
 * `reloadCertificate()` drop, with `net.ipv4.tcp_migrate_req` at 0 and at 1?
 *
 * A swap binds a second listener on the port (SO_REUSEPORT) and closes the first; Linux resets
 * the connections still queued on a listener that leaves a reuseport group, unless
 * `tcp_migrate_req` (Linux 5.14+) is 1, which moves them to another listener of the group. The
 * setting is per network namespace, so the host's is never touched: each run creates a
 * namespace of its own (`ip netns add`), brings its loopback up, sets the sysctl inside it, runs
 * the balancer and the clients there (`ip netns exec NAME deno run ... --inner`) and deletes the
 * namespace afterwards, also on failure or Ctrl-C. Needs root and `ip` (Debian iproute2).
 *
 * Inside, `--clients` clients each open a new TLS connection per request (`Connection: close`)
 * to `startBalancer` over one backend. A baseline of the same length without swaps comes
 * first; then the certificate files are rewritten (two leaves of one CA, alternately) and
 * `reloadCertificate()` called `--swaps` times, one every `--interval` ms. Every failed
 * connection is counted by how it failed (`reset`: ECONNRESET; `empty`: closed before any
 * byte; the TLS or other error otherwise).
 *
 * `--close-delay MS` measures a mitigation without the sysctl: the old Deno.serve listener is
 * shut down MS later than the new one is bound (Deno.serve is wrapped for that, in the inner
 * process only).
 *
 * Run: `deno run -A bench/cert_swap.ts [--swaps 40] [--interval 100] [--clients 8]
 * [--migrate 0,1] [--frontend deno|native] [--close-delay 0]`. Prints a Markdown table;
 * `--json FILE` writes the figures.
 */

import { parseArgs } from "node:util";

/** What one run in one namespace measures. */
export interface SwapRun {
  /** The network namespace it ran in (deleted since). */
  namespace: string;
  migrate: number;
  frontend: "deno" | "native";
  closeDelayMs: number;
  swaps: number;
  /** Swaps that `reloadCertificate()` reported as "reloaded". */
  reloaded: number;
  /** Connections during the baseline (no swaps) and their failures, by kind. */
  baseline: { connections: number; failed: Record<string, number> };
  /** Connections during the swaps and their failures, by kind. */
  swapping: { connections: number; failed: Record<string, number> };
}

/** Options of {@linkcode measureInNamespace}. */
export interface SwapOptions {
  /** Value of net.ipv4.tcp_migrate_req inside the namespace. */
  migrate: 0 | 1;
  /** Certificate swaps. @default 40 */
  swaps?: number;
  /** Milliseconds between swaps. @default 100 */
  intervalMs?: number;
  /** Concurrent clients, each opening a new connection per request. @default 8 */
  clients?: number;
  /** The balancer's front end. @default "deno" */
  frontend?: "deno" | "native";
  /** Delay before the replaced Deno.serve listener is shut down. @default 0 */
  closeDelayMs?: number;
  /** Longest wait for the whole run before it is killed. @default 120000 */
  timeoutMs?: number;
}

/** Why this machine cannot run the measurement, or undefined when it can. */
export async function namespaceUnavailable(): Promise<string | undefined> {
  if (Deno.build.os !== "linux") return "network namespaces need Linux";
  if (Deno.uid() !== 0) return "creating a network namespace needs root";
  const probe = await command("ip", ["-V"]).catch(() => undefined);
  if (probe === undefined || probe.code !== 0) return "no `ip` command (Debian: iproute2)";
  try {
    Deno.statSync("/proc/sys/net/ipv4/tcp_migrate_req");
  } catch {
    return "the kernel has no net.ipv4.tcp_migrate_req (Linux 5.14+)";
  }
  return undefined;
}

/**
 * Runs the measurement in a network namespace of its own with `tcp_migrate_req` set to
 * `options.migrate`, deleting the namespace whatever happens. Throws with the reason when
 * the namespace cannot be made or the inner run fails.
 */
export async function measureInNamespace(options: SwapOptions): Promise<SwapRun> {
  const name = `lbswap-${Deno.pid}-${++namespaces}`;
  const remove = () => {
    // Synchronous, so that it also runs from a signal handler just before exit.
    new Deno.Command("ip", { args: ["netns", "delete", name], stderr: "null" }).outputSync();
  };
  /** Aborts the inner run: a signal must not leave it running in a deleted namespace. */
  const inner = new AbortController();
  const onSignal = () => {
    inner.abort();
    remove();
    Deno.exit(130);
  };
  await must("ip", ["netns", "add", name]);
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    await must("ip", ["netns", "exec", name, "ip", "link", "set", "lo", "up"]);
    // Written inside the namespace: /proc/sys/net there is the namespace's own.
    await must("ip", [
      ...["netns", "exec", name, "sh", "-c"],
      `echo ${options.migrate} > /proc/sys/net/ipv4/tcp_migrate_req`,
    ]);
    const args = [
      ...["netns", "exec", name, Deno.execPath(), "run", "--allow-all"],
      ...["--config", new URL("../deno.json", import.meta.url).pathname],
      new URL(import.meta.url).pathname,
      "--inner",
      ...["--swaps", String(options.swaps ?? 40)],
      ...["--interval", String(options.intervalMs ?? 100)],
      ...["--clients", String(options.clients ?? 8)],
      ...["--frontend", options.frontend ?? "deno"],
      ...["--close-delay", String(options.closeDelayMs ?? 0)],
    ];
    const result = await command("ip", args, options.timeoutMs ?? 120_000, inner.signal);
    if (result.code !== 0) {
      throw new Error(`inner run failed (exit ${result.code}): ${result.stderr.trim()}`);
    }
    const run = JSON.parse(result.stdout.trim().split("\n").at(-1)!) as Omit<SwapRun, "namespace">;
    return { namespace: name, ...run };
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    remove();
  }
}

let namespaces = 0;

async function command(
  cmd: string,
  args: string[],
  timeoutMs = 30_000,
  cancel?: AbortSignal,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  cancel?.addEventListener("abort", () => controller.abort(), { once: true });
  const output = await new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: controller.signal,
  }).output().finally(() => clearTimeout(timer));
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: output.code, stdout: decode(output.stdout), stderr: decode(output.stderr) };
}

async function must(cmd: string, args: string[]): Promise<void> {
  const result = await command(cmd, args);
  if (result.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")}: ${result.stderr.trim() || `exit ${result.code}`}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Inner run: inside the namespace

/** How one connection ended: "ok" or the kind of failure. */
async function oneRequest(port: number, ca: string): Promise<string> {
  let conn: Deno.TlsConn | undefined;
  // A connection that hangs is a failure too, never a stuck benchmark.
  const timer = setTimeout(() => conn?.close(), 5000);
  let stage = "handshake";
  try {
    conn = await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [ca] });
    await conn.handshake();
    stage = "request";
    await conn.write(
      new TextEncoder().encode("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    );
    const buf = new Uint8Array(4096);
    let text = "";
    for (let i = 0; i < 1000; i++) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    if (text === "") return `empty after ${stage}`;
    return text.startsWith("HTTP/1.1 200") && text.endsWith("ok") ? "ok" : "bad response";
  } catch (error) {
    const message = (error as Error).message;
    if (/reset|os error 104/i.test(message)) return `reset in ${stage}`;
    if (/eof|os error 32|broken pipe/i.test(message)) return `closed in ${stage}`;
    return `${stage}: ${(error as Error).name}: ${message.slice(0, 80)}`;
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch { /* closed by the timer */ }
  }
}

/** Clients that run until `stop()`, counting connections by outcome. */
function startClients(port: number, ca: string, clients: number) {
  const outcomes: Record<string, number> = {};
  let running = true;
  const loops = Array.from({ length: clients }, async () => {
    for (let i = 0; i < 1_000_000 && running; i++) {
      const outcome = await oneRequest(port, ca);
      outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      const connections = Object.values(outcomes).reduce((a, b) => a + b, 0);
      const failed = Object.fromEntries(Object.entries(outcomes).filter(([k]) => k !== "ok"));
      return { connections, failed };
    },
  };
}

/** Makes the shutdown of every Deno.serve listener wait `ms` (the mitigation under test). */
function delayShutdowns(ms: number): void {
  const serve = Deno.serve;
  // deno-lint-ignore no-explicit-any
  (Deno as any).serve = (...args: unknown[]) => {
    // deno-lint-ignore no-explicit-any
    const server = (serve as any)(...args) as Deno.HttpServer;
    const shutdown = server.shutdown.bind(server);
    server.shutdown = async () => {
      await new Promise((r) => setTimeout(r, ms));
      await shutdown();
    };
    return server;
  };
}

async function inner(
  swaps: number,
  intervalMs: number,
  clients: number,
  frontend: "deno" | "native",
  closeDelayMs: number,
): Promise<Omit<SwapRun, "namespace">> {
  const { Pki } = await import("../tests/pki.ts");
  const { testConfig } = await import("../tests/helpers.ts");
  const { startBalancer } = await import("../lib/balancer.ts");
  const { quietLog } = await import("../lib/log.ts");
  if (closeDelayMs > 0) delayShutdowns(closeDelayMs);
  const migrate = Number(Deno.readTextFileSync("/proc/sys/net/ipv4/tcp_migrate_req").trim());
  await using pki = await Pki.create();
  const ca = await pki.ca("swap-ca");
  const leaves = [await pki.leaf("swap-a", ca), await pki.leaf("swap-b", ca)];
  const certPath = `${pki.dir}/tls.crt`;
  const keyPath = `${pki.dir}/tls.key`;
  const install = (leaf: { cert: string; key: string }) => {
    // Renamed into place, as certbot does: a reload never reads half a file.
    Deno.writeTextFileSync(`${certPath}.tmp`, leaf.cert);
    Deno.renameSync(`${certPath}.tmp`, certPath);
    Deno.writeTextFileSync(`${keyPath}.tmp`, leaf.key);
    Deno.renameSync(`${keyPath}.tmp`, keyPath);
  };
  install(leaves[0]);
  const backend = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("ok"),
  );
  const balancer = await startBalancer(
    testConfig([`http://127.0.0.1:${backend.addr.port}`], {
      tlsCert: certPath,
      tlsKey: keyPath,
      frontend,
      transport: "native",
    }),
    quietLog,
  );
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  try {
    const before = startClients(balancer.port, ca.cert, clients);
    await sleep(swaps * intervalMs);
    const baseline = await before.stop();
    const during = startClients(balancer.port, ca.cert, clients);
    let reloaded = 0;
    for (let i = 1; i <= swaps; i++) {
      await sleep(intervalMs);
      install(leaves[i % 2]);
      if (balancer.reloadCertificate() === "reloaded") reloaded++;
    }
    // Connections made just before the last swap finish before counting stops.
    await sleep(intervalMs);
    const swapping = await during.stop();
    return { migrate, frontend, closeDelayMs, swaps, reloaded, baseline, swapping };
  } finally {
    await balancer.shutdown(2000);
    await backend.shutdown();
  }
}

// ---------------------------------------------------------------------------------------------
// Command line

function table(runs: SwapRun[]): string {
  const failures = (failed: Record<string, number>) =>
    Object.entries(failed).map(([kind, n]) => `${n} ${kind}`).join(", ") || "none";
  const total = (failed: Record<string, number>) =>
    Object.values(failed).reduce((a, b) => a + b, 0);
  const lines = [
    "| tcp_migrate_req | front end | close delay | swaps | connections (baseline / swapping) | failed in baseline | failed while swapping | per swap |",
    "|---|---|---|---|---|---|---|---|",
  ];
  for (const r of runs) {
    lines.push(
      `| ${r.migrate} | ${r.frontend} | ${r.closeDelayMs} ms | ${r.reloaded}/${r.swaps} | ` +
        `${r.baseline.connections} / ${r.swapping.connections} | ${
          failures(r.baseline.failed)
        } | ` +
        `${failures(r.swapping.failed)} | ${(total(r.swapping.failed) / r.swaps).toFixed(2)} |`,
    );
  }
  return lines.join("\n");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      inner: { type: "boolean", default: false },
      swaps: { type: "string", default: "40" },
      interval: { type: "string", default: "100" },
      clients: { type: "string", default: "8" },
      migrate: { type: "string", default: "0,1" },
      frontend: { type: "string", default: "deno" },
      "close-delay": { type: "string", default: "0" },
      json: { type: "string" },
    },
  });
  const count = (flag: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) {
      console.error(`--${flag} ${text}: expected an integer >= ${min}`);
      Deno.exit(2);
    }
    return n;
  };
  const swaps = count("swaps", values.swaps, 1);
  const intervalMs = count("interval", values.interval, 1);
  const clients = count("clients", values.clients, 1);
  const closeDelayMs = count("close-delay", values["close-delay"], 0);
  const frontend = values.frontend;
  if (frontend !== "deno" && frontend !== "native") {
    console.error(`--frontend ${frontend}: expected deno or native`);
    Deno.exit(2);
  }
  if (values.inner) {
    console.log(JSON.stringify(await inner(swaps, intervalMs, clients, frontend, closeDelayMs)));
    return;
  }
  const settings = values.migrate.split(",").map((v) => v.trim());
  if (settings.some((v) => v !== "0" && v !== "1")) {
    console.error(`--migrate ${values.migrate}: expected 0, 1 or 0,1`);
    Deno.exit(2);
  }
  const unavailable = await namespaceUnavailable();
  if (unavailable !== undefined) {
    console.error(`cannot measure: ${unavailable}`);
    Deno.exit(1);
  }
  const runs: SwapRun[] = [];
  for (const migrate of settings) {
    runs.push(
      await measureInNamespace({
        migrate: Number(migrate) as 0 | 1,
        swaps,
        intervalMs,
        clients,
        frontend,
        closeDelayMs,
      }),
    );
  }
  console.log(table(runs));
  if (values.json !== undefined) {
    await Deno.writeTextFile(values.json, JSON.stringify(runs, null, 2) + "\n");
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    console.error(`cert_swap: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
