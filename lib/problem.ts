/**
 * @module
 * The shape every configuration check reports in, so that the file validator, the route checks
 * and `--check` print problems the same way.
 */

/** One thing wrong with a configuration, at a JSON path such as `backends[1].url`. */
export interface Problem {
  /** Where: `port`, `backends[1].url`; empty for the file as a whole. */
  path: string;
  /** What, naming the value: `"ftp://x" is not an absolute http(s) URL`. */
  message: string;
  /** 1-based line of the value in the file, when known. */
  line?: number;
  /** 1-based column (UTF-16 code units) of the value in the file, when known. */
  column?: number;
  /** A warning does not stop start-up or a reload (a service no route uses). @default false */
  warning?: boolean;
}
