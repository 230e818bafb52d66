/**
 * @module
 * TLS on both sides, with throw-away certificates made by openssl in a temp directory:
 * termination with h2 and http/1.1 by ALPN (Deno, openssl and curl clients), the plain-HTTP
 * redirect listener, certificate reload (in-process, on SIGHUP and on a file change) with a
 * long request crossing it, refused bad certificates, and HTTPS backends: a private CA, HTTP/2,
 * and mTLS. Without openssl the tests that need certificates are skipped, saying why.
 */
import assert from "node:assert/strict";
import {
  type CertificateInfo,
  certificateProblem,
  coalesceBody,
  redirectToHttps,
  reloadResetWarning,
  TlsError,
} from "../lib/tls.ts";
import {
  captureLog,
  delay,
  makeFifo,
  rawRequest,
  startTestBackend,
  startTestBalancer,
  startTlsBackend,
  TEST_FRONTEND,
  waitFor,
  within,
} from "./helpers.ts";

/** `main.ts` flags that select the front end under test (`LB_TEST_FRONTEND`). */
const FRONTEND_FLAGS = TEST_FRONTEND === "native" ? ["--frontend=native"] : [];
import { runMain, spawnBalancer } from "./process.ts";
import { installed, type Issued, openssl, Pki, run } from "./pki.ts";

/** Generous: the machine is shared and loaded; a reload or a watch event may take seconds. */
const WAIT_MS = 20_000;

const HAS_OPENSSL = await installed("openssl");
const HAS_CURL = await installed("curl");
if (!HAS_OPENSSL) {
  console.log(
    "tls_test.ts: openssl is not installed, so no test certificates can be made: " +
      "the TLS tests are skipped (apt-get install -y openssl)",
  );
}
const HAS_MKFIFO = await installed("mkfifo");
if (!HAS_MKFIFO) {
  console.log(
    "tls_test.ts: mkfifo is not installed, so no FIFO can be made: the test of a certificate " +
      "file replaced by a FIFO is skipped (apt-get install -y coreutils)",
  );
}
/** For tests that need certificates. */
const NEEDS_OPENSSL = { ignore: !HAS_OPENSSL };

/** The listener's files in their own directory, replaced as certbot or an editor would. */
async function liveFiles(pki: Pki, first: Issued) {
  const dir = `${pki.dir}/live`;
  await Deno.mkdir(dir);
  const certPath = `${dir}/tls.crt`;
  const keyPath = `${dir}/tls.key`;
  let writes = 0;
  const replace = async (path: string, text: string) => {
    const temp = `${dir}/.tmp.${++writes}`;
    await Deno.writeTextFile(temp, text);
    await Deno.rename(temp, path);
  };
  const files = {
    dir,
    certPath,
    keyPath,
    /** Writes a certificate and a key (rename over the old files, certificate first). */
    async install(cert: string, key: string) {
      await replace(certPath, cert);
      await replace(keyPath, key);
    },
  };
  await files.install(first.cert, first.key);
  return files;
}

/** What a new connection to 127.0.0.1:port is served, seen by `openssl s_client`. */
async function servedByOpenssl(
  port: number,
  alpn = "h2,http/1.1",
): Promise<{ pem: string; alpn: string }> {
  const out = await openssl(
    ...["s_client", "-connect", `127.0.0.1:${port}`, "-servername", "localhost"],
    ...["-alpn", alpn],
  );
  const pem = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/.exec(out)?.[0] ?? "";
  return { pem, alpn: /ALPN protocol: (\S+)/.exec(out)?.[1] ?? "none" };
}

/** Whether two PEM texts hold the same (first) certificate. */
function samePem(a: string, b: string): boolean {
  const body = (pem: string) =>
    /-----BEGIN CERTIFICATE-----([^-]+)-----END/.exec(pem)?.[1].replace(/\s+/g, "");
  return body(a) !== undefined && body(a) === body(b);
}

/** The ALPN protocol of a TLS handshake with 127.0.0.1:port trusting only `caCerts`. */
async function handshake(port: number, caCerts: string[], alpnProtocols = ["h2", "http/1.1"]) {
  const conn = await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts, alpnProtocols });
  let stuck = false;
  const timer = setTimeout(() => {
    stuck = true;
    conn.close();
  }, WAIT_MS);
  try {
    return (await conn.handshake()).alpnProtocol;
  } catch (error) {
    if (stuck) throw new Error(`no TLS handshake within ${WAIT_MS}ms`);
    throw error;
  } finally {
    clearTimeout(timer);
    if (!stuck) conn.close();
  }
}

/** Whether a new connection's certificate chains to `ca` (and only to it). */
async function servesCertificateOf(port: number, ca: Issued): Promise<boolean> {
  try {
    await handshake(port, [ca.cert]);
    return true;
  } catch {
    return false;
  }
}

