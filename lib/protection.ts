/**
 * @module
 * Protection and traffic control per route: the route keys (also top-level defaults for every
 * route), their validation, and what a route compiles to. Each feature lives in its own module
 * (access_rules, rate_limit, basic_auth, compress, mirror); this one ties them to routes.
 *
 * A route's own value replaces the default; `false` turns off a default rate limit, basic auth,
 * compression or mirror for one route, and `[]` an allow or deny list.
 */

import type { Problem } from "./problem.ts";
import {
  type AccessRules,
  checkCidrList,
  CIDR_LIST_SCHEMA,
  compileAccessRules,
} from "./access_rules.ts";
import {
  checkRateLimit,
  RATE_LIMIT_SCHEMA,
  RateLimiter,
  type RateLimitSpec,
} from "./rate_limit.ts";
import { checkCompress, COMPRESS_SCHEMA, type CompressSpec } from "./compress.ts";
import {
  BASIC_AUTH_SCHEMA,
  type BasicAuthSpec,
  type BasicAuthVerifier,
  checkBasicAuth,
  loadUsers,
} from "./basic_auth.ts";
import {
  checkMirror,
  type InFlightLimit,
  Mirror,
  MIRROR_SCHEMA,
  type MirrorSpec,
  type MirrorTarget,
} from "./mirror.ts";

/** The protection keys a route (or the top level, as a default) may carry. */
export interface ProtectionSpec {
  /** Address ranges allowed; empty or absent: everyone not denied. @default [] */
  allow?: string[];
  /** Address ranges refused (403), winning over `allow`. @default [] */
  deny?: string[];
  /** Token bucket per client (429 beyond it); `false`: none here. @default none */
  rateLimit?: RateLimitSpec | false;
  /** Users who may pass (401 for others); `false`: none here. @default none */
  basicAuth?: BasicAuthSpec | false;
  /** Response compression; `false`: none here. @default none */
  compress?: CompressSpec | false;
  /** Copies of a share of the requests to another service; `false`: none here. @default none */
  mirror?: MirrorSpec | false;
}

/** The keys of {@linkcode ProtectionSpec}, as a route accepts them. */
export const PROTECTION_KEYS = [
  "allow",
  "deny",
  "rateLimit",
  "basicAuth",
  "compress",
  "mirror",
] as const;

/** A key's schema, also accepting `false` (off for this route). */
function orFalse(schema: object): Record<string, unknown> {
  return { oneOf: [{ const: false }, schema] };
}

/** JSON Schema of each protection key, for a route's properties in lb.schema.json. */
export const PROTECTION_SCHEMAS: Record<
  (typeof PROTECTION_KEYS)[number],
  Record<string, unknown>
> = {
  allow: { ...CIDR_LIST_SCHEMA, description: "Only clients in these ranges (403 for others)." },
  deny: { ...CIDR_LIST_SCHEMA, description: "Clients in these ranges get 403; wins over allow." },
  rateLimit: orFalse(RATE_LIMIT_SCHEMA),
  basicAuth: orFalse(BASIC_AUTH_SCHEMA),
  compress: COMPRESS_SCHEMA as Record<string, unknown>,
  mirror: orFalse(MIRROR_SCHEMA),
};

/** `check`, also accepting `false`. */
function allowingFalse<T>(
  check: (value: unknown, path: string, problems: Problem[]) => T | undefined,
) {
  return (value: unknown, path: string, problems: Problem[]): T | false | undefined =>
    value === false ? false : check(value, path, problems);
}

/** Checks of each key, for a route and for the top level. */
export const PROTECTION_CHECKS = {
  allow: checkCidrList,
  deny: checkCidrList,
  rateLimit: allowingFalse(checkRateLimit),
  basicAuth: allowingFalse(checkBasicAuth),
  compress: checkCompress,
  mirror: allowingFalse(checkMirror),
} as const;

/**
 * Checks the protection keys present in a route object (`path` is the route's) and stores the
 * checked values (defaults filled in) back into it; pushes one problem per mistake.
 */
export function checkProtection(
  object: Record<string, unknown>,
  path: string,
  problems: Problem[],
): void {
  const at = (key: string) => path === "" ? key : `${path}.${key}`;
  for (const key of PROTECTION_KEYS) {
    if (!Object.hasOwn(object, key)) continue;
    const checked = PROTECTION_CHECKS[key](object[key], at(key), problems);
    if (checked !== undefined) object[key] = checked;
  }
}

/** What a route enforces, compiled once per routing state. */
export interface RouteGuards {
  readonly access?: AccessRules;
  readonly limiter?: RateLimiter;
  readonly auth?: {
    readonly realm: string;
    readonly users: Map<string, string>;
    readonly verifier: BasicAuthVerifier;
  };
  readonly compress?: CompressSpec;
  readonly mirror?: Mirror;
}

/** What compiling guards needs from the running balancer. */
export interface GuardResources {
  /**
   * The shared table of `route`'s rate limit: kept across reloads (clients keep their buckets)
   * and shared with `--workers` threads.
   */
  rateLimitTable(route: string, spec: RateLimitSpec): SharedArrayBuffer;
  /** The balancer's password checker (one worker thread for every route). */
  verifier(): BasicAuthVerifier;
  /** Where copies for `service` go, and the cap on copies in flight there. */
  mirrorTarget(service: string): { target: MirrorTarget; limit: InFlightLimit };
}

/**
 * The guards of a route: its own keys, else the top-level defaults. Undefined when the route
 * enforces nothing (no work per request).
 */
export function compileGuards(
  route: ProtectionSpec & { service?: string },
  name: string,
  defaults: ProtectionSpec,
  resources: GuardResources,
): RouteGuards | undefined {
  const access = compileAccessRules(route.allow ?? defaults.allow, route.deny ?? defaults.deny);
  const rate = route.rateLimit ?? defaults.rateLimit;
  const limiter = rate ? new RateLimiter(rate, resources.rateLimitTable(name, rate)) : undefined;
  const authSpec = route.basicAuth ?? defaults.basicAuth;
  // Reads usersFile: on a reload, a file that became unreadable fails the reload, not requests.
  const auth = authSpec
    ? { realm: authSpec.realm, users: loadUsers(authSpec), verifier: resources.verifier() }
    : undefined;
  const compress = (route.compress ?? defaults.compress) || undefined;
  const mirrorSpec = route.mirror ?? defaults.mirror;
  let mirror: Mirror | undefined;
  // Only requests forwarded to a service are copied (a redirect or a fixed answer is not), and
  // never to the service that gets them already (the default mirror's own routes).
  if (mirrorSpec && route.service !== undefined && mirrorSpec.service !== route.service) {
    const { target, limit } = resources.mirrorTarget(mirrorSpec.service);
    mirror = new Mirror(mirrorSpec, target, { route: name, limit });
  }
  if (!access && !limiter && !auth && !compress && !mirror) return undefined;
  return { access, limiter, auth, compress, mirror };
}
