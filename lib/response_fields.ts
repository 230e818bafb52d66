/**
 * @module
 * A `Response`'s header fields read from Deno's own header list, for the native front end
 * (lib/http1_response.ts): the same fields, in the same order, as iterating `response.headers`
 * gives (names lower-cased and sorted, repeated fields joined with ", " except Set-Cookie, as
 * the Fetch standard's "sort and combine"), without the iterator Deno builds per response.
 * The list is the live one: whatever changed the headers after the Response was built is in it.
 * When Deno's internals are not where this module looks, or the Response keeps its fields in a
 * lazy form that the list does not show yet, it iterates `response.headers` instead.
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

/** The fields of `response`, as `[...response.headers]` gives them. */
export function responseFields(response: Response): [string, string][] {
  const list = headerList(response);
  if (list === undefined) return [...response.headers];
  const fields: [string, string][] = [];
  for (let i = 0; i < list.length; i++) {
    const name = list[i][0].toLowerCase();
    const value = list[i][1];
    // Insertion sort, stable: lists are short, and mostly in order.
    let at = fields.length;
    while (at > 0 && fields[at - 1][0] > name) at--;
    if (at > 0 && fields[at - 1][0] === name && name !== "set-cookie") {
      fields[at - 1][1] += `, ${value}`;
    } else fields.splice(at, 0, [name, value]);
  }
  return fields;
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
