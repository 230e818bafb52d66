/**
 * @module
 * The compression profile (issue 14): what compressing a ~20 KiB JSON answer costs in CPU per
 * request and saves in bytes on the wire, for lib/compress.ts against nginx `gzip on`
 * (`gzip_comp_level 6`, the level of our gzip), in the same run.
 *
 * One nginx backend (load core) answers `/compress` uncompressed. Targets, each alone on the
 * balancer core: nginx proxy with and without gzip; bench/compress_front.ts (Deno.serve + fetch)
 * with and without lib/compress.ts's `encodeResponse`; and this balancer (`main.ts --config` with
 * `"compress": true`) when its `--check` accepts that key. The cost of compression is each
 * proxy's CPU per request with compression minus without; wrk sends `Accept-Encoding: gzip`,
 * `br`, `zstd` or nothing. Writes bench/results/compress/latest.json and prints Markdown.
 *
 *     deno run -A bench/compress.ts [--duration 5s] [--rounds 2] [--balancer-cpu 1] [--load-cpu 0]
 */

import { parseArgs } from "node:util";
import { freePort, run, start, type Started, stopAll, treeCpu, waitReady } from "./system.ts";
import { PROJECT_DIR } from "./targets.ts";
import { runWrk, writeScript } from "./wrk.ts";
import type { Profile } from "./wrk.ts";

/** Uncompressed size of the `/compress` answer. */
export const BODY_BYTES = 20 * 1024;

/** The request encodings measured: "none" sends no Accept-Encoding. */
const ENCODINGS = ["none", "gzip", "br", "zstd"] as const;

/** ~20 KiB of JSON like an API listing (ids, names, states, numbers): about 6:1 with gzip. */
export function jsonBody(): string {
  const items: string[] = [];
  let size = 2;
  for (let i = 0; size < BODY_BYTES - 200; i++) {
    const item = JSON.stringify({
      id: 10_000 + i,
      sku: `SKU-${(i * 7919) % 100_000}`,
      name: `Product ${i} ${["basic", "plus", "pro", "max"][i % 4]}`,
      status: ["active", "pending", "closed"][(i * 5) % 3],
      price: ((i * 1237) % 50_000) / 100,
      tags: ["bench", i % 2 ? "sale" : "new"],
      updated: new Date(Date.UTC(2025, 0, 1) + i * 3_600_000).toISOString(),
    });
    items.push(item);
    size += item.length + 1;
  }
  return `[${items.join(",")}]`;
}

function backendConf(dir: string, port: number): string {
  return `${Deno.uid() === 0 ? "user root;" : ""}
worker_processes 1; daemon off; master_process on; pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; tcp_nodelay on;
  keepalive_timeout 300s; keepalive_requests 1000000000;
  client_body_temp_path ${dir}/cb; proxy_temp_path ${dir}/px; fastcgi_temp_path ${dir}/fc;
  uwsgi_temp_path ${dir}/uw; scgi_temp_path ${dir}/sc;
  server {
    listen 127.0.0.1:${port} backlog=4096;
    root ${dir}/www;
    location = / { return 200 "ok\\n"; }
    location = /compress { default_type application/json; gzip off; }
  }
}`;
}

function proxyConf(dir: string, port: number, backend: number, gzip: boolean): string {
  // Same rules as lib/compress.ts's defaults for this answer: level 6, at least 1024 bytes, Vary.
  const gzipLines = gzip
    ? "gzip on; gzip_comp_level 6; gzip_types application/json; gzip_min_length 1024; " +
      "gzip_proxied any; gzip_vary on;"
    : "gzip off;";
  return `${Deno.uid() === 0 ? "user root;" : ""}
worker_processes 1; daemon off; master_process on; pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_timeout 300s; keepalive_requests 1000000000;
  proxy_buffer_size 16k; proxy_buffers 8 16k; proxy_max_temp_file_size 0;
  client_body_temp_path ${dir}/cb; proxy_temp_path ${dir}/px; fastcgi_temp_path ${dir}/fc;
  uwsgi_temp_path ${dir}/uw; scgi_temp_path ${dir}/sc;
  upstream backends { server 127.0.0.1:${backend}; keepalive 128; }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    ${gzipLines}
    location / {
      proxy_pass http://backends; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Accept-Encoding "";
    }
  }
}`;
}

