/**
 * @module
 * Automatic HTTPS: one certificate covering every configured domain, issued by an ACME server
 * (RFC 8555; Let's Encrypt by default) through the HTTP-01 challenge, stored, and renewed.
 *
 * The protocol is npm `acme-client`'s (its `auto()` flow: account with the kept account key,
 * new order, authorizations, HTTP-01 challenge answered by {@linkcode AcmeManager.challengeResponse},
 * finalize with a CSR, download the chain); lib/acme_http.ts carries its requests over Deno's
 * fetch, lib/acme_store.ts keeps the files. What this module adds is the lifecycle Caddy users
 * expect:
 * - a restart serves the stored certificate at once and orders nothing while it is valid and
 *   outside its renewal window;
 * - a check every `checkIntervalMs` renews once `renewBeforeFraction` of the lifetime is left
 *   (a third by default: day 60 of Let's Encrypt's 90);
 * - a failure is one log line; the next try follows a jittered exponential backoff; a failed
 *   renewal keeps the current certificate and raises an alert (log line and `onAlert`);
 * - bad input (invalid domain, unreachable directory, refused order, unwritable storage) is
 *   one clear line, and the caller keeps serving what it has.
 *
 * Deno serves one certificate per listener (no SNI selection, denoland/deno#23233), so one
 * certificate lists every domain. ARI (renewal windows from the server) is not used: acme-client 5.4 has no
 * support for it.
 */

import acme from "npm:acme-client@^5.4.0";
import { alertBackoff } from "./alerts.ts";
import { domainProblem } from "./acme_domains.ts";
import { abortAll, useDenoFetch } from "./acme_http.ts";
import {
  accountKeyPath,
  AcmeStorageError,
  type CertificatePaths,
  certificatePaths,
  readOptionalFile,
  readStoredPair,
  writePair,
  writePrivateFile,
} from "./acme_store.ts";
import type { Log } from "./log.ts";
import { describeCertificate, formatCertificate } from "./tls.ts";

/** Let's Encrypt's production directory, the default. */
export const LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory";
/** Let's Encrypt's staging directory: untrusted certificates, generous rate limits. */
export const LETS_ENCRYPT_STAGING_DIRECTORY =
  "https://acme-staging-v02.api.letsencrypt.org/directory";

/** The path prefix of HTTP-01 challenges (RFC 8555 §8.3). */
export const CHALLENGE_PREFIX = "/.well-known/acme-challenge/";

/** An issued certificate: the PEM chain (leaf first), its PEM key and the leaf's expiry. */
export interface IssuedCertificate {
  certPem: string;
  keyPem: string;
  notAfter: Date;
}

/** What {@linkcode AcmeManager} needs. */
export interface AcmeOptions {
  /** The names the certificate covers (one certificate for all). */
  domains: string[];
  /** Contact address given to the ACME server (expiry notices). @default undefined */
  email?: string;
  /** The ACME directory URL (https). */
  directoryUrl: string;
  /** PEM file of an extra CA trusted for the ACME server's own HTTPS (test servers). @default undefined */
  caFile?: string;
  /** Folder for the account key and certificates (see lib/acme_store.ts). */
  storageDir: string;
  /** Renew when this fraction of the certificate's lifetime is left. @default 1/3 */
  renewBeforeFraction?: number;
  /** How often the renewal time is checked. @default 600000 (10 minutes) */
  checkIntervalMs?: number;
  /** First delay after a failed order; it doubles per failure, with jitter. @default 60000 */
  retryBaseMs?: number;
  /** Longest delay between failed orders. @default 3600000 (1 hour) */
  retryMaxMs?: number;
  /** First interval when polling the server for a challenge's or order's status. @default 1000 */
  pollMs?: number;
  log: Log;
  /** The clock, in ms since the epoch (tests move it forward). @default Date.now */
  now?: () => number;
  /** Called with each newly issued certificate (not with a stored one). @default undefined */
  onIssued?: (pair: IssuedCertificate) => void;
  /** Called, besides the error line, when an order fails. @default undefined */
  onAlert?: (message: string, expiresAt: Date | undefined) => void;
  /** Jitter source in [0, 1). @default Math.random */
  random?: () => number;
}