/** Polls an async condition every 50 ms until true or `timeoutMs` passes. */
async function eventually(condition: () => Promise<boolean>, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await delay(50);
  }
  return await condition();
}

/** A TLS backend (Deno.serve) with `issued` as its certificate. */
/**
 * A real main.ts process terminating TLS with server-1's certificate (from ca-1), with
 * server-2's pair (from ca-2) ready to install, and `--allow-read` for `readable(live)`.
 */
async function tlsProcess(
  readable: (live: Awaited<ReturnType<typeof liveFiles>>) => string,
  extraArgs: string[] = [],
) {
  const pki = await Pki.create();
  const disposables: AsyncDisposable[] = [pki];
  try {
    const [ca1, ca2] = [await pki.ca("ca-1"), await pki.ca("ca-2")];
    const leaf1 = await pki.leaf("server-1", ca1);
    const leaf2 = await pki.leaf("server-2", ca2);
    const live = await liveFiles(pki, leaf1);
    const backend = await startTestBackend();
    disposables.unshift(backend);
    const lb = spawnBalancer([
      ...[`--backends=${backend.url}`, "--port=0", "--host=127.0.0.1", "--health-interval=1m"],
      ...[`--tls-cert=${live.certPath}`, `--tls-key=${live.keyPath}`],
      ...FRONTEND_FLAGS,
      ...extraArgs,
    ], { permissions: [`--allow-read=${readable(live)}`] });
    disposables.unshift(lb);
    const port = await lb.port();
    return {
      lb,
      live,
      leaf2,
      ca1,
      ca2,
      port,
      async [Symbol.asyncDispose]() {
        for (const item of disposables) await item[Symbol.asyncDispose]();
      },
    };
  } catch (error) {
    for (const item of disposables) await item[Symbol.asyncDispose]();
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// Pure rules

Deno.test("redirectToHttps() answers 308 to the same host and path on the TLS port", async () => {
  const redirect = redirectToHttps(8443);
  const cases: [string, string, string][] = [
    ["http://example.com:8080/a/b?c=1", "example.com:8080", "https://example.com:8443/a/b?c=1"],
    ["http://example.com/", "example.com", "https://example.com:8443/"],
    ["http://[::1]:8080/x", "[::1]:8080", "https://[::1]:8443/x"],
  ];
  for (const [url, host, location] of cases) {
    const response = redirect(new Request(url, { headers: { host } }));
    assert.equal(response.status, 308);
    assert.equal(response.headers.get("location"), location);
    await response.body?.cancel();
  }
  const to443 = redirectToHttps(443)(
    new Request("http://example.com:8080/p", { headers: { host: "example.com:8080" } }),
  );
  assert.equal(to443.headers.get("location"), "https://example.com/p");
  await to443.body?.cancel();
  const noHost = redirect(new Request("http://example.com/"));
  assert.equal(noHost.status, 400);
  await noHost.body?.cancel();
});

Deno.test("certificateProblem() names expired and not-yet-valid certificates", () => {
  const info: CertificateInfo = {
    subject: "CN=x",
    serial: "01",
    notBefore: new Date("2030-01-01T00:00:00Z"),
    notAfter: new Date("2030-02-01T00:00:00Z"),
    isCa: false,
    dnsNames: [],
  };
  assert.equal(certificateProblem(info, new Date("2030-01-15T00:00:00Z")), undefined);
  assert.match(certificateProblem(info, new Date("2030-03-01T00:00:00Z"))!, /^expired on 2030-02/);
  assert.match(certificateProblem(info, new Date("2029-12-01T00:00:00Z"))!, /not valid before/);
  assert.equal(certificateProblem(undefined), undefined);
});

Deno.test("coalesceBody() turns a body that ends in time into bytes, else streams it", async () => {
  const encode = (text: string) => new TextEncoder().encode(text);
  // Ends at once (chunked, no length): answered whole.
  const whole = await coalesceBody(
    new Response(
      new ReadableStream({
        start(controller) {
          controller.enqueue(encode("a"));
          controller.enqueue(encode("b"));
          controller.close();
        },
      }),
      { status: 201, headers: { "x-kept": "yes" } },
    ),
  );
  assert.equal(whole.status, 201);
  assert.equal(whole.headers.get("x-kept"), "yes");
  assert.equal(await whole.text(), "ab");

  // Still going after waitMs: what was read comes first, the rest follows when it is written.
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => finish = resolve);
  const streaming = await coalesceBody(
    new Response(
      new ReadableStream({
        async start(controller) {
          controller.enqueue(encode("first,"));
          await finished;
          controller.enqueue(encode("last"));
          controller.close();
        },
      }),
    ),
    { waitMs: 20 },
  );
  const reader = streaming.body!.pipeThrough(new TextDecoderStream()).getReader();
  assert.equal((await reader.read()).value, "first,");
  finish();
  assert.equal((await reader.read()).value, "last");
  assert.ok((await reader.read()).done);

  // Declared larger than the limit, or bodyless: passed through untouched.
  const large = new Response("x".repeat(100), { headers: { "content-length": "100" } });
  assert.equal(await coalesceBody(large, { limit: 10 }), large);
  await large.body?.cancel();
  const empty = new Response(null, { status: 204 });
  assert.equal(await coalesceBody(empty), empty);
  // Held in memory (the proxy's relayed bodies): already written with the headers, not read.
  const held = new Response(new TextEncoder().encode("whole"), { headers: { "x-a": "1" } });
  assert.equal(await coalesceBody(held), held);
  assert.equal(held.bodyUsed, false);

  // A body that fails while read ahead still fails for the client.
  const failing = await coalesceBody(
    new Response(new ReadableStream({ start: (controller) => controller.error(new Error("cut")) })),
  );
  await assert.rejects(failing.text(), /cut/);
});

// ---------------------------------------------------------------------------------------------
// TLS termination

Deno.test({
  name:
    "startBalancer() with tlsCert serves HTTPS, negotiating h2 (not native) and http/1.1 by ALPN",
  ...NEEDS_OPENSSL,
  async fn() {
    await using pki = await Pki.create();
    const ca = await pki.ca("test-ca");
    const leaf = await pki.leaf("server-1", ca);
    await using backend = await startTestBackend((req) =>
      new Response(`proto=${req.headers.get("x-forwarded-proto")}`)
    );
    const log = captureLog();
    await using lb = await startTestBalancer(
      [backend.url],
      { tlsCert: leaf.certPath, tlsKey: leaf.keyPath },
      log,
    );
    assert.ok(
      log.lines.includes(`INFO Load balancer started at :${lb.port} (TLS)`),
      log.lines.join("\n"),
    );
    assert.ok(log.lines.some((l) => l.startsWith("INFO TLS certificate: CN=server-1, serial")));
    // The start-up warning about resets at certificate swaps is there exactly when it applies.
    const resetWarning = reloadResetWarning();
    assert.equal(
      log.lines.filter((l) => l === `WARN ${resetWarning}`).length,
      resetWarning === undefined ? 0 : 1,
      log.lines.join("\n"),
    );
    const base = `https://127.0.0.1:${lb.port}`;

    // Deno's fetch (HTTP/2 when offered) and a client limited to HTTP/1.1.
    for (const http2 of [true, false]) {
      using client = Deno.createHttpClient({ caCerts: [ca.cert], http2 });
      const response = await fetch(`${base}/x`, { client });
      assert.equal(response.status, 200);
      assert.equal(await response.text(), "proto=https");
    }
    // The negotiated protocol, seen by Deno's TLS client and by openssl. The native front end
    // offers http/1.1 only (docs/frontend.md): a client offering h2 too falls back to it.
    const preferred = TEST_FRONTEND === "native" ? "http/1.1" : "h2";
    assert.equal(await handshake(lb.port, [ca.cert]), preferred);
    assert.equal(await handshake(lb.port, [ca.cert], ["http/1.1"]), "http/1.1");
    assert.equal((await servedByOpenssl(lb.port, "h2,http/1.1")).alpn, preferred);
    const h1 = await servedByOpenssl(lb.port, "http/1.1");
    assert.equal(h1.alpn, "http/1.1");
    assert.ok(samePem(h1.pem, leaf.cert), "openssl sees the configured certificate");

    if (HAS_CURL) {
      const h2 = TEST_FRONTEND === "native" ? "1.1" : "2";
      for (const [flag, version] of [["--http2", h2], ["--http1.1", "1.1"]]) {
        const out = await run("curl", [
          ...["-sS", flag, "--cacert", ca.certPath, "-w", "\n%{http_version}"],
          `${base}/curl`,
        ]);
        assert.equal(out.stdout, `proto=https\n${version}`, out.stderr);
      }
    } else {
      console.log("curl is not installed: the curl checks of h2 and http/1.1 are skipped");
    }

    // Certificates are verified for real: a client without the test CA is refused.
    using untrusting = Deno.createHttpClient({});
    await assert.rejects(fetch(base, { client: untrusting }), (error: Error) => {
      assert.match(String(error.cause), /invalid peer certificate: UnknownIssuer/);
      return true;
    });
    assert.ok(backend.received.length >= 4);
  },
});

Deno.test({
  name: "TLS responses are not held back ~40 ms by Nagle (chunked backend, HTTP/1.1 and h2)",
  ...NEEDS_OPENSSL,
  async fn() {
    await using pki = await Pki.create();
    const ca = await pki.ca("test-ca");
    const leaf = await pki.leaf("server-1", ca);
    // A chunked body that ends a moment after its first bytes: the worst case for Nagle.
    await using backend = await startTestBackend(() =>
      new Response(
        new ReadableStream({
          start(controller) {
            controller.enqueue(new TextEncoder().encode("ok"));
            setTimeout(() => {
              try {
                controller.close();
              } catch { /* cancelled: a health check does not read the body */ }
            }, 0);
          },
        }),
      )
    );
    await using lb = await startTestBalancer([backend.url], {
      tlsCert: leaf.certPath,
      tlsKey: leaf.keyPath,
    });
    for (const http2 of [false, true]) {
      using client = Deno.createHttpClient({ caCerts: [ca.cert], http2 });
      const times: number[] = [];
      for (let i = 0; i < 21; i++) {
        const started = performance.now();
        const response = await fetch(`https://127.0.0.1:${lb.port}/`, { client });
        assert.equal(await response.text(), "ok");
        times.push(performance.now() - started);
      }
      const median = times.sort((a, b) => a - b)[10];
      // Without coalesceBody every one of these takes 40-45 ms here.
      assert.ok(median < 30, `http2=${http2}: median ${median.toFixed(1)} ms`);
    }
  },
});

Deno.test({
  name: "redirectHttp answers plain HTTP with 308 to https on the TLS port, 400 for a bad Host",
  ...NEEDS_OPENSSL,
  async fn() {
    await using pki = await Pki.create();
    const ca = await pki.ca("test-ca");
    const leaf = await pki.leaf("server-1", ca);
    await using backend = await startTestBackend((req) => new Response(`got ${req.url}`));
    const log = captureLog();
    await using lb = await startTestBalancer([backend.url], {
      tlsCert: leaf.certPath,
      tlsKey: leaf.keyPath,
      redirectHttp: 0,
    }, log);
    const port = lb.balancer.redirectPort!;
    assert.ok(
      log.lines.includes(`INFO HTTP redirect listener started at :${port}`),
      log.lines.join("\n"),
    );

    const ask = (head: string) => rawRequest(port, `${head}\r\nConnection: close\r\n\r\n`, 10_000);
    const redirected = await ask("GET /a/b?c=1 HTTP/1.1\r\nHost: example.com:8080");
    assert.match(redirected, /^HTTP\/1\.1 308 /);
    assert.ok(
      redirected.toLowerCase().includes(`\r\nlocation: https://example.com:${lb.port}/a/b?c=1\r\n`),
      redirected,
    );
    const defaultPort = await ask("GET / HTTP/1.1\r\nHost: example.com:80");
    assert.match(defaultPort, /^HTTP\/1\.1 308 /);
    assert.ok(
      defaultPort.toLowerCase().includes(`\r\nlocation: https://example.com:${lb.port}/\r\n`),
    );
    const post = await ask("POST /form HTTP/1.1\r\nHost: [::1]\r\nContent-Length: 0");
    assert.match(post, /^HTTP\/1\.1 308 /);
    assert.ok(post.toLowerCase().includes(`\r\nlocation: https://[::1]:${lb.port}/form\r\n`));
    for (
      const bad of [
        "GET / HTTP/1.1\r\nHost: evil.example/admin",
        "GET / HTTP/1.1\r\nHost: user@example.com",
        "GET / HTTP/1.1\r\nHost: example.com:99999",
        "GET / HTTP/1.0",
      ]
    ) {
      assert.match(await ask(bad), /^HTTP\/1\.[01] 400 /, bad);
    }

    // A client that follows the redirect ends up at a backend, over TLS.
    using client = Deno.createHttpClient({ caCerts: [ca.cert] });
    const response = await fetch(`http://127.0.0.1:${port}/follow?x=1`, { client });
    assert.equal(response.status, 200);
    assert.equal(response.url, `https://127.0.0.1:${lb.port}/follow?x=1`);
    await response.body?.cancel();
    // The redirect listener never proxies: only the followed request reached the backend.
    assert.deepEqual(backend.received.map((r) => r.path), ["/follow?x=1"]);
  },
});

// ---------------------------------------------------------------------------------------------
// Certificate reload

Deno.test({
  name: "reloadCertificate() serves the new pair to new connections while open requests finish",
  ...NEEDS_OPENSSL,
  async fn() {
    await using pki = await Pki.create();
    const [ca1, ca2] = [await pki.ca("ca-1"), await pki.ca("ca-2")];
    const leaf1 = await pki.leaf("server-1", ca1);
    const leaf2 = await pki.leaf("server-2", ca2);
    const live = await liveFiles(pki, leaf1);
    let release!: () => void;
    const released = new Promise<void>((resolve) => release = resolve);
    await using backend = await startTestBackend((req) => {
      if (!req.url.endsWith("/slow")) return new Response("quick");
      const body = new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(new TextEncoder().encode("first,"));
          await released;
          controller.enqueue(new TextEncoder().encode("last"));
          controller.close();
        },
      });
      return new Response(body);
    });
    const log = captureLog();
    await using lb = await startTestBalancer(
      [backend.url],
      { tlsCert: live.certPath, tlsKey: live.keyPath },
      log,
    );
    const base = `https://127.0.0.1:${lb.port}`;
    assert.ok(await servesCertificateOf(lb.port, ca1));

    // Two long requests on connections made with the old certificate: one h2, one http/1.1.
    using h2 = Deno.createHttpClient({ caCerts: [ca1.cert] });
    using h1 = Deno.createHttpClient({ caCerts: [ca1.cert], http2: false });
    const readers = [];
    for (const client of [h2, h1]) {
      const response = await fetch(`${base}/slow`, { client });
      assert.equal(response.status, 200);
      const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
      assert.equal((await reader.read()).value, "first,");
      readers.push(reader);
    }

    await live.install(leaf2.cert, leaf2.key);
    assert.equal(lb.balancer.reloadCertificate(), "reloaded");
    assert.ok(log.lines.some((l) => l.startsWith("INFO TLS certificate reloaded: CN=server-2")));
    // The old listener closes when the event loop next runs: a connection reaching it before
    // that may be reset (docs/edge.md: net.ipv4.tcp_migrate_req). From then on, every new connection
    // gets the new certificate.
    await delay(50);
    for (let i = 0; i < 10; i++) {
      assert.ok(await servesCertificateOf(lb.port, ca2), `connection ${i} got the old one`);
      assert.ok(!(await servesCertificateOf(lb.port, ca1)), `connection ${i} got the old one`);
    }
    assert.ok(samePem((await servedByOpenssl(lb.port)).pem, leaf2.cert));
    using fresh = Deno.createHttpClient({ caCerts: [ca2.cert] });
    const quick = await fetch(`${base}/quick`, { client: fresh });
    assert.equal(await quick.text(), "quick");

    // The requests that were open during the swap complete, body and all.
    release();
    for (const reader of readers) {
      let rest = "";
      for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
        rest += chunk.value;
      }
      assert.equal(rest, "last");
    }
    assert.equal(lb.balancer.reloadCertificate(), "unchanged");
  },
});

