/**
 * @module
 * Basic auth: the `basicAuth` check, htpasswd files, Authorization parsing, and the verifier's
 * worker, cache and bounded queue; on the wire, a burst of wrong passwords against a Deno.serve
 * guarded by the verifier while an unrelated handler on the same thread keeps answering.
 *
 * Fixture hashes were made once by independent implementations and are kept here as text:
 * `$2y$` by Apache's `htpasswd -nbB -C 4` (apache2-utils 2.4), `$2a$` and `$2b$` by pyca/bcrypt
 * (Debian python3-bcrypt, `gensalt(4, prefix=...)`), and the `$2a$05$CCC...` vector from
 * Openwall's crypt_blowfish tests; the MD5, SHA-1 and DES lines also by `htpasswd -nb[msd]`.
 * When `htpasswd` is installed a test also makes a fresh hash with it.
 */

import assert from "node:assert/strict";
import { hashSync } from "npm:bcryptjs@^3.0.3";
import {
  BASIC_AUTH_SCHEMA,
  type BasicAuthSpec,
  BasicAuthVerifier,
  challenge,
  checkBasicAuth,
  loadUsers,
  parseAuthorization,
  parseHtpasswd,
} from "../lib/basic_auth.ts";
import { type AccessRecord, formatCombined, formatJson } from "../lib/access_log.ts";
import type { Problem } from "../lib/problem.ts";

/** User, password and hash made by the tool named. */
const FIXTURES = {
  /** htpasswd -nbB -C 4 alice 'correct horse' */
  y: {
    user: "alice",
    password: "correct horse",
    hash: "$2y$04$Lon1/V1C1UlChRKUfjXhkuNjiN8sGR6WDzN6N4oruPKtf5aW2PQqS",
  },
  /** htpasswd -nbB -C 4 bob 'p:ss wörd' (a colon and non-ASCII in the password) */
  y2: {
    user: "bob",
    password: "p:ss wörd",
    hash: "$2y$04$9IlybwCqPHOcDoOLeeuKCO7N7Nq//YkvlTV1QTpdElDU8rP1q4S1.",
  },
  /** pyca/bcrypt hashpw(b'U*U', gensalt(4, prefix=b'2a')) */
  a: {
    user: "ann",
    password: "U*U",
    hash: "$2a$04$SQWKTbu.RhQM8FJ0jeCN1.Dtoi6/tMf0wEdf3gYNKVEFaBxG9Q1yS",
  },
  /** Openwall crypt_blowfish test vector */
  a2: {
    user: "owl",
    password: "U*U",
    hash: "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
  },
  /** pyca/bcrypt hashpw('pässword', gensalt(4, prefix=b'2b')) */
  b: {
    user: "ben",
    password: "pässword",
    hash: "$2b$04$oqA7tzDduox7luYqaAOr/um8xVjmpspr29iFXhGWYbZygdlpiBFSu",
  },
};
/** Other htpasswd hash kinds, as htpasswd -nbm / -nbs / -nbd / -nbp wrote them for password "x". */
const NOT_BCRYPT = {
  apr1: "$apr1$C7iG6Mr6$b627g97.ef52ltA/SU5iW.",
  sha: "{SHA}EfatjsUqKYSrqv18O1FlA3hcIHI=",
  des: "rANGCWKWWWxp6",
  plain: "x-plain-secret",
};

function basic(user: string, password: string): string {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  return `Basic ${btoa(String.fromCharCode(...bytes))}`;
}

function usersOf(...fixtures: { user: string; hash: string }[]): Map<string, string> {
  return new Map(fixtures.map((f) => [f.user, f.hash]));
}

function check(value: unknown): { spec: BasicAuthSpec | undefined; problems: Problem[] } {
  const problems: Problem[] = [];
  const spec = checkBasicAuth(value, "routes[2].basicAuth", problems);
  return { spec, problems };
}

/** A temporary file with `text`, removed on dispose. */
async function tempFile(text: string): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempFile({ prefix: "htpasswd-" });
  await Deno.writeTextFile(path, text);
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path) };
}

// ---------------------------------------------------------------------------------------------
// checkBasicAuth

