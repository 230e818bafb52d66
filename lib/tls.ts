/**
 * @module
 * TLS on both sides of the balancer:
 * - the listener's certificate: read, checked with Deno's own PEM loader, described for the log,
 *   and re-read for a reload (a pair that is unreadable, mismatched, expired or not yet valid
 *   is refused so that the working one keeps serving);
 * - a debounced watch of the certificate files;
 * - the plain-HTTP listener's answer: a permanent redirect to HTTPS;
 * - read-ahead of small response bodies, so that Deno's TLS listener sends them with their
 *   headers instead of a delayed-ACK timeout later;
 * - the client for HTTPS backends: default roots plus a private CA, and a client certificate
 *   for mTLS. Health checks and requests share it, so both trust the same backends.
 */

import type { IncomingRequest } from "./incoming.ts";
import { nodeCrypto } from "./node_builtins.ts";
import { concatBytes } from "./body.ts";
import { BadRequestError, errorResponse } from "./errors.ts";
import { assertRegularFile, fileFailure } from "./file_failure.ts";
import { hostWithoutPort } from "./host.ts";
import type { Log } from "./log.ts";
import { parseTarget } from "./target.ts";
import { staticBody } from "./http1_response.ts";

/** A certificate chain and its private key, PEM text, as `Deno.serve` takes them. */
export interface CertifiedKey {
  cert: string;
  key: string;
}