Deno.test({
  name: "reloadCertificate() keeps the current certificate when the new files are unusable",
  ...NEEDS_OPENSSL,
  async fn() {
    await using pki = await Pki.create();
    const ca = await pki.ca("test-ca");
    const leaf1 = await pki.leaf("server-1", ca);
    const other = await pki.leaf("server-2", ca);
    const expired = await pki.leaf("expired", ca, -1);
    const live = await liveFiles(pki, leaf1);
    await using backend = await startTestBackend();
    const log = captureLog();
    await using lb = await startTestBalancer(
      [backend.url],
      { tlsCert: live.certPath, tlsKey: live.keyPath },
      log,
    );
    using client = Deno.createHttpClient({ caCerts: [ca.cert] });
    const cases: [string, () => Promise<void>, RegExp][] = [
      ["no certificate", () => live.install("not a certificate\n", leaf1.key), /No certificates/],
      ["another's key", () => live.install(other.cert, leaf1.key), /KeyMismatch/],
      ["expired", () => live.install(expired.cert, expired.key), /expired on/],
      ["missing key", () => Deno.remove(live.keyPath), /tls\.key: cannot read the key: no such/],
    ];
    for (const [what, install, reason] of cases) {
      await install();
      log.lines.length = 0;
      assert.equal(lb.balancer.reloadCertificate(), "refused", what);
      const line = log.lines.find((l) =>
        l.startsWith("ERROR TLS certificate reload failed, keeping the current certificate: ")
      );
      assert.match(line ?? log.lines.join("\n"), reason, what);
      // Still the old certificate, and still serving.
      assert.ok(samePem((await servedByOpenssl(lb.port)).pem, leaf1.cert), what);
      const response = await fetch(`https://127.0.0.1:${lb.port}/`, { client });
      assert.equal(response.status, 200, what);
      await response.body?.cancel();
    }
    await live.install(leaf1.cert, leaf1.key);
    assert.equal(lb.balancer.reloadCertificate(), "unchanged");
  },
});