Deno.test("checkBasicAuth() fills in the default realm and keeps users and usersFile", () => {
  const { spec, problems } = check({ users: { [FIXTURES.y.user]: FIXTURES.y.hash } });
  assert.deepEqual(problems, []);
  assert.deepEqual(spec, { realm: "restricted", users: { alice: FIXTURES.y.hash } });
  const both = check({ realm: "ops team", users: { ann: FIXTURES.a.hash }, usersFile: "/x" });
  assert.deepEqual(both.problems, []);
  assert.deepEqual(both.spec, {
    realm: "ops team",
    users: { ann: FIXTURES.a.hash },
    usersFile: "/x",
  });
  assert.deepEqual(check({ usersFile: "/etc/lb/htpasswd" }).spec, {
    realm: "restricted",
    usersFile: "/etc/lb/htpasswd",
  });
});

Deno.test("checkBasicAuth() accepts each bcrypt prefix", () => {
  for (const f of Object.values(FIXTURES)) {
    const { problems } = check({ users: { [f.user]: f.hash } });
    assert.deepEqual(problems, [], f.hash.slice(0, 4));
  }
});

Deno.test("checkBasicAuth() reports each mistake at its path", () => {
  const cases: [unknown, string, RegExp][] = [
    ["ops", "routes[2].basicAuth", /"ops" is not an object/],
    [{}, "routes[2].basicAuth", /needs users or usersFile/],
    [{ users: {} }, "routes[2].basicAuth.users", /no users and no usersFile/],
    [{ users: [] }, "routes[2].basicAuth.users", /a list is not an object of user name to hash/],
    [{ usersFile: "" }, "routes[2].basicAuth.usersFile", /"" is not a file name/],
    [{ usersFile: 3 }, "routes[2].basicAuth.usersFile", /3 is not a file name/],
    [{ users: { a: 5 } }, "routes[2].basicAuth.users.a", /5 is not a string/],
    [{ realm: 'say "hi"', usersFile: "/x" }, "routes[2].basicAuth.realm", /without " and \\/],
    [{ realm: "back\\slash", usersFile: "/x" }, "routes[2].basicAuth.realm", /not a realm/],
    [{ realm: "héllo", usersFile: "/x" }, "routes[2].basicAuth.realm", /printable ASCII/],
    [{ realm: "", usersFile: "/x" }, "routes[2].basicAuth.realm", /not empty/],
    [{ realm: "a\nb", usersFile: "/x" }, "routes[2].basicAuth.realm", /not a realm/],
    [{ realm: 7, usersFile: "/x" }, "routes[2].basicAuth.realm", /7 is not a string/],
    [{ usersFile: "/x", user: {} }, "routes[2].basicAuth.user", /unknown key/],
    [{ users: { "a:b": FIXTURES.y.hash } }, 'routes[2].basicAuth.users["a:b"]', /no colon/],
    [{ users: { "": FIXTURES.y.hash } }, 'routes[2].basicAuth.users[""]', /not a user name/],
  ];
  for (const [value, path, message] of cases) {
    const { spec, problems } = check(value);
    assert.equal(spec, undefined, JSON.stringify(value));
    assert.equal(problems.length, 1, `${JSON.stringify(value)}: ${JSON.stringify(problems)}`);
    assert.equal(problems[0].path, path);
    assert.match(problems[0].message, message);
  }
});

Deno.test("checkBasicAuth() refuses other hash kinds by name, never echoing the value", () => {
  const cases: [string, RegExp][] = [
    [NOT_BCRYPT.apr1, /MD5 \(apr1\)/],
    [NOT_BCRYPT.sha, /SHA-1/],
    [NOT_BCRYPT.des, /DES crypt/],
    [NOT_BCRYPT.plain, /plain-text password/],
    ["$1$abc$def", /MD5-crypt/],
    ["$6$salt$hash", /SHA-crypt/],
    ["$2x$04$Lon1/V1C1UlChRKUfjXhkuNjiN8sGR6WDzN6N4oruPKtf5aW2PQqS", /\$2x\$/],
    ["$2y$04$tooShort", /malformed bcrypt/],
    ["$2y$03$Lon1/V1C1UlChRKUfjXhkuNjiN8sGR6WDzN6N4oruPKtf5aW2PQqS", /cost 3 is out of range/],
    ["$2y$18$Lon1/V1C1UlChRKUfjXhkuNjiN8sGR6WDzN6N4oruPKtf5aW2PQqS", /cost 18 is out of range/],
  ];
  for (const [hash, message] of cases) {
    const { problems } = check({ users: { dave: hash } });
    assert.equal(problems.length, 1, hash);
    assert.equal(problems[0].path, "routes[2].basicAuth.users.dave");
    assert.match(problems[0].message, message);
    if (!/^\$2/.test(hash)) assert.match(problems[0].message, /only bcrypt hashes/);
    assert.ok(!problems[0].message.includes(hash), "the value must not be shown");
  }
});

Deno.test("BASIC_AUTH_SCHEMA names exactly the keys checkBasicAuth() accepts", () => {
  const schema = BASIC_AUTH_SCHEMA as {
    additionalProperties: boolean;
    properties: Record<string, { pattern?: string; default?: unknown }>;
  };
  assert.equal(schema.additionalProperties, false);
  assert.deepEqual(Object.keys(schema.properties).sort(), ["realm", "users", "usersFile"]);
  assert.equal(schema.properties.realm.default, "restricted");
  const realm = new RegExp(schema.properties.realm.pattern!);
  assert.ok(realm.test("ops") && !realm.test('a"b') && !realm.test("a\\b"));
  assert.doesNotThrow(() => JSON.stringify(BASIC_AUTH_SCHEMA));
});

// ---------------------------------------------------------------------------------------------
// htpasswd files

Deno.test("loadUsers() reads an htpasswd file with comments, blank lines and CRLF", async () => {
  await using file = await tempFile(
    `\uFEFF# ops users\r\n${FIXTURES.y.user}:${FIXTURES.y.hash}\r\n\r\n  # indented comment\n` +
      `${FIXTURES.a.user}:${FIXTURES.a.hash}\n${FIXTURES.b.user}:${FIXTURES.b.hash}`,
  );
  const users = loadUsers({
    realm: "ops",
    users: { [FIXTURES.y2.user]: FIXTURES.y2.hash },
    usersFile: file.path,
  });
  assert.deepEqual(
    [...users].sort(),
    [
      [FIXTURES.y.user, FIXTURES.y.hash],
      [FIXTURES.y2.user, FIXTURES.y2.hash],
      [FIXTURES.a.user, FIXTURES.a.hash],
      [FIXTURES.b.user, FIXTURES.b.hash],
    ].sort(),
  );
  assert.deepEqual([...loadUsers({ realm: "r", users: { x: FIXTURES.y.hash } })], [[
    "x",
    FIXTURES.y.hash,
  ]]);
});

Deno.test("loadUsers() names the file and line of a bad line, never the hash", async () => {
  const good = `${FIXTURES.y.user}:${FIXTURES.y.hash}\n`;
  const cases: [string, RegExp][] = [
    [`${good}dave:${NOT_BCRYPT.apr1}\n`, /:2: user "dave": an MD5 \(apr1\) hash: only bcrypt/],
    [`# c\n${good}eve:${NOT_BCRYPT.sha}\n`, /:3: user "eve": a SHA-1 \(\{SHA\}\) hash/],
    [`frank:${NOT_BCRYPT.des}\n`, /:1: user "frank": a DES crypt hash/],
    [`gina:${NOT_BCRYPT.plain}\n`, /:1: user "gina": not a hash \(a plain-text password\?\)/],
    [`${good}just-a-name\n`, /:2: not a user:hash line/],
    [`:${FIXTURES.y.hash}\n`, /:1: "" is not a user name/],
    [`${good}${good}`, /:2: user "alice" appears twice/],
    [`# only comments\n\n`, /no users: nobody could log in/],
  ];
  for (const [text, message] of cases) {
    await using file = await tempFile(text);
    const error = loadError({ realm: "r", usersFile: file.path });
    assert.match(error, message);
    assert.ok(error.startsWith(file.path), error);
    assert.ok(!error.includes("\n"), "one line");
    for (const secret of Object.values(NOT_BCRYPT)) assert.ok(!error.includes(secret), error);
  }
});

/** The message loadUsers() throws with. */
function loadError(spec: BasicAuthSpec): string {
  try {
    loadUsers(spec);
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error("loadUsers() did not throw");
}

Deno.test("loadUsers() refuses a user in both users and usersFile, and a missing file", async () => {
  await using file = await tempFile(`${FIXTURES.y.user}:${FIXTURES.y.hash}\n`);
  assert.match(
    loadError({ realm: "r", users: { alice: FIXTURES.a.hash }, usersFile: file.path }),
    /user "alice" is also in basicAuth.users/,
  );
  const missing = `${file.path}.missing`;
  const error = loadError({ realm: "r", usersFile: missing });
  assert.ok(error.includes(missing) && !error.includes("\n"), error);
});

Deno.test("parseHtpasswd() keeps everything after the first colon as the hash", () => {
  assert.deepEqual([...parseHtpasswd(`a:${FIXTURES.y.hash}`, "f")], [["a", FIXTURES.y.hash]]);
  assert.throws(() => parseHtpasswd(`a:${FIXTURES.y.hash}:extra`, "f"), /^Error: f:1: user "a"/);
});

// ---------------------------------------------------------------------------------------------
// Authorization and challenge

Deno.test("challenge() quotes the realm and announces UTF-8", () => {
  assert.equal(challenge("ops"), 'Basic realm="ops", charset="UTF-8"');
});

Deno.test("parseAuthorization() reads Basic credentials and refuses malformed ones", () => {
  assert.deepEqual(parseAuthorization(basic("alice", "a:b c")), {
    user: "alice",
    password: "a:b c",
  });
  assert.deepEqual(parseAuthorization(`bAsIc ${btoa("u:")}`), { user: "u", password: "" });
  assert.deepEqual(parseAuthorization(basic("bob", "wörd")), { user: "bob", password: "wörd" });
  const malformed = [
    null,
    "",
    "Basic",
    "Basic ",
    `Bearer ${btoa("u:p")}`,
    "Basic !!!!",
    `Basic ${btoa("no colon")}`,
    `Basic ${btoa(":password only")}`,
    `Basic ${btoa("\xff\xfe:p")}`, // not UTF-8
    `Basic ${btoa("u:p")}, Basic ${btoa("v:q")}`, // two headers, as Headers.get() joins them
    `Basic ${"A".repeat(5000)}`,
  ];
  for (const value of malformed) assert.equal(parseAuthorization(value), undefined, String(value));
});

// ---------------------------------------------------------------------------------------------
// Verifier

Deno.test("BasicAuthVerifier.verify() answers none/wrong/malformed with denied, right with ok", async () => {
  const verifier = new BasicAuthVerifier();
  try {
    const users = usersOf(FIXTURES.y);
    assert.equal(await verifier.verify(users, null), "denied");
    assert.equal(await verifier.verify(users, "Basic %%%"), "denied");
    assert.equal(await verifier.verify(users, basic("alice", "wrong")), "denied");
    assert.equal(await verifier.verify(users, basic("alice", "correct horse")), "ok");
    assert.equal(await verifier.verify(users, basic("alice", "correct horse ")), "denied");
    assert.equal(await verifier.verify(new Map(), basic("alice", "correct horse")), "denied");
  } finally {
    await verifier.close();
  }
});

Deno.test("BasicAuthVerifier.verify() accepts $2a$, $2b$ and $2y$ hashes from other tools", async () => {
  const verifier = new BasicAuthVerifier();
  try {
    const users = usersOf(...Object.values(FIXTURES));
    for (const f of Object.values(FIXTURES)) {
      assert.equal(await verifier.verify(users, basic(f.user, f.password)), "ok", f.hash);
      assert.equal(await verifier.verify(users, basic(f.user, f.password + "!")), "denied");
    }
    // bcryptjs writes $2b$.
    const own = hashSync("s3cret", 4);
    assert.match(own, /^\$2b\$04\$/);
    assert.equal(await verifier.verify(new Map([["u", own]]), basic("u", "s3cret")), "ok");
  } finally {
    await verifier.close();
  }
});

Deno.test({
  name: "BasicAuthVerifier.verify() accepts a hash htpasswd -B makes now",
  ignore: !(await hasHtpasswd()),
  fn: async () => {
    const output = await new Deno.Command("htpasswd", {
      args: ["-nbB", "-C", "4", "zoe", "fresh pässword"],
      stdout: "piped",
    }).output();
    const line = new TextDecoder().decode(output.stdout).trim();
    const users = parseHtpasswd(line, "htpasswd output");
    assert.match(users.get("zoe")!, /^\$2y\$04\$/);
    const verifier = new BasicAuthVerifier();
    try {
      assert.equal(await verifier.verify(users, basic("zoe", "fresh pässword")), "ok");
    } finally {
      await verifier.close();
    }
  },
});

async function hasHtpasswd(): Promise<boolean> {
  try {
    // Any exit status will do (htpasswd -h exits 1): the command exists.
    await new Deno.Command("htpasswd", { args: ["-h"], stderr: "null" }).output();
    return true;
  } catch {
    return false;
  }
}

Deno.test("BasicAuthVerifier.verify() runs bcrypt for an unknown user too", async () => {
  const verifier = new BasicAuthVerifier();
  try {
    assert.equal(await verifier.verify(usersOf(FIXTURES.y), basic("mallory", "x")), "denied");
    assert.equal(verifier.stats.verifications, 1, "same cost as a known user: no user probing");
  } finally {
    await verifier.close();
  }
});

Deno.test("BasicAuthVerifier caches a success: the second request does not reach the worker", async () => {
  let now = 0;
  const verifier = new BasicAuthVerifier({ cacheMs: 60_000, now: () => now });
  try {
    const users = usersOf(FIXTURES.y);
    const right = basic(FIXTURES.y.user, FIXTURES.y.password);
    assert.equal(await verifier.verify(users, right), "ok");
    assert.equal(await verifier.verify(users, right), "ok");
    assert.deepEqual(verifier.stats, { verifications: 1, cacheHits: 1, busy: 0 });
    // Another password, or the same one against a changed hash (a reload), is checked again.
    assert.equal(await verifier.verify(users, basic(FIXTURES.y.user, "other")), "denied");
    assert.equal(await verifier.verify(usersOf({ ...FIXTURES.a, user: "alice" }), right), "denied");
    assert.equal(verifier.stats.verifications, 3);
    now = 60_001;
    assert.equal(await verifier.verify(users, right), "ok");
    assert.equal(verifier.stats.verifications, 4, "expired");
  } finally {
    await verifier.close();
  }
});

Deno.test("BasicAuthVerifier remembers failures for at most 10 s", async () => {
  let now = 0;
  const verifier = new BasicAuthVerifier({ now: () => now });
  try {
    const users = usersOf(FIXTURES.y);
    const wrong = basic(FIXTURES.y.user, "stale password");
    assert.equal(await verifier.verify(users, wrong), "denied");
    assert.equal(await verifier.verify(users, wrong), "denied");
    assert.deepEqual(verifier.stats, { verifications: 1, cacheHits: 1, busy: 0 });
    now = 10_001;
    assert.equal(await verifier.verify(users, wrong), "denied");
    assert.equal(verifier.stats.verifications, 2);
  } finally {
    await verifier.close();
  }
});

Deno.test("BasicAuthVerifier with cacheMs 0 checks every time; cacheSize bounds the cache", async () => {
  const uncached = new BasicAuthVerifier({ cacheMs: 0 });
  const small = new BasicAuthVerifier({ cacheSize: 1 });
  try {
    const users = usersOf(FIXTURES.y, FIXTURES.a);
    const alice = basic(FIXTURES.y.user, FIXTURES.y.password);
    const ann = basic(FIXTURES.a.user, FIXTURES.a.password);
    for (let i = 0; i < 3; i++) assert.equal(await uncached.verify(users, alice), "ok");
    assert.equal(uncached.stats.verifications, 3);
    for (const header of [alice, ann, alice, alice]) {
      assert.equal(await small.verify(users, header), "ok");
    }
    // ann pushed alice out; alice's third request hits the cache again.
    assert.deepEqual(small.stats, { verifications: 3, cacheHits: 1, busy: 0 });
  } finally {
    await uncached.close();
    await small.close();
  }
});

Deno.test("BasicAuthVerifier shares one check between parallel requests with the same credentials", async () => {
  const verifier = new BasicAuthVerifier();
  try {
    const users = usersOf(FIXTURES.y);
    const right = basic(FIXTURES.y.user, FIXTURES.y.password);
    const outcomes = await Promise.all(
      Array.from({ length: 6 }, () => verifier.verify(users, right)),
    );
    assert.deepEqual(outcomes, Array(6).fill("ok"));
    assert.equal(verifier.stats.verifications, 1);
  } finally {
    await verifier.close();
  }
});

Deno.test("BasicAuthVerifier answers busy beyond maxPending, and cache hits still pass", async () => {
  const verifier = new BasicAuthVerifier({ maxPending: 2 });
  try {
    const users = usersOf(FIXTURES.y);
    const right = basic(FIXTURES.y.user, FIXTURES.y.password);
    assert.equal(await verifier.verify(users, right), "ok");
    const first = verifier.verify(users, basic("alice", "wrong 1"));
    const second = verifier.verify(users, basic("alice", "wrong 2"));
    assert.equal(verifier.pending, 2);
    assert.equal(await verifier.verify(users, basic("alice", "wrong 3")), "busy");
    assert.equal(await verifier.verify(users, right), "ok", "a logged-in client is not refused");
    assert.deepEqual(await Promise.all([first, second]), ["denied", "denied"]);
    assert.equal(await verifier.verify(users, basic("alice", "wrong 3")), "denied", "room again");
    assert.deepEqual(verifier.stats, { verifications: 4, cacheHits: 1, busy: 1 });
  } finally {
    await verifier.close();
  }
});

Deno.test("BasicAuthVerifier.close() ends the worker: checks under way and later ones are busy", async () => {
  const verifier = new BasicAuthVerifier();
  const users = usersOf(FIXTURES.y);
  const under = verifier.verify(users, basic("alice", "wrong"));
  await verifier.close();
  assert.equal(await under, "busy");
  assert.equal(await verifier.verify(users, basic(FIXTURES.y.user, FIXTURES.y.password)), "busy");
  await verifier.close();
});

/** Runs `code` (which may import `VERIFIER`) in a child Deno with `flags`; stdout, bounded. */
async function child(code: string, flags: string[]): Promise<{ code: number; stdout: string }> {
  const file = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    const verifierUrl = new URL("../lib/basic_auth.ts", import.meta.url).href;
    await Deno.writeTextFile(file, code.replaceAll("VERIFIER", verifierUrl));
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", ...flags, file],
      stdout: "piped",
      stderr: "null",
      signal: AbortSignal.timeout(30_000),
    }).output();
    return { code: output.code, stdout: new TextDecoder().decode(output.stdout) };
  } finally {
    await Deno.remove(file);
  }
}

