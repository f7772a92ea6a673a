import { describe, expect, it } from "vitest";
import { z } from "zod";
import { MatrixError } from "./errors.ts";
import { jsonObject, MAX_JSON_DEPTH, nestingExceeds, parseJsonFromOthers } from "./safe-json.ts";

describe("nestingExceeds", () => {
  it("counts arrays and objects together", () => {
    expect(nestingExceeds('[{"a":[1]}]', 3)).toBe(false);
    expect(nestingExceeds('[{"a":[[1]]}]', 3)).toBe(true);
  });

  it("skips brackets inside strings, escaped quotes and escaped backslashes included", () => {
    expect(nestingExceeds('["[[[[", "\\"[[[[", "\\\\", "{{{{"]', 1)).toBe(false);
    expect(nestingExceeds('["\\\\"]', 1)).toBe(false);
    expect(nestingExceeds('["\\\\",[1]]', 1)).toBe(true);
  });

  it("checks a million levels without overflowing the stack", () => {
    expect(nestingExceeds("[".repeat(1_000_000), MAX_JSON_DEPTH)).toBe(true);
  });
});

describe("parseJsonFromOthers", () => {
  const errcodeOf = (text: string) => {
    try {
      parseJsonFromOthers(text);
      return undefined;
    } catch (err) {
      return (err as MatrixError).errcode;
    }
  };

  it("answers M_NOT_JSON for text that is not JSON and M_BAD_JSON past the depth limit", () => {
    expect(errcodeOf("{")).toBe("M_NOT_JSON");
    expect(errcodeOf("[".repeat(MAX_JSON_DEPTH + 1) + "]".repeat(MAX_JSON_DEPTH + 1))).toBe("M_BAD_JSON");
    expect(errcodeOf("[".repeat(MAX_JSON_DEPTH) + "]".repeat(MAX_JSON_DEPTH))).toBeUndefined();
  });

  it("keeps a __proto__ key as an own data property, never as the prototype", () => {
    const value = parseJsonFromOthers('{"__proto__":{"zzz":1}}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(value)).toBe(Object.prototype);
    expect(Object.hasOwn(value, "__proto__")).toBe(true);
    expect((value as { zzz?: unknown }).zzz).toBeUndefined();
  });
});

describe("jsonObject", () => {
  it("returns content exactly as parsed, where z.record drops a __proto__ key", () => {
    const value = JSON.parse('{"__proto__":{"a":1},"b":2}');
    expect(Object.keys(z.record(z.string(), z.unknown()).parse(value))).toEqual(["b"]);
    expect(jsonObject.parse(value)).toBe(value);
    expect(jsonObject.safeParse([]).success).toBe(false);
    expect(jsonObject.safeParse(null).success).toBe(false);
  });
});
