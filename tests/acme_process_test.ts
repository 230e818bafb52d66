/**
 * @module
 * Automatic HTTPS end to end: main.ts run as a process (tests/process.ts) against a real ACME
 * server, Let's Encrypt's Pebble with its mock DNS (tests/pebble.ts), in front of a real
 * backend. Pebble validates HTTP-01 challenges on the balancer's `--redirect-http` port. Covers
 * the site over plain HTTP before the first certificate, issuance for two names, HTTPS and the
 * redirect afterwards, storage modes, a restart on the stored certificate, bad input, and a
 * renewal under traffic. The Pebble tests are skipped, saying why, without the Debian packages
 * `pebble` and `pebble-challtestsrv`.
 */

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { accountKeyPath, certificatePaths } from "../lib/acme_store.ts";
import { rawRequest, refusingUrl, startTestBackend, within } from "./helpers.ts";
import { freePort, pebbleMissing, startPebble, tlsGet } from "./pebble.ts";
import { openssl } from "./pki.ts";
import { type BalancerProcess, runMain, spawnBalancer } from "./process.ts";

const MISSING = await pebbleMissing();
if (MISSING !== undefined) console.log(`acme_process_test: Pebble tests skipped: ${MISSING}`);

/** What ACME needs: the whole environment (acme-client's `debug` reads it) and its folder. */
const PERMISSIONS = ["--allow-read", "--allow-write", "--allow-env"];
const DOMAINS = ["a.test", "b.test"];
const ISSUED = /Issued certificate/i;
const SWAPPED = /TLS certificate reloaded/;