Deno.test({
  name: "main.ts reloads the certificate on SIGHUP (no watch without read access to the dir)",
  ...NEEDS_OPENSSL,
  async fn() {
    await using tls = await tlsProcess((live) => `${live.certPath},${live.keyPath}`);
    const { lb, live, leaf2, ca1, ca2, port } = tls;
    await lb.waitForLine(/Not watching .*SIGHUP still reloads/, WAIT_MS);
    assert.ok(await servesCertificateOf(port, ca1));

    await live.install(leaf2.cert, leaf2.key);
    await delay(1000); // well past the watch debounce: nothing may reload by itself here
    assert.ok(!lb.lines.some((l) => l.includes("TLS certificate reloaded")), lb.lines.join("\n"));
    lb.child.kill("SIGHUP");
    await lb.waitForLine(/INFO TLS certificate reloaded: CN=server-2/, WAIT_MS);
    assert.ok(await eventually(() => servesCertificateOf(port, ca2)));
    assert.ok(samePem((await servedByOpenssl(port)).pem, leaf2.cert));
  },
});

Deno.test({
  name:
    "main.ts refuses a certificate file replaced by a FIFO at once on SIGHUP, and keeps serving",
  ignore: !HAS_OPENSSL || !HAS_MKFIFO,
  async fn() {
    await using tls = await tlsProcess((live) => `${live.certPath},${live.keyPath}`);
    const { lb, live, ca1, port } = tls;
    assert.ok(await servesCertificateOf(port, ca1));
    await Deno.remove(live.certPath);
    await makeFifo(live.certPath);
    lb.child.kill("SIGHUP");
    // A read of the FIFO would block the process until a writer came: none ever does.
    const refused = await lb.waitForLine(/TLS certificate reload failed/, WAIT_MS);
    assert.match(refused, /tls\.crt: cannot read the certificate: not a regular file \(a FIFO\)$/);
    assert.ok(await servesCertificateOf(port, ca1), "the current certificate still serves");
  },
});

