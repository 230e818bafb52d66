/**
 * @module
 * The config file as operators use it, with main.ts as a real process: `--check`, reload on a
 * file change and on SIGHUP under continuous traffic, a broken file kept out, and the JSON
 * process log. Each test writes its config into its own temp directory.
 */
import assert from "node:assert/strict";
import type { BackendView } from "../lib/admin.ts";
import { delay, makeFifo, namedBackend, SequentialTraffic, within } from "./helpers.ts";
import { installed } from "./pki.ts";
import { type BalancerProcess, configDir, runMain, spawnOnConfig } from "./process.ts";

/** Generous: a loaded 2-core CI machine may take seconds to notice a file or a signal. */
const WAIT_MS = 20_000;

const HAS_MKFIFO = await installed("mkfifo");
if (!HAS_MKFIFO) {
  console.log(
    "reload_test.ts: mkfifo is not installed, so no FIFO can be made: the test of a config " +
      "file replaced by a FIFO is skipped (apt-get install -y coreutils)",
  );
}

/** A config file's text: `backends` plus loopback listeners on OS-picked ports. */
function configText(backends: string[], extra: Record<string, unknown> = {}): string {
  const settings = {
    backends,
    port: 0,
    host: "127.0.0.1",
    admin: "127.0.0.1:0",
    healthInterval: "200ms",
    ...extra,
  };
  return `// written by reload_test.ts\n${JSON.stringify(settings, null, 2)}\n`;
}

/**
 * Where both reload tests start: backends A, B and C, main.ts on a config file naming A and B,
 * and a traffic loop for its port (not started). Disposing stops the balancer first, then
 * removes the file and stops the backends.
 */
async function balancerOnAB() {
  await using stack = new AsyncDisposableStack();
  const a = stack.use(await namedBackend("A"));
  const b = stack.use(await namedBackend("B"));
  const c = stack.use(await namedBackend("C"));
  const cfg = stack.use(await configDir("lb-reload-"));
  await cfg.write(configText([a.url, b.url]));
  const lb = stack.use(spawnOnConfig(cfg));
  const traffic = new SequentialTraffic(`http://127.0.0.1:${await lb.port()}/`);
  const owned = stack.move(); // every step worked: the caller's `await using` disposes now
  return { a, b, c, cfg, lb, traffic, [Symbol.asyncDispose]: () => owned.disposeAsync() };
}

/** Polls an async condition every 50 ms until it holds; fails after WAIT_MS. */
async function eventually(what: string, condition: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await delay(50);
  }
}

/** The admin port the process logged. */
async function adminPort(lb: BalancerProcess): Promise<number> {
  const line = await lb.waitForLine(/Admin listener started at 127\.0\.0\.1:\d+/);
  return Number(/127\.0\.0\.1:(\d+)/.exec(line)![1]);
}

/** GET /api/backends of the process's admin listener. */
async function backendsOf(port: number): Promise<BackendView[]> {
  const response = await fetch(`http://127.0.0.1:${port}/api/backends`);
  assert.equal(response.status, 200);
  return (await response.json()).backends;
}

// ---------------------------------------------------------------------------------------------
// --check

Deno.test("--check with a valid config file prints ok and exits 0 without starting", async () => {
  await using a = await namedBackend("a");
  await using cfg = await configDir("lb-reload-");
  await cfg.write(configText([a.url, `${a.url.replace("127.0.0.1", "localhost")}*2`]));
  const { code, stdout, stderr } = await runMain(["--config", cfg.path, "--check"], {
    permissions: [`--allow-read=${cfg.dir}`],
  });
  assert.equal(stderr, "");
  assert.equal(stdout, `load-balancer: ${cfg.path}: ok\n`);
  assert.equal(code, 0);
  assert.equal(a.received.length + a.healthChecks.count, 0, "nothing was started");
});

const SEVERAL_PROBLEMS = `// several problems
{
  "backends": ["http://127.0.0.1:1", "ftp://b.example"],
  "port": 70000,
  "healthIntervall": "5s",
  "timeout": "5",
}
`;