/** The problems with `options` that no retry can fix, or undefined. */
export function acmeOptionsProblem(options: AcmeOptions): string | undefined {
  if (options.domains.length === 0) return "no domains given";
  for (const domain of options.domains) {
    const problem = domainProblem(domain);
    if (problem !== undefined) return `invalid domain ${problem}`;
  }
  let url: URL;
  try {
    url = new URL(options.directoryUrl);
  } catch {
    return `invalid directory URL ${JSON.stringify(options.directoryUrl)}`;
  }
  if (url.protocol !== "https:") return `the directory URL must be https: ${options.directoryUrl}`;
  if (options.email !== undefined && !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(options.email)) {
    return `invalid e-mail address ${JSON.stringify(options.email)}`;
  }
  const fraction = options.renewBeforeFraction;
  if (fraction !== undefined && !(fraction > 0 && fraction <= 1)) {
    return `renewBeforeFraction must be in (0, 1], got ${fraction}`;
  }
  return undefined;
}

/** When a certificate valid from `notBefore` to `notAfter` is due for renewal. */
export function renewalTime(notBefore: Date, notAfter: Date, fraction: number): Date {
  const lifetime = notAfter.getTime() - notBefore.getTime();
  return new Date(notAfter.getTime() - lifetime * fraction);
}

interface Current extends IssuedCertificate {
  notBefore: Date;
}

/**
 * Obtains, stores and renews the certificate for `options.domains`. Create one, route
 * `/.well-known/acme-challenge/` on port 80 to {@linkcode challengeResponse}, call
 * {@linkcode start}, and {@linkcode stop} on shutdown.
 */
export class AcmeManager {
  readonly #options: AcmeOptions;
  readonly #log: Log;
  readonly #now: () => number;
  readonly #domains: string[];
  readonly #paths: CertificatePaths;
  /** Challenge token -> key authorization, while a challenge is pending. */
  readonly #tokens = new Map<string, string>();
  #current: Current | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #running: Promise<unknown> | undefined;
  #stopped = false;
  #failures = 0;
  #lastError: string | undefined;
  #renewals = 0;
  #orders = 0;
  #untrust: (() => void) | undefined;

  constructor(options: AcmeOptions) {
    this.#options = options;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
    this.#domains = [...new Set(options.domains.map((d) => d.toLowerCase()))];
    this.#paths = certificatePaths(options.storageDir, options.directoryUrl, this.#domains);
  }

  /** The files holding the served certificate and key (they exist once one was stored). */
  get files(): CertificatePaths {
    return this.#paths;
  }

  /**
   * Answers HTTP-01 challenges: the response for `/.well-known/acme-challenge/<token>`
   * (404 for an unknown token), undefined for other paths.
   */
  challengeResponse(path: string): Response | undefined {
    if (!path.startsWith(CHALLENGE_PREFIX)) return undefined;
    const keyAuthorization = this.#tokens.get(path.slice(CHALLENGE_PREFIX.length));
    if (keyAuthorization === undefined) {
      return new Response("404 Not Found\n", {
        status: 404,
        headers: { "content-type": "text/plain; charset=utf-8" },
      });
    }
    return new Response(keyAuthorization, {
      headers: { "content-type": "application/octet-stream" },
    });
  }

