// Reading JSON from others (request bodies of every route, client and federation alike, and the
// `filter` query parameters): bounded nesting, and keys taken as data.
//
// - Depth: nesting past MAX_JSON_DEPTH (federation/protocol/json-nesting.ts) is refused with 400
//   M_BAD_JSON before parsing; walking it would overflow the stack (a 500 from one small request).
//   The federation HTTP client applies the same check to other servers' answers.
// - `__proto__`: JSON.parse makes a `__proto__` key an own data property, harmless as data, and
//   Matrix content may hold any key. It is kept: the danger is code that copies or walks objects
//   by keys others chose, and that code uses Maps, objects without prototypes
//   (federation/protocol/dictionary.ts) and own-property reads. zod's `z.record`/`z.object` drop a
//   `__proto__` key from what they return (they never assign it), so bodies whose content is opaque
//   data (event content, account data) use `jsonObject` below, which keeps the object as parsed.
import { z } from "zod";
import { CanonicalJsonError, parseStrictJson } from "../../federation/protocol/canonical-json.ts";
import { MAX_JSON_DEPTH, nestingExceeds } from "../../federation/protocol/json-nesting.ts";
import { MatrixError } from "./errors.ts";

export { MAX_JSON_DEPTH, nestingExceeds };

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

function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Any JSON object, returned exactly as parsed (unlike `z.record(z.string(), z.unknown())`, which
 * drops a `__proto__` key): for opaque content such as event content and account data, so what is
 * stored, hashed and signed is what the client sent.
 */
export const jsonObject = z.custom<Record<string, unknown>>(isJsonObject, { message: "must be a JSON object" });
