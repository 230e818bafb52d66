/**
 * @module
 * Where automatic HTTPS keeps its keys and certificates, and how it writes them:
 *
 * ```text
 * <storageDir>/account.key                                   one account key, created once
 * <storageDir>/certificates/<directory>/<domains>/cert.pem   the chain served
 * <storageDir>/certificates/<directory>/<domains>/key.pem    its private key
 * ```
 *
 * `<directory>` names the ACME server (`acme-v02.api.letsencrypt.org-directory`), so a staging
 * certificate is never served once the production directory is configured; `<domains>` is the
 * first name, the count of others and a hash of the sorted set (`a.example.com+1-3f2a9c1d`),
 * so a changed set orders a new certificate. Every file is mode 0600 in directories of mode
 * 0700, written to a temporary file that is then renamed over the old one: a reader sees the
 * old file or the new one, never half of one. The key is written before the certificate; a
 * crash between the two leaves a pair that does not match, which {@linkcode readStoredPair}
 * treats as absent (a new certificate is ordered) rather than serving it.
 */

import { createHash } from "node:crypto";
import { fileFailure } from "./file_failure.ts";
import { type LoadedCertificate, readCertificatePair, TlsError } from "./tls.ts";

/** What to say when Deno's permissions refuse the ACME folder. */
const NOT_ALLOWED = "not allowed (run with --allow-read and --allow-write for the ACME folder)";

/** Storage that cannot be read or written; the message names the path and the reason. */
export class AcmeStorageError extends Error {
  override name = "AcmeStorageError";
}

/** The files of one certificate (one ACME directory, one set of domains). */
export interface CertificatePaths {
  /** The folder holding both files. */
  dir: string;
  /** PEM chain, leaf first. */
  cert: string;
  /** PEM private key (PKCS#8). */
  key: string;
}

/** Path of the account key in `storageDir`. */
export function accountKeyPath(storageDir: string): string {
  return `${storageDir}/account.key`;
}

/** Where the certificate for `domains` from `directoryUrl` lives in `storageDir`. */
export function certificatePaths(
  storageDir: string,
  directoryUrl: string,
  domains: readonly string[],
): CertificatePaths {
  const dir = `${storageDir}/certificates/${directoryName(directoryUrl)}/${domainsName(domains)}`;
  return { dir, cert: `${dir}/cert.pem`, key: `${dir}/key.pem` };
}

/** `https://acme-v02.api.letsencrypt.org/directory` -> `acme-v02.api.letsencrypt.org-directory`. */
export function directoryName(directoryUrl: string): string {
  let url: URL | undefined;
  try {
    url = new URL(directoryUrl);
  } catch { /* named from the raw text below */ }
  const raw = url === undefined ? directoryUrl : `${url.host}${url.pathname}`;
  return raw.toLowerCase().replace(/[^a-z0-9.]+/g, "-").replace(/^-+|-+$/g, "") || "directory";
}

/** `["b.example.com", "a.example.com"]` -> `a.example.com+1-<8 hex digits>`. */
export function domainsName(domains: readonly string[]): string {
  const sorted = [...new Set(domains.map((d) => d.toLowerCase()))].sort();
  const hash = createHash("sha256").update(sorted.join(",")).digest("hex").slice(0, 8);
  const first = (sorted[0] ?? "none").replace(/[^a-z0-9.-]/g, "_");
  return `${first}${sorted.length > 1 ? `+${sorted.length - 1}` : ""}-${hash}`;
}

/**
 * Writes `text` to `path` atomically with mode 0600, creating missing folders with mode 0700.
 * Throws {@linkcode AcmeStorageError} naming the path when it cannot.
 */
export async function writePrivateFile(path: string, text: string): Promise<void> {
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  const temp = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(temp, text, { mode: 0o600, createNew: true });
    // The mode given at creation is masked by the umask: set it exactly.
    await Deno.chmod(temp, 0o600);
    await Deno.rename(temp, path);
  } catch (error) {
    await Deno.remove(temp).catch(() => {});
    throw new AcmeStorageError(`cannot write ${path}: ${fileFailure(error, NOT_ALLOWED)}`);
  }
}

/** Reads a text file, or returns undefined when it does not exist. */
export async function readOptionalFile(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw new AcmeStorageError(`cannot read ${path}: ${fileFailure(error, NOT_ALLOWED)}`);
  }
}

/**
 * The stored pair, checked with Deno's own loader, or undefined when there is none or it is
 * unusable (a half-written pair, a corrupt file, a certificate that does not name every one of
 * `domains`): `problem` is called with the reason then.
 */
export function readStoredPair(
  paths: CertificatePaths,
  domains: readonly string[],
  problem: (message: string) => void,
): LoadedCertificate | undefined {
  try {
    Deno.statSync(paths.cert);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    problem(`cannot read ${paths.cert}: ${fileFailure(error, NOT_ALLOWED)}`);
    return undefined;
  }
  let pair: LoadedCertificate;
  try {
    pair = readCertificatePair(paths);
  } catch (error) {
    if (!(error instanceof TlsError)) throw error;
    problem(`stored certificate unusable, ordering a new one: ${error.message}`);
    return undefined;
  }
  // A file copied or restored from elsewhere: it must name every domain to be served for them.
  const missing = domains.filter((d) => !pair.info?.dnsNames.includes(d.toLowerCase()));
  if (pair.info !== undefined && missing.length > 0) {
    problem(
      `stored certificate ${paths.cert} does not name ${missing.join(", ")}, ordering a new one`,
    );
    return undefined;
  }
  return pair;
}

/** Stores a pair: the key first, then the chain (see the module note on a crash between). */
export async function writePair(paths: CertificatePaths, certPem: string, keyPem: string) {
  await writePrivateFile(paths.key, keyPem);
  await writePrivateFile(paths.cert, certPem);
}
