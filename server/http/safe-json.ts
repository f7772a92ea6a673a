// Reading JSON from others (request bodies, the `filter` query parameter; bodies from other servers
// later): bounded nesting, and keys taken as data.
//
// - Depth: everything that walks JSON recursively (schemas, canonical JSON, redaction) would
//   overflow the stack on text nested a few thousand levels deep, a 500 from one small request.
//   The text is scanned before it is parsed, in a loop (the check cannot overflow the stack
//   itself), and anything nested deeper than MAX_JSON_DEPTH is refused with 400 M_BAD_JSON. Events
//   need far less: the spec's PDU size limit and canonical JSON make 100 levels plenty.
// - `__proto__`: JSON.parse makes a `__proto__` key an own data property, harmless as data, and
//   Matrix content may hold any key. It is kept: the danger is code that copies or walks objects
//   by keys others chose, and that code uses Maps, objects without prototypes
//   (federation/protocol/dictionary.ts) and own-property reads. zod's `z.record`/`z.object` drop a
//   `__proto__` key from what they return (they never assign it), so bodies whose content is opaque
//   data (event content, account data) use `jsonObject` below, which keeps the object as parsed.
import { z } from "zod";
import { CanonicalJsonError, parseStrictJson } from "../../federation/protocol/canonical-json.ts";
import { MatrixError } from "./errors.ts";

/** The deepest nesting of arrays and objects accepted in JSON from others. */
export const MAX_JSON_DEPTH = 100;

export interface ReadJsonOptions {
  /** Refuse what canonical JSON cannot hold (floats, integers beyond ±(2^53-1), lone surrogates). */
  strict?: boolean;
  /** For error messages: "filter", "body". */
  what?: string;
  maxDepth?: number;
}

/**
 * Parses JSON text from others: not JSON → 400 M_NOT_JSON; nested deeper than `maxDepth`, or (strict)
 * not canonical-JSON-able → 400 M_BAD_JSON.
 */
export function parseJsonFromOthers(text: string, options: ReadJsonOptions = {}): unknown {
  const { strict = false, what = "Content", maxDepth = MAX_JSON_DEPTH } = options;
  if (nestingExceeds(text, maxDepth)) {
    throw new MatrixError(400, "M_BAD_JSON", `${what}: JSON nested deeper than ${maxDepth} levels`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new MatrixError(400, "M_NOT_JSON", `${what} not JSON.`);
  }
  if (strict) {
    try {
      parseStrictJson(text);
    } catch (err) {
      if (err instanceof CanonicalJsonError) throw new MatrixError(400, "M_BAD_JSON", err.message);
      throw err;
    }
  }
  return value;
}

/**
 * Whether arrays and objects in `text` nest deeper than `max` (brackets inside strings do not
 * count). Iterative, and linear in the text: strings are skipped with indexOf. Malformed text is
 * left for JSON.parse to refuse.
 */
export function nestingExceeds(text: string, max: number): boolean {
  let depth = 0;
  const len = text.length;
  for (let i = 0; i < len; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let end = i;
      for (;;) {
        end = text.indexOf('"', end + 1);
        if (end < 0) return false;
        let backslashes = 0;
        for (let k = end - 1; text.charCodeAt(k) === 0x5c /* \ */; k--) backslashes++;
        if (backslashes % 2 === 0) break;
      }
      i = end;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth > max) return true;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    }
  }
  return false;
}

function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Any JSON object, returned exactly as parsed (unlike `z.record(z.string(), z.unknown())`, which
 * drops a `__proto__` key): for opaque content such as event content and account data, so what is
 * stored, hashed and signed is what the client sent.
 */
export const jsonObject = z.custom<Record<string, unknown>>(isJsonObject, { message: "must be a JSON object" });