const CHILD_CHECKS = `
import { BasicAuthVerifier } from "VERIFIER";
const verifier = new BasicAuthVerifier({ log: { error: () => console.log("worker failed") } });
verifier.start();
const users = new Map([["alice", ${JSON.stringify(FIXTURES.y.hash)}]]);
const right = "Basic " + btoa("alice:correct horse");
console.log(await verifier.verify(users, right));
console.log(await verifier.verify(users, "Basic " + btoa("alice:wrong")));
await verifier.close();
console.log("closed");
`;

Deno.test("a process whose verifier is closed exits: the worker does not keep it alive", async () => {
  const { code, stdout } = await child(CHILD_CHECKS, ["--allow-read"]);
  assert.equal(code, 0);
  assert.equal(stdout, "ok\ndenied\nclosed\n");
});

Deno.test("a worker that cannot start answers busy, logged once, without a restart at once", async () => {
  // Deno checks read access to a worker's module: without it the thread fails to load.
  const { code, stdout } = await child(CHILD_CHECKS, []);
  assert.equal(code, 0);
  assert.equal(stdout, "worker failed\nbusy\nbusy\nclosed\n");
});

Deno.test("BasicAuthVerifier() refuses bad options", () => {
  assert.throws(() => new BasicAuthVerifier({ maxPending: 0 }), /maxPending must be/);
  assert.throws(() => new BasicAuthVerifier({ cacheMs: -1 }), /cacheMs must be/);
  assert.throws(() => new BasicAuthVerifier({ cacheSize: 1.5 }), /cacheSize must be/);
});

