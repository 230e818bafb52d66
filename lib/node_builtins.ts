/**
 * @module
 * Node's built-in modules that only some configurations use (compression, basic auth, TLS
 * certificate details, file watching), loaded on first use instead of at start: each one loaded
 * costs every process and worker resident memory, also when its feature is off
 * (docs/performance.md, "Where the resident memory is").
 */

import type * as NodeCrypto from "node:crypto";
import type * as NodeZlib from "node:zlib";

interface BuiltinLoader {
  getBuiltinModule(id: "node:crypto"): typeof NodeCrypto;
  getBuiltinModule(id: "node:zlib"): typeof NodeZlib;
}

// Deno's global `process` (as Node's since 22.3) loads a built-in synchronously, once.
const loader = (globalThis as unknown as { process: BuiltinLoader }).process;

/** node:crypto. */
export function nodeCrypto(): typeof NodeCrypto {
  return loader.getBuiltinModule("node:crypto");
}

/** node:zlib. */
export function nodeZlib(): typeof NodeZlib {
  return loader.getBuiltinModule("node:zlib");
}