Deno.test({
  name: "main.ts with ACME: HTTP before the certificate, HTTPS for both names after, restart",
  ignore: MISSING !== undefined,
  async fn(t) {
    await using backend = await startTestBackend(() => new Response("from the backend"));
    await using storage = await tempDir();
    const challengePort = freePort();
    await using pebble = await startPebble({ httpPort: challengePort });
    const root = await pebble.root();
    // Holds the balancer's ACME requests until the test has seen the site before the certificate.
    await using gate = tcpGate(new URL(pebble.directoryUrl).port);
    const directoryUrl = `https://127.0.0.1:${gate.port}/dir`;
    const args = [
      ...["--acme-domains", DOMAINS.join(","), "--acme-directory", directoryUrl],
      ...["--acme-ca", pebble.caFile, "--acme-dir", storage.path],
      ...["--redirect-http", String(challengePort), "--port", "0", "--admin", "127.0.0.1:0"],
      `-backends=${backend.url}`,
    ];
    const files = certificatePaths(storage.path, directoryUrl, DOMAINS);
    let issuedPem = "";

    // One process for the first steps: it orders, then serves.
    const lb = spawnBalancer(args, { permissions: PERMISSIONS });
    let port = 0;
    try {
      await t.step("before the certificate, plain HTTP serves the site", async () => {
        port = await lb.port();
        await lb.waitForLine(/HTTP redirect listener started at :\d+/);
        const answer = await rawRequest(challengePort, plainGet("a.test", "/before"));
        assert.match(answer, /^HTTP\/1\.1 200 /, answer);
        assert.match(answer, /from the backend$/);
        assert.ok(backend.received.some((r) => r.path === "/before"), "the backend saw it");
        // The HTTPS listener is up on a self-signed placeholder, which no client trusts.
        const placeholder = await servedCertificate(port, "a.test");
        assert.match(placeholder.subject, /load-balancer ACME pending/);
        await assert.rejects(tlsGet(port, "a.test", root));
        assert.equal(lb.lines.filter((l) => SWAPPED.test(l)).length, 0);

        gate.open();
        await lb.waitForLine(SWAPPED, 30_000);
      });

      await t.step("HTTPS presents Pebble's certificate for both names", async () => {
        const served = await servedCertificate(port, "a.test");
        assert.equal(served.subjectAltName, "DNS:a.test, DNS:b.test");
        issuedPem = await Deno.readTextFile(files.cert);
        assert.equal(served.fingerprint256, new X509Certificate(issuedPem).fingerprint256);
        for (const name of DOMAINS) {
          // Verified against Pebble's root only, for the name asked.
          const answer = await tlsGet(port, name, root, `/over-tls-${name}`);
          assert.match(answer, /^HTTP\/1\.1 200 /, answer);
          assert.match(answer, /from the backend$/);
          assert.ok(backend.received.some((r) => r.path === `/over-tls-${name}`));
        }
        await assert.rejects(tlsGet(port, "c.test", root), "a name not covered");
      });

      await t.step("the redirect port now answers 308 to https", async () => {
        const answer = await rawRequest(challengePort, plainGet("b.test", "/x?y=1"));
        assert.match(answer, /^HTTP\/1\.1 308 /, answer);
        assert.match(answer, new RegExp(`\\r\\nlocation: https://b\\.test:${port}/x\\?y=1\\r\\n`));
      });

      await t.step("the expiry gauge shows the certificate's notAfter", async () => {
        const metrics = await adminMetrics(lb);
        const expiry = /^lb_acme_certificate_expiry_timestamp_seconds (\S+)$/m.exec(metrics);
        assert.ok(expiry, metrics);
        const notAfter = new Date(new X509Certificate(issuedPem).validTo).getTime() / 1000;
        assert.equal(Math.floor(Number(expiry[1])), notAfter);
      });

      await t.step("keys and certificates are stored with mode 0600", async () => {
        for (const path of [files.cert, files.key, accountKeyPath(storage.path)]) {
          assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600, path);
        }
        assert.equal((await Deno.stat(files.dir)).mode! & 0o777, 0o700);
      });
      await t.step("one certificate issued, no warning or error logged", () => {
        assert.equal(pebble.lines.filter((l) => ISSUED.test(l)).length, 1, pebble.lines.join("\n"));
        assert.deepEqual(errorLines(lb), []);
      });
    } finally {
      await lb[Symbol.asyncDispose]();
    }

    await t.step("a restart serves the stored certificate at once and orders nothing", async () => {
      const issuedBefore = pebble.lines.filter((l) => ISSUED.test(l)).length;
      await using lb = spawnBalancer(args, { permissions: PERMISSIONS });
      const port = await lb.port();
      // The very first connection gets the real certificate: no placeholder, no swap.
      const answer = await tlsGet(port, "b.test", root, "/after-restart");
      assert.match(answer, /^HTTP\/1\.1 200 /, answer);
      await lb.waitForLine(/ACME: serving the stored certificate for a\.test, b\.test/);
      const served = await servedCertificate(port, "a.test");
      assert.equal(served.fingerprint256, new X509Certificate(issuedPem).fingerprint256);
      const redirect = await rawRequest(challengePort, plainGet("a.test", "/"));
      assert.match(redirect, /^HTTP\/1\.1 308 /, "redirects from the start");
      assert.equal(pebble.lines.filter((l) => ISSUED.test(l)).length, issuedBefore);
      assert.equal(lb.lines.filter((l) => /ACME: (ordering|renewing)/.test(l)).length, 0);
      assert.equal(lb.lines.filter((l) => SWAPPED.test(l)).length, 0);
      assert.deepEqual(errorLines(lb), []);
    });
  },
});

