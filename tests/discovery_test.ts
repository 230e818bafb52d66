/**
 * @module
 * DNS service discovery (lib/discovery.ts): the SRV and A/AAAA rules and the last-good-set rule
 * with an injected resolver, then the real thing against a dnsmasq this file starts per test on
 * 127.0.0.1 (its own config, a free port, no upstream, nothing but 127.0.0.x in its records).
 *
 * Changing records: A records live in an `--addn-hosts` file, which dnsmasq re-reads on SIGHUP
 * (the test waits for its "read ... names" log line). SRV records exist only in the config file,
 * which dnsmasq reads once, so an SRV change restarts dnsmasq on the same port; the balancer sees
 * a short DNS outage in between, which it must ride out.
 *
 * The dnsmasq tests are ignored, with the reason printed, only when no dnsmasq binary exists
 * (`apt-get install dnsmasq-base`: the binary without the system service).
 */
import assert from "node:assert/strict";
import {
  applyDiscoveryChange,
  DnsDiscovery,
  mergeBackends,
  originOf,
  parseNameServer,
  type Resolve,
  unionOf,
  usableSrvRecords,
} from "../lib/discovery.ts";
import { type Config, parseDiscoveryTarget } from "../lib/config.ts";
import { startBalancer } from "../lib/balancer.ts";
import { HEALTH_CHECK_USER_AGENT } from "../lib/health.ts";
import type { Log } from "../lib/log.ts";
import { type BackendSpec, Pool } from "../lib/pool.ts";
import { createPolicy } from "../lib/policies/mod.ts";
import {
  captureLog,
  delay,
  SequentialTraffic,
  startTestBalancer,
  testConfig,
  waitFor,
} from "./helpers.ts";
import { spawnBalancer } from "./process.ts";

/** Generous: a loaded shared machine may be slow to run a lookup round or restart dnsmasq. */
const WAIT_MS = 20_000;
/** Requests a traffic loop may send at most (it normally stops long before). */

// ---------------------------------------------------------------------------------------------
// Rules, with an injected resolver

/** Records a fake resolver answers; anything else is "no such records" (NotFound). */
interface FakeZone {
  srv?: Record<string, Deno.SrvRecord[]>;
  a?: Record<string, string[]>;
  aaaa?: Record<string, string[]>;
}

/** A resolver answering from `zone()` (read at every query, so tests can change it). */
function fakeResolver(zone: () => FakeZone | Error): Resolve {
  return (name, type) => {
    const z = zone();
    if (z instanceof Error) return Promise.reject(z);
    const table = type === "SRV" ? z.srv : type === "A" ? z.a : z.aaaa;
    const answer = table?.[name];
    if (answer === undefined) {
      return Promise.reject(new Deno.errors.NotFound(`no records found for ${name} ${type}`));
    }
    return Promise.resolve(answer);
  };
}

function srv(target: string, port: number, weight: number, priority = 0): Deno.SrvRecord {
  return { target, port, weight, priority };
}

function target(text: string) {
  const parsed = parseDiscoveryTarget(text);
  assert.ok(parsed, text);
  return parsed;
}

Deno.test("DnsDiscovery.lookup() drops unspecified, multicast and broadcast answers, saying so once each", async () => {
  const log = captureLog();
  const discovery = new DnsDiscovery({
    targets: [],
    resolve: fakeResolver(() => ({
      a: { "sink.test": ["0.0.0.0", "127.0.0.2", "224.0.0.1", "255.255.255.255"] },
      aaaa: { "sink.test": ["::", "ff02::1", "::1"] },
    })),
  }, log);
  for (let round = 0; round < 2; round++) {
    assert.deepEqual(await discovery.lookup(target("dns+a://sink.test:9000")), [
      { url: "http://127.0.0.2:9000", weight: 1 },
      { url: "http://[::1]:9000", weight: 1 },
    ]);
  }
  assert.deepEqual(log.lines, [
    "WARN DNS sink.test: ignoring 0.0.0.0 (unspecified: no backend can be there)",
    "WARN DNS sink.test: ignoring 224.0.0.1 (multicast: no backend can be there)",
    "WARN DNS sink.test: ignoring 255.255.255.255 (broadcast: no backend can be there)",
    "WARN DNS sink.test: ignoring :: (unspecified: no backend can be there)",
    "WARN DNS sink.test: ignoring ff02::1 (multicast: no backend can be there)",
  ]);
});