  /**
   * Loads a stored valid certificate (returns it at once, renewing in the background when it
   * is due) or orders one (resolves when issued, or with undefined after one logged line when
   * that failed). Then checks for renewal periodically until {@linkcode stop}.
   */
  async start(): Promise<IssuedCertificate | undefined> {
    const problem = acmeOptionsProblem(this.#options);
    if (problem !== undefined) {
      this.#fail(`ACME disabled: ${problem}`);
      return undefined;
    }
    let caPem: string | undefined;
    if (this.#options.caFile !== undefined) {
      try {
        caPem = await readOptionalFile(this.#options.caFile);
      } catch (error) {
        this.#fail(`ACME disabled: --acme-ca ${(error as Error).message}`);
        return undefined;
      }
      if (caPem === undefined) {
        this.#fail(`ACME disabled: --acme-ca ${this.#options.caFile}: no such file`);
        return undefined;
      }
    }
    this.#untrust = useDenoFetch(new URL(this.#options.directoryUrl).origin, caPem);
    const stored = this.#loadStored();
    if (stored !== undefined && this.#now() < stored.notAfter.getTime()) {
      this.#current = stored;
      this.#log.info(
        `ACME: serving the stored certificate for ${this.#names()}: ${
          formatCertificate(describeCertificate(stored.certPem))
        }`,
      );
      // A renewal due now waits a moment for the caller's challenge listener to come up.
      this.#schedule(this.#due() ? Math.min(this.#checkInterval(), 5000) : this.#checkInterval());
      return this.#publicPair();
    }
    if (stored !== undefined) this.#current = stored;
    await this.#track(this.#attempt());
    return this.#publicPair();
  }

  /** Ends the periodic checks; waits for an order in progress to finish. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    abortAll();
    await this.#running;
    this.#untrust?.();
    this.#untrust = undefined;
  }

  /**
   * The served certificate's expiry, the last failure (cleared by a success), how many
   * certificates replaced a served one, and how many orders were attempted.
   */
  status(): {
    notAfter: Date | undefined;
    lastError: string | undefined;
    renewals: number;
    orders: number;
  } {
    return {
      notAfter: this.#current?.notAfter,
      lastError: this.#lastError,
      renewals: this.#renewals,
      orders: this.#orders,
    };
  }

  #names(): string {
    return this.#domains.join(", ");
  }

