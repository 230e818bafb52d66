import assert from "node:assert/strict";
import { type Config, normalizeSingleDashFlags, parseFlags } from "../lib/config.ts";
import { defaultConfig } from "../lib/settings.ts";
import { validateFileSettings } from "../lib/config_file.ts";

Deno.test("normalizeSingleDashFlags() doubles Go-style dashes and leaves everything else", () => {
  assert.deepEqual(
    normalizeSingleDashFlags(["-backends=http://a:1", "-port", "3030", "-h", "--x", "-5", "a-b"]),
    ["--backends=http://a:1", "--port", "3030", "-h", "--x", "-5", "a-b"],
  );
  assert.deepEqual(normalizeSingleDashFlags(["--", "-port"]), ["--", "-port"]);
});

/** Flags checked by the shared validator. */
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
