import assert from "node:assert/strict";
import {
  type AccessRecord,
  type ByteSink,
  clfTime,
  createAccessLog,
  formatCombined,
  formatJson,
  LineWriter,
} from "../lib/access_log.ts";
import {
  delay,
  getText,
  rawRequest,
  rawServer,
  startTestBackend,
  startTestBalancer,
  tempDir,
  testConfig,
  waitFor,
} from "./helpers.ts";
import { denoRun } from "./process.ts";
import { Wire } from "./wire.ts";

const encoder = new TextEncoder();

const record: AccessRecord = {
  time: new Date("2026-11-25T13:20:59.123Z"),
  clientIp: "203.0.113.7",
  method: "GET",
  path: "/path?q=1",
  protocol: "HTTP/1.1",
  status: 200,
  bytes: 1234,
  durationMs: 12.3456,
  backend: "http://127.0.0.1:8081",
  attempts: 1,
  requestId: "req-42",
  userAgent: "curl/8.5.0",
  referer: "https://example.com/",
};

const unknowns: AccessRecord = {
  time: new Date("2026-01-05T03:04:05Z"),
  clientIp: "::1",
  method: "POST",
  path: "/upload",
  protocol: "HTTP/1.1",
  status: 502,
  bytes: undefined,
  durationMs: 0.5,
  backend: undefined,
  attempts: 3,
};

/** Apache/nginx combined, plus the appended key=value fields; one match or null. */
const COMBINED =
  /^(\S+) - - \[([^\]]+)\] "((?:[^"\\]|\\.)*)" (\d{3}) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)" backend=(\S+) attempts=(\d+) duration_ms=(\S+)(?: request_id=(\S+))?$/;

