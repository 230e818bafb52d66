/**
 * @module
 * Load profiles and wrk runs. Every run has a fixed duration; a Lua `done()` hook prints wrk's
 * own summary as one JSON line (exact percentiles in microseconds, error counts by kind), so
 * nothing depends on parsing wrk's human-readable units.
 */

import { run } from "./system.ts";

/** One kind of load. */
export interface Profile {
  /** Short id used in JSON. */
  id: string;
  /** Label in tables. */
  label: string;
  /** Request path. */
  path: string;
  /** wrk connections. */
  connections: number;
  /** Lua lines that set up the request (method, body, headers). */
  setup: string;
  /**
   * wrk's `--timeout`: a request slower than this counts as a timeout error (wrk's "Socket
   * errors: ... timeout N"). @default 5
   */
  timeoutSeconds?: number;
}

/** Bytes uploaded per request in the `upload` profile. */
export const UPLOAD_BYTES = 1024 * 1024;

/**
 * What a browser sends besides Host (11 more headers): wrk alone sends only Host, which hides
 * any per-header cost.
 */
const BROWSER_HEADERS = [
  ["User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"],
  ["Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
  ["Accept-Language", "en-GB,en;q=0.9"],
  ["Accept-Encoding", "gzip, deflate, br"],
  ["Cookie", "session=abc123; theme=dark; consent=yes"],
  ["Referer", "https://shop.example.com/cart"],
  ["Sec-Fetch-Mode", "navigate"],
  ["Sec-Fetch-Site", "same-origin"],
  ["Upgrade-Insecure-Requests", "1"],
  ["Cache-Control", "max-age=0"],
  ["Connection", "keep-alive"],
].map(([name, value]) => `wrk.headers["${name}"] = "${value}"`).join("\n");

/** The profiles, in the order they run. */
export const PROFILES: Profile[] = [
  { id: "small", label: "small GET, 50 connections", path: "/", connections: 50, setup: "" },
  { id: "small-c1", label: "small GET, 1 connection", path: "/", connections: 1, setup: "" },
  {
    id: "headers",
    label: "GET with 12 browser-like request headers, 50 connections",
    path: "/",
    connections: 50,
    setup: BROWSER_HEADERS,
  },
  {
    id: "64k",
    label: "64 KiB responses, 50 connections",
    path: "/64k",
    connections: 50,
    setup: "",
  },
  {
    id: "upload",
    label: "1 MiB uploads (POST), 10 connections",
    path: "/upload",
    connections: 10,
    setup: `wrk.method = "POST"
wrk.body = string.rep("x", ${UPLOAD_BYTES})
wrk.headers["Content-Type"] = "application/octet-stream"`,
  },
  {
    id: "gzip",
    label: "gzip responses (32 KiB text), 50 connections",
    path: "/gzip",
    connections: 50,
    setup: `wrk.headers["Accept-Encoding"] = "gzip"`,
  },
  {
    id: "c2000",
    label: "small GET, 2,000 connections",
    path: "/",
    connections: 2000,
    setup: "",
    // wrk's default, as in issue 12's figures (nginx: 173 timeouts at 2,000 connections).
    timeoutSeconds: 2,
  },
];

/** What one wrk run measured. */
export interface WrkResult {
  requests: number;
  durationSeconds: number;
  requestsPerSecond: number;
  bytes: number;
  latencyUs: { p50: number; p90: number; p99: number; max: number; mean: number };
  errors: { connect: number; read: number; write: number; timeout: number; status: number };
  /** All errors: socket errors plus non-2xx/3xx answers. */
  errorCount: number;
}

const DONE_HOOK = `
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"p50":%.0f,"p90":%.0f,"p99":%.0f,"max":%.0f,' ..
    '"mean":%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
`;

/** Writes the Lua script of `profile` into `dir` and returns its path. */
export async function writeScript(profile: Profile, dir: string): Promise<string> {
  const path = `${dir}/${profile.id}.lua`;
  await Deno.writeTextFile(path, `${profile.setup}\n${DONE_HOOK}`);
  return path;
}

/** Parses the `WRKJSON` line printed by the done hook. */
export function parseWrkOutput(stdout: string): WrkResult {
  const line = stdout.split("\n").find((l) => l.startsWith("WRKJSON "));
  if (line === undefined) throw new Error(`wrk printed no summary:\n${stdout.slice(-1500)}`);
  const j = JSON.parse(line.slice("WRKJSON ".length));
  const durationSeconds = j.duration_us / 1e6;
  const errors = {
    connect: j.connect,
    read: j.read,
    write: j.write,
    timeout: j.timeout,
    status: j.status,
  };
  return {
    requests: j.requests,
    durationSeconds,
    requestsPerSecond: j.requests / durationSeconds,
    bytes: j.bytes,
    latencyUs: { p50: j.p50, p90: j.p90, p99: j.p99, max: j.max, mean: j.mean },
    errors,
    errorCount: errors.connect + errors.read + errors.write + errors.timeout + errors.status,
  };
}

/** Runs wrk (one thread, pinned to `cpus`) for `seconds` against `port` with `profile`. */
export async function runWrk(
  profile: Profile,
  script: string,
  port: number,
  seconds: number,
  cpus: string,
): Promise<WrkResult & { text: string }> {
  const result = await run([
    "taskset",
    "-c",
    cpus,
    "wrk",
    "-t1",
    `-c${profile.connections}`,
    `-d${seconds}s`,
    "--timeout",
    `${profile.timeoutSeconds ?? 5}s`,
    "--latency",
    "-s",
    script,
    `http://127.0.0.1:${port}${profile.path}`,
  ]);
  if (result.code !== 0) throw new Error(`wrk failed (${result.code}): ${result.stderr}`);
  return { ...parseWrkOutput(result.stdout), text: result.stdout };
}
