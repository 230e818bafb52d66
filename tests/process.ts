/**
 * @module
 * Runs the balancer as a real process (as users do), reading its log lines from stderr; and the
 * config file such a process reads, rewritten as editors do.
 */

const ROOT = new URL("../", import.meta.url);

/** A balancer process started by a test. Stopped by PID on dispose. */
export interface BalancerProcess extends AsyncDisposable {
  readonly child: Deno.ChildProcess;
  /** Log lines read so far. */
  readonly lines: string[];
  /** Resolves with the first line (already read or future) matching `pattern`. */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** The port from `Load balancer started at :PORT`. */
  port(): Promise<number>;
  /** Resolves with the exit code. */
  readonly exited: Promise<number>;
}

/** How to run main.ts beyond its arguments. */
export interface RunOptions {
  /**
   * Permissions added to `--allow-net` (which docs/operations.md#permissions documents and every run gets), e.g.
   * `--allow-read=/tmp/x` for a config file or `--allow-env=LB_ADMIN_TOKEN`. @default []
   */
  permissions?: string[];
  /** Environment variables added to the inherited ones. @default {} */
  env?: Record<string, string>;
}

/** The command that runs an entry point with the permissions docs/operations.md#permissions documents. */
export function denoRun(
  entry: string,
  args: string[],
  permissions = ["--allow-net"],
  env: Record<string, string> = {},
) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, entry, ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  });
}

function mainCommand(args: string[], options: RunOptions) {
  return denoRun("main.ts", args, ["--allow-net", ...options.permissions ?? []], options.env);
}

/** Runs `main.ts args` to completion and returns exit code and output. */
export async function runMain(args: string[], options: RunOptions = {}) {
  const { code, stdout, stderr } = await mainCommand(args, options).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code, stdout: decode(stdout), stderr: decode(stderr) };
}

/** Starts `main.ts args` and follows its stderr. */
export function spawnBalancer(args: string[], options: RunOptions = {}): BalancerProcess {
  const child = mainCommand(args, options).spawn();
  const lines: string[] = [];
  const waiters = new Set<{ pattern: RegExp; resolve: (line: string) => void }>();
  const reading = (async () => {
    const stream = child.stderr.pipeThrough(new TextDecoderStream());
    let partial = "";
    for await (const chunk of stream) {
      const parts = (partial + chunk).split("\n");
      partial = parts.pop()!;
      for (const line of parts) {
        lines.push(line);
        for (const waiter of waiters) {
          if (waiter.pattern.test(line)) {
            waiters.delete(waiter);
            waiter.resolve(line);
          }
        }
      }
    }
  })();
  const stdoutDone = child.stdout.cancel();
  const exited = child.status.then(async (status) => {
    await reading;
    await stdoutDone;
    return status.code;
  });

  function waitForLine(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    const seen = lines.find((line) => pattern.test(line));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(waiter);
        reject(
          new Error(`no log line matching ${pattern} within ${timeoutMs}ms:\n${lines.join("\n")}`),
        );
      }, timeoutMs);
      const waiter = {
        pattern,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      waiters.add(waiter);
    });
  }

  return {
    child,
    lines,
    waitForLine,
    exited,
    async port() {
      const line = await waitForLine(/Load balancer started at :\d+/);
      return Number(/:(\d+)/.exec(line.slice(line.indexOf("started at")))![1]);
    },
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch { /* already exited */ }
      await exited;
    },
  };
}

/** A config file `lb.jsonc` in a temp directory of its own. */
export interface ConfigDir extends AsyncDisposable {
  readonly dir: string;
  readonly path: string;
  /** Replaces the file as editors do: a temp file beside it, renamed over it. */
  write(text: string): Promise<void>;
}

/** A temp directory for the config file `lb.jsonc` (not written yet); removed on dispose. */
export async function configDir(prefix = "lb-config-"): Promise<ConfigDir> {
  const dir = await Deno.makeTempDir({ prefix });
  const path = `${dir}/lb.jsonc`;
  let writes = 0;
  return {
    dir,
    path,
    async write(text: string): Promise<void> {
      const temp = `${dir}/.lb.jsonc.${++writes}.tmp`;
      await Deno.writeTextFile(temp, text);
      await Deno.rename(temp, path);
    },
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** main.ts on the config file of `cfg` plus `args`, allowed to read the file's folder only. */
export function spawnOnConfig(
  cfg: { dir: string; path: string },
  args: string[] = [],
): BalancerProcess {
  return spawnBalancer(["--config", cfg.path, ...args], {
    permissions: [`--allow-read=${cfg.dir}`],
  });
}