/** What the log says about a certificate (the first one of a chain). */
export interface CertificateInfo {
  subject: string;
  /** Hexadecimal, as `openssl x509 -serial` prints it. */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** Whether it is a CA certificate (rustls clients, Deno's included, refuse those). */
  isCa: boolean;
  /** Its DNS subject alternative names, in lower case. */
  dnsNames: string[];
}

/** A pair read from disk, with its description when node's X.509 parser could read it. */
export interface LoadedCertificate extends CertifiedKey {
  readonly info: CertificateInfo | undefined;
}

/** A TLS file that cannot be used; the message names the file and the reason. */
export class TlsError extends Error {
  override name = "TlsError";
}

/** Paths of the listener's certificate chain and key. */
export interface CertificateFiles {
  cert: string;
  key: string;
}

/**
 * Reads `files` and checks that they form a usable pair with the same loader `Deno.serve`
 * uses (a throw-away client is created with them: no port is bound). Throws
 * {@linkcode TlsError} when a file is unreadable, holds no PEM certificate or key, or the key
 * does not belong to the certificate.
 */
export function readCertificatePair(files: CertificateFiles): LoadedCertificate {
  return checkPair(files, readPemFile(files.cert, "certificate"), readPemFile(files.key, "key"));
}

function checkPair(files: CertificateFiles, cert: string, key: string): LoadedCertificate {
  try {
    Deno.createHttpClient({ cert, key }).close();
  } catch (error) {
    throw new TlsError(`${files.cert} with ${files.key}: ${(error as Error).message}`);
  }
  return { cert, key, info: describeCertificate(cert) };
}

/**
 * Reads the listener's pair at start-up and logs what it serves. A certificate outside its
 * validity period or a CA certificate only warns: clients decide, and refusing to start would
 * turn a certificate problem into an outage. Throws {@linkcode TlsError} for an unusable pair.
 */
export function loadListenerCertificate(files: CertificateFiles, log: Log): LoadedCertificate {
  const loaded = readCertificatePair(files);
  log.info(`TLS certificate: ${formatCertificate(loaded.info)}`);
  const problem = certificateProblem(loaded.info);
  if (problem !== undefined) log.warn(`TLS certificate ${files.cert} ${problem}`);
  if (loaded.info?.isCa) {
    log.warn(
      `TLS certificate ${files.cert} is a CA certificate (basicConstraints CA:TRUE); ` +
        "many clients refuse it as a server certificate",
    );
  }
  return loaded;
}

/**
 * The pair for a reload: `given` (ACME's new certificate, held in memory) or else the files'.
 * Returns undefined when it is the `served` pair, the new pair when it is fit to serve, and
 * throws {@linkcode TlsError} with the reason when it is not: a reload must never replace a
 * working certificate with a broken, expired or not-yet-valid one.
 */
export function readReplacement(
  files: CertificateFiles,
  served: CertifiedKey,
  now: Date = new Date(),
  given?: CertifiedKey,
): LoadedCertificate | undefined {
  const cert = given?.cert ?? readPemFile(files.cert, "certificate");
  const key = given?.key ?? readPemFile(files.key, "key");
  if (cert === served.cert && key === served.key) return undefined;
  const next = checkPair(files, cert, key);
  const problem = certificateProblem(next.info, now);
  if (problem !== undefined) throw new TlsError(`${files.cert} ${problem}`);
  return next;
}

/** Linux's switch for moving a closing listener's queued connections to its reuseport group. */
export const TCP_MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req";

/**
 * The start-up warning for a TLS listener whose certificate reloads may reset connections, or
 * undefined. A reload closes the old listener of a SO_REUSEPORT group, and Linux resets the
 * connections still in its accept queue unless `net.ipv4.tcp_migrate_req` (Linux 5.14+) is 1
 * (bench/cert_swap.ts measures it). Says nothing off Linux, on older kernels, or when the
 * process may not read /proc: the permission is queried first, so Deno never prompts for it.
 */
export function reloadResetWarning(
  read: () => string = readMigrateSetting,
  os: typeof Deno.build.os = Deno.build.os,
): string | undefined {
  if (os !== "linux") return undefined;
  let value: string;
  try {
    value = read().trim();
  } catch {
    return undefined;
  }
  return value === "0"
    ? "certificate reloads may reset connections waiting to be accepted; " +
      "set net.ipv4.tcp_migrate_req=1"
    : undefined;
}

function readMigrateSetting(): string {
  const permission = Deno.permissions.querySync({ name: "read", path: TCP_MIGRATE_REQ });
  if (permission.state !== "granted") throw new Error("no read permission");
  return Deno.readTextFileSync(TCP_MIGRATE_REQ);
}

/** Why a certificate is outside its validity period at `now`, or undefined. */
export function certificateProblem(
  info: CertificateInfo | undefined,
  now: Date = new Date(),
): string | undefined {
  if (info === undefined) return undefined;
  if (now > info.notAfter) return `expired on ${info.notAfter.toISOString()}`;
  if (now < info.notBefore) return `is not valid before ${info.notBefore.toISOString()}`;
  return undefined;
}

/**
 * Describes the first certificate of a PEM chain, or returns undefined when node's X.509
 * parser cannot read it (`Deno.serve`, which is stricter, has the last word anyway).
 */
export function describeCertificate(pem: string): CertificateInfo | undefined {
  try {
    const x509 = new (nodeCrypto().X509Certificate)(pem);
    return {
      subject: x509.subject.replaceAll("\n", ", "),
      serial: x509.serialNumber.toUpperCase(),
      notBefore: new Date(x509.validFrom),
      notAfter: new Date(x509.validTo),
      isCa: x509.ca,
      dnsNames: (x509.subjectAltName ?? "").split(", ").filter((name) => name.startsWith("DNS:"))
        .map((name) => name.slice(4).toLowerCase()),
    };
  } catch {
    return undefined;
  }
}

/** One log phrase: `CN=example.com, serial 2C1B..., valid until 2026-11-27T13:52:17.000Z`. */
export function formatCertificate(info: CertificateInfo | undefined): string {
  if (info === undefined) return "(details unavailable: not parsed by node:crypto)";
  return `${info.subject}, serial ${info.serial}, valid until ${info.notAfter.toISOString()}`;
}

function readPemFile(path: string, what: string): string {
  try {
    assertRegularFile(path);
    return Deno.readTextFileSync(path);
  } catch (error) {
    throw new TlsError(`${path}: cannot read the ${what}: ${fileFailure(error)}`);
  }
}

/**
 * Certificate and key files are watched as the config file is (lib/file_watch.ts): their
 * directories, the symlinks on the way (a Kubernetes Secret swaps a `..data` link), and a
 * callback only when a file's content changed.
 */

/**
 * The plain-HTTP listener's handler: every request gets `308 Permanent Redirect` (method and
 * body are kept, unlike 301) to the same host and path on HTTPS, on `httpsPort` (omitted when
 * 443). Host is validated as for proxied requests; a missing or invalid Host gets 400, since
 * there is no name to redirect to.
 */
export function redirectToHttps(httpsPort: number): (req: IncomingRequest) => Response {
  const portSuffix = httpsPort === 443 ? "" : `:${httpsPort}`;
  return function redirect(req: IncomingRequest): Response {
    try {
      // Without Host (HTTP/1.0), Deno makes one up for req.url: never redirect to that.
      if (req.headers.get("host") === null) throw new BadRequestError("no Host header");
      const { host, pathAndQuery } = parseTarget(req);
      const location = `https://${hostWithoutPort(host!)}${portSuffix}${pathAndQuery}`;
      return new Response("308 Permanent Redirect\n", {
        status: 308,
        headers: { location, "content-type": "text/plain; charset=utf-8" },
      });
    } catch (error) {
      return errorResponse(error);
    }
  };
}

/** How {@linkcode coalesceBody} waits for a small body. */
export interface CoalesceOptions {
  /** Bodies up to this size can be sent with their headers. @default 65536 */
  limit?: number;
  /**
   * Longest wait for the whole body before streaming it as it comes. It delays the headers of
   * responses that stream (server-sent events, slow bodies) by as much. @default 5
   */
  waitMs?: number;
}

/**
 * Works around Deno's TLS listeners: a response body that is not complete when the response
 * is returned reaches the client late, as Nagle's algorithm meeting the client's delayed ACK on
 * a socket without TCP_NODELAY would (Deno.serve offers no option to set it; plain-TCP
 * listeners do not wait), and a streamed body is not complete then. So the body is read
 * ahead for up to `waitMs`: when it ends within `limit` bytes, it is answered as bytes, which
 * Deno writes with the headers. Otherwise what was read is sent first and the rest streams.
 * Bodies held in memory, bodyless responses, upgrades and responses declaring more than `limit`
 * bytes pass as they are. A body that fails while being read reaches the client as a broken stream, as before.
 */
export async function coalesceBody(
  response: Response,
  options: CoalesceOptions = {},
): Promise<Response> {
  // A body held in memory is written with the headers already (and reading it here would
  // turn it into a stream and a copy).
  if (staticBody(response) !== undefined) return response;
  const limit = options.limit ?? 64 * 1024;
  const declared = response.headers.get("content-length");
  if (
    response.body === null || response.status === 101 ||
    (declared !== null && !(Number(declared) <= limit))
  ) {
    return response;
  }
  const init = { status: response.status, statusText: response.statusText };
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  let pending: Promise<ReadableStreamReadResult<Uint8Array>> | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) => {
    timer = setTimeout(() => resolve("late"), options.waitMs ?? 5);
  });
  try {
    while (size <= limit) {
      pending = reader.read();
      const result = await Promise.race([pending, late]);
      if (result === "late") break;
      pending = undefined;
      if (result.done) {
        return new Response(concatBytes(chunks), { ...init, headers: response.headers });
      }
      chunks.push(result.value);
      size += result.value.byteLength;
    }
  } catch (error) {
    const broken = new ReadableStream({ start: (controller) => controller.error(error) });
    return new Response(broken, { ...init, headers: response.headers });
  } finally {
    clearTimeout(timer);
  }
  pending?.catch(() => {}); // consumed by the first pull; a cancel must not leave it unhandled
  const rest = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
    },
    async pull(controller) {
      const result = await (pending ?? reader.read());
      pending = undefined;
      if (result.done) controller.close();
      else controller.enqueue(result.value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
  return new Response(rest, { ...init, headers: response.headers });
}

/** Files for talking to HTTPS backends. */
export interface BackendTlsFiles {
  /** PEM CA bundle trusted besides the default roots. @default undefined */
  ca?: string;
  /** PEM client certificate chain for mTLS (with `key`). @default undefined */
  cert?: string;
  /** PEM private key of `cert`. @default undefined */
  key?: string;
}

/**
 * Creates the one client used for requests and health checks. Backend certificates are always
 * verified: against the default roots, plus `files.ca` when given (Deno's `caCerts` adds to the
 * roots). `files.cert`/`files.key` are presented when a backend asks for a client certificate.
 * HTTP/2 is used with backends that offer it by ALPN; plain-http backends get HTTP/1.1.
 * Throws {@linkcode TlsError} when a file is unreadable or unusable.
 */
export function createBackendClient(
  files: BackendTlsFiles,
  options: Deno.CreateHttpClientOptions = {},
  pem: BackendTls = readBackendTls(files),
): Deno.HttpClient {
  const tls: Deno.CreateHttpClientOptions & Partial<Deno.TlsCertifiedKeyPem> = { ...options };
  if (pem.ca !== undefined) tls.caCerts = [pem.ca];
  if (pem.cert !== undefined && pem.key !== undefined) {
    tls.cert = pem.cert;
    tls.key = pem.key;
  }
  try {
    return Deno.createHttpClient(tls);
  } catch (error) {
    const pair = tls.cert === undefined ? "" : `${files.cert} with ${files.key}: `;
    throw new TlsError(`${pair}${(error as Error).message}`);
  }
}

/** The contents of {@linkcode BackendTlsFiles}, PEM text. */
export interface BackendTls {
  /** CA bundle trusted besides the default roots. */
  ca?: string;
  /** Client certificate chain, only together with `key`. */
  cert?: string;
  key?: string;
}

/**
 * Reads the backend TLS files, for every client that talks to backends (fetch's and
 * lib/upstream_native.ts's), so that they trust and present the same certificates. A client
 * certificate is read only when both `cert` and `key` are given. Throws {@linkcode TlsError}
 * when a file is unreadable or the CA bundle holds no usable certificate.
 */
export function readBackendTls(files: BackendTlsFiles): BackendTls {
  const pem: BackendTls = {};
  if (files.ca !== undefined) pem.ca = readCaBundle(files.ca);
  if (files.cert !== undefined && files.key !== undefined) {
    pem.cert = readPemFile(files.cert, "client certificate");
    pem.key = readPemFile(files.key, "client key");
  }
  return pem;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/** Reads a CA bundle. Deno silently ignores a `caCerts` entry holding no certificate: refuse it. */
function readCaBundle(path: string): string {
  const text = readPemFile(path, "CA bundle");
  const blocks = text.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new TlsError(`${path}: no PEM certificate in the CA bundle`);
  for (const block of blocks) {
    if (describeCertificate(block) === undefined) {
      throw new TlsError(`${path}: a certificate in the CA bundle cannot be parsed`);
    }
  }
  return text;
}
