/**
 * @module
 * A `Response`'s header fields read from Deno's own header list, for the native front end
 * (lib/http1_response.ts): the fields as Deno.serve writes them (in insertion order, a repeated
 * name on lines of its own), without the iterator Deno builds per response (which sorts them
 * and joins repeats) or a copy. The list is the live one: whatever changed the headers after
 * the Response was built is in it. When Deno's internals are not where this module looks, or
 * the Response keeps its fields in a lazy form that the list does not show yet, it iterates
 * `response.headers` instead.
 *
 * The proxy also appends fields to that list ({@linkcode headerListOf}) when they were already
 * validated, skipping the WebIDL conversion and checks `Headers.append` repeats for each one.
 */

/** Symbols Deno keys a Response's internal slots with. */
const SYMBOLS = Object.getOwnPropertySymbols(new Response("x"));

/** The symbol of the Response slot Deno describes as `name`; undefined if there is none. */
export function responseSymbol(name: string): symbol | undefined {
  return SYMBOLS.find((s) => s.description === name);
}

const INNER = responseSymbol("response");
/** `new Response(string)` and `Response.json()` keep the body, and its Content-Type, out of the list. */
const LAZY_BODY = responseSymbol("lazy static body");
const LAZY_TYPE = responseSymbol("lazy static content type");

/**
 * The header list of `response` as Deno holds it (names as given, in insertion order), or
 * undefined when it is not at hand or does not hold every field yet.
 */
function headerList(response: Response): readonly (readonly [string, string])[] | undefined {
  if (INNER === undefined || LAZY_BODY === undefined || LAZY_TYPE === undefined) return undefined;
  const record = response as unknown as Record<symbol, unknown>;
  if (record[LAZY_BODY] != null || record[LAZY_TYPE] != null) return undefined;
  const list = (record[INNER] as { headerList?: unknown } | undefined)?.headerList;
  return Array.isArray(list) ? list : undefined;
}

/**
 * The fields of `response` as Deno.serve writes them: its header list as it is now, in insertion
 * order, a repeated name on lines of its own, names as given (compare them lower-cased). The live
 * list itself, not a copy: read it before anything can change it. When the list is not at hand
 * or not complete yet, what iterating `response.headers` gives (sorted, joined).
 */
export function wireFields(response: Response): readonly (readonly [string, string])[] {
  return headerList(response) ?? [...response.headers];
}

/**
 * The live header list of `response`, for appending fields that `response.headers.append` would
 * accept unchanged: names lower-case tokens, values without NUL, CR or LF and without
 * surrounding whitespace. Read `response.headers` first: that takes a Response off Deno.serve's
 * fast path for a body with no fields, which would send none of those appended here.
 * Undefined when the list is not at hand (Deno's internals moved): then use `append`.
 */
export function headerListOf(response: Response): [string, string][] | undefined {
  if (!LIST_IS_LIVE) return undefined;
  const inner = (response as unknown as Record<symbol, { headerList?: unknown } | undefined>)[
    INNER!
  ];
  const list = inner?.headerList;
  return Array.isArray(list) ? list as [string, string][] : undefined;
}

/** Whether a field pushed to the internal list shows in `response.headers`, checked once. */
const LIST_IS_LIVE = (() => {
  if (INNER === undefined) return false;
  try {
    const probe = new Response(new Uint8Array(1), { status: 200 });
    const headers = probe.headers;
    const list = (probe as unknown as Record<symbol, { headerList?: unknown }>)[INNER]?.headerList;
    if (!Array.isArray(list) || list.length !== 0) return false;
    list.push(["x-probe", "1"]);
    return headers.get("x-probe") === "1";
  } catch {
    return false;
  }
})();