Deno.test("DnsDiscovery.lookup() takes the lowest SRV priority, weight 0 as 1, every address of a target", async () => {
  const discovery = new DnsDiscovery({
    targets: [],
    resolve: fakeResolver(() => ({
      srv: {
        "_http._tcp.app.test": [
          srv("b1.app.test.", 8081, 5),
          srv("b2.app.test.", 8082, 0),
          srv("backup.app.test.", 8083, 7, 1), // a backup: a higher priority number
          srv("gone.app.test.", 8084, 3), // no addresses: contributes nothing
          srv("b1.app.test.", 8081, 2), // the same address again: once, highest weight
        ],
        "_https._tcp.secure.test": [srv("b1.app.test.", 8443, 1)],
        "_http._tcp.none.test": [srv(".", 0, 0)],
      },
      a: { "b1.app.test": ["127.0.0.1"], "b2.app.test": ["127.0.0.2", "127.0.0.3"] },
      aaaa: { "b2.app.test": ["::1"] },
    })),
  }, captureLog());
  assert.deepEqual(await discovery.lookup(target("dns+srv://_http._tcp.app.test")), [
    { url: "http://127.0.0.1:8081", weight: 5 },
    { url: "http://127.0.0.2:8082", weight: 1 },
    { url: "http://127.0.0.3:8082", weight: 1 },
    { url: "http://[::1]:8082", weight: 1 },
  ]);
  assert.deepEqual(await discovery.lookup(target("dns+srv://_https._tcp.secure.test")), [
    { url: "https://127.0.0.1:8443", weight: 1 },
  ]);
  assert.deepEqual(await discovery.lookup(target("dns+srv://_http._tcp.none.test")), []);
  assert.deepEqual(await discovery.lookup(target("dns+a://b2.app.test:9000")), [
    { url: "http://127.0.0.2:9000", weight: 1 },
    { url: "http://127.0.0.3:9000", weight: 1 },
    { url: "http://[::1]:9000", weight: 1 },
  ]);
  assert.deepEqual(await discovery.lookup(target("dns+a://nothing.test:9000")), []);
});

Deno.test("usableSrvRecords(), unionOf() and originOf() follow the documented rules", () => {
  assert.deepEqual(usableSrvRecords([srv("a.", 1, 1, 2), srv("b.", 2, 1, 1), srv(".", 0, 0, 0)]), [
    srv("b.", 2, 1, 1),
  ]);
  // Port 0 is no backend, whatever its priority.
  assert.deepEqual(usableSrvRecords([srv("z.", 0, 1, 0), srv("b.", 2, 1, 1)]), [
    srv("b.", 2, 1, 1),
  ]);
  assert.deepEqual(usableSrvRecords([]), []);
  assert.deepEqual(
    unionOf([[{ url: "http://a:1", weight: 2 }], [{ url: "http://a:1", weight: 5 }]]),
    [{ url: "http://a:1", weight: 5 }],
  );
  assert.equal(originOf("http", "127.0.0.1", 80), "http://127.0.0.1");
  assert.equal(originOf("http", "fd00::0001", 8080), "http://[fd00::1]:8080");
});

