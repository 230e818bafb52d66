/**
 * @module
 * `deno task compile:all`: standalone binaries of the load balancer and the demo backend for every
 * release target, named `NAME-VERSION-TARGET[.exe]`, and a `SHA256SUMS` file beside them (the
 * format `sha256sum -c` reads), all in `dist/`.
 *
 *     deno task compile:all                              # every target in TARGETS
 *     deno task compile:all x86_64-unknown-linux-gnu     # only the targets named
 *     deno task compile:all --out-dir /tmp/release --tag v0.1.0
 *
 * `deno compile` downloads a `denort` runtime per target from dl.deno.land on first use (then it is
 * cached). Where that download fails, each target fails with one line saying so, no `SHA256SUMS`
 * is written (a release must never ship a partial set), and the exit code is 1.
 *
 * Each binary carries only the permissions its program needs (`deno compile` bakes them in: the
 * user cannot widen them). The dashboard needs no `--include`: it is the TypeScript module
 * `lib/dashboard.ts`, statically imported, so it is part of the module graph like any other code.
 * The worker threads' module (`--workers`) is loaded by `new Worker`, which deno compile cannot
 * follow: it is named with `--include`.
 */

import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import denoJson from "../deno.json" with { type: "json" };

/** The release targets: `deno compile --target` names. */
export const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
] as const;

/** One of {@linkcode TARGETS}. */
export type Target = (typeof TARGETS)[number];

/** A program to compile. */
export interface Program {
  /** Binary name before the version. */
  name: string;
  /** Entry module, relative to the project root. */
  entry: string;
  /** Permission flags baked into the binary: everything the program may ever do. */
  permissions: readonly string[];
  /** Whether `deno.json`'s unstable features are passed as `--unstable-*` flags. */
  unstable: boolean;
  /** Modules loaded other than by static import (worker threads), embedded with `--include`. */
  include: readonly string[];
  /** V8 flags baked into the binary (docs/performance.md says why these). */
  v8Flags: readonly string[];
}

/**
 * What gets compiled. The balancer reads config and TLS files (`--allow-read`), writes its access
 * log (`--allow-write`) and reads one variable; the backend reads only `PORT`.
 */
export const PROGRAMS: readonly Program[] = [
  {
    name: "load-balancer",
    entry: "main.ts",
    // The whole environment: the ACME library reads it when it loads (see lib/acme_setup.ts).
    permissions: ["--allow-net", "--allow-read", "--allow-write", "--allow-env"],
    unstable: true,
    include: ["lib/worker_thread.ts", "lib/bcrypt_worker.ts", "lib/acme_setup.ts"],
    v8Flags: ["--max-semi-space-size=16"],
  },
  {
    name: "backend",
    entry: "backend.ts",
    permissions: ["--allow-net", "--allow-env=PORT"],
    unstable: false,
    include: [],
    v8Flags: [],
  },
];

/** The checksum file's name, as release tooling conventionally spells it. */
export const CHECKSUMS_FILE = "SHA256SUMS";

/** `load-balancer-0.1.0-x86_64-pc-windows-msvc.exe`: Windows needs the extension to run it. */
export function outputName(program: Program, version: string, target: Target): string {
  const exe = target.endsWith("-windows-msvc") ? ".exe" : "";
  return `${program.name}-${version}-${target}${exe}`;
}

/** What {@linkcode compileArgs} needs besides program and target. */
export interface CompileOptions {
  /** Version in the file name. @default deno.json's version */
  version?: string;
  /** Directory of the outputs, relative to the project root or absolute. @default "dist" */
  outDir?: string;
  /** Unstable features (`deno.json` "unstable"). @default deno.json's list */
  unstable?: readonly string[];
}

/**
 * The exact `deno compile` arguments for one program and target.
 *
 * `--exclude-unused-npm` keeps test-only npm packages (playwright-core, 13 MB) out of the binary:
 * without it `deno compile` embeds every package in the lockfile. `--frozen` refuses a lockfile
 * that would change, so a release builds exactly what was tested. `--no-check`: the release
 * workflow type-checks once with `deno task check` before compiling.
 */
export function compileArgs(program: Program, target: Target, options: CompileOptions = {}) {
  const version = options.version ?? denoJson.version;
  const outDir = (options.outDir ?? "dist").replace(/\/+$/, "");
  const unstable = program.unstable ? options.unstable ?? denoJson.unstable : [];
  return [
    "compile",
    "--target",
    target,
    ...program.permissions,
    ...unstable.map((feature) => `--unstable-${feature}`),
    ...program.include.flatMap((module) => ["--include", module]),
    ...(program.v8Flags.length === 0 ? [] : [`--v8-flags=${program.v8Flags.join(",")}`]),
    "--exclude-unused-npm",
    "--frozen",
    "--no-check",
    "--output",
    `${outDir}/${outputName(program, version, target)}`,
    program.entry,
  ];
}

/** Lower-case hex SHA-256 of a file (WebCrypto, so the same on every OS Deno runs on). */
export async function sha256File(path: string | URL): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * `sha256sum` text for `{name: hash}`: one `HASH  NAME` line per file (two spaces: text mode,
 * which is what `sha256sum -c` and `shasum -a 256 -c` accept everywhere), sorted by name.
 */
export function formatChecksums(hashes: Readonly<Record<string, string>>): string {
  return Object.keys(hashes).sort().map((name) => `${hashes[name]}  ${name}\n`).join("");
}

/**
 * Hashes `names` (files in `dir`) and writes `dir/SHA256SUMS` naming them relative to `dir`, so
 * `cd dir && sha256sum -c SHA256SUMS` checks them. Written to a temporary name and renamed, so a
 * reader never sees half a file. Returns the text written.
 */
