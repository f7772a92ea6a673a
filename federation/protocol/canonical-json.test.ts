import { describe, expect, it } from "vitest";
import { CanonicalJsonError, canonicalJson, compareByCodePoint, parseStrictJson } from "./canonical-json.ts";

// The examples of https://spec.matrix.org/latest/appendices/#examples (canonical JSON).
describe("canonicalJson: the appendix examples", () => {
  const examples: Array<[string, string]> = [
    [`{}`, `{}`],
    [`{"one": 1, "two": "Two"}`, `{"one":1,"two":"Two"}`],
    [`{"b": "2", "a": "1"}`, `{"a":"1","b":"2"}`],
    [`{"b":"2","a":"1"}`, `{"a":"1","b":"2"}`],
    [
      `{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {"display_name": "John Doe",
        "three_pids": [{"medium": "email", "address": "john.doe@example.org"},
                       {"medium": "msisdn", "address": "123456789"}]}}}`,
      `{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}`,
    ],
    [`{"a": "日本語"}`, `{"a":"日本語"}`],
    [`{"本": 2, "日": 1}`, `{"日":1,"本":2}`],
    [`{"a": "\\u65E5"}`, `{"a":"日"}`],
    [`{"a": null}`, `{"a":null}`],
    // `{"a": -0, "b": 1e10}` → `{"a":0,"b":10000000000}`
    [`{"a": -0, "b": 1e10}`, `{"a":0,"b":10000000000}`],
  ];
  for (const [input, expected] of examples) {
    it(`encodes ${input.replace(/\s+/g, " ").slice(0, 60)}`, () => {
      expect(canonicalJson(JSON.parse(input))).toBe(expected);
    });
  }
});

describe("canonicalJson: key order is by Unicode code point", () => {
  it("puts U+E000 before an astral key, unlike Array.prototype.sort", () => {
    const astral = "\u{1F600}"; // UTF-16: D83D DE00, sorts before U+E000 by code unit
    const privateUse = "\uE000";
    expect([astral, privateUse].sort()).toEqual([astral, privateUse]); // the trap
    expect(canonicalJson({ [astral]: 1, [privateUse]: 2 })).toBe(`{"\uE000":2,"\u{1F600}":1}`);
  });

  it("orders a prefix before its extensions and ASCII by byte", () => {
    expect(canonicalJson({ ab: 1, a: 2, B: 3, "": 4 })).toBe(`{"":4,"B":3,"a":2,"ab":1}`);
  });

  it("agrees with UTF-8 byte order", () => {
    const keys = ["\uFFFF", "\u{10000}", "\uE000", "\uD7FF", "z", "\u{10FFFF}", "é"];
    const byBytes = [...keys].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    expect([...keys].sort(compareByCodePoint)).toEqual(byBytes);
  });
});

describe("canonicalJson: string escapes follow the appendix grammar", () => {
  it("escapes quote, backslash and the short control forms", () => {
    expect(canonicalJson('"\\\b\f\n\r\t')).toBe(String.raw`"\"\\\b\f\n\r\t"`);
  });
  it("escapes other control characters as lowercase \\u00XX", () => {
    expect(canonicalJson("\u0000\u001f\u000b")).toBe(String.raw`"\u0000\u001f\u000b"`);
  });
  it("does not escape '/', DEL, U+2028 or non-ASCII", () => {
    expect(canonicalJson("/\u007f\u2028é\u{1F600}")).toBe(`"/\u007f\u2028é\u{1F600}"`);
  });
});

describe("canonicalJson: refuses what canonical JSON cannot hold", () => {
  it.each([
    ["a float", { a: 1.5 }],
    ["2^53", { a: 2 ** 53 }],
    ["-(2^53)", { a: -(2 ** 53) }],
    ["NaN", { a: Number.NaN }],
    ["Infinity", [Number.POSITIVE_INFINITY]],
    ["a bigint", { a: 1n }],
    ["a Date", { a: new Date(0) }],
    ["a Map", new Map()],
    ["undefined", undefined],
    ["undefined in an array", [undefined]],
    ["a function", { f: () => 1 }],
    ["a lone surrogate", "\uD800"],
    ["a lone surrogate in a key", { "\uDC00": 1 }],
  ])("refuses %s", (_name, value) => {
    expect(() => canonicalJson(value)).toThrow(CanonicalJsonError);
  });

  it("accepts the integer bounds ±(2^53-1)", () => {
    expect(canonicalJson([2 ** 53 - 1, -(2 ** 53 - 1)])).toBe("[9007199254740991,-9007199254740991]");
  });

  it("refuses a cycle", () => {
    const a: Record<string, unknown> = {};
    a.self = a;
    expect(() => canonicalJson(a)).toThrow(CanonicalJsonError);
  });

  it("allows the same object twice (not a cycle)", () => {
    const shared = { x: 1 };
    expect(canonicalJson({ a: shared, b: shared })).toBe(`{"a":{"x":1},"b":{"x":1}}`);
  });

  it("leaves out object members whose value is undefined, as JSON.stringify does", () => {
    expect(canonicalJson({ a: 1, b: undefined })).toBe(`{"a":1}`);
  });
});

describe("parseStrictJson", () => {
  it("parses integers, strings and nesting", () => {
    expect(parseStrictJson(`{"a":[1,-2,"x.5e3"],"b":{"c":null}}`)).toEqual({ a: [1, -2, "x.5e3"], b: { c: null } });
  });
  it.each([["1.5"], ["1e-3"], ["-2E-1"], ['{"a":[0.1]}']])("refuses the float %s", (text) => {
    expect(() => parseStrictJson(text)).toThrow(CanonicalJsonError);
  });
  it("takes integers written with an exponent, a decimal point or as -0 (the spec's example)", () => {
    const value = parseStrictJson(`{"a": -0, "b": 1e10, "c": 1.0, "d": 25E1}`);
    expect(canonicalJson(value)).toBe(`{"a":0,"b":10000000000,"c":1,"d":250}`);
    expect(() => parseStrictJson("1e16")).toThrow(CanonicalJsonError);
  });
  it.each([["9007199254740992"], ["-9007199254740992"], ["123456789012345678901234567890"]])(
    "refuses the out-of-range integer %s",
    (text) => {
      expect(() => parseStrictJson(text)).toThrow(CanonicalJsonError);
    },
  );
  it("refuses NaN, Infinity and malformed JSON", () => {
    for (const text of ["NaN", "Infinity", "{", "{'a':1}", "-"]) {
      expect(() => parseStrictJson(text)).toThrow(CanonicalJsonError);
    }
  });
  it("refuses an escaped lone surrogate", () => {
    expect(() => parseStrictJson(String.raw`"\ud800"`)).toThrow(CanonicalJsonError);
  });
  it("does not mistake digits inside strings (with escaped quotes) for numbers", () => {
    expect(parseStrictJson(String.raw`["a\"1.5", 2]`)).toEqual(['a"1.5', 2]);
  });
});
