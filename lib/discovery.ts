/**
 * @module
 * Backends from DNS: `dns+srv://NAME` (SRV records: target host, port and weight) and
 * `dns+a://NAME:PORT` (every A/AAAA address on that port), re-resolved on a timer.
 *
 * Each discovery target keeps its own last good answer. A lookup that fails (no answer in time,
 * a server error, no permission) or comes back empty keeps that answer and logs why, once per
 * failure streak: a DNS blip or a half-deployed zone must never empty the pool. The union of the
 * targets' answers is the discovered set; {@linkcode applyDiscoveryChange} turns a change of it
 * into pool additions (health checks and slow start apply as for any new backend) and graceful
 * removals. The pool and the proxy do not know that DNS exists.
 *
 * SRV rules (RFC 2782): only the records of the lowest priority are used (the others are
 * backups, which the pool does not model, so they are used once the better ones are gone from
 * DNS); weight 0 counts as 1, because RFC 2782 uses 0 for "no preference", not "no traffic" (take
 * a host out by removing its record); a target with several addresses gives each the record's
 * weight; target "." (service explicitly unavailable) gives nothing. `_https.` names give
 * `https://` backends, all others `http://`. One address found several times counts once, with
 * its highest weight.
 */

import { type Cidr, cidrContains, parseCidr } from "./cidr.ts";
import type { DiscoveryTarget } from "./config.ts";
import type { Log } from "./log.ts";
import type { BackendSpec, Pool } from "./pool.ts";

/** The record types discovery asks for. */
export type DiscoveryRecordType = "A" | "AAAA" | "SRV";

/**
 * A DNS lookup as {@linkcode Deno.resolveDns} does it: addresses for A/AAAA, records for SRV.
 * Must reject with `Deno.errors.NotFound` when the name has no such records.
 */
export type Resolve = (
  name: string,
  type: DiscoveryRecordType,
  options: Deno.ResolveDnsOptions,
) => Promise<string[] | Deno.SrvRecord[]>;

/** Deno's resolver; each record type is its own overload, hence the branches. */
export const denoResolve: Resolve = (name, type, options) =>
  type === "SRV" ? Deno.resolveDns(name, type, options) : Deno.resolveDns(name, type, options);

/** Discovery settings (durations in ms). */
export interface DiscoveryOptions {
  /** What to resolve (parse the URLs with `parseDiscoveryTarget` from lib/config.ts). */
  targets: readonly DiscoveryTarget[];
  /** Time between the end of one lookup round and the start of the next. @default 10000 */
  intervalMs?: number;
  /**
   * Time one target's lookup may take; an unanswered query would otherwise hang for 15 s.
   * @default the interval, but at least 1000 and at most 5000
   */
  timeoutMs?: number;
  /**
   * The DNS server as `HOST:PORT` (IP address, `[IPv6]` or `localhost`); undefined uses the
   * system's resolver configuration. @default undefined
   */
  dnsServer?: string;
  /**
   * Told after a round that changed the discovered set, with the sets before and after; not for
   * the {@linkcode DnsDiscovery.initialLookup}, which returns its set. @default none
   */
  onChange?: (before: readonly BackendSpec[], after: readonly BackendSpec[]) => void;
  /** The DNS lookup; tests inject one. @default {@linkcode denoResolve} */
  resolve?: Resolve;
}

/** Why one target's lookup gave no usable answer. */
export class DiscoveryLookupError extends Error {
  override name = "DiscoveryLookupError";
}

/** What one target remembers between rounds. */
interface TargetState {
  readonly target: DiscoveryTarget;
  /** The label in log lines: the URL as the user wrote it. */
  readonly label: string;
  /** The last non-empty answer; undefined until there is one. */
  lastGood: BackendSpec[] | undefined;
  /** Whether the current streak of failed or empty lookups has been logged. */
  failing: boolean;
}