Deno.test("parseNameServer() takes IP:PORT, [IPv6]:PORT and localhost:PORT, and names the bad value", () => {
  assert.deepEqual(parseNameServer("127.0.0.1:5353"), { ipAddr: "127.0.0.1", port: 5353 });
  assert.deepEqual(parseNameServer("[::1]:53"), { ipAddr: "::1", port: 53 });
  assert.deepEqual(parseNameServer("localhost:53"), { ipAddr: "127.0.0.1", port: 53 });
  for (const bad of ["dns.example:53", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000"]) {
    assert.throws(() => parseNameServer(bad), new RegExp(`"${bad.replaceAll(".", "\\.")}"`));
  }
  assert.throws(
    () => new DnsDiscovery({ targets: [], dnsServer: "dns.example:53" }, captureLog()),
    /--dns-server: "dns\.example:53"/,
  );
});

Deno.test("DnsDiscovery keeps the last good set through failed and empty lookups, warning once per streak", async () => {
  let zone: FakeZone | Error = {
    srv: { "_http._tcp.app.test": [srv("b.app.test.", 1, 1), srv("b.app.test.", 2, 3)] },
    a: { "b.app.test": ["127.0.0.1"] },
  };
  const changes: [string[], string[]][] = [];
  const log = captureLog();
  const discovery = new DnsDiscovery({
    targets: [target("dns+srv://_http._tcp.app.test")],
    resolve: fakeResolver(() => zone),
    onChange: (before, after) => changes.push([before.map((b) => b.url), after.map((b) => b.url)]),
  }, log);
  const first = await discovery.initialLookup();
  assert.deepEqual(first, [
    { url: "http://127.0.0.1:1", weight: 1 },
    { url: "http://127.0.0.1:2", weight: 3 },
  ]);
  assert.deepEqual(changes, [], "the initial lookup's set is returned, not announced");
  assert.deepEqual(log.lines, [
    "INFO Discovered backend: http://127.0.0.1:1",
    "INFO Discovered backend: http://127.0.0.1:2",
  ]);

  log.lines.length = 0;
  zone = new Error("connection refused");
  await discovery.refresh();
  await discovery.refresh();
  zone = {}; // NXDOMAIN: empty, in the same streak
  await discovery.refresh();
  assert.deepEqual(discovery.backends, first, "the last good set is kept");
  assert.deepEqual(changes, []);
  assert.deepEqual(log.lines, [
    "WARN DNS discovery dns+srv://_http._tcp.app.test: lookup failed: connection refused; " +
    "keeping the 2 backend(s) of the last good lookup",
  ]);

  log.lines.length = 0;
  zone = {
    srv: { "_http._tcp.app.test": [srv("b.app.test.", 2, 1), srv("b.app.test.", 3, 1)] },
    a: { "b.app.test": ["127.0.0.1"] },
  };
  await discovery.refresh();
  assert.deepEqual(log.lines, [
    "INFO DNS discovery dns+srv://_http._tcp.app.test: lookups work again",
    "INFO Discovered weight of http://127.0.0.1:2: 3 -> 1",
    "INFO Discovered backend: http://127.0.0.1:3",
    "INFO Backend gone from DNS: http://127.0.0.1:1",
  ]);
  assert.deepEqual(changes, [[
    ["http://127.0.0.1:1", "http://127.0.0.1:2"],
    ["http://127.0.0.1:2", "http://127.0.0.1:3"],
  ]]);

  log.lines.length = 0;
  zone = {};
  await discovery.refresh();
  assert.deepEqual(log.lines, [
    "WARN DNS discovery dns+srv://_http._tcp.app.test: no records (or none with an address); " +
    "keeping the 2 backend(s) of the last good lookup",
  ]);
});

Deno.test("DnsDiscovery gives up on an unanswered lookup after the timeout, and stop() cancels one at once", async () => {
  let queries = 0;
  const hang: Resolve = (_name, _type, options) => {
    queries++;
    return new Promise((_, reject) => {
      options.signal!.addEventListener("abort", () => reject(options.signal!.reason), {
        once: true,
      });
    });
  };
  const log = captureLog();
  const discovery = new DnsDiscovery({
    targets: [target("dns+a://app.test:80")],
    intervalMs: 10,
    timeoutMs: 50,
    resolve: hang,
  }, log);
  const started = performance.now();
  assert.deepEqual(await discovery.initialLookup(), []);
  assert.ok(performance.now() - started < 5000);
  assert.deepEqual(log.lines, [
    "WARN DNS discovery dns+a://app.test:80: no answer within 50 ms; no backends from it yet",
  ]);
  // The timer rounds: wait until one is in flight, then stop it halfway.
  discovery.start();
  const before = queries;
  assert.ok(await waitFor(() => queries > before, WAIT_MS));
  const stopping = performance.now();
  await discovery.stop();
  assert.ok(performance.now() - stopping < 1000, "stop() did not wait for the lookup");
  const after = queries;
  await delay(100);
  assert.equal(queries, after, "no rounds after stop()");
  assert.equal(log.lines.length, 1, "a cancelled lookup is not a failure");
});

Deno.test("mergeBackends() puts static backends first and keeps their weights", () => {
  assert.deepEqual(
    mergeBackends(
      [{ url: "http://a:1", weight: 2 }],
      [{ url: "http://b:1", weight: 1 }, { url: "http://a:1", weight: 9 }],
    ),
    [{ url: "http://a:1", weight: 2 }, { url: "http://b:1", weight: 1 }],
  );
});

Deno.test("applyDiscoveryChange() adds, drains and reweights discovered backends, never static ones", () => {
  const pool = new Pool([{ url: "http://s:1", weight: 1 }, { url: "http://d:1", weight: 1 }], {
    rise: 1,
    fall: 1,
    policy: createPolicy("round-robin"),
  });
  const statics = new Set(["http://s:1"]);
  const spec = (url: string, weight = 1): BackendSpec => ({ url, weight });
  const urls = () => pool.backends.map((b) => `${b.url}*${b.weight}`);
  applyDiscoveryChange(pool, statics, [spec("http://d:1")], [
    spec("http://d:1", 4),
    spec("http://s:1", 7),
    spec("http://e:1"),
  ]);
  assert.deepEqual(urls(), ["http://s:1*1", "http://d:1*4", "http://e:1*1"]);
  const d = pool.find("http://d:1")!;
  pool.acquire(d); // in flight: drains, then leaves
  applyDiscoveryChange(pool, statics, [spec("http://d:1", 4), spec("http://e:1")], [
    spec("http://e:1"),
  ]);
  assert.equal(d.status, "draining");
  pool.release(d);
  // DNS dropping a static URL changes nothing.
  applyDiscoveryChange(pool, statics, [spec("http://s:1"), spec("http://e:1")], [
    spec("http://e:1"),
  ]);
  assert.deepEqual(urls(), ["http://s:1*1", "http://e:1*1"]);
});

// ---------------------------------------------------------------------------------------------
// Against a real dnsmasq on 127.0.0.1

/** Where dnsmasq is, or undefined. */
function findDnsmasq(): string | undefined {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/sbin"];
  for (const dir of dirs.filter((d) => d !== "")) {
    try {
      if (Deno.statSync(`${dir}/dnsmasq`).isFile) return `${dir}/dnsmasq`;
    } catch { /* not here */ }
  }
  return undefined;
}

const DNSMASQ = findDnsmasq();
const SKIP_REASON = DNSMASQ === undefined
  ? "dnsmasq is not installed (apt-get install dnsmasq-base); the DNS tests are ignored"
  : undefined;
if (SKIP_REASON !== undefined) console.warn(`discovery_test.ts: ${SKIP_REASON}`);

/** What the test's DNS server answers. Every address must be a 127.0.0.x one. */
interface Zone {
  /** A records, name -> addresses (an --addn-hosts file: SIGHUP re-reads it). */
  hosts?: Record<string, string[]>;
  /** SRV records (in the config file: a change restarts dnsmasq on the same port). */
  srv?: SrvEntry[];
}

/** One SRV record as dnsmasq's `srv-host` takes it. */
interface SrvEntry {
  name: string;
  target: string;
  port: number;
  weight: number;
  /** A higher number is a backup. @default 0 */
  priority?: number;
}

function assertLoopback(zone: Zone): void {
  for (const address of Object.values(zone.hosts ?? {}).flat()) {
    assert.match(address, /^127\.\d+\.\d+\.\d+$/, "test records point to loopback only");
  }
}

/** A dnsmasq process on 127.0.0.1 with this test's records; stopped by PID on dispose. */
class Dnsmasq implements AsyncDisposable {
  #child: Deno.ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #running = false;
  #zone: Zone;
  /** dnsmasq's stderr so far (its log), across restarts. */
  log = "";

  private constructor(readonly dir: string, readonly port: number, zone: Zone) {
    this.#zone = zone;
  }

  /** The `nameServer` option for Deno.resolveDns. */
  get nameServer() {
    return { ipAddr: "127.0.0.1", port: this.port };
  }

  /** `HOST:PORT` for `--dns-server`. */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Starts dnsmasq on a free port (retrying another one if it was taken meanwhile). */
  static async start(zone: Zone): Promise<Dnsmasq> {
    const dir = await Deno.makeTempDir({ prefix: "lb-dns-" });
    // dnsmasq drops root for "nobody" after start-up and must still read the hosts file.
    await Deno.chmod(dir, 0o755);
    let lastLog = "";
    for (let attempt = 0; attempt < 10; attempt++) {
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = listener.addr.port;
      listener.close();
      const dns = new Dnsmasq(dir, port, zone);
      if (await dns.#launch()) return dns;
      lastLog = dns.log;
      await dns.stop();
    }
    await Deno.remove(dir, { recursive: true });
    throw new Error(`dnsmasq did not start:\n${lastLog}`);
  }

  async #writeFiles(): Promise<void> {
    assertLoopback(this.#zone);
    const hosts = Object.entries(this.#zone.hosts ?? {})
      .flatMap(([name, addresses]) => addresses.map((address) => `${address} ${name}\n`));
    const conf = [
      "# written by tests/discovery_test.ts",
      "local=/test/", // names under .test are answered here, NXDOMAIN when unknown
      `addn-hosts=${this.dir}/hosts`,
      "host-record=ready.test,127.0.0.1",
      ...(this.#zone.srv ?? []).map((r) =>
        `srv-host=${r.name},${r.target},${r.port},${r.priority ?? 0},${r.weight}`
      ),
    ];
    await Deno.writeTextFile(`${this.dir}/hosts`, hosts.join(""), { mode: 0o644 });
    await Deno.writeTextFile(`${this.dir}/dnsmasq.conf`, conf.join("\n") + "\n", { mode: 0o644 });
  }

  /** Starts the process on `this.port`; resolves whether it answers queries. */
  async #launch(): Promise<boolean> {
    await this.#writeFiles();
    const child = new Deno.Command(DNSMASQ!, {
      args: [
        "--no-daemon",
        `--conf-file=${this.dir}/dnsmasq.conf`,
        `--port=${this.port}`,
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#running = true;
    const reading = (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        this.log += chunk;
      }
    })();
    this.#exited = child.status.then(async () => {
      this.#running = false;
      await reading;
    });
    const deadline = Date.now() + WAIT_MS;
    while (this.#running && Date.now() < deadline) {
      if (await this.#answers()) return true;
      await delay(50);
    }
    return false;
  }

  /** Whether a query for the readiness record gets an answer within 500 ms. */
  async #answers(): Promise<boolean> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 500);
    try {
      const answer = await Deno.resolveDns("ready.test", "A", {
        nameServer: this.nameServer,
        signal: controller.signal,
      });
      return answer.length > 0;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Serves `zone` from now on. Only A records changed: rewrite the hosts file and SIGHUP (waits
   * for dnsmasq's "read" line). SRV records changed: restart on the same port.
   */
  async update(zone: Zone): Promise<void> {
    const srvChanged = JSON.stringify(zone.srv ?? []) !== JSON.stringify(this.#zone.srv ?? []);
    this.#zone = zone;
    if (srvChanged || !this.#running) {
      await this.restart();
      return;
    }
    await this.#writeFiles();
    const reads = () => this.log.split(`read ${this.dir}/hosts`).length;
    const before = reads();
    this.#child!.kill("SIGHUP");
    assert.ok(await waitFor(() => reads() > before, WAIT_MS), `no re-read:\n${this.log}`);
  }

  /** Stops (if running) and starts again on the same port with the current zone. */
  async restart(): Promise<void> {
    await this.stop();
    assert.ok(await this.#launch(), `dnsmasq did not restart on ${this.port}:\n${this.log}`);
  }

  /** Stops the process (SIGTERM to its PID) and waits for it. */
  async stop(): Promise<void> {
    if (this.#running) {
      try {
        this.#child!.kill("SIGCONT"); // in case a test paused it
        this.#child!.kill("SIGTERM");
      } catch { /* exited meanwhile */ }
    }
    await this.#exited;
  }

  /** SIGSTOP: queries now get no answer at all. */
  pause(): void {
    this.#child!.kill("SIGSTOP");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
    await Deno.remove(this.dir, { recursive: true });
  }
}

/** A backend that answers its name and counts the requests that are not health checks. */
interface NamedBackend extends AsyncDisposable {
  readonly name: string;
  readonly url: string;
  readonly port: number;
  readonly hits: { count: number };
}

function serveNamed(name: string, hostname = "127.0.0.1", port = 0): NamedBackend {
  const hits = { count: 0 };
  const server = Deno.serve({ hostname, port, onListen: () => {} }, (req) => {
    if (req.headers.get("user-agent") !== HEALTH_CHECK_USER_AGENT) hits.count++;
    return new Response(name);
  });
  return {
    name,
    url: `http://${hostname}:${server.addr.port}`,
    port: server.addr.port,
    hits,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

/** One backend on each address, all on the same port (as dns+a needs). */
async function serveOnAddresses(addresses: string[]): Promise<NamedBackend[]> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const first = serveNamed(addresses[0], addresses[0]);
    const all = [first];
    try {
      for (const address of addresses.slice(1)) {
        all.push(serveNamed(address, address, first.port));
      }
      return all;
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrInUse)) throw error;
      for (const backend of all) await backend[Symbol.asyncDispose]();
    }
  }
  throw new Error(`no port free on all of ${addresses.join(", ")}`);
}

/** Disposes several fixtures. */
function disposeAll(items: AsyncDisposable[]): AsyncDisposable {
  return {
    [Symbol.asyncDispose]: async () => {
      for (const item of items) await item[Symbol.asyncDispose]();
    },
  };
}

/** `n` sequential GETs; returns how many each answer text got (all must be 200). */
async function countAnswers(url: string, n: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const response = await fetch(url);
    const text = await response.text();
    assert.equal(response.status, 200, text);
    counts[text] = (counts[text] ?? 0) + 1;
  }
  return counts;
}

/** The pool's backends as `URL*WEIGHT status`, sorted. */
function poolView(pool: Pool): string[] {
  return pool.backends.map((b) => `${b.url}*${b.weight} ${b.status}`).sort();
}

/** Balancer settings that discover `uris` from the test's `dns`, a round every 100 ms. */
function discovering(dns: { address: string }, ...uris: string[]): Partial<Config> {
  return { discover: uris, dnsServer: dns.address, discoverInterval: 100 };
}

/** The SRV name {@linkcode appSrv} records answer, as a discovery URI. */
const APP_SRV = "dns+srv://_http._tcp.app.test";

/** A balancer with no static backends that discovers {@linkcode APP_SRV} from `dns`. */
function discoveringApp(dns: { address: string }, log?: Log) {
  return startTestBalancer([], discovering(dns, APP_SRV), log);
}

/** The A record that {@linkcode appSrv} records point at: every test backend is on 127.0.0.1. */
const APP_HOSTS = { "b.app.test": ["127.0.0.1"] };

/**
 * An SRV record of `_http._tcp.app.test` for `backend` (start dnsmasq with {@linkcode APP_HOSTS}
 * too, so its target resolves). A higher `priority` number is a backup.
 */
function appSrv(backend: NamedBackend, weight = 1, priority?: number): SrvEntry {
  return {
    name: "_http._tcp.app.test",
    target: "b.app.test",
    port: backend.port,
    weight,
    priority,
  };
}

const dnsTest = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, ignore: SKIP_REASON !== undefined, fn });

dnsTest("SRV discovery: dnsmasq's records become the pool, with their weights", async () => {
  await using a = serveNamed("a");
  await using b = serveNamed("b");
  await using backup = serveNamed("backup");
  await using dns = await Dnsmasq.start({
    hosts: APP_HOSTS,
    // A higher priority number is a backup: not used while the others are in DNS.
    srv: [appSrv(a, 3), appSrv(b, 1), appSrv(backup, 9, 1)],
  });
  const log = captureLog();
  await using lb = await discoveringApp(dns, log);
  assert.deepEqual(poolView(lb.balancer.pool), [`${a.url}*3 up`, `${b.url}*1 up`].sort());
  // Smooth weighted round-robin: 10 rounds of 3:1 are exact.
  assert.deepEqual(await countAnswers(lb.url, 40), { a: 30, b: 10 });
  assert.equal(backup.hits.count, 0);
  assert.ok(log.lines.includes(`INFO Discovered backend: ${a.url}`), log.lines.join("\n"));
  assert.ok(log.lines.includes(`INFO Discovered backend: ${b.url}`), log.lines.join("\n"));
});

dnsTest("A discovery: every address dnsmasq gives joins on the given port", async () => {
  const backends = await serveOnAddresses(["127.0.0.2", "127.0.0.3"]);
  await using _backends = disposeAll(backends);
  const port = backends[0].port;
  await using dns = await Dnsmasq.start({ hosts: { "web.app.test": ["127.0.0.2", "127.0.0.3"] } });
  await using lb = await startTestBalancer([], discovering(dns, `dns+a://web.app.test:${port}`));
  assert.deepEqual(poolView(lb.balancer.pool), [
    `http://127.0.0.2:${port}*1 up`,
    `http://127.0.0.3:${port}*1 up`,
  ]);
  assert.deepEqual(await countAnswers(lb.url, 20), { "127.0.0.2": 10, "127.0.0.3": 10 });
});

dnsTest(
  "A records added and removed (SIGHUP) while traffic flows: zero failed requests",
  async () => {
    const backends = await serveOnAddresses(["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    await using _backends = disposeAll(backends);
    const [b2, b3, b4] = backends;
    await using dns = await Dnsmasq.start({
      hosts: { "web.app.test": ["127.0.0.2", "127.0.0.3"] },
    });
    const log = captureLog();
    await using lb = await startTestBalancer(
      [],
      discovering(dns, `dns+a://web.app.test:${b2.port}`),
      log,
    );
    const pool = lb.balancer.pool;
    const traffic = new SequentialTraffic(lb.url);
    try {
      await traffic.more(30);
      await dns.update({ hosts: { "web.app.test": ["127.0.0.3", "127.0.0.4"] } });
      assert.ok(
        await waitFor(
          () => pool.find(b4.url) !== undefined && pool.find(b2.url) === undefined,
          WAIT_MS,
        ),
        poolView(pool).join(", "),
      );
      const b2Hits = b2.hits.count;
      const b4Before = b4.hits.count;
      await traffic.more(40);
      assert.equal(b2.hits.count, b2Hits, "a backend gone from DNS gets no new requests");
      assert.ok(b4.hits.count > b4Before, "the new backend takes traffic");
      assert.ok(b3.hits.count > 0);
      // Back to one address, then the others return.
      await dns.update({ hosts: { "web.app.test": ["127.0.0.4"] } });
      assert.ok(
        await waitFor(() => pool.backends.length === 1, WAIT_MS),
        poolView(pool).join(", "),
      );
      await traffic.more(20);
      await dns.update({ hosts: { "web.app.test": ["127.0.0.2", "127.0.0.3", "127.0.0.4"] } });
      assert.ok(
        await waitFor(() => pool.backends.length === 3, WAIT_MS),
        poolView(pool).join(", "),
      );
      await traffic.more(30);
    } finally {
      await traffic.stop();
    }
    assert.deepEqual(traffic.failures, []);
    assert.ok(log.lines.includes(`INFO Discovered backend: ${b4.url}`), log.lines.join("\n"));
    assert.ok(log.lines.includes(`INFO Backend gone from DNS: ${b2.url}`), log.lines.join("\n"));
    assert.deepEqual(poolView(pool), [`${b2.url}*1 up`, `${b3.url}*1 up`, `${b4.url}*1 up`]);
  },
);

dnsTest(
  "SRV records changed (dnsmasq restarted) while traffic flows: zero failed requests",
  async () => {
    await using a = serveNamed("a");
    await using b = serveNamed("b");
    await using dns = await Dnsmasq.start({ hosts: APP_HOSTS, srv: [appSrv(a), appSrv(b)] });
    await using c = serveNamed("c"); // listed from the change on
    await using lb = await discoveringApp(dns);
    const pool = lb.balancer.pool;
    const traffic = new SequentialTraffic(lb.url);
    try {
      await traffic.more(30);
      await dns.update({ hosts: APP_HOSTS, srv: [appSrv(b, 3), appSrv(c, 1)] });
      assert.ok(
        await waitFor(() =>
          poolView(pool).join() === [`${b.url}*3 up`, `${c.url}*1 up`].sort().join()
        ),
        poolView(pool).join(", "),
      );
      const aHits = a.hits.count;
      await traffic.more(40);
      assert.equal(a.hits.count, aHits);
      assert.ok(c.hits.count > 0);
    } finally {
      await traffic.stop();
    }
    assert.deepEqual(traffic.failures, []);
  },
);

dnsTest(
  "a failed lookup (dnsmasq stopped) or an empty one keeps the last good set, warning once",
  async () => {
    await using a = serveNamed("a");
    await using b = serveNamed("b");
    await using dns = await Dnsmasq.start({ hosts: APP_HOSTS, srv: [appSrv(a), appSrv(b)] });
    const log = captureLog();
    // Lookups time out after 1 s (the minimum).
    await using lb = await discoveringApp(dns, log);
    const pool = lb.balancer.pool;
    const warnings = () => log.lines.filter((line) => line.startsWith("WARN"));
    const both = [`${a.url}*1 up`, `${b.url}*1 up`].sort();

    await dns.stop();
    assert.ok(await waitFor(() => warnings().length > 0, WAIT_MS), log.lines.join("\n"));
    assert.deepEqual(warnings(), [
      "WARN DNS discovery dns+srv://_http._tcp.app.test: no answer within 1000 ms; " +
      "keeping the 2 backend(s) of the last good lookup",
    ]);
    await delay(2500); // two more failed rounds at least
    assert.equal(warnings().length, 1, "once per failure streak");
    assert.deepEqual(poolView(pool), both);
    assert.deepEqual(await countAnswers(lb.url, 10), { a: 5, b: 5 });

    // Back, but without the records: an empty answer, still the same streak.
    await dns.update({ hosts: APP_HOSTS });
    await delay(1500);
    assert.equal(warnings().length, 1, log.lines.join("\n"));
    assert.deepEqual(poolView(pool), both);

    await dns.update({ hosts: APP_HOSTS, srv: [appSrv(a)] });
    assert.ok(await waitFor(() => pool.backends.length === 1, WAIT_MS), poolView(pool).join());
    assert.ok(
      log.lines.includes("INFO DNS discovery dns+srv://_http._tcp.app.test: lookups work again"),
      log.lines.join("\n"),
    );
    assert.ok(log.lines.includes(`INFO Backend gone from DNS: ${b.url}`), log.lines.join("\n"));
  },
);

dnsTest("shutdown does not wait for a lookup that gets no answer (dnsmasq paused)", async () => {
  await using a = serveNamed("a");
  await using dns = await Dnsmasq.start({ hosts: { "web.app.test": ["127.0.0.1"] } });
  const lb = await startBalancer(
    testConfig([], discovering(dns, `dns+a://web.app.test:${a.port}`)),
    captureLog(),
  );
  assert.equal(lb.pool.backends.length, 1);
  dns.pause();
  await delay(400); // a round is now waiting for its 1 s timeout
  const started = performance.now();
  await lb.shutdown(1000);
  const took = performance.now() - started;
  assert.ok(took < 900, `shutdown took ${Math.round(took)} ms`);
});

dnsTest(
  "static and discovered backends share the pool; a reload keeps the discovered ones",
  async () => {
    // DNS also lists the static backend s (with another weight): the pool keeps it once, as
    // configured.
    await using s = serveNamed("s");
    await using d = serveNamed("d");
    await using x = serveNamed("x");
    await using dns = await Dnsmasq.start({ hosts: APP_HOSTS, srv: [appSrv(s, 5), appSrv(d, 1)] });
    const overrides = discovering(dns, APP_SRV);
    await using lb = await startTestBalancer([s.url], overrides);
    const pool = lb.balancer.pool;
    assert.deepEqual(poolView(pool), [`${d.url}*1 up`, `${s.url}*1 up`].sort());
    assert.deepEqual(await countAnswers(lb.url, 10), { s: 5, d: 5 });

    // A reload with another static backend: the discovered one stays.
    let change = await lb.balancer.reload(testConfig([s.url, x.url], overrides));
    assert.deepEqual([change.added, change.removed], [[x.url], []]);
    assert.deepEqual(poolView(pool), [`${d.url}*1 up`, `${s.url}*1 up`, `${x.url}*1 up`].sort());

    // DNS drops everything it listed: the static backends stay, the discovered one drains.
    await dns.update({ hosts: APP_HOSTS, srv: [appSrv(x, 2)] });
    assert.ok(await waitFor(() => pool.find(d.url) === undefined, WAIT_MS), poolView(pool).join());
    assert.deepEqual(poolView(pool), [`${s.url}*1 up`, `${x.url}*1 up`].sort());

    // A reload that drops static s (not in DNS any more: leaves) and x (still in DNS: stays,
    // with its DNS weight).
    change = await lb.balancer.reload(testConfig([], overrides));
    assert.deepEqual(change.removed, [s.url]);
    assert.deepEqual(poolView(pool), [`${x.url}*2 up`]);
    assert.deepEqual(change.restartNeeded, []);
    // A new discovery interval applies live: lookups restart, and the found backends stay.
    change = await lb.balancer.reload(testConfig([], { ...overrides, discoverInterval: 5000 }));
    assert.deepEqual(change.restartNeeded, []);
    assert.deepEqual([change.added, change.removed], [[], []]);
    assert.deepEqual(poolView(pool), [`${x.url}*2 up`]);
  },
);

dnsTest(
  "main.ts --discover --dns-server: a DNS-only balancer process, with --allow-net only",
  async () => {
    await using a = serveNamed("a");
    await using dns = await Dnsmasq.start({ hosts: APP_HOSTS, srv: [appSrv(a)] });
    await using lb = spawnBalancer([
      "--discover=dns+srv://_http._tcp.app.test",
      `--dns-server=${dns.address}`,
      "--discover-interval=1s",
      "--port=0",
      "--host=127.0.0.1",
    ]);
    const port = await lb.port();
    await lb.waitForLine(new RegExp(`Discovered backend: ${a.url}$`));
    assert.deepEqual(await countAnswers(`http://127.0.0.1:${port}`, 3), { a: 3 });
  },
);