Deno.test("--check lists every problem of a file with path and line:column, one per line; exit 2", async () => {
  await using cfg = await configDir("lb-reload-");
  await cfg.write(SEVERAL_PROBLEMS);
  const { code, stdout, stderr } = await runMain(["--config", cfg.path, "--check"], {
    permissions: [`--allow-read=${cfg.dir}`],
  });
  assert.equal(code, 2);
  assert.equal(stdout, "");
  const at = `load-balancer: ${cfg.path}`;
  assert.deepEqual(stderr.trimEnd().split("\n").sort(), [
    `${at}:3:38: backends[1]: "ftp://b.example" is not an absolute http(s) URL`,
    `${at}:4:3: port: 70000 is out of range (0 to 65535)`,
    `${at}:5:3: healthIntervall: unknown key (did you mean "healthInterval"?)`,
    `${at}:6:3: timeout: "5" is not a duration (use e.g. 500ms, 2s, 1m)`,
  ]);
});

Deno.test("--check reports the flags' problems together with the file's", async () => {
  await using cfg = await configDir("lb-reload-");
  await cfg.write(SEVERAL_PROBLEMS);
  const { code, stderr } = await runMain(
    ["--config", cfg.path, "--check", "--retries=two", "--log-level=loud"],
    { permissions: [`--allow-read=${cfg.dir}`] },
  );
  assert.equal(code, 2);
  const lines = stderr.trimEnd().split("\n");
  assert.equal(lines.length, 6, stderr);
  assert.ok(lines.every((line) => line.startsWith("load-balancer: ")), stderr);
  assert.ok(lines.includes('load-balancer: --retries: "two" is not a whole number'), stderr);
  assert.ok(
    lines.includes('load-balancer: --log-level: "loud" is not one of debug, info, warn, error'),
    stderr,
  );
  assert.equal(lines.filter((l) => l.startsWith(`load-balancer: ${cfg.path}:`)).length, 4);
});

Deno.test("--check names a syntax error's line:column and an unreadable file's reason", async () => {
  await using cfg = await configDir("lb-reload-");
  await cfg.write('{\n  "backends": ["http://127.0.0.1:1"]\n  "port": 0\n}\n');
  const syntax = await runMain(["--config", cfg.path, "--check"], {
    permissions: [`--allow-read=${cfg.dir}`],
  });
  assert.equal(syntax.code, 2);
  assert.equal(
    syntax.stderr,
    `load-balancer: ${cfg.path}:3:3: expected "," or "}" after a member, found "\\""\n`,
  );
  const denied = await runMain(["--config", cfg.path, "--check"]);
  assert.equal(denied.code, 2);
  assert.equal(
    denied.stderr,
    `load-balancer: ${cfg.path}: cannot read the file: not allowed to read it (run with --allow-read)\n`,
  );
  const missing = await runMain(["--config", `${cfg.dir}/nope.jsonc`, "--check"], {
    permissions: [`--allow-read=${cfg.dir}`],
  });
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /nope\.jsonc: cannot read the file: no such file\n$/);
});

Deno.test("--admin off loopback without a token exits 2; a token from flag or env allows it", async () => {
  const args = ["--backends=http://127.0.0.1:1", "--admin", "0.0.0.0:0", "--check"];
  const exposed = await runMain(args);
  assert.equal(exposed.code, 2);
  assert.equal(
    exposed.stderr,
    "load-balancer: --admin: 0.0.0.0 is not a loopback address; set --admin-token " +
      "(or LB_ADMIN_TOKEN) so that not everyone who reaches it controls the balancer\n",
  );
  const flag = await runMain([...args, "--admin-token=0123456789abcdef0123"]);
  assert.equal(flag.code, 0, flag.stderr);
  const env = await runMain(args, {
    permissions: ["--allow-env=LB_ADMIN_TOKEN"],
    env: { LB_ADMIN_TOKEN: "0123456789abcdef0123" },
  });
  assert.equal(env.code, 0, env.stderr);
  assert.equal(env.stdout, "load-balancer: command line: ok\n");
  const loopback = await runMain([
    "--backends=http://127.0.0.1:1",
    "--admin=127.0.0.1:0",
    "--check",
  ]);
  assert.equal(loopback.code, 0, "loopback needs no token");
});

// ---------------------------------------------------------------------------------------------
// Reload