  #publicPair(): IssuedCertificate | undefined {
    const current = this.#current;
    if (current === undefined) return undefined;
    return { certPem: current.certPem, keyPem: current.keyPem, notAfter: current.notAfter };
  }

  #loadStored(): Current | undefined {
    const loaded = readStoredPair(
      this.#paths,
      this.#domains,
      (message) => this.#log.warn(`ACME: ${message}`),
    );
    if (loaded === undefined || loaded.info === undefined) return undefined;
    return {
      certPem: loaded.cert,
      keyPem: loaded.key,
      notBefore: loaded.info.notBefore,
      notAfter: loaded.info.notAfter,
    };
  }

  #checkInterval(): number {
    return this.#options.checkIntervalMs ?? 600_000;
  }

  #due(): boolean {
    const current = this.#current;
    if (current === undefined) return true;
    const fraction = this.#options.renewBeforeFraction ?? 1 / 3;
    return this.#now() >= renewalTime(current.notBefore, current.notAfter, fraction).getTime();
  }

  #track<T>(work: Promise<T>): Promise<T> {
    const running = work.finally(() => {
      if (this.#running === running) this.#running = undefined;
    });
    this.#running = running;
    return running;
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#due()) this.#track(this.#attempt());
      else this.#schedule(this.#checkInterval());
    }, delayMs);
  }

  /** One order; schedules the next check (success) or retry (failure). Never throws. */
  async #attempt(): Promise<void> {
    this.#orders++;
    const renewing = this.#current !== undefined;
    this.#log.info(
      `ACME: ${renewing ? "renewing" : "ordering"} a certificate for ${this.#names()}`,
    );
    let issued: Current;
    try {
      issued = await this.#issue();
    } catch (error) {
      // Ended by stop(): a shutdown, not a failure worth an alert.
      if (this.#stopped) return;
      this.#failures++;
      const delay = alertBackoff(
        this.#failures,
        this.#options.retryBaseMs ?? 60_000,
        this.#options.retryMaxMs ?? 3_600_000,
        this.#options.random,
      );
      const retry = `next try in ${Math.round(delay / 1000)} s`;
      const reason = oneLine(error);
      this.#fail(
        renewing
          ? `ACME: renewing the certificate for ${this.#names()} failed, keeping the current one ` +
            `(expires ${this.#current!.notAfter.toISOString()}); ${retry}: ${reason}`
          : `ACME: no certificate for ${this.#names()}; ${retry}: ${reason}`,
        reason,
      );
      this.#schedule(delay);
      return;
    }
    this.#failures = 0;
    this.#lastError = undefined;
    this.#current = issued;
    if (renewing) this.#renewals++;
    this.#log.info(
      `ACME: certificate issued for ${this.#names()}: ${
        formatCertificate(describeCertificate(issued.certPem))
      }`,
    );
    try {
      this.#options.onIssued?.(this.#publicPair()!);
    } catch (error) {
      this.#log.error(`ACME: installing the new certificate failed: ${oneLine(error)}`);
    }
    this.#schedule(this.#checkInterval());
  }

  #fail(message: string, reason = message): void {
    this.#lastError = reason;
    this.#log.error(message);
    try {
      this.#options.onAlert?.(message, this.#current?.notAfter);
    } catch { /* an alert sink must not break renewal */ }
  }

  /** The RFC 8555 flow; stores the result. Throws with a one-line reason. */
  async #issue(): Promise<Current> {
    const account = await this.#accountKey();
    const poll = this.#options.pollMs ?? 1000;
    const client = new acme.Client({
      directoryUrl: this.#options.directoryUrl,
      accountKey: account.pem,
      backoffAttempts: 10,
      backoffMin: poll,
      backoffMax: poll * 10,
    });
    await this.#findOrCreateAccount(client, account.created);
    const [keyPem, csr] = await acme.crypto.createCsr(
      {
        // The CN is limited to 64 characters (RFC 5280); the SAN list is what clients check.
        commonName: this.#domains[0].length <= 64 ? this.#domains[0] : undefined,
        altNames: this.#domains,
      },
      await acme.crypto.createPrivateEcdsaKey(),
    );
    const certPem = await client.auto({
      csr,
      email: this.#options.email,
      termsOfServiceAgreed: true,
      // acme-client's own pre-check fetches http://<domain>/ from here: pointless behind NAT.
      skipChallengeVerification: true,
      challengePriority: ["http-01"],
      challengeCreateFn: (authz, challenge, keyAuthorization) => {
        if (challenge.type !== "http-01") {
          throw new Error(
            `the ACME server offers no http-01 challenge for ${authz.identifier.value}`,
          );
        }
        this.#tokens.set(challenge.token, keyAuthorization);
        return Promise.resolve();
      },
      challengeRemoveFn: (_authz, challenge) => {
        if (challenge.type === "http-01") this.#tokens.delete(challenge.token);
        return Promise.resolve();
      },
    });
    const info = describeCertificate(certPem);
    if (info === undefined) {
      throw new Error("the ACME server sent a certificate that cannot be parsed");
    }
    const key = keyPem.toString();
    try {
      await writePair(this.#paths, certPem, key);
    } catch (error) {
      // The certificate is good: serve it from memory rather than waste the order.
      this.#log.error(`ACME: ${oneLine(error)}; serving the new certificate from memory`);
    }
    return { certPem, keyPem: key, notBefore: info.notBefore, notAfter: info.notAfter };
  }

  /**
   * The kept account key, created on first use. Fails here, before any order, when storage
   * is unwritable.
   */
  async #accountKey(): Promise<{ pem: string; created: boolean }> {
    const path = accountKeyPath(this.#options.storageDir);
    const stored = await readOptionalFile(path);
    if (stored !== undefined) return { pem: stored, created: false };
    const pem = (await acme.crypto.createPrivateEcdsaKey()).toString();
    await writePrivateFile(path, pem);
    this.#log.info(`ACME: created the account key ${path}`);
    return { pem, created: true };
  }

  /**
   * Looks the kept key's account up (RFC 8555 §7.3.1, `onlyReturnExisting`) before creating
   * one. acme-client's own path re-sends `termsOfServiceAgreed` to an existing account, which
   * Pebble refuses as an empty update.
   */
  async #findOrCreateAccount(client: acme.Client, keyIsNew: boolean): Promise<void> {
    if (!keyIsNew) {
      try {
        await client.createAccount({ onlyReturnExisting: true });
        return;
      } catch { /* no account for this key at this server yet */ }
    }
    await client.createAccount({
      termsOfServiceAgreed: true,
      contact: this.#options.email === undefined ? undefined : [`mailto:${this.#options.email}`],
    });
  }
}

function oneLine(error: unknown): string {
  const message = error instanceof AcmeStorageError
    ? `storage: ${error.message}`
    : (error as Error)?.message ?? String(error);
  return message.replace(/\s+/g, " ").trim() || "unknown error";
}