/** A proxy under test: how to start it on `port` in `dir`, pinned to `cpus`. */
interface CompressTarget {
  id: string;
  label: string;
  start(dir: string, port: number, backend: number, cpus: string): Promise<Started>;
}

function nginxTarget(gzip: boolean): CompressTarget {
  return {
    id: gzip ? "nginx-gzip" : "nginx-plain",
    label: gzip ? "nginx, gzip on (level 6)" : "nginx, gzip off",
    async start(dir, port, backend, cpus) {
      await Deno.writeTextFile(`${dir}/nginx.conf`, proxyConf(dir, port, backend, gzip));
      const proc = await start(
        "nginx proxy",
        ["nginx", "-p", dir, "-e", `${dir}/error.log`, "-c", `${dir}/nginx.conf`],
        { cpus, logFile: `${dir}/output.log` },
      );
      await waitReady(`http://127.0.0.1:${port}/`, proc);
      return proc;
    },
  };
}

/** `deno run args` from the project folder, pinned to `cpus`, ready once `port` answers. */
async function startDeno(
  name: string,
  args: string[],
  where: { dir: string; port: number; cpus: string },
): Promise<Started> {
  const proc = await start(name, [Deno.execPath(), "run", ...args], {
    cwd: PROJECT_DIR,
    cpus: where.cpus,
    logFile: `${where.dir}/output.log`,
  });
  await waitReady(`http://127.0.0.1:${where.port}/`, proc, 30_000);
  return proc;
}

function frontTarget(compress: boolean): CompressTarget {
  return {
    id: compress ? "deno-compress" : "deno-plain",
    label: compress ? "Deno.serve + fetch + encodeResponse" : "Deno.serve + fetch",
    start(dir, port, backend, cpus) {
      return startDeno("front", [
        "--allow-net",
        "bench/compress_front.ts",
        String(port),
        `http://127.0.0.1:${backend}`,
        compress ? "compress" : "plain",
      ], { dir, port, cpus });
    },
  };
}

/** This balancer with a config file: `"compress": true` at the top level, or none. */
function balancerTarget(compress: boolean): CompressTarget {
  return {
    id: compress ? "balancer-compress" : "balancer-plain",
    label: compress ? 'this balancer, "compress": true' : "this balancer",
    async start(dir, port, backend, cpus) {
      const config = `${dir}/lb.json`;
      await Deno.writeTextFile(config, balancerConfig(backend, compress));
      return await startDeno("balancer", [
        "--allow-net",
        "--allow-read",
        "main.ts",
        "--config",
        config,
        `-port=${port}`,
        "--host",
        "127.0.0.1",
        "--log-level",
        "warn",
      ], { dir, port, cpus });
    },
  };
}

function balancerConfig(backend: number, compress: boolean): string {
  return JSON.stringify({
    backends: [`http://127.0.0.1:${backend}`],
    ...(compress ? { compress: true } : {}),
  });
}

/** Whether `main.ts --check` accepts `"compress": true` (the lead's integration has landed). */
async function balancerSupportsCompress(dir: string): Promise<boolean> {
  const config = `${dir}/check.json`;
  await Deno.writeTextFile(config, balancerConfig(1, true));
  const result = await run(
    [Deno.execPath(), "run", "-A", "main.ts", "--config", config, "--check"],
    { cwd: PROJECT_DIR },
  );
  return result.code === 0;
}

