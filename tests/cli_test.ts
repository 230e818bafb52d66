/**
 * @module
 * The command line as users type it: flags in both styles, bad input, help/version, logs,
 * signals. Each test runs main.ts as a real process.
 */
import assert from "node:assert/strict";
import denoJson from "../deno.json" with { type: "json" };
import { delay, getText, heldBackend, refusingUrl, startTestBackend } from "./helpers.ts";
import { runMain, spawnBalancer } from "./process.ts";

Deno.test("Go-style flags `-backends=URL,URL -port=N` work exactly as the original tool's", async () => {
  await using a = await startTestBackend(() => new Response("a"));
  await using b = await startTestBackend(() => new Response("b"));
  await using lb = spawnBalancer([`-backends=${a.url},${b.url}`, "-port=0", "-host=127.0.0.1"]);
  const port = await lb.port();
  const texts = [];
  for (let i = 0; i < 4; i++) texts.push((await getText(`http://127.0.0.1:${port}/`)).text);
  assert.deepEqual(texts, ["a", "b", "a", "b"]);
  assert.ok(lb.lines.some((l) => l.endsWith(`INFO Configured server: ${a.url}`)));
  assert.ok(lb.lines.some((l) => l.endsWith(`INFO Configured server: ${b.url}`)));
});

Deno.test("`--backends URL,URL --port N` (double dash, separate values) works too", async () => {
  await using a = await startTestBackend(() => new Response("a"));
  await using lb = spawnBalancer(["--backends", a.url, "--port", "0", "--host", "127.0.0.1"]);
  const port = await lb.port();
  assert.equal((await getText(`http://127.0.0.1:${port}/`)).text, "a");
});

Deno.test("log lines follow the original tool's, with levels", async () => {
  await using a = await startTestBackend(() => new Response("a"));
  await using lb = spawnBalancer([
    `-backends=${a.url}`,
    "-port=0",
    "-host=127.0.0.1",
    "--health-interval=100ms",
    "--log-level=debug",
  ]);
  const port = await lb.port();
  await getText(`http://127.0.0.1:${port}/`);
  const stamp = String.raw`^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} `;
  await lb.waitForLine(new RegExp(`${stamp}DEBUG Health check completed$`));
  await lb.waitForLine(new RegExp(`${stamp}DEBUG Starting health check\\.\\.\\.$`));
  await lb.waitForLine(new RegExp(`${stamp}DEBUG ${a.url} \\[up\\]$`));
  await lb.waitForLine(new RegExp(`${stamp}DEBUG Selected backend: ${a.url}$`));
  await lb.waitForLine(new RegExp(`${stamp}INFO Load balancer started at :${port}$`));
});

Deno.test("at the default info level, per-request and per-round lines are not logged", async () => {
  await using a = await startTestBackend(() => new Response("a"));
  await using lb = spawnBalancer([`-backends=${a.url}`, "-port=0", "-host=127.0.0.1"]);
  const port = await lb.port();
  await getText(`http://127.0.0.1:${port}/`);
  await delay(200);
  assert.ok(
    !lb.lines.some((l) => /Selected backend|Starting health check/.test(l)),
    lb.lines.join("\n"),
  );
});

Deno.test("a backend going down is logged once at info, as a state change", async () => {
  const a = await startTestBackend(() => new Response("a"));
  await using lb = spawnBalancer([
    `-backends=${a.url}`,
    "-port=0",
    "-host=127.0.0.1",
    "--health-interval=50ms",
    "--fall=2",
  ]);
  await lb.port();
  await a.close();
  const line = await lb.waitForLine(/INFO .* \[down\]/);
  assert.ok(line.includes(`${a.url} [down] (2 failed checks, last: connection refused)`), line);
  await delay(300);
  assert.equal(lb.lines.filter((l) => l.includes("[down]")).length, 1, "logged once per flip");
});

