/**
 * @module
 * Unit tests of lib/acme_placeholder.ts: the throw-away certificate the HTTPS listener starts on
 * before the first ACME order completes.
 */

import assert from "node:assert/strict";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { placeholderCertificate } from "../lib/acme_placeholder.ts";
import { tlsGet } from "./pebble.ts";

Deno.test("placeholderCertificate() is self-signed for the names, valid about a day, key matching", async () => {
  const before = Date.now();
  const pair = await placeholderCertificate(["a.example.com", "b.example.com"]);
  const cert = new X509Certificate(pair.cert);
  assert.equal(cert.subjectAltName, "DNS:a.example.com, DNS:b.example.com");
  assert.ok(cert.verify(cert.publicKey), "signed by its own key");
  assert.ok(cert.checkPrivateKey(createPrivateKey(pair.key)), "the key matches");
  const from = new Date(cert.validFrom).getTime();
  const to = new Date(cert.validTo).getTime();
  assert.ok(from <= before - 59_000, "valid from a minute back, for clock skew");
  assert.ok(to > before + 23 * 3_600_000 && to <= before + 25 * 3_600_000, cert.validTo);
  const again = await placeholderCertificate(["a.example.com"]);
  assert.notEqual(new X509Certificate(again.cert).serialNumber, cert.serialNumber);
});

Deno.test("placeholderCertificate() starts a TLS listener that serves the names", async () => {
  const pair = await placeholderCertificate(["a.example.com"]);
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: pair.cert, key: pair.key, onListen: () => {} },
    () => new Response("placeholder"),
  );
  try {
    const answer = await tlsGet(server.addr.port, "a.example.com", pair.cert);
    assert.match(answer, /^HTTP\/1\.1 200 /);
    assert.match(answer, /placeholder$/);
  } finally {
    await server.shutdown();
  }
});