/** One measured run. */
interface Row {
  round: number;
  target: string;
  encoding: string;
  requests: number;
  requestsPerSecond: number;
  bytesPerResponse: number;
  cpuUsPerRequest: number;
  errors: number;
  p50Us: number;
}

function profileFor(encoding: (typeof ENCODINGS)[number]): Profile {
  return {
    id: `compress-${encoding}`,
    label: `20 KiB JSON, Accept-Encoding: ${encoding}, 50 connections`,
    path: "/compress",
    connections: 50,
    setup: encoding === "none" ? "" : `wrk.headers["Accept-Encoding"] = "${encoding}"`,
  };
}

/** Median of the rounds' values. */
function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function markdown(rows: Row[], targets: CompressTarget[]): string {
  const cell = (target: string, encoding: string) => {
    const runs = rows.filter((r) => r.target === target && r.encoding === encoding);
    if (runs.length === 0) return undefined;
    return {
      cpu: median(runs.map((r) => r.cpuUsPerRequest)),
      bytes: median(runs.map((r) => r.bytesPerResponse)),
      rps: median(runs.map((r) => r.requestsPerSecond)),
      errors: runs.reduce((s, r) => s + r.errors, 0),
    };
  };
  const lines = [
    "| target | Accept-Encoding | req/s | CPU us/req | bytes/response | errors |",
    "|---|---|---:|---:|---:|---:|",
  ];
  for (const t of targets) {
    for (const e of ENCODINGS) {
      const c = cell(t.id, e);
      if (c === undefined) continue;
      lines.push(
        `| ${t.label} | ${e} | ${c.rps.toFixed(0)} | ${c.cpu.toFixed(1)} | ${
          c.bytes.toFixed(0)
        } | ${c.errors} |`,
      );
    }
  }
  const nginxGzip = cell("nginx-gzip", "gzip");
  const nginxPlain = cell("nginx-plain", "gzip");
  if (nginxGzip && nginxPlain) {
    const nginxCost = nginxGzip.cpu - nginxPlain.cpu;
    lines.push(
      "",
      "Compression's own cost: CPU per request with compression minus the same proxy without " +
        "(same Accept-Encoding), and wire bytes as a ratio to nginx gzip level 6:",
      "",
      "| compressor | Accept-Encoding | added CPU us/req | ratio to nginx gzip | bytes/response | " +
        "bytes ratio to nginx gzip | bytes saved vs uncompressed |",
      "|---|---|---:|---:|---:|---:|---:|",
      `| nginx gzip 6 | gzip | ${nginxCost.toFixed(1)} | 1.00 | ${nginxGzip.bytes.toFixed(0)} | ` +
        `1.00 | ${(100 * (1 - nginxGzip.bytes / nginxPlain.bytes)).toFixed(1)}% |`,
    );
    for (
      const [withId, withoutId, name] of [
        ["deno-compress", "deno-plain", "encodeResponse (Deno.serve + fetch)"],
        ["balancer-compress", "balancer-plain", "this balancer (its lib/dispatch.ts call)"],
      ]
    ) {
      for (const e of ENCODINGS.filter((e) => e !== "none")) {
        const on = cell(withId, e);
        const off = cell(withoutId, e);
        if (!on || !off) continue;
        const cost = on.cpu - off.cpu;
        lines.push(
          `| ${name} | ${e} | ${cost.toFixed(1)} | ${(cost / nginxCost).toFixed(2)} | ${
            on.bytes.toFixed(0)
          } | ${(on.bytes / nginxGzip.bytes).toFixed(2)} | ${
            (100 * (1 - on.bytes / off.bytes)).toFixed(1)
          }% |`,
        );
      }
    }
  }
  return lines.join("\n");
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args: args.map((a) => /^-[a-z]/.test(a) ? `-${a}` : a),
    options: {
      duration: { type: "string", default: "5" },
      warmup: { type: "string", default: "1" },
      rounds: { type: "string", default: "2" },
      "balancer-cpu": { type: "string", default: "1" },
      "load-cpu": { type: "string", default: "0" },
      out: { type: "string", default: new URL("results/compress", import.meta.url).pathname },
    },
  });
  const seconds = Number(values.duration!.replace(/s$/, ""));
  const warmup = Number(values.warmup!.replace(/s$/, ""));
  const rounds = Number(values.rounds);
  if (![seconds, warmup, rounds].every((n) => Number.isInteger(n) && n >= 0) || seconds < 1) {
    console.error("bench/compress.ts: --duration, --warmup and --rounds take whole numbers");
    return 2;
  }
  const tmp = await Deno.makeTempDir({ prefix: "lb-compress-" });
  const say = (line: string) => console.error(line);
  const rows: Row[] = [];
  const targets = [nginxTarget(true), nginxTarget(false), frontTarget(true), frontTarget(false)];
  const notes: string[] = [];
  if (await balancerSupportsCompress(tmp)) {
    targets.push(balancerTarget(true), balancerTarget(false));
  } else {notes.push(
      '`main.ts --check` refuses `"compress": true`: the balancer rows were skipped.',
    );}
  try {
    await Deno.mkdir(`${tmp}/backend/www`, { recursive: true });
    await Deno.writeTextFile(`${tmp}/backend/www/compress`, jsonBody());
    const backendPort = freePort();
    await Deno.writeTextFile(
      `${tmp}/backend/nginx.conf`,
      backendConf(`${tmp}/backend`, backendPort),
    );
    const backend = await start("backend", [
      "nginx",
      "-p",
      `${tmp}/backend`,
      "-e",
      `${tmp}/backend/error.log`,
      "-c",
      `${tmp}/backend/nginx.conf`,
    ], { cpus: values["load-cpu"], logFile: `${tmp}/backend/output.log` });
    await waitReady(`http://127.0.0.1:${backendPort}/`, backend);
    for (let round = 1; round <= rounds; round++) {
      for (const encoding of ENCODINGS) {
        const profile = profileFor(encoding);
        const script = await writeScript(profile, tmp);
        for (const target of targets) {
          const dir = await Deno.makeTempDir({ dir: tmp, prefix: `${target.id}-` });
          const port = freePort();
          const proc = await target.start(dir, port, backendPort, values["balancer-cpu"]!);
          try {
            if (warmup > 0) await runWrk(profile, script, port, warmup, values["load-cpu"]!);
            const before = treeCpu(proc.pid);
            const wrk = await runWrk(profile, script, port, seconds, values["load-cpu"]!);
            const after = treeCpu(proc.pid);
            const cpu = after.user + after.system - before.user - before.system;
            const row: Row = {
              round,
              target: target.id,
              encoding,
              requests: wrk.requests,
              requestsPerSecond: wrk.requestsPerSecond,
              bytesPerResponse: wrk.bytes / wrk.requests,
              cpuUsPerRequest: (cpu * 1e6) / wrk.requests,
              errors: wrk.errorCount,
              p50Us: wrk.latencyUs.p50,
            };
            rows.push(row);
            say(
              `round ${round} ${encoding.padEnd(4)} ${target.id.padEnd(18)} ` +
                `${row.requestsPerSecond.toFixed(0)} req/s ${
                  row.cpuUsPerRequest.toFixed(1)
                } us/req ` +
                `${row.bytesPerResponse.toFixed(0)} B/resp ${row.errors} errors`,
            );
          } finally {
            await proc.stop(2000);
          }
        }
      }
    }
  } finally {
    await stopAll();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  const text = `${markdown(rows, targets)}\n\n${notes.join("\n")}\n`;
  await Deno.mkdir(values.out!, { recursive: true });
  await Deno.writeTextFile(
    `${values.out}/latest.json`,
    JSON.stringify({ startedAt: new Date().toISOString(), seconds, rounds, rows }, null, 2),
  );
  await Deno.writeTextFile(`${values.out}/latest.md`, text);
  console.log(text);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