Deno.test({
  name: "main.ts reloads the certificate when its files change, and refuses a broken one",
  ...NEEDS_OPENSSL,
  async fn() {
    await using tls = await tlsProcess((live) => live.dir);
    const { lb, live, leaf2, ca1, ca2, port } = tls;
    assert.ok(await servesCertificateOf(port, ca1));

    await live.install(leaf2.cert, leaf2.key);
    await lb.waitForLine(/INFO TLS certificate reloaded: CN=server-2/, WAIT_MS);
    assert.ok(await eventually(() => servesCertificateOf(port, ca2)));

    await live.install("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n", "x");
    await lb.waitForLine(/ERROR TLS certificate reload failed, keeping the current/, WAIT_MS);
    assert.ok(samePem((await servedByOpenssl(port)).pem, leaf2.cert));
    using client = Deno.createHttpClient({ caCerts: [ca2.cert] });
    const response = await fetch(`https://127.0.0.1:${port}/`, { client });
    assert.equal(response.status, 200);
    await response.body?.cancel();
  },
});

// ---------------------------------------------------------------------------------------------
// HTTPS backends

Deno.test({
  name: "HTTPS backends are verified: a private CA is refused (502, down) until backendCa names it",
  ...NEEDS_OPENSSL,
  async fn() {
    await using pki = await Pki.create();
    const ca = await pki.ca("backend-ca");
    await using tlsBackend = startTlsBackend(await pki.leaf("backend", ca));

    const log = captureLog();
    {
      await using lb = await startTestBalancer([tlsBackend.url], {}, log);
      const backend = lb.balancer.pool.backends[0];
      const response = await fetch(`${lb.url}/`);
      assert.equal(response.status, 502);
      await response.body?.cancel();
      assert.equal(backend.status, "down");
      assert.ok(
        log.lines.some((l) => l.includes("[down]") && /UnknownIssuer/.test(l)),
        log.lines.join("\n"),
      );
      // The health check, with the same client, fails the same way.
      assert.ok(await waitFor(() => backend.lastCheck !== undefined, WAIT_MS));
      assert.equal(backend.lastCheck!.ok, false);
      assert.match(backend.lastCheck!.detail, /UnknownIssuer/);
      assert.equal(tlsBackend.requests(), 0, "nothing reached the backend");
    }
    {
      await using lb = await startTestBalancer([tlsBackend.url], { backendCa: ca.certPath });
      const backend = lb.balancer.pool.backends[0];
      const response = await fetch(`${lb.url}/`);
      assert.equal(response.status, 200);
      assert.equal(await response.text(), "tls ok");
      assert.ok(await waitFor(() => backend.lastCheck !== undefined, WAIT_MS));
      assert.equal(backend.lastCheck!.ok, true, backend.lastCheck!.detail);
      assert.equal(backend.status, "up");
    }
  },
});