/** Resolves the targets every interval and reports changes of the discovered set. */
export class DnsDiscovery {
  readonly #options: DiscoveryOptions;
  readonly #log: Log;
  /** Addresses already reported as unusable ("name address"): each is said once. */
  readonly #refused = new Set<string>();
  readonly #targets: TargetState[];
  readonly #nameServer: Deno.ResolveDnsOptions["nameServer"];
  readonly #timeoutMs: number;
  readonly #abort = new AbortController();
  #backends: BackendSpec[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #round: Promise<void> | undefined;
  #stopped = false;

  /** Throws when `dnsServer` is not `HOST:PORT` with an IP address (or localhost). */
  constructor(options: DiscoveryOptions, log: Log) {
    this.#options = options;
    this.#log = log;
    this.#targets = options.targets.map((target) => ({
      target,
      label: targetLabel(target),
      lastGood: undefined,
      failing: false,
    }));
    this.#nameServer = options.dnsServer === undefined
      ? undefined
      : parseNameServer(options.dnsServer);
    const interval = options.intervalMs ?? 10_000;
    this.#timeoutMs = options.timeoutMs ?? Math.min(5000, Math.max(1000, interval));
  }

  /** The discovered set: the union of every target's last good answer. */
  get backends(): readonly BackendSpec[] {
    return this.#backends;
  }

  /**
   * Runs one lookup round without telling `onChange` and resolves with the discovered set, so
   * a balancer can start with what DNS says. Call before {@linkcode DnsDiscovery.start}.
   */
  async initialLookup(): Promise<readonly BackendSpec[]> {
    this.#round = this.#refresh(false);
    await this.#round;
    return this.#backends;
  }

  /**
   * Re-resolves every interval (the first time one interval from now) until
   * {@linkcode DnsDiscovery.stop}, telling `onChange` about every change.
   */
  start(): void {
    if (!this.#stopped) this.#schedule();
  }

  /** Stops the timer and cancels lookups in progress; resolves when the current round ended. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#abort.abort();
    await this.#round;
  }

  #schedule(): void {
    this.#timer = setTimeout(() => {
      this.#round = this.refresh().finally(() => {
        if (!this.#stopped) this.#schedule();
      });
    }, this.#options.intervalMs ?? 10_000);
  }

  /** Looks every target up once (concurrently), then logs and reports what changed. */
  refresh(): Promise<void> {
    return this.#refresh(true);
  }

  async #refresh(notify: boolean): Promise<void> {
    await Promise.all(this.#targets.map((state) => this.#refreshTarget(state)));
    if (this.#stopped) return;
    const before = this.#backends;
    const after = unionOf(this.#targets.map((state) => state.lastGood ?? []));
    if (!this.#logChange(before, after)) return;
    this.#backends = after;
    if (notify) this.#options.onChange?.(before, after);
  }

  async #refreshTarget(state: TargetState): Promise<void> {
    let found: BackendSpec[];
    try {
      found = await this.lookup(state.target);
      if (found.length === 0) {
        throw new DiscoveryLookupError("no records (or none with an address)");
      }
    } catch (error) {
      if (this.#stopped) return;
      if (!state.failing) {
        const kept = state.lastGood === undefined
          ? "no backends from it yet"
          : `keeping the ${state.lastGood.length} backend(s) of the last good lookup`;
        this.#log.warn(
          `DNS discovery ${state.label}: ${describeError(error, this.#timeoutMs)}; ${kept}`,
        );
      }
      state.failing = true;
      return;
    }
    if (state.failing) this.#log.info(`DNS discovery ${state.label}: lookups work again`);
    state.failing = false;
    state.lastGood = found;
  }

  /**
   * One target's backends as DNS gives them now. Rejects (with the reason) when any query of it
   * got no answer: a partial answer could drop backends that are still there. A name without
   * records resolves to nothing.
   */
  async lookup(target: DiscoveryTarget): Promise<BackendSpec[]> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new TimeoutLookup()), this.#timeoutMs);
    const signal = AbortSignal.any([this.#abort.signal, controller.signal]);
    const options: Deno.ResolveDnsOptions = { nameServer: this.#nameServer, signal };
    try {
      if (target.kind === "a") {
        const addresses = await this.#addresses(target.name, options);
        return addresses.map((address) => ({
          url: originOf("http", address, target.port),
          weight: 1,
        }));
      }
      const records = await this.#query(target.name, "SRV", options) as Deno.SrvRecord[];
      const scheme = /^_https\./i.test(target.name) ? "https" : "http";
      const specs = await Promise.all(
        usableSrvRecords(records).map(async (record) => {
          const addresses = await this.#addresses(record.target, options);
          const weight = Math.max(1, record.weight);
          return addresses.map((address) => ({
            url: originOf(scheme, address, record.port),
            weight,
          }));
        }),
      );
      return unionOf(specs);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * A and AAAA addresses of `name` (an IP literal stands for itself), without those no backend
   * can have (a sinkhole's 0.0.0.0, multicast, broadcast), each reported once.
   */
  async #addresses(name: string, options: Deno.ResolveDnsOptions): Promise<string[]> {
    const bare = name.replace(/\.$/, "");
    if (isIpLiteral(bare)) return [bare];
    const [v4, v6] = await Promise.all([
      this.#query(bare, "A", options),
      this.#query(bare, "AAAA", options),
    ]);
    return [...v4 as string[], ...v6 as string[]].filter((address) => {
      const reason = unusableAddress(address);
      if (reason === undefined) return true;
      if (!this.#refused.has(`${bare} ${address}`)) {
        this.#refused.add(`${bare} ${address}`);
        this.#log.warn(`DNS ${bare}: ignoring ${address} (${reason}: no backend can be there)`);
      }
      return false;
    });
  }

  /** One query; "no such records" is an empty answer, every other failure rejects. */
  async #query(
    name: string,
    type: DiscoveryRecordType,
    options: Deno.ResolveDnsOptions,
  ): Promise<string[] | Deno.SrvRecord[]> {
    try {
      return await (this.#options.resolve ?? denoResolve)(name, type, options);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return [];
      const reason = options.signal?.reason;
      throw reason instanceof TimeoutLookup ? reason : error;
    }
  }

  /** Logs the discovered set's changes; returns whether there were any. */
  #logChange(before: readonly BackendSpec[], after: readonly BackendSpec[]): boolean {
    const old = new Map(before.map((spec) => [spec.url, spec.weight]));
    const now = new Map(after.map((spec) => [spec.url, spec.weight]));
    let changed = false;
    for (const [url, weight] of now) {
      const was = old.get(url);
      if (was === undefined) this.#log.info(`Discovered backend: ${url}`);
      else if (was !== weight) this.#log.info(`Discovered weight of ${url}: ${was} -> ${weight}`);
      changed ||= was !== weight;
    }
    for (const url of old.keys()) {
      if (now.has(url)) continue;
      this.#log.info(`Backend gone from DNS: ${url}`);
      changed = true;
    }
    return changed;
  }
}

/** Address ranges no backend can be reached at, with what they are. */
const UNUSABLE: readonly [Cidr, string][] = [
  ["0.0.0.0/32", "unspecified"],
  ["::/128", "unspecified"],
  ["255.255.255.255/32", "broadcast"],
  ["224.0.0.0/4", "multicast"],
  ["ff00::/8", "multicast"],
].map(([range, what]) => [parseCidr(range)!, what]);

/** Why `address` cannot be a backend's, or undefined when it can. */
export function unusableAddress(address: string): string | undefined {
  return UNUSABLE.find(([range]) => cidrContains(range, address))?.[1];
}

/** The abort reason of a lookup that ran out of time. */
class TimeoutLookup extends Error {
  override name = "TimeoutLookup";
}

/** A log-friendly reason for a failed lookup. */
function describeError(error: unknown, timeoutMs: number): string {
  if (error instanceof TimeoutLookup) return `no answer within ${timeoutMs} ms`;
  if (error instanceof DiscoveryLookupError) return error.message;
  if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
    return `${(error as Error).message.split("\n")[0]} (DNS needs --allow-net for the server)`;
  }
  return `lookup failed: ${(error as Error)?.message?.split("\n")[0] ?? error}`;
}

/**
 * The records of the lowest priority, without "." targets (RFC 2782: no such service) and
 * without port 0 (no backend listens there; `--backends` refuses it too).
 */
export function usableSrvRecords(records: readonly Deno.SrvRecord[]): Deno.SrvRecord[] {
  const real = records.filter((r) => r.target !== "." && r.target !== "" && r.port !== 0);
  const best = Math.min(...real.map((r) => r.priority));
  return real.filter((r) => r.priority === best);
}

/** Every spec once by URL, in first-seen order, with its highest weight. */
export function unionOf(lists: readonly (readonly BackendSpec[])[]): BackendSpec[] {
  const byUrl = new Map<string, BackendSpec>();
  for (const spec of lists.flat()) {
    const seen = byUrl.get(spec.url);
    if (seen === undefined) byUrl.set(spec.url, { ...spec });
    else seen.weight = Math.max(seen.weight, spec.weight);
  }
  return [...byUrl.values()];
}

/**
 * The pool's wanted backends: the static ones as configured, then the discovered ones whose URL
 * is not static (a static backend keeps its configured weight).
 */
export function mergeBackends(
  staticSpecs: readonly BackendSpec[],
  discovered: readonly BackendSpec[],
): BackendSpec[] {
  const staticUrls = new Set(staticSpecs.map((spec) => spec.url));
  return [...staticSpecs, ...discovered.filter((spec) => !staticUrls.has(spec.url))];
}

/**
 * Applies a change of the discovered set to the pool: new URLs join (starting up, with slow
 * start if set), vanished ones drain and leave, changed DNS weights apply. Static URLs are never
 * touched, and a URL already in the pool (static, or added through the admin API) is not added
 * twice. Weights change only when DNS changed them, so an operator's weight stays until then.
 */
export function applyDiscoveryChange(
  pool: Pool,
  staticUrls: ReadonlySet<string>,
  before: readonly BackendSpec[],
  after: readonly BackendSpec[],
): void {
  const old = new Map(before.map((spec) => [spec.url, spec.weight]));
  const now = new Set(after.map((spec) => spec.url));
  pool.batch(() => {
    for (const spec of before) {
      if (!now.has(spec.url) && !staticUrls.has(spec.url)) pool.remove(spec.url);
    }
    for (const spec of after) {
      if (staticUrls.has(spec.url)) continue;
      const existing = pool.find(spec.url);
      if (existing === undefined || existing.removing) pool.add(spec);
      else if (old.has(spec.url) && old.get(spec.url) !== spec.weight) {
        pool.setWeight(existing, spec.weight);
      }
    }
  });
}

/** The URL as the user wrote it: `dns+srv://NAME` or `dns+a://NAME:PORT`. */
export function targetLabel(target: DiscoveryTarget): string {
  return target.kind === "srv"
    ? `dns+srv://${target.name}`
    : `dns+a://${target.name}:${target.port}`;
}

/** `http://10.0.0.1:8080`, `http://[fd00::1]:8080`: origins as URL normalises them. */
export function originOf(scheme: string, address: string, port: number): string {
  const host = address.includes(":") ? `[${address}]` : address;
  return new URL(`${scheme}://${host}:${port}`).origin;
}

/** Whether `text` is an IPv4 or IPv6 address (not a name). */
function isIpLiteral(text: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(text) ||
    (text.includes(":") && /^[0-9a-f:.]+$/i.test(text));
}

/**
 * `HOST:PORT` to Deno's `nameServer`. Deno needs an IP address; `localhost` is taken as
 * 127.0.0.1. Throws with the value when it cannot be used.
 */
export function parseNameServer(text: string): { ipAddr: string; port: number } {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(text);
  const port = Number(match?.[3]);
  let host = match?.[1] ?? match?.[2];
  if (host === "localhost") host = "127.0.0.1";
  if (host === undefined || !isIpLiteral(host) || port < 1 || port > 65535) {
    throw new Error(`--dns-server: "${text}" is not IP:PORT ([IPv6]:PORT, or localhost:PORT)`);
  }
  return { ipAddr: host, port };
}