Deno.test({
  name: "main.ts serves a new certificate it could not store from memory; SIGHUP changes nothing",
  ignore: MISSING !== undefined,
  async fn() {
    await using backend = await startTestBackend(() => new Response("from the backend"));
    await using storage = await tempDir();
    const challengePort = freePort();
    await using pebble = await startPebble({ httpPort: challengePort });
    const root = await pebble.root();
    const files = certificatePaths(storage.path, pebble.directoryUrl, DOMAINS);
    // A directory where the certificate file goes: the write fails, the order does not.
    await Deno.mkdir(files.cert, { recursive: true });
    await using lb = spawnBalancer([
      ...["--acme-domains", DOMAINS.join(","), "--acme-directory", pebble.directoryUrl],
      ...["--acme-ca", pebble.caFile, "--acme-dir", storage.path],
      ...["--redirect-http", String(challengePort), "--port", "0", `-backends=${backend.url}`],
    ], { permissions: PERMISSIONS });
    const port = await lb.port();
    await lb.waitForLine(/serving the new certificate from memory/, 30_000);
    await lb.waitForLine(SWAPPED, 10_000);
    // A connection the old listener took as it closed may be cut (docs/acme.md): asked again.
    const answer = await tlsGet(port, "a.test", root, "/from-memory") ||
      await tlsGet(port, "a.test", root, "/from-memory");
    assert.match(answer, /^HTTP\/1\.1 200 /, answer);
    assert.equal(
      (await servedCertificate(port, "b.test")).subjectAltName,
      "DNS:a.test, DNS:b.test",
    );
    const before = lb.lines.length;
    lb.child.kill("SIGHUP");
    await lb.waitForLine(/Reloaded: 0 added, 0 removed/);
    const after = lb.lines.slice(before).filter((l) => /\b(ERROR|WARN)\b/.test(l));
    assert.deepEqual(after, [], "a reload with ACME on warns of nothing and keeps the certificate");
    assert.match(await tlsGet(port, "b.test", root, "/after-hup"), /^HTTP\/1\.1 200 /);
  },
});

Deno.test({
  name: "main.ts stops within its drain timeout while an ACME order waits on a slow validation",
  ignore: MISSING !== undefined,
  async fn() {
    await using backend = await startTestBackend(() => new Response("from the backend"));
    await using storage = await tempDir();
    const challengePort = freePort();
    // Pebble's validation authority sleeps up to 60 s: the order waits between polls.
    await using pebble = await startPebble({
      httpPort: challengePort,
      env: { PEBBLE_VA_NOSLEEP: "0", PEBBLE_VA_SLEEPTIME: "60" },
    });
    await using lb = spawnBalancer([
      ...["--acme-domains", "a.test", "--acme-directory", pebble.directoryUrl],
      ...["--acme-ca", pebble.caFile, "--acme-dir", storage.path, "--drain-timeout", "1s"],
      ...["--redirect-http", String(challengePort), "--port", "0", `-backends=${backend.url}`],
    ], { permissions: PERMISSIONS });
    await lb.port();
    await lb.waitForLine(/ACME: ordering a certificate/);
    // Long enough for the order to reach the challenge and start polling.
    for (let i = 0; i < 50 && !pebble.lines.some((l) => /challenge/i.test(l)); i++) {
      await delay(100);
    }
    await delay(1500);
    assert.ok(!lb.lines.some((l) => /certificate issued/.test(l)), "the order is still running");
    const stoppedAt = Date.now();
    lb.child.kill("SIGTERM");
    assert.equal(await within(lb.exited, 10_000, "the balancer to exit"), 0);
    const took = Date.now() - stoppedAt;
    assert.ok(took < 6_000, `exited ${took} ms after SIGTERM with --drain-timeout 1s`);
  },
});

Deno.test("main.ts with an unreachable ACME directory logs one line and serves HTTP", async () => {
  await using backend = await startTestBackend(() => new Response("from the backend"));
  await using storage = await tempDir();
  const challengePort = freePort();
  const directoryUrl = refusingUrl().replace("http:", "https:") + "/dir";
  await using lb = spawnBalancer([
    ...["--acme-domains", "a.test", "--acme-directory", directoryUrl, "--acme-dir", storage.path],
    ...["--redirect-http", String(challengePort), "--port", "0", `-backends=${backend.url}`],
  ], { permissions: PERMISSIONS });
  await lb.port();
  await lb.waitForLine(/ACME: no certificate for a\.test/);
  const answer = await rawRequest(challengePort, plainGet("a.test", "/still-here"));
  assert.match(answer, /^HTTP\/1\.1 200 /, answer);
  assert.match(answer, /from the backend$/);
  const errors = errorLines(lb);
  assert.equal(errors.length, 1, lb.lines.join("\n"));
  assert.match(
    errors[0],
    new RegExp(
      `ERROR ACME: no certificate for a\\.test; next try in \\d+ s: cannot reach ` +
        `${directoryUrl.replaceAll(".", "\\.")}: connection refused$`,
    ),
  );
  assert.ok(!errors[0].includes("    at "), "no stack trace");
});

