/**
 * @module
 * The command line as lib/settings.ts layers it (defaults, the config file, the flags), called
 * directly: defaults, every flag in both dash styles, help and version, one-line refusals, and
 * the --config file named in problems.
 */

import assert from "node:assert/strict";
import { type Config, DEFAULTS } from "../lib/config.ts";
import { ConfigError } from "../lib/errors.ts";
import { parseCommandLine, reloadSettings } from "../lib/settings.ts";

function run(args: string[]): Config {
  const invocation = parseCommandLine(args);
  assert.equal(invocation.kind, "run");
  return (invocation as { kind: "run"; config: Config }).config;
}

Deno.test("parseCommandLine() gives the documented defaults", () => {
  const config = run(["--backends=http://a:1"]);
  assert.equal(config.port, 3030);
  assert.equal(config.host, "0.0.0.0");
  assert.equal(config.healthInterval, 5000);
  assert.equal(config.healthTimeout, 2000);
  assert.equal(config.healthPath, "/");
  assert.equal(config.rise, 2);
  assert.equal(config.fall, 3);
  assert.equal(config.retries, 2);
  assert.equal(config.connectTimeout, 3000);
  assert.equal(config.timeout, 30000);
  assert.equal(config.drainTimeout, 10000);
  assert.equal(config.logLevel, "info");
  assert.equal(config.policy, "round-robin");
  assert.deepEqual(config.hashKey, { kind: "ip" });
  assert.equal(config.ejectAfter, DEFAULTS.ejectAfter);
  assert.equal(config.retryBudget, 20);
  assert.equal(config.slowStart, 0);
  assert.equal(config.maxConns, 0);
});

Deno.test("parseCommandLine() reads every flag in both dash styles", () => {
  const config = run([
    "-backends=http://a:1,http://b:2*3",
    "--backends",
    "https://c:3",
    "-port=8080",
    "--host",
    "127.0.0.1",
    "--health-interval=500ms",
    "--health-timeout=1s",
    "--health-path=/healthz",
    "--rise=1",
    "--fall=5",
    "--retries=0",
    "--connect-timeout=250ms",
    "--timeout=1m",
    "--drain-timeout=0s",
    "--log-level=DEBUG",
    "--policy=hash",
    "--hash-key=header:X-User",
    "--sticky-cookie=lb",
    "--sticky-secret=0123456789abcdef",
    "--slow-start=30s",
    "--max-conns=100",
    "--eject-after=3",
    "--eject-time=10s",
    "--eject-max-time=1m",
    "--eject-max-percent=30",
    "--eject-on-5xx",
    "--panic-threshold=0",
    "--retry-budget=10",
    "--retry-budget-min=5",
  ]);
  assert.deepEqual(config.backends, [
    { url: "http://a:1", weight: 1 },
    { url: "http://b:2", weight: 3 },
    { url: "https://c:3", weight: 1 },
  ]);
  assert.equal(config.port, 8080);
  assert.equal(config.host, "127.0.0.1");
  assert.equal(config.healthInterval, 500);
  assert.equal(config.healthTimeout, 1000);
  assert.equal(config.healthPath, "/healthz");
  assert.equal(config.rise, 1);
  assert.equal(config.fall, 5);
  assert.equal(config.retries, 0);
  assert.equal(config.connectTimeout, 250);
  assert.equal(config.timeout, 60000);
  assert.equal(config.drainTimeout, 0);
  assert.equal(config.logLevel, "debug");
  assert.equal(config.policy, "hash");
  assert.deepEqual(config.hashKey, { kind: "header", name: "x-user" });
  assert.equal(config.stickyCookie, "lb");
  assert.equal(config.stickySecret, "0123456789abcdef");
  assert.equal(config.slowStart, 30000);
  assert.equal(config.maxConns, 100);
  assert.equal(config.ejectAfter, 3);
  assert.equal(config.ejectTime, 10000);
  assert.equal(config.ejectMaxTime, 60000);
  assert.equal(config.ejectMaxPercent, 30);
  assert.equal(config.ejectOn5xx, true);
  assert.equal(config.panicThreshold, 0);
  assert.equal(config.retryBudget, 10);
  assert.equal(config.retryBudgetMin, 5);
});

Deno.test("parseCommandLine() answers help and version before validating anything", () => {
  assert.deepEqual(parseCommandLine(["--help"]), { kind: "help" });
  assert.deepEqual(parseCommandLine(["-h"]), { kind: "help" });
  assert.deepEqual(parseCommandLine(["-version"]), { kind: "version" });
});

Deno.test("parseCommandLine() allows --demo without backends", () => {
  const config = run(["--demo"]);
  assert.equal(config.demo, true);
  assert.deepEqual(config.backends, []);
});

const REFUSED: [string[], RegExp][] = [
  [["--backends=http://a:1", "--policy=fastest"], /--policy: "fastest" is not one of round-robin/],
  [["--backends=http://a:1", "--hash-key=body"], /--hash-key: /],
  [["--backends=http://a:1", "--sticky-cookie=a b"], /--sticky-cookie: "a b"/],
  [["--backends=http://a:1", "--sticky-secret=short"], /at least 16 bytes/],
  [["--backends=http://a:1", "--eject-time=1m", "--eject-max-time=10s"], /--eject-max-time/],
  [["--backends=http://a:1", "--panic-threshold=101"], /--panic-threshold: 101 is out of range/],
  [["--backends=http://a:1", "--retry-budget=-1"], /--retry-budget/],
  [["--backends=http://user:pw@a:1"], /credentials/],
  [["--backends=http://a:1?x=1"], /origin only/],
  [["--backends=http://a:1*1000001"], /weight "1000001"/],
  [["--backends=http://a:1", "--health-path=health"], /--health-path: "health" must be a path/],
  [["--backends=http://a:1", "--host=a/b"], /--host: "a\/b"/],
];