Deno.test({
  name: "with --transport fetch, HTTPS backends that offer HTTP/2 are spoken to in HTTP/2",
  ...NEEDS_OPENSSL,
  async fn() {
    const http2 = await import("node:http2");
    await using pki = await Pki.create();
    const ca = await pki.ca("backend-ca");
    const leaf = await pki.leaf("backend", ca);
    const seen: string[] = [];
    const server = http2.createSecureServer(
      { cert: leaf.cert, key: leaf.key, allowHTTP1: true },
      (req, res) => {
        seen.push(`${req.httpVersion} ${req.headers["user-agent"]}`);
        res.end(`HTTP/${req.httpVersion} host=${req.headers.host}`);
      },
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;
    try {
      await using lb = await startTestBalancer([`https://127.0.0.1:${port}`], {
        backendCa: ca.certPath,
        transport: "fetch",
      });
      // The client's Host travels as a host header (:authority names the backend).
      using hostClient = Deno.createHttpClient({ allowHost: true });
      const response = await fetch(`${lb.url}/`, {
        client: hostClient,
        headers: { host: "app.example" },
      });
      assert.equal(await response.text(), "HTTP/2.0 host=app.example");
      assert.ok(await waitFor(() => seen.length >= 2, WAIT_MS), seen.join("\n"));
      assert.ok(seen.every((line) => line.startsWith("2.0 ")), seen.join("\n"));
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  },
});

Deno.test({
  name: "mTLS backends refuse the balancer without backendCert and accept it with one",
  ...NEEDS_OPENSSL,
  async fn() {
    // Deno.serve cannot ask for client certificates; node:https can (requestCert).
    const https = await import("node:https");
    await using pki = await Pki.create();
    const ca = await pki.ca("mtls-ca");
    const otherCa = await pki.ca("other-ca");
    const leaf = await pki.leaf("backend", ca);
    const client = await pki.leaf("lb-client", ca);
    const stranger = await pki.leaf("stranger", otherCa);
    const server = https.createServer(
      { cert: leaf.cert, key: leaf.key, ca: ca.cert, requestCert: true, rejectUnauthorized: true },
      (req, res) => {
        // deno-lint-ignore no-explicit-any
        const peer = (req.socket as any).getPeerCertificate?.()?.subject?.CN ?? "?";
        res.end(`hello ${peer}`);
      },
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `https://127.0.0.1:${(server.address() as { port: number }).port}`;
    try {
      const attempts: [string, Record<string, string>, number][] = [
        ["no client certificate", {}, 502],
        ["a certificate from another CA", {
          backendCert: stranger.certPath,
          backendKey: stranger.keyPath,
        }, 502],
        [
          "the client certificate",
          { backendCert: client.certPath, backendKey: client.keyPath },
          200,
        ],
      ];
      for (const [what, overrides, status] of attempts) {
        await using lb = await startTestBalancer([url], { backendCa: ca.certPath, ...overrides });
        const response = await fetch(`${lb.url}/`);
        const text = await response.text();
        assert.equal(response.status, status, `${what}: ${text}`);
        if (status === 200) assert.equal(text, "hello lb-client");
      }
    } finally {
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(resolve));
    }
  },
});

Deno.test({
  name: "startBalancer() refuses unreadable or unusable TLS files, naming them",
  ...NEEDS_OPENSSL,
  async fn() {
    await using pki = await Pki.create();
    const ca = await pki.ca("test-ca");
    const a = await pki.leaf("a", ca);
    const b = await pki.leaf("b", ca);
    const junk = `${pki.dir}/junk.pem`;
    await Deno.writeTextFile(junk, "no certificate here\n");
    const cases: [Record<string, string>, RegExp][] = [
      [{ tlsCert: `${pki.dir}/missing.pem`, tlsKey: a.keyPath }, /missing\.pem.*no such file/],
      [{ tlsCert: a.certPath, tlsKey: b.keyPath }, /a\.pem with .*b\.key.*KeyMismatch/],
      [{ backendCa: junk }, /junk\.pem: no PEM certificate/],
      [{ backendCert: a.certPath, backendKey: b.keyPath }, /KeyMismatch/],
    ];
    for (const [overrides, message] of cases) {
      await assert.rejects(
        startTestBalancer(["http://127.0.0.1:1"], overrides),
        (error: Error) => {
          assert.ok(error instanceof TlsError, String(error));
          assert.match(error.message, message);
          return true;
        },
      );
    }
  },
});

Deno.test({
  name:
    "--frontend native: TLS handshakes stalled past --header-timeout keep their --max-connections slots until the client leaves; their sockets close then",
  ...NEEDS_OPENSSL,
  async fn() {
    const native = TEST_FRONTEND === "native" ? [] : ["--frontend=native"];
    await using tls = await tlsProcess(
      (live) => live.dir,
      [...native, "--header-timeout=500ms", "--max-connections=4"],
    );
    const fds = () => [...Deno.readDirSync(`/proc/${tls.lb.child.pid}/fd`)].length;
    assert.equal(await handshake(tls.port, [tls.ca1.cert], ["http/1.1"]), "http/1.1");
    await delay(300);
    const before = fds();
    const silent: Deno.Conn[] = [];
    try {
      for (let i = 0; i < 12; i++) {
        silent.push(await Deno.connect({ hostname: "127.0.0.1", port: tls.port }));
        // Half stop within their ClientHello: the record header of one, without the body.
        if (i % 2 === 1) await silent[i].write(new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00]));
      }
      // Each header timeout used to free four slots while the sockets stayed: twelve in 1.5 s.
      let most = 0;
      for (let i = 0; i < 30; i++) {
        most = Math.max(most, fds() - before);
        await delay(100);
      }
      assert.ok(most <= 4, `${most} descriptors more with --max-connections=4`);
    } finally {
      for (const conn of silent) conn.close();
    }
    assert.ok(await waitFor(() => fds() <= before, WAIT_MS), "sockets left open");
    // A client that completes its handshake and sends nothing is closed at the header timeout.
    const conn = await Deno.connectTls({
      hostname: "127.0.0.1",
      port: tls.port,
      caCerts: [tls.ca1.cert],
    });
    try {
      await conn.handshake();
      const read = conn.read(new Uint8Array(16)).catch(() => null);
      assert.equal(await within(read, WAIT_MS, "the header timeout"), null);
    } finally {
      conn.close();
    }
  },
});