/** Undoes the nginx-style escaping: \" \\ and \xHH (bytes of UTF-8). */
function unescapeClf(text: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    if (text[i] === "\\" && text[i + 1] === "x") {
      bytes.push(parseInt(text.slice(i + 2, i + 4), 16));
      i += 3;
    } else if (text[i] === "\\") {
      bytes.push(text.charCodeAt(++i));
    } else bytes.push(text.charCodeAt(i));
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

Deno.test("formatJson() writes one exact object with every key", () => {
  assert.equal(
    formatJson(record),
    '{"time":"2026-11-25T13:20:59.123Z","clientIp":"203.0.113.7","method":"GET",' +
      '"path":"/path?q=1","protocol":"HTTP/1.1","status":200,"bytes":1234,' +
      '"durationMs":12.346,"backend":"http://127.0.0.1:8081","attempts":1,' +
      '"requestId":"req-42","userAgent":"curl/8.5.0","referer":"https://example.com/"}',
  );
});

Deno.test("formatJson() writes null for unknown values and three decimals always", () => {
  const line = formatJson(unknowns);
  assert.equal(
    line,
    '{"time":"2026-01-05T03:04:05.000Z","clientIp":"::1","method":"POST","path":"/upload",' +
      '"protocol":"HTTP/1.1","status":502,"bytes":null,"durationMs":0.500,"backend":null,' +
      '"attempts":3,"requestId":null,"userAgent":null,"referer":null}',
  );
  assert.equal(JSON.parse(line).durationMs, 0.5);
  assert.equal(JSON.parse(formatJson({ ...unknowns, durationMs: NaN })).durationMs, null);
  assert.equal(JSON.parse(formatJson({ ...unknowns, time: new Date(NaN) })).time, null);
});

Deno.test("formatCombined() writes the combined format plus backend, attempts and duration", () => {
  assert.equal(
    formatCombined(record),
    '203.0.113.7 - - [25/Nov/2026:13:20:59 +0000] "GET /path?q=1 HTTP/1.1" 200 1234 ' +
      '"https://example.com/" "curl/8.5.0" backend=http://127.0.0.1:8081 attempts=1 ' +
      "duration_ms=12.346 request_id=req-42",
  );
  assert.equal(
    formatCombined(unknowns),
    '::1 - - [05/Jan/2026:03:04:05 +0000] "POST /upload HTTP/1.1" 502 - "-" "-" ' +
      "backend=- attempts=3 duration_ms=0.500",
  );
  assert.ok(COMBINED.test(formatCombined(record)));
});

Deno.test("clfTime() pads and uses UTC whatever the local zone", () => {
  assert.equal(clfTime(new Date(Date.UTC(2026, 0, 1, 0, 0, 0))), "01/Jan/2026:00:00:00 +0000");
  assert.equal(clfTime(new Date(Date.UTC(1999, 11, 31, 23, 59, 9))), "31/Dec/1999:23:59:09 +0000");
});

const forgedTail = '" 200 0 "-" "-" backend=- attempts=1 duration_ms=1.000\n' +
  '6.6.6.6 - - [01/Jan/2026:00:00:00 +0000] "GET /admin HTTP/1.1" 200 1 "-" "-';

Deno.test("formatCombined() keeps client-controlled fields inside their own field", () => {
  const hostile: AccessRecord = {
    ...record,
    path: `/a${forgedTail}`,
    method: 'GET" 200 "x',
    userAgent: `ua\r\n\x1b[31mred\x1b[0m \\"q\\" ü\u2028`,
    referer: forgedTail,
    requestId: "id with spaces\nand=newline",
  };
  const line = formatCombined(hostile);
  assert.ok(/^[\x20-\x7e]+$/.test(line), `only printable ASCII (controls escaped): ${line}`);
  const m = COMBINED.exec(line);
  assert.ok(m, `still one well-formed combined line: ${line}`);
  assert.equal(m[1], "203.0.113.7");
  assert.equal(unescapeClf(m[3]), `${hostile.method} ${hostile.path} HTTP/1.1`);
  assert.equal(m[4], "200");
  assert.equal(unescapeClf(m[6]), hostile.referer);
  assert.equal(unescapeClf(m[7]), hostile.userAgent);
  assert.equal(m[8], "http://127.0.0.1:8081");
  assert.equal(unescapeClf(m[11]), hostile.requestId);
});

Deno.test("formatJson() keeps client-controlled fields inside their own field", () => {
  const hostile = { ...record, path: `/a${forgedTail}`, userAgent: "\u0000\u2028\r\n" };
  const line = formatJson(hostile);
  assert.ok([...line].every((c) => c.charCodeAt(0) >= 0x20), "control characters escaped");
  const parsed = JSON.parse(line);
  assert.equal(parsed.path, hostile.path);
  assert.equal(parsed.userAgent, hostile.userAgent);
});

/** A sink that records each write and can be held until released. */
function recordingSink(options: { chunk?: number } = {}) {
  const writes: Uint8Array[] = [];
  let release: () => void = () => {};
  let gate: Promise<void> | undefined;
  const sink: ByteSink = {
    async write(bytes) {
      if (gate) await gate;
      const n = Math.min(bytes.length, options.chunk ?? bytes.length);
      writes.push(bytes.slice(0, n));
      return n;
    },
  };
  return {
    sink,
    writes,
    text: () => writes.map((w) => new TextDecoder().decode(w)).join(""),
    hold() {
      gate = new Promise((resolve) => release = resolve);
    },
    release: () => {
      gate = undefined;
      release();
    },
  };
}

Deno.test("header values are logged as the bytes the client sent, in both formats", () => {
  // Header values arrive as byte strings: one character per byte.
  const latin1 = "caf\xe9";
  const utf8 = "caf\xc3\xa9"; // "café" sent in UTF-8
  const combined = (userAgent: string) => formatCombined({ ...record, userAgent });
  assert.ok(combined(latin1).includes('"caf\\xE9"'), combined(latin1));
  assert.ok(combined(utf8).includes('"caf\\xC3\\xA9"'), combined(utf8));
  const json = (userAgent: string) => JSON.parse(formatJson({ ...record, userAgent })).userAgent;
  assert.equal(json(utf8), "café");
  assert.equal(json(latin1), "caf\ufffd", "not UTF-8: the replacement character");
  assert.equal(json("plain"), "plain");
});

Deno.test("LineWriter.write() batches lines written together into one sink write", async () => {
  const target = recordingSink();
  const writer = new LineWriter(target.sink);
  for (let i = 0; i < 100; i++) writer.write(`line ${i}`);
  assert.equal(target.writes.length, 0, "nothing written synchronously");
  await writer.close();
  assert.equal(target.writes.length, 1);
  assert.equal(target.text(), Array.from({ length: 100 }, (_, i) => `line ${i}\n`).join(""));
});

Deno.test("LineWriter finishes partial writes", async () => {
  const target = recordingSink({ chunk: 7 });
  const writer = new LineWriter(target.sink);
  writer.write("a fairly long line that needs several writes");
  writer.write("and another");
  await writer.close();
  assert.equal(target.text(), "a fairly long line that needs several writes\nand another\n");
  assert.ok(target.writes.length > 5);
});

Deno.test("LineWriter.write() drops and counts lines over maxPending while the sink is stuck", async () => {
  const target = recordingSink();
  target.hold();
  const writer = new LineWriter(target.sink, { maxPending: 10 });
  for (let i = 0; i < 16; i++) writer.write(`a${i}`);
  assert.equal(writer.dropped, 6);
  await new Promise((resolve) => setTimeout(resolve, 0)); // the loop takes the batch and waits
  for (let i = 0; i < 12; i++) writer.write(`b${i}`); // returns at once though nothing drains
  assert.equal(writer.pending, 10);
  assert.equal(writer.dropped, 8);
  target.release();
  await writer.close();
  const lines = target.text().trimEnd().split("\n");
  assert.deepEqual(lines, [
    ...Array.from({ length: 10 }, (_, i) => `a${i}`),
    ...Array.from({ length: 10 }, (_, i) => `b${i}`),
  ]);
  writer.write("after close");
  assert.equal(writer.dropped, 9);
});

Deno.test("LineWriter counts lines lost to write errors and warns once per run", async () => {
  const warnings: string[] = [];
  let fail = true;
  const good: string[] = [];
  const sink: ByteSink = {
    write(bytes) {
      if (fail) return Promise.reject(new Error("No space left on device"));
      good.push(new TextDecoder().decode(bytes));
      return Promise.resolve(bytes.length);
    },
  };
  const writer = new LineWriter(sink, { log: { warn: (m) => warnings.push(m) } });
  writer.write("x");
  writer.write("y");
  await new Promise((resolve) => setTimeout(resolve, 0));
  writer.write("z");
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(writer.dropped, 3);
  assert.deepEqual(warnings, ["access log: write failed, dropping lines: No space left on device"]);
  fail = false;
  writer.write("ok");
  await writer.close();
  assert.deepEqual(good, ["ok\n"]);
});

Deno.test("createAccessLog() appends every line to a file by close()", async () => {
  const path = await Deno.makeTempFile({ suffix: ".log" });
  try {
    await Deno.writeTextFile(path, "existing\n");
    const log = createAccessLog(path, "json");
    const n = 2_500;
    for (let i = 0; i < n; i++) {
      log.write({ ...record, path: `/r/${i}` });
      // Let some batches go out while more lines arrive, as under real traffic.
      if (i % 500 === 0) await new Promise((resolve) => setTimeout(resolve, 0));
    }
    await log.close();
    await log.close(); // idempotent
    const lines = (await Deno.readTextFile(path)).split("\n");
    assert.equal(lines.pop(), "", "ends with a newline");
    assert.equal(lines.shift(), "existing", "appends, never truncates");
    assert.equal(lines.length, n);
    lines.forEach((line, i) => assert.equal(JSON.parse(line).path, `/r/${i}`));
    assert.equal(log.dropped, 0);
    log.write(record);
    assert.equal(log.dropped, 1, "writes after close are dropped, not thrown");
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("createAccessLog() writes the combined format to a file", async () => {
  const path = await Deno.makeTempFile({ suffix: ".log" });
  try {
    const log = createAccessLog(path, "combined");
    log.write(record);
    log.write(unknowns);
    await log.close();
    assert.equal(
      await Deno.readTextFile(path),
      `${formatCombined(record)}\n${formatCombined(unknowns)}\n`,
    );
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("createAccessLog() throws at once for a file it cannot open", () => {
  assert.throws(
    () => createAccessLog("/nonexistent-dir/access.log", "json"),
    Deno.errors.NotFound,
  );
  // deno-lint-ignore no-explicit-any
  assert.throws(() => createAccessLog("stdout", "xml" as any), /format must be/);
});

Deno.test("createAccessLog() drops an unformattable record instead of throwing", async () => {
  const path = await Deno.makeTempFile();
  try {
    const log = createAccessLog(path, "json");
    // deno-lint-ignore no-explicit-any
    log.write({ ...record, time: undefined as any });
    await log.close();
    assert.equal(log.dropped, 1);
    assert.equal(await Deno.readTextFile(path), "");
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("createAccessLog('stdout') writes to standard output and leaves it open", async () => {
  const log = createAccessLog("stdout", "combined");
  log.write({ ...record, path: "/access-log-test-line" });
  await log.close();
  Deno.stdout.writeSync(new TextEncoder().encode("")); // still open
});

/**
 * Follows one output stream of a child process line by line until it ends. tests/process.ts's
 * spawnBalancer reads stderr only (and discards stdout), so the stdout test below reads both.
 */
function followLines(stream: ReadableStream<Uint8Array>) {
  const lines: string[] = [];
  const done = (async () => {
    let partial = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (partial + chunk).split("\n");
      partial = parts.pop()!;
      lines.push(...parts);
    }
    if (partial !== "") lines.push(partial);
  })();
  return {
    lines,
    done,
    /** The first line matching `pattern`, waiting up to `timeoutMs` for it. */
    async line(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
      const found = () => lines.find((line) => pattern.test(line));
      await waitFor(() => found() !== undefined, timeoutMs);
      const line = found();
      if (line === undefined) {
        throw new Error(`no line matching ${pattern} within ${timeoutMs}ms:\n${lines.join("\n")}`);
      }
      return line;
    },
  };
}

Deno.test("--access-log stdout writes each request's line to the process's standard output", async () => {
  await using backend = await startTestBackend(() => new Response("witnessed"));
  const child = denoRun("main.ts", [
    `--backends=${backend.url}`,
    "--port=0",
    "--host=127.0.0.1",
    "--access-log=stdout",
  ]).spawn();
  const stdout = followLines(child.stdout);
  const stderr = followLines(child.stderr);
  try {
    const started = await stderr.line(/Load balancer started at :\d+/);
    const port = Number(/started at :(\d+)/.exec(started)![1]);
    const answer = await getText(`http://127.0.0.1:${port}/access-log-witness?q=1`, {
      method: "DELETE",
    });
    assert.equal(answer.status, 200);
    assert.equal(answer.text, "witnessed");

    const line = await stdout.line(/access-log-witness/);
    const m = COMBINED.exec(line);
    assert.ok(m, `not a combined access-log line: ${line}`);
    assert.equal(m[1], "127.0.0.1");
    assert.equal(m[3], "DELETE /access-log-witness?q=1 HTTP/1.1");
    assert.equal(m[4], "200");
    assert.equal(m[5], "9");
    assert.equal(m[8], backend.url);
    // Standard output carries the access log and nothing else; the log stays on stderr.
    assert.deepEqual(stdout.lines, [line]);
    assert.ok(!stderr.lines.some((l) => l.includes("access-log-witness")), stderr.lines.join("\n"));
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await Promise.all([stdout.done, stderr.done]);
  }
});

Deno.test("a reload reopens the access log: logrotate's rename, then SIGHUP, starts a new file", async () => {
  await using backend = await startTestBackend(() => new Response("ok"));
  await using dir = await tempDir();
  const path = `${dir.path}/access.log`;
  const config = { accessLog: path };
  await using lb = await startTestBalancer([backend.url], config);
  const lines = async (file: string) =>
    (await Deno.readTextFile(file).catch(() => "")).split("\n").filter(Boolean);
  await (await fetch(`${lb.url}/before-rotation`)).text();
  assert.ok(await waitFor(() => Deno.statSync(path).size > 0, 5000), "the first line was written");
  await Deno.rename(path, `${path}.1`);
  await lb.balancer.reload(testConfig([backend.url], config));
  await (await fetch(`${lb.url}/after-rotation`)).text();
  let current: string[] = [];
  for (let i = 0; i < 50 && current.length === 0; i++) {
    current = await lines(path);
    if (current.length === 0) await delay(100);
  }
  assert.equal(current.length, 1, "the new file has the line written after the reload");
  assert.match(current[0], /GET \/after-rotation /);
  const rotated = await lines(`${path}.1`);
  assert.equal(rotated.length, 1);
  assert.match(rotated[0], /GET \/before-rotation /);
});

Deno.test("the access log gives an HTTP/1.0 request its version (native front end) and a HEAD 0 bytes", async () => {
  await using backend = await startTestBackend(() => new Response("twelve bytes"));
  await using dir = await tempDir();
  const path = `${dir.path}/access.log`;
  await using lb = await startTestBalancer([backend.url], {
    accessLog: path,
    frontend: "native",
  });
  await rawRequest(lb.port, "GET /old HTTP/1.0\r\nHost: ok\r\n\r\n");
  await rawRequest(lb.port, "HEAD /head HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n");
  await rawRequest(lb.port, "GET /new HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n");
  let lines: string[] = [];
  for (let i = 0; i < 50 && lines.length < 3; i++) {
    lines = (await Deno.readTextFile(path).catch(() => "")).split("\n").filter(Boolean);
    if (lines.length < 3) await delay(100);
  }
  const line = (path: string) => lines.find((l) => l.includes(` ${path} `)) ?? "";
  assert.match(line("/old"), /"GET \/old HTTP\/1\.0" 200 12 /);
  assert.match(line("/head"), /"HEAD \/head HTTP\/1\.1" 200 0 /);
  assert.match(line("/new"), /"GET \/new HTTP\/1\.1" 200 12 /);
});

Deno.test("the access log says '-' for a body the backend broke off, 0 bytes for a 205, and counts the balancer's own answer", async () => {
  await using backend = rawServer(async (conn) => {
    const wire = new Wire(conn);
    const head = await wire.head();
    if (head?.startsWith("GET /refused ")) {
      // No answer at all: the balancer answers 502 itself.
    } else if (head?.startsWith("GET /reset ")) {
      await conn.write(encoder.encode("HTTP/1.1 205 Reset Content\r\ncontent-length: 0\r\n\r\n"));
    } else {
      // Announces 200,000 bytes, sends 100,000 and closes.
      await conn.write(encoder.encode("HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n"));
      await conn.write(new Uint8Array(100_000));
    }
    conn.close();
  });
  await using dir = await tempDir();
  const path = `${dir.path}/access.log`;
  await using lb = await startTestBalancer([backend.url], { accessLog: path, frontend: "native" });
  await rawRequest(lb.port, "GET /cut HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n");
  await rawRequest(lb.port, "GET /reset HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n");
  await rawRequest(lb.port, "GET /refused HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n");
  let lines: string[] = [];
  for (let i = 0; i < 50 && lines.length < 3; i++) {
    lines = (await Deno.readTextFile(path).catch(() => "")).split("\n").filter(Boolean);
    if (lines.length < 3) await delay(100);
  }
  const line = (path: string) => lines.find((l) => l.includes(` ${path} `)) ?? "";
  assert.match(line("/cut"), /"GET \/cut HTTP\/1\.1" 200 - /);
  // The balancer's own answer ("502 Bad Gateway\n") counts its bytes.
  assert.match(line("/refused"), /"GET \/refused HTTP\/1\.1" 502 16 /);
  assert.match(line("/reset"), /"GET \/reset HTTP\/1\.1" 205 0 /);
});