Deno.test("editing the config file reloads it by itself, SIGHUP too, with zero failed requests", async () => {
  await using setup = await balancerOnAB();
  const { a, b, c, cfg, lb, traffic } = setup;
  const admin = await adminPort(lb);
  try {
    await traffic.more(20);
    assert.ok(a.received.length > 0 && b.received.length > 0, "A and B both serve");
    const aBefore = (await backendsOf(admin)).find((v) => v.url === a.url)!;

    // An editor's save (atomic rename) of A,C: picked up without any signal.
    await cfg.write(configText([a.url, c.url]));
    await lb.waitForLine(/INFO Reloaded: 1 added, 1 removed, 0 reweighted$/, WAIT_MS);
    await traffic.more(3); // whatever was in flight at the reload has finished
    const bAfterReload = b.received.length;
    const cAfterReload = c.received.length;
    await traffic.more(30);
    assert.equal(b.received.length, bAfterReload, "B receives no new requests");
    assert.ok(c.received.length >= cAfterReload + 10, "C receives its share");
    const aAfter = (await backendsOf(admin)).find((v) => v.url === a.url)!;
    assert.ok(aAfter.requests > aBefore.requests, "A's counters went on, not from zero");
    assert.notEqual(aAfter.lastCheck, null, "A's health was kept");
    await eventually("B has left the pool", async () => {
      const urls = (await backendsOf(admin)).map((v) => v.url);
      return urls.length === 2 && !urls.includes(b.url);
    });
    const configured = lb.lines.filter((l) => l.endsWith(`Configured server: ${a.url}`));
    assert.equal(configured.length, 1, "A was kept, not added again");

    // Another edit, then SIGHUP: A gets weight 2; settings that need a restart are named.
    await cfg.write(
      configText([`${a.url}*2`, c.url], { host: "127.0.0.2", drainTimeout: "5s" }),
    );
    lb.child.kill("SIGHUP");
    await lb.waitForLine(/INFO Reloaded: 0 added, 0 removed, 1 reweighted$/, WAIT_MS);
    await lb.waitForLine(
      /WARN Reload ignored settings that need a restart: host$/,
      WAIT_MS,
    );
    const weights = (await backendsOf(admin)).map((v) => [v.url, v.weight]);
    assert.deepEqual(weights, [[a.url, 2], [c.url, 1]]);

    // SIGHUP alone reloads: once the watcher's reload of that edit has come and gone (no new
    // reload line for a second), the next reload can only come from the signal.
    const reloads = () => lb.lines.filter((l) => l.includes("INFO Reloaded: ")).length;
    let before = -1;
    for (let i = 0; i < 20 && before !== reloads(); i++) {
      before = reloads();
      await delay(1000);
    }
    assert.equal(reloads(), before, "the file watcher has gone quiet");
    lb.child.kill("SIGHUP");
    await eventually("SIGHUP reloaded", () => Promise.resolve(reloads() > before));
    assert.match(
      lb.lines.filter((l) => l.includes("INFO Reloaded: ")).at(-1)!,
      /0 added, 0 removed, 0 reweighted$/,
    );
    await traffic.more(20);
  } finally {
    await traffic.stop();
  }
  assert.deepEqual(traffic.failures, [], "no request failed during the reloads");
  // A's count in the balancer is every request A ever received: never reset by a reload.
  const views = await backendsOf(admin);
  const view = (url: string) => views.find((v) => v.url === url)!;
  assert.equal(view(a.url).requests, a.received.length);
  assert.equal(view(c.url).requests, c.received.length);
  assert.equal(view(a.url).status, "up");
  assert.ok(!lb.lines.some((l) => /ERROR|Unhandled/.test(l)), lb.lines.join("\n"));
});

Deno.test("a broken config file is kept out: the reload fails with the problem, traffic goes on", async () => {
  await using setup = await balancerOnAB();
  const { a, b, c, cfg, lb, traffic } = setup;
  try {
    await traffic.more(10);
    // Valid JSONC naming C, but one bad value: none of it may be applied.
    await cfg.write(configText([a.url, c.url], { retries: -1 }));
    lb.child.kill("SIGHUP");
    await lb.waitForLine(/ERROR Reload failed, keeping the running configuration:$/, WAIT_MS);
    const problem = await lb.waitForLine(/retries: -1 is out of range/, WAIT_MS);
    assert.equal(problem, `  ${cfg.path}:11:3: retries: -1 is out of range (0 to 100)`);
    const [aCount, bCount] = [a.received.length, b.received.length];
    await traffic.more(30);
    assert.ok(a.received.length > aCount && b.received.length > bCount, "A and B still serve");
    assert.equal(c.received.length, 0, "the broken file's backend was never used");
    assert.ok(!lb.lines.some((l) => l.includes("Reloaded:")), lb.lines.join("\n"));

    // A syntax error too; then a fixed file is applied as usual.
    await cfg.write('{ "backends": [');
    lb.child.kill("SIGHUP");
    await lb.waitForLine(/found the end of the text/, WAIT_MS);
    await traffic.more(10);
    await cfg.write(configText([a.url, c.url]));
    await lb.waitForLine(/INFO Reloaded: 1 added, 1 removed, 0 reweighted$/, WAIT_MS);
    await traffic.more(20);
    assert.ok(c.received.length > 0, "the fixed file is applied");
  } finally {
    await traffic.stop();
  }
  assert.deepEqual(traffic.failures, [], "no request failed");
});

