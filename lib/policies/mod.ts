/**
 * @module
 * The balancing policies by name, for configuration: {@linkcode POLICY_NAMES} lists what
 * `--policy` accepts and {@linkcode createPolicy} builds one.
 */

import type { Policy } from "../pool.ts";
import { HashPolicy, type HashPolicyOptions } from "./hash.ts";
import { LeastConnPolicy } from "./least_conn.ts";
import { type P2cEwmaOptions, P2cEwmaPolicy } from "./p2c_ewma.ts";
import { RandomPolicy } from "./random.ts";
import type { RandomSource } from "./random_source.ts";
import { RoundRobinPolicy } from "./round_robin.ts";

export { HashPolicy, LeastConnPolicy, P2cEwmaPolicy, RandomPolicy, RoundRobinPolicy };

/** Names accepted for the balancing policy, the default first. */
export const POLICY_NAMES = ["round-robin", "least-conn", "p2c-ewma", "random", "hash"] as const;
/** One of {@linkcode POLICY_NAMES}. */
export type PolicyName = typeof POLICY_NAMES[number];

/** Options for {@linkcode createPolicy}; each policy reads only what applies to it. */
export interface PolicyOptions {
  /** Randomness for least-conn ties, p2c-ewma and random. @default Math.random */
  random?: RandomSource;
  /** Monotonic clock in ms for p2c-ewma. @default performance.now */
  now?: () => number;
  /** p2c-ewma tuning. @default {} (decayMs 10000, failurePenaltyMs 1000) */
  ewma?: Pick<P2cEwmaOptions, "decayMs" | "failurePenaltyMs">;
  /** hash tuning. @default {} (key "ip", tableSize 65536) */
  hash?: HashPolicyOptions;
}

/**
 * Builds the named policy.
 *
 * @throws Error naming the value and the accepted names when `name` is not a policy (possible
 * when the name comes from untyped input such as a reloaded file).
 */
export function createPolicy(name: PolicyName, options: PolicyOptions = {}): Policy {
  const { random, now } = options;
  switch (name) {
    case "round-robin":
      return new RoundRobinPolicy();
    case "least-conn":
      return new LeastConnPolicy({ random });
    case "p2c-ewma":
      return new P2cEwmaPolicy({ ...options.ewma, random, now });
    case "random":
      return new RandomPolicy({ random });
    case "hash":
      return new HashPolicy(options.hash);
    default:
      throw new Error(
        `policy "${name as string}" is not one of: ${POLICY_NAMES.join(", ")}`,
      );
  }
}