const BAD_INPUT: [string, string[], RegExp][] = [
  ["no backends", [], /no backends/],
  ["empty backends", ["--backends="], /no backends/],
  [
    "not an absolute URL",
    ["--backends=localhost:8081"],
    /"localhost:8081" is not an absolute http\(s\) URL/,
  ],
  ["not http(s)", ["--backends=ftp://a.example"], /is not an absolute http\(s\) URL/],
  ["a path", ["--backends=http://a.example/app"], /origin only/],
  ["port 0", ["--backends=http://a.example:0"], /"http:\/\/a.example:0" has port 0/],
  ["duplicate", ["--backends=http://a:1,http://a:1/"], /duplicate backend http:\/\/a:1/],
  ["port out of range", ["--backends=http://a:1", "--port=70000"], /--port: 70000 is out of range/],
  [
    "port not a number",
    ["--backends=http://a:1", "-port=abc"],
    /--port: "abc" is not a port number/,
  ],
  ["unknown flag", ["--backends=http://a:1", "--bogus"], /unknown flag --bogus/],
  ["unknown Go-style flag", ["-backend=http://a:1"], /unknown flag --backend/],
  [
    "malformed duration",
    ["--backends=http://a:1", "--timeout=5"],
    /--timeout: "5" is not a duration/,
  ],
  ["malformed duration unit", ["--backends=http://a:1", "--health-interval=2x"], /not a duration/],
  [
    "malformed number",
    ["--backends=http://a:1", "--retries=two"],
    /--retries: "two" is not a whole number/,
  ],
  ["rise of zero", ["--backends=http://a:1", "--rise=0"], /--rise: 0 is out of range/],
  ["bad log level", ["--backends=http://a:1", "--log-level=loud"], /--log-level: "loud"/],
  ["bad weight", ["--backends=http://a:1*x"], /weight "x"/],
  ["missing value", ["--backends=http://a:1", "--port"], /--port/],
  ["stray argument", ["--backends=http://a:1", "extra"], /unexpected argument extra/],
  [
    "malformed read timeout",
    ["--backends=http://a:1", "--read-timeout=soon"],
    /--read-timeout: "soon" is not a duration/,
  ],
  ["zero read timeout", ["--backends=http://a:1", "--read-timeout=0s"], /--read-timeout: /],
  ["unknown transport", ["--backends=http://a:1", "--transport=h3"], /--transport: "h3"/],
];

for (const [what, args, message] of BAD_INPUT) {
  Deno.test(`bad input (${what}) stops start-up with one line and exit code 2`, async () => {
    const { code, stderr, stdout } = await runMain(args);
    assert.equal(code, 2);
    assert.equal(stdout, "");
    const lines = stderr.trimEnd().split("\n");
    assert.equal(lines.length, 1, `one line, got:\n${stderr}`);
    assert.match(lines[0], /^load-balancer: /);
    assert.match(lines[0], message);
    assert.doesNotMatch(stderr, /\bat .*\.ts:\d+/, "no stack trace");
  });
}

Deno.test("--help prints usage and --version the version from deno.json, both exit 0", async () => {
  const help = await runMain(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: load-balancer -backends=URL/);
  for (const flag of ["--health-interval", "--retries", "--drain-timeout", "--log-level"]) {
    assert.ok(help.stdout.includes(flag), flag);
  }
  const version = await runMain(["-version"]);
  assert.equal(version.code, 0);
  assert.equal(version.stdout.trim(), `load-balancer ${denoJson.version}`);
});

