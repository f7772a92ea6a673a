// Canonical JSON, as the appendix defines it:
// https://spec.matrix.org/latest/appendices/#canonical-json
//
// "the shortest UTF-8 JSON encoding with dictionary keys lexicographically sorted by Unicode
// codepoint. Numbers in the JSON must be integers in the range [-(2**53)+1, (2**53)-1],
// represented without exponents or decimal places, and negative zero -0 MUST NOT appear."
//
// The string returned here is a JavaScript string; its UTF-8 encoding is the canonical byte form
// (what gets hashed and signed).

export class CanonicalJsonError extends Error {
  override name = "CanonicalJsonError";
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER; // 2**53 - 1

// In unicode mode a surrogate class matches only surrogates that are not part of a pair.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/**
 * Compares two strings by Unicode code point. Array.prototype.sort compares UTF-16 code units,
 * which puts an astral character (encoded as a surrogate pair, 0xD800–0xDFFF) *before* U+E000–U+FFFF;
 * by code point it comes after.
 */
export function compareByCodePoint(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    // Only when both units are in the surrogate or private-use/high BMP range does code-unit order
    // disagree with code-point order. Moving surrogates above 0xFFFF restores code-point order.
    if (x >= 0xd800 && y >= 0xd800) {
      x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    }
    return x - y;
  }
  return a.length - b.length;
}

function encodeString(s: string): string {
  if (LONE_SURROGATE.test(s)) {
    throw new CanonicalJsonError("string contains an unpaired surrogate, which UTF-8 cannot encode");
  }
  // For well-formed strings JSON.stringify escapes exactly what the canonical grammar requires:
  // `"`, `\`, the short forms \b \t \n \f \r, and \u00XX (lowercase hex) for the other control
  // characters; everything else (including `/`, U+007F, U+2028) is emitted raw.
  return JSON.stringify(s);
}

/**
 * Room versions 1–5: "Servers MUST NOT strictly enforce the JSON format" (v1-canonical-json), so
 * their events may hold floats and integers beyond ±(2^53-1). Encoded the shortest way JSON can
 * (JavaScript's number form, which for finite numbers is Python's `repr` that Synapse writes,
 * except where Python keeps a float like 1e16 that JSON.parse made an integer).
 */
function encodeLenientNumber(n: number): string {
  if (!Number.isFinite(n)) throw new CanonicalJsonError(`${n} is not a JSON number`);
  return Object.is(n, -0) ? "0" : String(n);
}

function encodeNumber(n: number): string {
  if (!Number.isInteger(n)) {
    throw new CanonicalJsonError(`${n} is not an integer; canonical JSON has no floats`);
  }
  if (n > MAX_SAFE || n < -MAX_SAFE) {
    throw new CanonicalJsonError(`${n} is outside the canonical JSON integer range ±(2^53-1)`);
  }
  // String(-0) is "0"; integers within ±2^53 never print with an exponent.
  return String(n);
}

