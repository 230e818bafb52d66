/**
 * @module
 * JSON with comments (JSONC, as VS Code's settings): `//` and `/* *\/` comments and trailing
 * commas, otherwise strict JSON. The parser can record where each value is, by JSON path
 * (`backends[1].url`), so a validator can report `file:line:column` for a bad value.
 */

/** A JSONC syntax error; the message starts with `line:column:`. */
export class JsoncSyntaxError extends SyntaxError {
  override name = "JsoncSyntaxError";

  constructor(
    /** The message without the position. */
    readonly reason: string,
    /** 1-based line. */
    readonly line: number,
    /** 1-based column, in UTF-16 code units. */
    readonly column: number,
  ) {
    super(`${line}:${column}: ${reason}`);
  }
}

/** A position in the text, 1-based. */
export interface Location {
  line: number;
  column: number;
}

/**
 * The JSON path of `key` inside `parent`: `a.b`, `a[2]`, or `a["odd key"]` for keys that are not
 * words (dashes count as word characters so that a kebab-case typo reads as written).
 */
export function childPath(parent: string, key: string | number): string {
  if (typeof key === "number") return `${parent}[${key}]`;
  if (/^[A-Za-z_$][\w$-]*$/.test(key)) return parent ? `${parent}.${key}` : key;
  return `${parent}[${JSON.stringify(key)}]`;
}

/** Options for {@linkcode parseJsonc}. */
export interface ParseJsoncOptions {
  /**
   * When given, receives where every value is, by JSON path (the root is `""`): the key of an
   * object member, the start of an array element. @default undefined
   */
  locations?: Map<string, Location>;
}

/**
 * Parses JSON extended with `//` and `/* *\/` comments and trailing commas in objects and
 * arrays (as VS Code's `jsonc`). Everything else is strict JSON: double-quoted strings and keys,
 * no `NaN`, no leading zeros. A leading byte-order mark is skipped.
 *
 * Duplicate keys are refused: in a configuration file one of the two is always a mistake, and
 * which one wins would be invisible. A key `__proto__` becomes an ordinary own property.
 *
 * @throws {JsoncSyntaxError} at the first syntax error, with its line and column.
 */
export function parseJsonc(text: string, options: ParseJsoncOptions = {}): unknown {
  return new JsoncParser(text, options.locations).parseDocument();
}

/** Nesting deeper than this is refused rather than risking the call stack. */
const MAX_DEPTH = 500;
const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
const ESCAPES: Record<string, string> = {
  '"': '"',
  "\\": "\\",
  "/": "/",
  b: "\b",
  f: "\f",
  n: "\n",
  r: "\r",
  t: "\t",
};

class JsoncParser {
  #pos = 0;
  #lineStarts?: number[];

  constructor(readonly text: string, readonly locations?: Map<string, Location>) {}