// ---------------------------------------------------------------------------------------------
// Logs

Deno.test("the access log has no field for the Authorization header or the user", () => {
  // lib/access_log.ts records no request header but User-Agent and Referer, and writes `-` for
  // combined's %u: credentials cannot reach a line. This pins that down.
  const secret = basic("alice", "correct horse");
  const record: AccessRecord = {
    time: new Date(0),
    clientIp: "127.0.0.1",
    method: "GET",
    path: "/private",
    protocol: "HTTP/1.1",
    status: 401,
    bytes: 0,
    durationMs: 1,
    backend: undefined,
    attempts: 0,
    requestId: "r1",
    userAgent: "curl/8",
    referer: undefined,
  };
  assert.deepEqual(Object.keys(JSON.parse(formatJson(record))), [
    "time",
    "clientIp",
    "method",
    "path",
    "protocol",
    "status",
    "bytes",
    "durationMs",
    "backend",
    "attempts",
    "requestId",
    "userAgent",
    "referer",
  ]);
  const combined = formatCombined(record);
  assert.match(combined, /^127\.0\.0\.1 - - \[/, "the user field is always -");
  assert.ok(!combined.includes(secret.slice(6)) && !combined.includes("correct horse"));
});

// ---------------------------------------------------------------------------------------------
// On the wire

/** A server with a guarded `/private` and an unrelated `/other` on the same thread. */
function guardedServer(verifier: BasicAuthVerifier, users: Map<string, string>) {
  return Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    if (new URL(req.url).pathname === "/other") return new Response("other");
    const outcome = await verifier.verify(users, req.headers.get("authorization"));
    if (outcome === "ok") return new Response("secret");
    if (outcome === "busy") {
      return new Response("busy", { status: 503, headers: { "retry-after": "1" } });
    }
    return new Response("who are you?", {
      status: 401,
      headers: { "www-authenticate": challenge("ops") },
    });
  });
}