function isPlainObject(value: object): boolean {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function encodeValue(value: unknown, ancestors: Set<object>, strict = true): string {
  switch (typeof value) {
    case "string":
      return encodeString(value);
    case "number":
      return strict ? encodeNumber(value) : encodeLenientNumber(value);
    case "boolean":
      return value ? "true" : "false";
    case "object": {
      if (value === null) return "null";
      if (ancestors.has(value)) throw new CanonicalJsonError("value contains a cycle");
      ancestors.add(value);
      let out: string;
      if (Array.isArray(value)) {
        const parts: string[] = [];
        for (const item of value) {
          if (item === undefined) throw new CanonicalJsonError("arrays cannot hold undefined");
          parts.push(encodeValue(item, ancestors, strict));
        }
        out = `[${parts.join(",")}]`;
      } else if (isPlainObject(value)) {
        const record = value as Record<string, unknown>;
        const keys = Object.keys(record).sort(compareByCodePoint);
        const parts: string[] = [];
        for (const key of keys) {
          const v = record[key];
          // An absent optional field in a TypeScript object literal; JSON.stringify drops it too,
          // so what we sign is what goes on the wire.
          if (v === undefined) continue;
          parts.push(`${encodeString(key)}:${encodeValue(v, ancestors, strict)}`);
        }
        out = `{${parts.join(",")}}`;
      } else {
        throw new CanonicalJsonError(`${Object.prototype.toString.call(value)} is not a JSON value`);
      }
      ancestors.delete(value);
      return out;
    }
    default:
      throw new CanonicalJsonError(`${typeof value} is not a JSON value`);
  }
}

export interface CanonicalJsonOptions {
  /** False for the events of room versions 1–5: numbers need not be integers in range. Default true. */
  strict?: boolean;
}

/** Encodes a JSON value as canonical JSON. Throws CanonicalJsonError for anything it cannot encode. */
export function canonicalJson(value: unknown, options?: CanonicalJsonOptions): string {
  return encodeValue(value, new Set(), options?.strict ?? true);
}

/** The canonical JSON of a value as UTF-8 bytes: what is hashed and signed. */
export function canonicalJsonBytes(value: unknown, options?: CanonicalJsonOptions): Uint8Array {
  return Buffer.from(canonicalJson(value, options), "utf8");
}

/**
 * Parses JSON and refuses what canonical JSON cannot hold (room versions 6+ and request bodies):
 * numbers that are not integers (`1.5`, `1e-3`; `1e10` and `1.0` are integers, written `10000000000`
 * and `1`), integers outside ±(2^53-1), and strings with unpaired surrogates. JSON.parse already
 * refuses NaN and Infinity.
 */
export function parseStrictJson(text: string): unknown {
  checkNumberTokens(text);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CanonicalJsonError(`invalid JSON: ${(err as Error).message}`);
  }
  checkStrings(value);
  return value;
}

// Scans the raw text for number tokens (outside strings), so that `1.0` and `1e3` are refused even
// though JSON.parse turns them into integers.
function checkNumberTokens(text: string): void {
  const len = text.length;
  let i = 0;
  while (i < len) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      i++;
      while (i < len) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) i += 2;
        else if (d === 0x22) break;
        else i++;
      }
      i++;
    } else if (c === 0x2d /* - */ || (c >= 0x30 && c <= 0x39)) {
      const start = i;
      i++;
      while (i < len) {
        const d = text.charCodeAt(i);
        if ((d >= 0x30 && d <= 0x39) || d === 0x2e || d === 0x65 || d === 0x45 || d === 0x2b || d === 0x2d) i++;
        else break;
      }
      const token = text.slice(start, i);
      const n = Number(token);
      // The spec's own example takes `{"a": -0, "b": 1e10}` to `{"a":0,"b":10000000000}`: what
      // must be an integer is the value; exponents and decimal places are only never written.
      if (/[.eE]/.test(token) && !Number.isNaN(n) && !Number.isInteger(n)) {
        throw new CanonicalJsonError(`number ${token} is not an integer; floats are not allowed`);
      }
      // A malformed token (a lone "-") is left for JSON.parse to report.
      if (!Number.isNaN(n) && (n > MAX_SAFE || n < -MAX_SAFE)) {
        throw new CanonicalJsonError(`integer ${token} is outside the range ±(2^53-1)`);
      }
    } else {
      i++;
    }
  }
}

function checkStrings(value: unknown): void {
  if (typeof value === "string") {
    if (LONE_SURROGATE.test(value)) throw new CanonicalJsonError("string contains an unpaired surrogate");
  } else if (Array.isArray(value)) {
    for (const item of value) checkStrings(item);
  } else if (typeof value === "object" && value !== null) {
    for (const [k, v] of Object.entries(value)) {
      if (LONE_SURROGATE.test(k)) throw new CanonicalJsonError("key contains an unpaired surrogate");
      checkStrings(v);
    }
  }
}
