import assert from "node:assert/strict";
import {
  type Config,
  DEFAULTS,
  normalizeSingleDashFlags,
  parseBackend,
  parseDuration,
  parseFlags,
} from "../lib/config.ts";
import { defaultConfig, parseCommandLine } from "../lib/settings.ts";
import { validateFileSettings } from "../lib/config_file.ts";
import { ConfigError } from "../lib/errors.ts";

function run(args: string[]): Config {
  const invocation = parseCommandLine(args);
  assert.equal(invocation.kind, "run");
  return (invocation as { kind: "run"; config: Config }).config;
}

Deno.test("normalizeSingleDashFlags() doubles Go-style dashes and leaves everything else", () => {
  assert.deepEqual(
    normalizeSingleDashFlags(["-backends=http://a:1", "-port", "3030", "-h", "--x", "-5", "a-b"]),
    ["--backends=http://a:1", "--port", "3030", "-h", "--x", "-5", "a-b"],
  );
  assert.deepEqual(normalizeSingleDashFlags(["--", "-port"]), ["--", "-port"]);
});

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

Deno.test("parseDuration() takes ms, s, m, h and refuses bare numbers", () => {
  assert.equal(parseDuration("500ms"), 500);
  assert.equal(parseDuration("2s"), 2000);
  assert.equal(parseDuration("1.5m"), 90000);
  assert.equal(parseDuration("1h"), 3600000);
  for (const bad of ["5", "", "s", "-1s", "1 s", "1sec", "1e3ms", "NaNs"]) {
    assert.equal(parseDuration(bad), undefined, bad);
  }
});

Deno.test("parseBackend() normalises origins and reads URL*WEIGHT", () => {
  assert.deepEqual(parseBackend("http://Example.COM:80/"), {
    url: "http://example.com",
    weight: 1,
  });
  assert.deepEqual(parseBackend("http://[::1]:8081*0"), { url: "http://[::1]:8081", weight: 0 });
  assert.deepEqual(parseBackend("https://a:8443*12"), { url: "https://a:8443", weight: 12 });
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

/** Flags checked by the shared validator, before the not-yet-supported gate. */
function validated(args: string[]): Config {
  const flags = parseFlags(args);
  assert.ok(flags.kind === "run");
  const { settings, problems } = validateFileSettings(flags.given);
  assert.deepEqual(problems, []);
  return { ...defaultConfig(), ...settings } as Config;
}

Deno.test("parseFlags() and the validator read the edge and scale-out flags", () => {
  const config = validated([
    "--backends=https://a:1",
    "--tls-cert=cert.pem",
    "--tls-key=key.pem",
    "--redirect-http=8080",
    "--backend-ca=ca.pem",
    "--backend-cert=c.pem",
    "--backend-key=k.pem",
    "--trusted-proxies=10.0.0.0/8,::1",
    "--trusted-proxies",
    "192.168.1.7",
    "--forwarded",
    "--max-body=1MiB",
    "--body-timeout=5s",
    "--discover=dns+srv://_http._tcp.app.example",
    "--discover",
    "dns+a://app.example:8080",
    "--discover-interval=2s",
    "--dns-server=127.0.0.1:5353",
    "--workers=auto",
  ]);
  assert.equal(config.tlsCert, "cert.pem");
  assert.equal(config.tlsKey, "key.pem");
  assert.equal(config.redirectHttp, 8080);
  assert.equal(config.backendCa, "ca.pem");
  assert.equal(config.backendCert, "c.pem");
  assert.equal(config.backendKey, "k.pem");
  assert.deepEqual(config.trustedProxies, ["10.0.0.0/8", "::1", "192.168.1.7"]);
  assert.equal(config.forwarded, true);
  assert.equal(config.maxBody, 1024 * 1024);
  assert.equal(config.bodyTimeout, 5000);
  assert.deepEqual(config.discover, [
    "dns+srv://_http._tcp.app.example",
    "dns+a://app.example:8080",
  ]);
  assert.equal(config.discoverInterval, 2000);
  assert.equal(config.dnsServer, "127.0.0.1:5353");
  assert.equal(config.workers, "auto");
  assert.equal(validated(["--workers=3"]).workers, 3);
  assert.equal(validated(["--max-body=1048576"]).maxBody, 1048576);
  assert.equal(validated([]).maxBody, 10 * 1024 * 1024);
});

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