  parseDocument(): unknown {
    if (this.text.charCodeAt(0) === 0xfeff) this.#pos = 1;
    this.#skip();
    if (this.#pos >= this.text.length) this.#fail("expected a value, found the end of the text");
    const value = this.#value("", 0);
    this.#skip();
    if (this.#pos < this.text.length) this.#fail(`unexpected ${this.#found()} after the value`);
    return value;
  }

  /** Parses the value at the current position; `start` is where its location points. */
  #value(path: string, depth: number, start = this.#pos): unknown {
    if (depth > MAX_DEPTH) this.#fail(`nested more than ${MAX_DEPTH} levels deep`);
    this.locations?.set(path, this.location(start));
    const c = this.text[this.#pos];
    if (c === "{") return this.#object(path, depth);
    if (c === "[") return this.#array(path, depth);
    if (c === '"') return this.#string();
    if (c === "-" || (c >= "0" && c <= "9")) return this.#number();
    for (const [word, value] of [["true", true], ["false", false], ["null", null]] as const) {
      if (this.text.startsWith(word, this.#pos) && !this.#isWordChar(this.#pos + word.length)) {
        this.#pos += word.length;
        return value;
      }
    }
    if (c === "'") this.#fail("strings must be in double quotes");
    return this.#fail(`expected a value, found ${this.#found()}`);
  }

  #object(path: string, depth: number): Record<string, unknown> {
    const result: Record<string, unknown> = {};
    this.#pos++; // {
    this.#skip();
    while (this.text[this.#pos] !== "}") {
      if (this.text[this.#pos] !== '"') {
        this.#fail(`expected a double-quoted key or "}", found ${this.#found()}`);
      }
      const keyStart = this.#pos;
      const key = this.#string();
      if (Object.hasOwn(result, key)) this.#fail(`duplicate key ${JSON.stringify(key)}`, keyStart);
      this.#skip();
      if (this.text[this.#pos] !== ":") {
        this.#fail(`expected ":" after the key, found ${this.#found()}`);
      }
      this.#pos++;
      this.#skip();
      // defineProperty, not assignment: a "__proto__" key must not replace the prototype.
      Object.defineProperty(result, key, {
        // A member's location is its key, where an editor would put the cursor.
        value: this.#value(childPath(path, key), depth + 1, keyStart),
        enumerable: true,
        writable: true,
        configurable: true,
      });
      this.#skip();
      if (this.text[this.#pos] === ",") {
        this.#pos++;
        this.#skip();
      } else if (this.text[this.#pos] !== "}") {
        this.#fail(`expected "," or "}" after a member, found ${this.#found()}`);
      }
    }
    this.#pos++; // }
    return result;
  }

  #array(path: string, depth: number): unknown[] {
    const result: unknown[] = [];
    this.#pos++; // [
    this.#skip();
    while (this.text[this.#pos] !== "]") {
      if (this.text[this.#pos] === ",") this.#fail('expected a value or "]", found ","');
      if (this.#pos >= this.text.length) {
        this.#fail('expected a value or "]", found the end of the text');
      }
      result.push(this.#value(childPath(path, result.length), depth + 1));
      this.#skip();
      if (this.text[this.#pos] === ",") {
        this.#pos++;
        this.#skip();
      } else if (this.text[this.#pos] !== "]") {
        this.#fail(`expected "," or "]" after an element, found ${this.#found()}`);
      }
    }
    this.#pos++; // ]
    return result;
  }

  #string(): string {
    const start = this.#pos;
    this.#pos++; // opening quote
    let result = "";
    let chunkStart = this.#pos;
    while (true) {
      if (this.#pos >= this.text.length) this.#fail("unterminated string", start);
      const code = this.text.charCodeAt(this.#pos);
      if (code === 0x22) break; // "
      if (code < 0x20) this.#fail("control character in a string (escape it, e.g. \\n)");
      if (code !== 0x5c) { // not a backslash
        this.#pos++;
        continue;
      }
      result += this.text.slice(chunkStart, this.#pos);
      const escape = this.text[this.#pos + 1];
      if (escape === "u") {
        const hex = this.text.slice(this.#pos + 2, this.#pos + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.#fail("\\u must be followed by four hex digits");
        result += String.fromCharCode(parseInt(hex, 16));
        this.#pos += 6;
      } else if (escape !== undefined && Object.hasOwn(ESCAPES, escape)) {
        result += ESCAPES[escape];
        this.#pos += 2;
      } else {
        this.#fail(`invalid escape \\${escape ?? ""} in a string`);
      }
      chunkStart = this.#pos;
    }
    result += this.text.slice(chunkStart, this.#pos);
    this.#pos++; // closing quote
    return result;
  }

  #number(): number {
    NUMBER.lastIndex = this.#pos;
    const match = NUMBER.exec(this.text);
    if (!match || this.#isWordChar(this.#pos + match[0].length)) {
      const word = /^[-+.\w]*/.exec(this.text.slice(this.#pos))![0];
      this.#fail(`invalid number ${JSON.stringify(word)}`);
    }
    this.#pos += match[0].length;
    return Number(match[0]);
  }

  /** Skips whitespace and comments. */
  #skip(): void {
    const text = this.text;
    while (this.#pos < text.length) {
      const c = text[this.#pos];
      if (c === " " || c === "\t" || c === "\n" || c === "\r") {
        this.#pos++;
      } else if (c === "/" && text[this.#pos + 1] === "/") {
        while (this.#pos < text.length && text[this.#pos] !== "\n" && text[this.#pos] !== "\r") {
          this.#pos++;
        }
      } else if (c === "/" && text[this.#pos + 1] === "*") {
        const end = text.indexOf("*/", this.#pos + 2);
        if (end === -1) this.#fail("unterminated /* comment");
        this.#pos = end + 2;
      } else {
        return;
      }
    }
  }

  #isWordChar(index: number): boolean {
    return /[\w.+-]/.test(this.text[index] ?? "");
  }

  #found(): string {
    if (this.#pos >= this.text.length) return "the end of the text";
    return JSON.stringify(String.fromCodePoint(this.text.codePointAt(this.#pos)!));
  }

  #fail(reason: string, at = this.#pos): never {
    const { line, column } = this.location(at);
    throw new JsoncSyntaxError(reason, line, column);
  }

  /** Line and column of an offset; CRLF, LF and lone CR each end a line. */
  location(offset: number): Location {
    if (!this.#lineStarts) {
      this.#lineStarts = [0];
      for (const match of this.text.matchAll(/\r\n?|\n/g)) {
        this.#lineStarts.push(match.index + match[0].length);
      }
    }
    const starts = this.#lineStarts;
    let low = 0;
    let high = starts.length - 1;
    while (low < high) {
      const mid = (low + high + 1) >> 1;
      if (starts[mid] <= offset) low = mid;
      else high = mid - 1;
    }
    return { line: low + 1, column: offset - starts[low] + 1 };
  }
}