Deno.test("an edit SIGHUP applied is not applied again by the watch, and a file put back after it is", async () => {
  await using setup = await balancerOnAB();
  const { a, b, c, cfg, lb, traffic } = setup;
  try {
    const admin = await adminPort(lb);
    const reloads = () => lb.lines.filter((l) => l.includes("INFO Reloaded: "));
    await cfg.write(configText([a.url, c.url]));
    lb.child.kill("SIGHUP");
    await lb.waitForLine(/INFO Reloaded: 1 added, 1 removed, 0 reweighted$/, WAIT_MS);
    // Ten debounce periods: the watch's reload of the same edit would have come by now.
    await delay(2000);
    assert.equal(reloads().length, 1, reloads().join("\n"));

    // B by SIGHUP, then the file put back at once, no signal: what runs must follow the file.
    await cfg.write(configText([b.url]));
    lb.child.kill("SIGHUP");
    await lb.waitForLine(/INFO Reloaded: 1 added, 2 removed, 0 reweighted$/, WAIT_MS);
    await cfg.write(configText([a.url, c.url]));
    await eventually("the file's backends run again", async () => {
      const urls = (await backendsOf(admin)).map((v) => v.url);
      return urls.join() === [a.url, c.url].join();
    });
    assert.ok(!lb.lines.some((l) => /ERROR|Unhandled/.test(l)), lb.lines.join("\n"));
  } finally {
    await traffic.stop();
  }
});

const TOKEN = "0123456789abcdef0123";

/**
 * The status of GET `url` with `token` as bearer, if any (the body is consumed); aborted after
 * WAIT_MS, so that a balancer that stopped answering fails the test instead of hanging it.
 */
