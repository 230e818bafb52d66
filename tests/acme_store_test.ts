/**
 * @module
 * Unit tests of lib/acme_store.ts: where keys and certificates are kept, and how they are
 * written and read back.
 */

import assert from "node:assert/strict";
import {
  accountKeyPath,
  AcmeStorageError,
  certificatePaths,
  directoryName,
  domainsName,
  readOptionalFile,
  readStoredPair,
  writePair,
  writePrivateFile,
} from "../lib/acme_store.ts";
import { placeholderCertificate } from "../lib/acme_placeholder.ts";
import { tempDir } from "./helpers.ts";

Deno.test("certificatePaths() separates ACME directories and domain sets, not name order", () => {
  const prod = certificatePaths("/s", "https://acme-v02.api.letsencrypt.org/directory", [
    "b.example.com",
    "a.example.com",
  ]);
  const staging = certificatePaths(
    "/s",
    "https://acme-staging-v02.api.letsencrypt.org/directory",
    ["a.example.com", "b.example.com"],
  );
  assert.match(prod.cert, /^\/s\/certificates\/acme-v02\.api\.letsencrypt\.org-directory\//);
  assert.match(prod.cert, /\/a\.example\.com\+1-[0-9a-f]{8}\/cert\.pem$/);
  assert.notEqual(prod.dir, staging.dir);
  assert.equal(
    domainsName(["b.example.com", "a.example.com"]),
    domainsName(["A.example.com", "b.example.com"]),
  );
  assert.notEqual(domainsName(["a.example.com"]), domainsName(["a.example.com", "b.example.com"]));
});

Deno.test("directoryName() names a server by host and path, safe as one folder name", () => {
  assert.equal(directoryName("https://127.0.0.1:14000/dir"), "127.0.0.1-14000-dir");
  assert.equal(directoryName("not a url/../x"), "not-a-url-..-x");
  assert.equal(directoryName("///"), "directory");
  assert.equal(accountKeyPath("/s"), "/s/account.key");
});

Deno.test("writePrivateFile() writes mode 0600 in new 0700 folders, replacing, no temp left", async () => {
  await using dir = await tempDir("lb-acme-store-");
  const path = `${dir.path}/a/b/key.pem`;
  await writePrivateFile(path, "first");
  await writePrivateFile(path, "second");
  assert.equal(await Deno.readTextFile(path), "second");
  assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
  assert.equal((await Deno.stat(`${dir.path}/a/b`)).mode! & 0o777, 0o700);
  assert.deepEqual([...Deno.readDirSync(`${dir.path}/a/b`)].map((e) => e.name), ["key.pem"]);
});

Deno.test("writePrivateFile() and readOptionalFile() name the path when storage is unusable", async () => {
  await using dir = await tempDir("lb-acme-store-");
  await Deno.writeTextFile(`${dir.path}/file`, "");
  await assert.rejects(
    writePrivateFile(`${dir.path}/file/x/key.pem`, "k"),
    (error: Error) =>
      error instanceof AcmeStorageError &&
      error.message.startsWith(`cannot write ${dir.path}/file/x/key.pem: `),
  );
  assert.equal(await readOptionalFile(`${dir.path}/missing`), undefined);
  await assert.rejects(
    readOptionalFile(`${dir.path}/file/x`),
    (error: Error) =>
      error instanceof AcmeStorageError && error.message.startsWith(`cannot read ${dir.path}/`),
  );
});

Deno.test("readStoredPair() reads a written pair, and treats a missing or mismatched one as absent", async () => {
  await using dir = await tempDir("lb-acme-store-");
  const DOMAIN = ["a.example.com"];
  const paths = certificatePaths(dir.path, "https://127.0.0.1:1/dir", DOMAIN);
  const problems: string[] = [];
  const note = (message: string) => void problems.push(message);
  assert.equal(readStoredPair(paths, DOMAIN, note), undefined);
  assert.deepEqual(problems, [], "no pair yet is not a problem");
  const one = await placeholderCertificate(["a.example.com"]);
  const other = await placeholderCertificate(["a.example.com"]);
  await writePair(paths, one.cert, one.key);
  assert.ok(readStoredPair(paths, DOMAIN, note) !== undefined);
  assert.ok(
    readStoredPair(paths, ["A.example.com"], note) !== undefined,
    "names match in any case",
  );
  assert.deepEqual(problems, []);
  // A crash between the key and the certificate: the key of one, the chain of another.
  await writePrivateFile(paths.key, other.key);
  assert.equal(readStoredPair(paths, DOMAIN, note), undefined);
  assert.equal(problems.length, 1);
  assert.match(problems[0], /^stored certificate unusable, ordering a new one: /);
});

Deno.test("readStoredPair() treats a certificate that does not name every domain as absent", async () => {
  await using dir = await tempDir("lb-acme-store-");
  const paths = certificatePaths(dir.path, "https://127.0.0.1:1/dir", ["c.example.com"]);
  const problems: string[] = [];
  // A pair for other names, copied into this folder.
  const other = await placeholderCertificate(["a.example.com", "b.example.com"]);
  await writePair(paths, other.cert, other.key);
  assert.ok(readStoredPair(paths, ["a.example.com"], (m) => void problems.push(m)));
  assert.equal(
    readStoredPair(paths, ["a.example.com", "c.example.com"], (m) => void problems.push(m)),
    undefined,
  );
  assert.deepEqual(problems, [
    `stored certificate ${paths.cert} does not name c.example.com, ordering a new one`,
  ]);
});