Deno.test("a burst of 200 wrong passwords: the unrelated handler answers every request", async () => {
  const verifier = new BasicAuthVerifier();
  // Cost 8: slow enough that the burst keeps the worker busy while /other is asked.
  const users = new Map([["alice", hashSync("correct horse", 8)]]);
  const server = guardedServer(verifier, users);
  const client = Deno.createHttpClient({});
  try {
    const base = `http://127.0.0.1:${server.addr.port}`;
    const get = async (path: string, authorization?: string) => {
      const response = await fetch(`${base}${path}`, {
        client,
        headers: authorization ? { authorization } : {},
      });
      const body = await response.text();
      return { status: response.status, body, challenge: response.headers.get("www-authenticate") };
    };
    const none = await get("/private");
    assert.equal(none.status, 401);
    assert.equal(none.challenge, 'Basic realm="ops", charset="UTF-8"');
    assert.equal((await get("/private", "Basic ###")).status, 401, "malformed: 401, not 400");

    const burst = Array.from(
      { length: 200 },
      (_, i) => get("/private", basic("alice", `guess ${i}`)),
    );
    const others: { status: number; body: string }[] = [];
    // Sequential requests to /other while the burst is under way (bounded: 50).
    for (let i = 0; i < 50; i++) others.push(await get("/other"));
    const statuses = (await Promise.all(burst)).map((r) => r.status);
    assert.deepEqual(others, Array(50).fill({ status: 200, body: "other", challenge: null }));
    assert.ok(statuses.every((s) => s === 401 || s === 503), String(new Set(statuses)));
    assert.ok(statuses.includes(401));
    assert.equal((await get("/private", basic("alice", "correct horse"))).status, 200);
  } finally {
    client.close();
    await server.shutdown();
    await verifier.close();
  }
});
