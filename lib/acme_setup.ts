/**
 * @module
 * Automatic HTTPS for main.ts: the ACME manager built from the settings, the certificate files
 * the HTTPS listener serves, and a placeholder until the first certificate exists. Loaded only
 * when ACME is on (main.ts imports it dynamically): the ACME library and its dependencies cost
 * start-up time and memory, and read the whole environment when they load.
 */

import { join } from "node:path";
import type { Config } from "./config.ts";
import { acmeDomainsOf } from "./config_file.ts";
import type { Log } from "./log.ts";
import type { CertifiedKey } from "./tls.ts";
import { AcmeManager } from "./acme.ts";
import { readStoredPair } from "./acme_store.ts";
import { placeholderCertificate } from "./acme_placeholder.ts";

/** What main.ts wires: the manager, and the balancer's `acme` extras. */
export interface AcmeSetup {
  manager: AcmeManager;
  extras: {
    challenge(path: string): Response | undefined;
    issued(): boolean;
    placeholder?: CertifiedKey;
  };
  /**
   * Starts ordering or renewing in the background; `onIssued` swaps the new certificate in, as
   * held in memory (its files may not have been written).
   */
  run(onIssued: (pair: CertifiedKey) => void): void;
  /** What ACME sets in a configuration (its TLS files, the redirect port): for each reload's. */
  applyTo(config: Config): void;
}

/** Where ACME state lives by default: `acme/` beside the config file, else the user's data folder. */
export function defaultAcmeDir(configPath: string | undefined): string {
  if (configPath !== undefined) {
    const slash = configPath.lastIndexOf("/");
    return join(slash === -1 ? "." : configPath.slice(0, slash) || "/", "acme");
  }
  const data = Deno.env.get("XDG_DATA_HOME") ??
    join(Deno.env.get("HOME") ?? ".", ".local", "share");
  return join(data, "load-balancer", "acme");
}

/**
 * Builds the manager and points `config`'s TLS files at its certificate (TLS is on with ACME;
 * `redirectHttp` defaults to 80 for the HTTP-01 challenges). Alerts go to `onAlert`.
 */
export async function setUpAcme(
  config: Config,
  configPath: string | undefined,
  log: Log,
  onAlert: (message: string, expiresAt: Date | undefined) => void,
): Promise<AcmeSetup> {
  const storageDir = config.acmeDir ?? defaultAcmeDir(configPath);
  // A missing Deno permission is fixed on the command line, not by retrying orders forever.
  const needed = [
    ...(["read", "write"] as const).map((name) => ({ name, path: storageDir })),
    ...(config.acmeCa === undefined ? [] : [{ name: "read" as const, path: config.acmeCa }]),
  ];
  for (const descriptor of needed) {
    if (Deno.permissions.querySync(descriptor).state !== "granted") {
      throw new Error(
        `ACME needs --allow-${descriptor.name} for ${descriptor.path} ` +
          `(run with --allow-read --allow-write for the ACME folder and --acme-ca)`,
      );
    }
  }
  let issued = false;
  let swapIn = (_pair: CertifiedKey) => {};
  const manager = new AcmeManager({
    domains: acmeDomainsOf(config),
    email: config.acmeEmail,
    directoryUrl: config.acmeDirectory ?? "https://acme-v02.api.letsencrypt.org/directory",
    caFile: config.acmeCa,
    storageDir,
    log,
    onIssued: ({ certPem, keyPem }) => {
      issued = true;
      swapIn({ cert: certPem, key: keyPem });
    },
    onAlert,
  });
  const applyTo = (target: Config) => {
    target.tlsCert = manager.files.cert;
    target.tlsKey = manager.files.key;
    target.redirectHttp ??= 80;
  };
  applyTo(config);
  // When the folder cannot be made, the manager's first order says why (one line).
  await Deno.mkdir(manager.files.dir, { recursive: true, mode: 0o700 }).catch(() => {});
  const stored = readStoredPair(manager.files, acmeDomainsOf(config), () => {})?.info;
  issued = stored !== undefined && Date.now() < stored.notAfter.getTime();
  const placeholder = issued ? undefined : await placeholderCertificate(acmeDomainsOf(config));
  return {
    manager,
    extras: {
      challenge: (path) => manager.challengeResponse(path),
      issued: () => issued,
      placeholder,
    },
    applyTo,
    run(onIssued) {
      swapIn = onIssued;
      // Failures are logged (one line each) and retried by the manager; HTTP keeps serving.
      manager.start().catch(() => {});
    },
  };
}
