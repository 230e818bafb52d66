/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * @module
 * The thread that runs bcrypt for `BasicAuthVerifier` (lib/basic_auth.ts): one check
 * at a time, so a burst of wrong passwords keeps this thread busy and never the one that serves
 * requests. bcryptjs is pure JavaScript (no native addon, so it loads with `nodeModulesDir:
 * "none"` and in `deno compile` binaries) and reads `$2a$`, `$2b$` and `$2y$` hashes alike.
 */

import { compareSync } from "npm:bcryptjs@^3.0.3";
import type { BcryptAnswer, BcryptRequest } from "./basic_auth.ts";

self.onmessage = (event: MessageEvent<BcryptRequest>) => {
  const { id, password, hash } = event.data;
  let ok = false;
  try {
    ok = compareSync(password, hash);
  } catch {
    // Hashes are checked when loaded; one that still fails to parse matches nothing.
  }
  self.postMessage({ type: "answer", id, ok } satisfies BcryptAnswer);
};

// The verifier holds its requests until this: earlier ones could be lost (see BcryptAnswer).
self.postMessage({ type: "ready" } satisfies BcryptAnswer);