Deno.test({
  name: "--workers 2 with TLS: both threads serve HTTPS and a certificate reload reaches both",
  ...NEEDS_OPENSSL,
  async fn() {
    await using tls = await tlsProcess(
      (live) => `${live.dir},lib`,
      ["--workers=2", "--log-level=debug"],
    );
    const { lb, port, ca1, ca2, live, leaf2 } = tls;
    await lb.waitForLine(/Started 2 workers/);
    // New connections spread over both threads' listeners at random (all 30 on one thread:
    // probability 2^-29); the debug lines tell which served.
    const connections = 30;
    for (let i = 0; i < connections; i++) {
      using client = Deno.createHttpClient({ caCerts: [ca1.cert], poolMaxIdlePerHost: 0 });
      const response = await fetch(`https://127.0.0.1:${port}/`, { client });
      assert.equal(response.status, 200);
      await response.body?.cancel();
    }
    // Each selection is logged before its request is forwarded, but read here from a pipe.
    const selections = () => lb.lines.filter((line) => line.includes("Selected backend:"));
    await waitFor(() => selections().length >= connections, WAIT_MS);
    const selected = selections();
    const byWorker = selected.filter((line) => line.includes("[worker 1]")).length;
    assert.ok(byWorker > 0 && byWorker < selected.length, `both threads served: ${byWorker}`);

    await live.install(leaf2.cert, leaf2.key);
    lb.child.kill("SIGHUP");
    await lb.waitForLine(/^(?!.*\[worker 1\]).*TLS certificate reloaded/, WAIT_MS);
    await lb.waitForLine(/\[worker 1\] TLS certificate reloaded/, WAIT_MS);
    // Soon every new connection, whichever thread accepts it, gets the new certificate (an old
    // listener is closed a moment after its replacement binds: until then it may take one).
    const allNew = async () => {
      for (let i = 0; i < 20; i++) if (!(await servesCertificateOf(port, ca2))) return false;
      return true;
    };
    assert.ok(await eventually(allNew), "20 new connections in a row get the new certificate");
    assert.ok(!(await servesCertificateOf(port, ca1)));
  },
});

Deno.test({
  name: "TLS: a second balancer on the same port is refused, though the listener uses SO_REUSEPORT",
  ...NEEDS_OPENSSL,
  async fn() {
    await using tls = await tlsProcess((live) => live.dir);
    const { code, stderr } = await runMain([
      "--backends=http://127.0.0.1:9",
      `--port=${tls.port}`,
      "--host=127.0.0.1",
      `--tls-cert=${tls.live.certPath}`,
      `--tls-key=${tls.live.keyPath}`,
    ], { permissions: [`--allow-read=${tls.live.dir}`] });
    assert.equal(code, 1);
    assert.match(
      stderr,
      new RegExp(`load-balancer: cannot listen on 127\\.0\\.0\\.1:${tls.port}: `),
    );
    // The first one still serves every connection.
    assert.ok(await servesCertificateOf(tls.port, tls.ca1));
  },
});