for (const [args, message] of REFUSED) {
  Deno.test(`parseCommandLine() refuses ${args.at(-1)} with a one-line ConfigError`, () => {
    assert.throws(() => parseCommandLine(args), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, message);
      assert.ok(!error.message.includes("\n"));
      return true;
    });
  });
}

for (
  const [args, message] of [
    [
      ["--backends=http://a:1", "--tls-cert=c.pem"],
      /--tls-key \(tlsKey\): tlsCert is set but tlsKey is not/,
    ],
    [["--backends=http://a:1", "--redirect-http=80"], /needs TLS/],
    [
      ["--backends=http://a:1", "--trusted-proxies=10.0.0.0/33"],
      /--trusted-proxies: "10.0.0.0\/33"/,
    ],
    [["--backends=http://a:1", "--max-body=lots"], /--max-body: "lots" is not a size/],
    [["--discover=http://x"], /--discover: "http:\/\/x" is not dns\+srv/],
    [["--backends=http://a:1", "--workers=0"], /--workers: 0 is out of range/],
    [["--backends=http://a:1", "--dns-server=nowhere"], /--dns-server: "nowhere" is not IP:PORT/],
    [
      ["--backends=http://a:1", "--dns-server=dns.example:53"],
      /--dns-server: "dns.example:53" is not IP:PORT/,
    ],
  ] as [string[], RegExp][]
) {
  Deno.test(`parseCommandLine() refuses ${args.at(-1)} (edge/scale-out)`, () => {
    assert.throws(() => parseCommandLine(args), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, message);
      return true;
    });
  });
}

Deno.test("parseCommandLine() reads the --config file and names it in problems", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const good = `${dir}/good.jsonc`;
    await Deno.writeTextFile(good, '{ "backends": ["http://a:1*2"], "timeout": "1m", }');
    const run = parseCommandLine(["--config", good]);
    assert.ok(run.kind === "run");
    assert.deepEqual(run.config.backends, [{ url: "http://a:1", weight: 2 }]);
    assert.equal(run.config.timeout, 60_000);

    const bad = `${dir}/bad.jsonc`;
    await Deno.writeTextFile(bad, '{ "port": "80" }');
    assert.throws(() => parseCommandLine(["--config", bad]), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.equal(error.message, `${bad}:1:3: port: "80" is not a port number`);
      return true;
    });

    const missing = `${dir}/missing.jsonc`;
    assert.throws(() => parseCommandLine(["--config", missing]), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.equal(error.message, `${missing}: cannot read the file: no such file`);
      return true;
    });

    // Only a regular file is read: a FIFO would block the thread (tests/reload_test.ts).
    assert.throws(() => parseCommandLine(["--config", dir]), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.equal(error.message, `${dir}: cannot read the file: not a regular file (a directory)`);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("reloadSettings() refuses to leave a running admin listener off loopback without a token", () => {
  const args = ["--backends=http://a:1", "--admin=127.0.0.1:0"];
  const exposed = { host: "0.0.0.0", port: 9090 };
  assert.throws(() => reloadSettings(args, exposed), (error: unknown) => {
    assert.ok(error instanceof ConfigError);
    assert.equal(
      error.message,
      "--admin-token: the admin listener stays on 0.0.0.0, not a loopback address, until a " +
        "restart; keep a token (or LB_ADMIN_TOKEN) so that not everyone who reaches it " +
        "controls the balancer",
    );
    return true;
  });
  assert.throws(() => reloadSettings(["--backends=http://a:1"], exposed), ConfigError);
  const token = "--admin-token=0123456789abcdef0123";
  assert.equal(reloadSettings([...args, token], exposed).adminToken, token.split("=")[1]);
  assert.equal(reloadSettings(args, { host: "127.0.0.1", port: 9090 }).adminToken, "");
  assert.equal(reloadSettings(args).admin?.host, "127.0.0.1", "no admin listener runs");
});

Deno.test("parseCommandLine() accepts the TLS and HTTPS-backend flags", () => {
  const invocation = parseCommandLine([
    "--backends=https://127.0.0.1:1",
    "--tls-cert=c.pem",
    "--tls-key=k.pem",
    "--redirect-http=8080",
    "--backend-ca=ca.pem",
    "--backend-cert=bc.pem",
    "--backend-key=bk.pem",
  ]);
  assert.ok(invocation.kind === "run");
  const { tlsCert, tlsKey, redirectHttp, backendCa, backendCert, backendKey } = invocation.config;
  assert.deepEqual(
    { tlsCert, tlsKey, redirectHttp, backendCa, backendCert, backendKey },
    {
      tlsCert: "c.pem",
      tlsKey: "k.pem",
      redirectHttp: 8080,
      backendCa: "ca.pem",
      backendCert: "bc.pem",
      backendKey: "bk.pem",
    },
  );
});

Deno.test("--trusted-proxies and --forwarded are accepted by the command line", () => {
  const invocation = parseCommandLine([
    "--backends=http://127.0.0.1:1",
    "--trusted-proxies=127.0.0.1/32,10.0.0.0/8",
    "--forwarded",
  ]);
  assert.equal(invocation.kind, "run");
  if (invocation.kind !== "run") return;
  assert.deepEqual(invocation.config.trustedProxies, ["127.0.0.1/32", "10.0.0.0/8"]);
  assert.equal(invocation.config.forwarded, true);
});