async function statusOf(url: string, token?: string): Promise<number> {
  const headers: HeadersInit = token === undefined ? {} : { authorization: `Bearer ${token}` };
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), WAIT_MS);
  try {
    const response = await fetch(url, { headers, signal: controller.signal });
    await response.body?.cancel();
    return response.status;
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("a reload that would leave the running admin listener off loopback without a token is refused", async () => {
  await using a = await namedBackend("A");
  await using cfg = await configDir("lb-reload-");
  await cfg.write(configText([a.url], { admin: "0.0.0.0:0", adminToken: TOKEN }));
  await using lb = spawnOnConfig(cfg);
  const started = await lb.waitForLine(/Admin listener started at 0\.0\.0\.0:\d+/);
  const api = `http://127.0.0.1:${/:(\d+)$/.exec(started)![1]}/api/backends`;
  assert.equal(await statusOf(api), 401);

  // The file now names loopback without a token, then no admin at all; `admin` needs a restart,
  // so the listener stays on 0.0.0.0 and each reload is refused.
  const refusal = "  --admin-token: the admin listener stays on 0.0.0.0, not a loopback address, " +
    "until a restart; keep a token (or LB_ADMIN_TOKEN) so that not everyone who reaches it " +
    "controls the balancer";
  for (const admin of ["127.0.0.1:0", undefined]) {
    const seen = lb.lines.length;
    const outcomes = () =>
      lb.lines.slice(seen).filter((line) => line === refusal || line.includes("Reloaded:"));
    await cfg.write(configText([a.url], { admin })); // the file watcher reloads it
    await eventually("the reload's outcome", () => Promise.resolve(outcomes().length > 0));
    assert.deepEqual(outcomes(), [refusal], `admin ${admin}`);
    assert.equal(await statusOf(api), 401, "the token is still required");
    assert.equal(await statusOf(api, TOKEN), 200);
  }
  assert.ok(!lb.lines.some((l) => l.includes("Reloaded:")), lb.lines.join("\n"));

  // With a token kept, the same edit reloads (the address change waits for a restart).
  await cfg.write(configText([a.url], { adminToken: TOKEN }));
  await lb.waitForLine(/WARN Reload ignored settings that need a restart: admin$/, WAIT_MS);
  assert.equal(await statusOf(api), 401);
});

Deno.test({
  name:
    "a config file replaced by a FIFO: the reload is refused at once, requests and SIGTERM go on",
  ignore: !HAS_MKFIFO,
  async fn() {
    await using a = await namedBackend("A");
    await using cfg = await configDir("lb-reload-");
    await cfg.write(configText([a.url]));
    await using lb = spawnOnConfig(cfg);
    const url = `http://127.0.0.1:${await lb.port()}/`;
    assert.equal(await statusOf(url), 200);
    await Deno.remove(cfg.path);
    await makeFifo(cfg.path);
    lb.child.kill("SIGHUP");
    // A read of the FIFO would block the process until a writer came: none ever does.
    const problem = await lb.waitForLine(/lb\.jsonc: cannot read the file: not a regular/, WAIT_MS);
    assert.equal(problem, `  ${cfg.path}: cannot read the file: not a regular file (a FIFO)`);
    for (let i = 0; i < 20; i++) assert.equal(await statusOf(`${url}after-${i}`), 200);
    const after = a.received.filter((r) => r.path.startsWith("/after-"));
    assert.equal(after.length, 20, "A still serves");
    lb.child.kill("SIGTERM");
    assert.equal(await within(lb.exited, WAIT_MS, "the exit after SIGTERM"), 0);
    assert.match(lb.lines.at(-1)!, /INFO Load balancer stopped$/);
  },
});

// ---------------------------------------------------------------------------------------------
// JSON process log

/** Asserts that every line is one JSON object with time, level and message; returns them. */
function jsonLines(lines: string[]): { time: string; level: string; message: string }[] {
  return lines.filter((line) => line !== "").map((line) => {
    let record;
    try {
      record = JSON.parse(line);
    } catch {
      throw new Error(`not JSON: ${line}`);
    }
    assert.deepEqual(Object.keys(record), ["time", "level", "message"], line);
    assert.match(record.time, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/, line);
    assert.ok(["debug", "info", "warn", "error"].includes(record.level), line);
    assert.equal(typeof record.message, "string", line);
    return record;
  });
}

Deno.test("--log-format json makes every stderr line a JSON object with time, level, message", async () => {
  await using a = await namedBackend("A");
  await using b = await namedBackend("B");
  await using cfg = await configDir("lb-reload-");
  await cfg.write(configText([a.url, b.url], { fall: 1, healthInterval: "100ms" }));
  await using lb = spawnOnConfig(cfg, ["--log-format", "json"]);
  const port = await lb.port();
  assert.equal((await fetch(`http://127.0.0.1:${port}/`).then((r) => r.text())).length, 1);
  await b.close();
  await lb.waitForLine(/\[down\]/, WAIT_MS);
  await cfg.write("{ oops");
  lb.child.kill("SIGHUP");
  await lb.waitForLine(/Reload failed/, WAIT_MS);
  lb.child.kill("SIGTERM");
  assert.equal(await lb.exited, 0);

  const records = jsonLines(lb.lines);
  const messages = records.map((r) => `${r.level} ${r.message}`);
  assert.ok(messages.includes(`info Configured server: ${a.url}`), messages.join("\n"));
  assert.ok(messages.some((m) => m.startsWith(`info ${b.url} [down]`)), messages.join("\n"));
  const failed = records.find((r) => r.message.startsWith("Reload failed"))!;
  assert.equal(failed.level, "error");
  assert.match(
    failed.message,
    /configuration:\n {2}.*lb\.jsonc:1:3: /,
    "problems stay in one record",
  );
  assert.equal(messages.at(-1), "info Load balancer stopped");
});

Deno.test("--log-format json: a start-up failure is a JSON line too", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const { code, stderr } = await runMain([
      "--backends=http://127.0.0.1:1",
      `--port=${listener.addr.port}`,
      "--host=127.0.0.1",
      "--log-format=json",
    ]);
    assert.equal(code, 1);
    const records = jsonLines(stderr.split("\n"));
    assert.match(records.at(-1)!.message, /^cannot listen on 127\.0\.0\.1:\d+: /);
    assert.equal(records.at(-1)!.level, "error");
  } finally {
    listener.close();
  }
});
