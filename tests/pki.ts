/**
 * @module
 * Throw-away certificates for tests, made by openssl in a temp directory (tests/tls_test.ts,
 * tests/exact_path_test.ts), and the small command runner they need.
 */

/** Runs a command to completion (killed after `timeoutMs`); stdin gets `input` or nothing. */
export async function run(
  command: string,
  args: string[],
  input = "",
  timeoutMs = 30_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const child = new Deno.Command(command, {
      args,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      signal: controller.signal,
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(input)).catch(() => {});
    await writer.close().catch(() => {});
    const { code, stdout, stderr } = await child.output();
    const decode = (b: Uint8Array) => new TextDecoder().decode(b);
    return { code, stdout: decode(stdout), stderr: decode(stderr) };
  } finally {
    clearTimeout(timer);
  }
}

/** Whether `command` runs (`--version` or `version` exits 0). */
export async function installed(command: string): Promise<boolean> {
  try {
    return (await run(command, ["--version"])).code === 0 ||
      (await run(command, ["version"])).code === 0;
  } catch {
    return false;
  }
}

/** Runs openssl; throws with its stderr when it fails. */
export async function openssl(...args: string[]): Promise<string> {
  const result = await run("openssl", args);
  if (result.code !== 0) throw new Error(`openssl ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
}

/** A certificate made by {@linkcode Pki}: files and PEM text. */
export interface Issued {
  name: string;
  certPath: string;
  keyPath: string;
  cert: string;
  key: string;
}

/** Throw-away certificates in a temp directory (removed on dispose). */
export class Pki implements AsyncDisposable {
  private constructor(readonly dir: string) {}

  static async create(): Promise<Pki> {
    return new Pki(await Deno.makeTempDir({ prefix: "lb-tls-" }));
  }

  /** A self-signed CA. */
  async ca(name: string): Promise<Issued> {
    const { certPath, keyPath } = this.#paths(name);
    await openssl(
      ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"],
      ...["-keyout", keyPath, "-out", certPath, "-days", "2", "-subj", `/CN=${name}`],
      ...["-addext", "basicConstraints=critical,CA:TRUE"],
      ...["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    );
    return this.#read(name);
  }

  /**
   * A leaf for 127.0.0.1 and localhost, usable by servers and clients, signed by `ca`.
   * `days` -1 makes it already expired. Not a CA: Deno refuses a CA certificate as a server's.
   */
  async leaf(name: string, ca: Issued, days = 2): Promise<Issued> {
    const { certPath, keyPath } = this.#paths(name);
    const csr = `${this.dir}/${name}.csr`;
    const ext = `${this.dir}/${name}.ext`;
    await Deno.writeTextFile(
      ext,
      "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n" +
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    await openssl(
      ...["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"],
      ...["-keyout", keyPath, "-out", csr, "-subj", `/CN=${name}`],
    );
    const serial = [...crypto.getRandomValues(new Uint8Array(8))]
      .map((b) => b.toString(16).padStart(2, "0")).join("").replace(/^./, "1");
    await openssl(
      ...["x509", "-req", "-in", csr, "-CA", ca.certPath, "-CAkey", ca.keyPath],
      ...["-set_serial", `0x${serial}`, "-days", String(days), "-extfile", ext, "-out", certPath],
    );
    return this.#read(name);
  }

  #paths(name: string) {
    return { certPath: `${this.dir}/${name}.pem`, keyPath: `${this.dir}/${name}.key` };
  }

  async #read(name: string): Promise<Issued> {
    const { certPath, keyPath } = this.#paths(name);
    return {
      name,
      certPath,
      keyPath,
      cert: await Deno.readTextFile(certPath),
      key: await Deno.readTextFile(keyPath),
    };
  }

  async [Symbol.asyncDispose]() {
    await Deno.remove(this.dir, { recursive: true });
  }
}
