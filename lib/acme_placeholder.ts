/**
 * @module
 * A throw-away self-signed certificate for the HTTPS listener while the first ACME order runs:
 * Deno cannot start a TLS listener without one, and swapping in the real certificate goes
 * through the same reload as a renewal. Clients meanwhile fail verification (as Caddy's do
 * before its first certificate), and plain HTTP serves the site.
 */

import * as x509 from "npm:@peculiar/x509@^1.12.0";

/** A self-signed P-256 certificate for `domains`, valid for a day, as PEM. */
export async function placeholderCertificate(
  domains: readonly string[],
): Promise<{ cert: string; key: string }> {
  const algorithm = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = await crypto.subtle.generateKey(algorithm, true, ["sign", "verify"]);
  const now = Date.now();
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: crypto.randomUUID().replaceAll("-", "").slice(0, 16),
    name: "CN=load-balancer ACME pending",
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 86_400_000),
    keys,
    signingAlgorithm: algorithm,
    extensions: [
      new x509.SubjectAlternativeNameExtension(
        domains.map((value) => ({ type: "dns" as const, value })),
      ),
    ],
  });
  const pkcs8 = await crypto.subtle.exportKey("pkcs8", keys.privateKey);
  return {
    cert: certificate.toString("pem"),
    key: x509.PemConverter.encode(pkcs8, "PRIVATE KEY"),
  };
}