Deno.test("main.ts with ACME but no permission for its folder exits with one line", async () => {
  await using storage = await tempDir();
  const { code, stderr } = await runMain([
    ...["--acme-domains", "a.test", "--acme-dir", storage.path, "--redirect-http", "0"],
    ...["--port", "0", "-backends=http://127.0.0.1:1"],
  ], { permissions: ["--allow-env"] });
  assert.equal(code, 1, stderr);
  assert.equal(
    stderr,
    `load-balancer: ACME needs --allow-read for ${storage.path} (run with --allow-read ` +
      "--allow-write for the ACME folder and --acme-ca)\n",
  );
});

Deno.test("main.ts --check refuses bad ACME settings with their path (exit 2)", async (t) => {
  await using dir = await tempDir();
  const check = async (args: string[], expected: RegExp) => {
    const { code, stderr } = await runMain(["--check", ...args], { permissions: PERMISSIONS });
    assert.equal(code, 2, stderr);
    assert.match(stderr, expected);
    assert.ok(!stderr.includes("    at "), `no stack trace: ${stderr}`);
  };
  await t.step("an invalid domain, as a flag and in a file", async () => {
    await check(
      ["--acme-domains", "a.test,bad_name.test", "-backends=http://127.0.0.1:1"],
      /^load-balancer: --acme-domains: "bad_name\.test" is not a DNS name/m,
    );
    const config = `${dir.path}/lb.json`;
    await Deno.writeTextFile(
      config,
      JSON.stringify({ backends: ["http://127.0.0.1:1"], acmeDomains: ["a.test", "*.b.test"] }),
    );
    await check(["--config", config], /lb\.json:\d+:\d+: acmeDomains\[1\]: "\*\.b\.test" is not/);
  });
  await t.step("acmeDomains with tlsCert", async () => {
    await check(
      [
        ...["--acme-domains", "a.test", "--tls-cert", `${dir.path}/c.pem`],
        ...["--tls-key", `${dir.path}/k.pem`, "-backends=http://127.0.0.1:1"],
      ],
      /\(tlsCert\): ACME manages the certificate: give tlsCert\/tlsKey or ACME, not both/,
    );
  });
  await t.step("ACME on with no domains and no routes with exact hosts", async () => {
    await check(
      ["--acme", "-backends=http://127.0.0.1:1"],
      /\(acmeDomains\): ACME is on but names no domain/,
    );
  });
});

/**
 * Pebble's certificates live this long here: the restart below finds the first one already
 * due for renewal (a third of the lifetime left) yet still valid, and renews it under traffic.
 */
const SHORT_VALIDITY_S = 45;