Deno.test("SIGTERM lets an in-flight slow request finish, then exits 0", async () => {
  // Held until SIGTERM; health checks are not counted as arrivals (SIGTERM on the start-up
  // check's arrival raced the client's request, leaving nothing in flight to wait for).
  await using slow = await heldBackend("finished");
  await using lb = spawnBalancer([`-backends=${slow.url}`, "-port=0", "-host=127.0.0.1"]);
  const port = await lb.port();
  // A client of its own: the shared one may hold an idle connection to an earlier test's
  // balancer that had the same port, and send this request on it.
  using client = Deno.createHttpClient({});
  const pending = getText(`http://127.0.0.1:${port}/`, { client });
  await slow.arrived;
  lb.child.kill("SIGTERM");
  await lb.waitForLine(/Shutting down/);
  setTimeout(slow.release, 200);
  const { status, text } = await pending;
  assert.equal(status, 200);
  assert.equal(text, "finished");
  assert.equal(await lb.exited, 0);
  await assert.rejects(() => fetch(`http://127.0.0.1:${port}/`), "no longer accepting");
});

for (const frontend of ["deno", "native"]) {
  Deno.test(`--frontend ${frontend}: /readyz answers 503 draining from the start of the drain; /healthz stays 200`, async () => {
    await using slow = await heldBackend("finished");
    await using lb = spawnBalancer([
      `-backends=${slow.url}`,
      "-port=0",
      "-host=127.0.0.1",
      `--frontend=${frontend}`,
      "--admin=127.0.0.1:0",
      "--drain-timeout=10s",
    ]);
    const port = await lb.port();
    const adminLine = await lb.waitForLine(/Admin listener started at 127\.0\.0\.1:\d+/);
    const admin = `http://127.0.0.1:${/:(\d+)$/.exec(adminLine)![1]}`;
    using client = Deno.createHttpClient({});
    // Caught: a failed assertion below kills the process, and this must not fail the file.
    const pending = getText(`http://127.0.0.1:${port}/`, { client }).catch((error) => error);
    try {
      await slow.arrived;
      assert.deepEqual(await probe(`${admin}/readyz`), [200, "ready\n"]);
      lb.child.kill("SIGTERM");
      await lb.waitForLine(/Shutting down/);
      // The admin listener stays up through the drain, so a health check sees it fail.
      assert.deepEqual(await probe(`${admin}/readyz`), [503, "draining\n"]);
      assert.deepEqual(await probe(`${admin}/healthz`), [200, "ok\n"], "still alive");
    } finally {
      slow.release();
    }
    assert.equal((await pending).text, "finished");
    assert.equal(await lb.exited, 0);
  });
}

/** Status and body of a GET on a connection of its own (the admin listener's is closing). */
async function probe(url: string): Promise<[number, string]> {
  using client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  const { status, text } = await getText(url, { client });
  return [status, text];
}

Deno.test("SIGINT with a request that outlives --drain-timeout exits 0 after the deadline", async () => {
  await using stuck = await heldBackend("late");
  await using lb = spawnBalancer([
    `-backends=${stuck.url}`,
    "-port=0",
    "-host=127.0.0.1",
    "--drain-timeout=200ms",
  ]);
  const port = await lb.port();
  const pending = fetch(`http://127.0.0.1:${port}/`).then((r) => r.text()).catch((e) => e);
  await stuck.arrived;
  const started = performance.now();
  lb.child.kill("SIGINT");
  assert.equal(await lb.exited, 0);
  assert.ok(performance.now() - started < 5000);
  assert.ok(
    lb.lines.some((l) => l.includes("Drain timeout: 1 request(s) were cut off")),
    lb.lines.join("\n"),
  );
  assert.ok(
    (await pending) instanceof Error,
    "the cut-off request fails rather than looking complete",
  );
  stuck.release();
});

Deno.test("start-up fails with a clear line when the port is taken", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const { code, stderr } = await runMain([
      `--backends=${refusingUrl()}`,
      `--port=${listener.addr.port}`,
      "--host=127.0.0.1",
    ]);
    assert.equal(code, 1);
    assert.match(stderr, /load-balancer: cannot listen on 127\.0\.0\.1:\d+: /);
    assert.doesNotMatch(stderr, /\bat .*\.ts:\d+/);
  } finally {
    listener.close();
  }
});