export async function writeChecksums(dir: string, names: readonly string[]): Promise<string> {
  const hashes: Record<string, string> = {};
  for (const name of names) {
    if (name.includes("/") || name.includes("\\")) {
      throw new Error(`checksum entry "${name}" must be a file name inside ${dir}`);
    }
    hashes[name] = await sha256File(`${dir}/${name}`);
  }
  const text = formatChecksums(hashes);
  const temporary = `${dir}/.${CHECKSUMS_FILE}.tmp`;
  await Deno.writeTextFile(temporary, text);
  await Deno.rename(temporary, `${dir}/${CHECKSUMS_FILE}`);
  return text;
}

/**
 * One line explaining a failed `deno compile` from its stderr. A failed runtime download is the
 * expected failure offline; anything else is reported by its `error:` line and innermost cause.
 */
export function explainFailure(stderr: string): string {
  // A backtrace follows the error with its own numbered frames: it is not part of the message.
  const lines = stderr.split(/^Stack backtrace:/m)[0].split("\n").map((line) => line.trim());
  // `Caused by:` chains are numbered `0: ...`, `1: ...`; the last one is the root cause.
  const causes = lines.map((line) => /^\d+: (.+)$/.exec(line)?.[1]).filter((c) => c !== undefined);
  const rootCause = causes.at(-1);
  const download = /error sending request for url \((\S+?)\)/.exec(stderr);
  if (download !== null && /denort/.test(download[1])) {
    return `cannot download the denort runtime ${download[1]}` +
      (rootCause === undefined ? "" : ` (${rootCause})`) +
      "; run where dl.deno.land is reachable, or set DENORT_BIN to a denort for this target";
  }
  const error = lines.find((line) => line.startsWith("error:"));
  const summary = error ?? lines.find((line) => line !== "") ?? "deno compile failed";
  return rootCause === undefined || summary.includes(rootCause)
    ? summary
    : `${summary} (${rootCause})`;
}

/** The target of the machine running this, when it is a release target. */
export function hostTarget(): Target | undefined {
  return TARGETS.find((target) => target === Deno.build.target);
}

const ROOT = new URL("../", import.meta.url);

async function compile(program: Program, target: Target, outDir: string) {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: compileArgs(program, target, { outDir }),
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return code === 0 ? undefined : explainFailure(new TextDecoder().decode(stderr));
}

const USAGE = `usage: deno task compile:all [--out-dir DIR] [--tag vVERSION] [TARGET...]
targets: ${TARGETS.join(", ")}`;

/** Parses the command line; throws an Error with a one-line message. */
export function parseCommandLine(args: string[]) {
  const { values, positionals } = parseArgs({
    args,
    options: {
      "out-dir": { type: "string", default: "dist" },
      tag: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  for (const name of positionals) {
    if (!(TARGETS as readonly string[]).includes(name)) {
      throw new Error(`unknown target "${name}" (known: ${TARGETS.join(", ")})`);
    }
  }
  // A tag that disagrees with deno.json would publish binaries named after another version.
  if (values.tag !== undefined && values.tag !== `v${denoJson.version}`) {
    throw new Error(
      `tag "${values.tag}" does not match deno.json's version ${denoJson.version} ` +
        `(expected "v${denoJson.version}")`,
    );
  }
  const targets = positionals.length > 0 ? positionals as Target[] : [...TARGETS];
  return { outDir: values["out-dir"], targets, help: values.help };
}

/** Compiles every program for every target; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  let options: ReturnType<typeof parseCommandLine>;
  try {
    options = parseCommandLine(args);
  } catch (error) {
    console.error(`compile:all: ${(error as Error).message}`);
    console.error(USAGE);
    return 2;
  }
  if (options.help) {
    console.log(USAGE);
    return 0;
  }
  const { outDir, targets } = options;
  // deno compile puts DENORT_BIN into the binary whatever --target says: a host runtime inside
  // a "windows" file would be a broken release.
  const denortBin = Deno.env.get("DENORT_BIN");
  const host = hostTarget();
  if (denortBin && targets.some((target) => target !== host)) {
    console.error(
      `compile:all: DENORT_BIN is set, and deno compile would put that one runtime into every ` +
        `target's binary; unset it, or compile only this machine's target (${host ?? "none"})`,
    );
    return 2;
  }

  const dir = resolve(fileURLToPath(ROOT), outDir);
  await Deno.mkdir(dir, { recursive: true });
  // A stale list from an earlier run must not outlive a failed one.
  await Deno.remove(`${dir}/${CHECKSUMS_FILE}`).catch(() => {});

  const built: string[] = [];
  let failed = 0;
  for (const target of targets) {
    let failure: string | undefined;
    const names: string[] = [];
    for (const program of PROGRAMS) {
      // The runtime is per target: once it fails, the next program would fail the same way.
      failure = await compile(program, target, dir);
      if (failure !== undefined) break;
      names.push(outputName(program, denoJson.version, target));
    }
    if (failure === undefined) {
      built.push(...names);
      console.error(`compile:all: ${target}: ${names.join(", ")}`);
    } else {
      failed++;
      console.error(`compile:all: ${target}: ${failure}`);
    }
  }
  if (failed > 0) {
    console.error(
      `compile:all: ${failed} of ${targets.length} targets failed; ${CHECKSUMS_FILE} not written`,
    );
    return 1;
  }
  await writeChecksums(dir, built);
  console.error(`compile:all: wrote ${built.length} binaries and ${CHECKSUMS_FILE} to ${outDir}/`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