Deno.test({
  name: "main.ts renews a due certificate under traffic with no failed request",
  ignore: MISSING !== undefined,
  async fn() {
    await using backend = await startTestBackend(() => new Response("from the backend"));
    await using storage = await tempDir();
    const challengePort = freePort();
    await using pebble = await startPebble({
      httpPort: challengePort,
      config: { certificateValidityPeriod: SHORT_VALIDITY_S },
    });
    const root = await pebble.root();
    const args = [
      ...["--acme-domains", DOMAINS.join(","), "--acme-directory", pebble.directoryUrl],
      ...["--acme-ca", pebble.caFile, "--acme-dir", storage.path],
      ...["--redirect-http", String(challengePort), "--port", "0", `-backends=${backend.url}`],
    ];
    const files = certificatePaths(storage.path, pebble.directoryUrl, DOMAINS);
    {
      await using first = spawnBalancer(args, { permissions: PERMISSIONS });
      await first.waitForLine(SWAPPED, 30_000);
    }
    const firstPem = await Deno.readTextFile(files.cert);
    const leaf = new X509Certificate(firstPem);
    const notBefore = new Date(leaf.validFrom).getTime();
    const notAfter = new Date(leaf.validTo).getTime();
    const due = notAfter - (notAfter - notBefore) / 3;
    // Waits (bounded) until the stored certificate is due; Pebble's lifetime sets how long.
    for (let i = 0; i < 120 && Date.now() <= due + 1000; i++) await delay(500);
    assert.ok(Date.now() > due && Date.now() < notAfter, "restarted inside the renewal window");

    await using lb = spawnBalancer(args, { permissions: PERMISSIONS });
    const port = await lb.port();
    await lb.waitForLine(/ACME: serving the stored certificate/);
    const statuses: string[] = [];
    let unanswered = 0;
    let afterSwap = 0;
    const deadline = Date.now() + 30_000;
    // Bounded by time: under load the renewal can outlast any small count of requests.
    for (let i = 0; i < 100_000 && Date.now() < deadline && afterSwap < 10; i++) {
      let answer = await tlsGet(port, DOMAINS[i % 2], root, `/traffic-${i}`);
      // Closed before one byte of answer: never read, and a client may retry a GET (RFC 9112
      // §9.3.1). The swap's old listener closing can do that (docs/acme.md): counted, retried.
      if (answer === "") {
        unanswered++;
        answer = await tlsGet(port, DOMAINS[i % 2], root, `/traffic-${i}`);
      }
      statuses.push(answer.split("\r\n")[0]);
      if (lb.lines.some((l) => SWAPPED.test(l))) afterSwap++;
    }
    if (unanswered > 0) {
      console.log(`acme_process_test: the swap closed ${unanswered} connection(s) unanswered`);
    }
    assert.ok(afterSwap >= 10, `renewed and swapped in within the time:\n${lb.lines.join("\n")}`);
    assert.ok(lb.lines.some((l) => /ACME: renewing a certificate for a\.test, b\.test/.test(l)));
    assert.deepEqual(statuses.filter((s) => s !== "HTTP/1.1 200 OK"), []);
    assert.ok(unanswered <= 2, `${unanswered} connections closed unanswered`);
    const renewedPem = await Deno.readTextFile(files.cert);
    assert.notEqual(renewedPem, firstPem);
    const served = await servedCertificate(port, "a.test");
    assert.equal(served.fingerprint256, new X509Certificate(renewedPem).fingerprint256);
    assert.equal(pebble.lines.filter((l) => ISSUED.test(l)).length, 2);
    assert.deepEqual(errorLines(lb), []);
  },
});

function plainGet(host: string, path: string): string {
  return `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`;
}

function errorLines(lb: BalancerProcess): string[] {
  return lb.lines.filter((l) => /\b(ERROR|WARN)\b/.test(l));
}

/** The leaf certificate the TLS listener on `port` presents for `name` (openssl s_client). */
async function servedCertificate(port: number, name: string): Promise<X509Certificate> {
  const output = await openssl(
    ...["s_client", "-connect", `127.0.0.1:${port}`, "-servername", name],
  );
  const pem = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/.exec(output);
  assert.ok(pem, output);
  return new X509Certificate(pem[0]);
}

async function adminMetrics(lb: BalancerProcess): Promise<string> {
  const line = await lb.waitForLine(/Admin listener started at 127\.0\.0\.1:\d+/);
  const port = /:(\d+)$/.exec(line)![1];
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  const text = await response.text();
  assert.equal(response.status, 200, text);
  return text;
}

async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "lb-acme-process-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A TCP relay on 127.0.0.1 to `port` that holds every connection until {@linkcode open}: the
 * balancer's first ACME request waits there, so the test sees it before any certificate.
 */
function tcpGate(port: string): { port: number; open(): void } & AsyncDisposable {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const relays: Promise<unknown>[] = [];
  let open = () => {};
  const opened = new Promise<void>((resolve) => (open = resolve));
  let closed = false;
  const relay = async (conn: Deno.Conn) => {
    await opened;
    if (closed) return;
    const upstream = await Deno.connect({ hostname: "127.0.0.1", port: Number(port) });
    conns.add(upstream);
    await Promise.allSettled([
      conn.readable.pipeTo(upstream.writable),
      upstream.readable.pipeTo(conn.writable),
    ]);
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      relays.push(relay(conn).catch(() => {}));
    }
  })().catch(() => {});
  return {
    port: listener.addr.port,
    open,
    async [Symbol.asyncDispose]() {
      closed = true;
      open();
      listener.close();
      await accepting;
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* already closed by its relay */ }
      }
      await Promise.allSettled(relays);
    },
  };
}
