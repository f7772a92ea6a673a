import { describe, expect, it } from "vitest";
import { globMatches } from "./glob.ts";
import { eventProperty, parsePropertyPath } from "./property-path.ts";

describe("globMatches, whole value", () => {
  // Spec "Conditions", event_match: key `content.topic`, pattern `lunc?*`.
  it("matches the spec's examples for `lunc?*`", () => {
    expect(globMatches("lunc?*", "Lunch plans", "whole")).toBe(true);
    expect(globMatches("lunc?*", "LUNCH", "whole")).toBe(true);
    expect(globMatches("lunc?*", " lunch", "whole")).toBe(false);
    expect(globMatches("lunc?*", "lunc", "whole")).toBe(false);
  });

  it("needs the entire value to match", () => {
    expect(globMatches("m.notice", "m.notice", "whole")).toBe(true);
    expect(globMatches("m.notice", "m.notices", "whole")).toBe(false);
    expect(globMatches("notice", "m.notice", "whole")).toBe(false);
  });

  it("treats only * and ? as special", () => {
    expect(globMatches("a.c", "abc", "whole")).toBe(false);
    expect(globMatches("[ab]", "[ab]", "whole")).toBe(true);
    expect(globMatches("(x)+", "(x)+", "whole")).toBe(true);
  });

  it("lets * match nothing and ? match exactly one character, even outside the BMP", () => {
    expect(globMatches("*", "", "whole")).toBe(true);
    expect(globMatches("a**b", "ab", "whole")).toBe(true);
    expect(globMatches("?", "", "whole")).toBe(false);
    expect(globMatches("a?b", "a🎉b", "whole")).toBe(true);
    expect(globMatches("a*b*c", "a\nxx\nb\nc", "whole")).toBe(true);
  });

  it("matches an empty pattern only against an empty value", () => {
    expect(globMatches("", "", "whole")).toBe(true);
    expect(globMatches("", "x", "whole")).toBe(false);
  });

  it("finishes quickly on a pattern that makes backtracking regexes explode", () => {
    const started = performance.now();
    expect(globMatches("*a*a*a*a*a*a*a*a*a*a*b", "a".repeat(5000), "whole")).toBe(false);
    expect(performance.now() - started).toBeLessThan(2000);
  });
});

describe("globMatches, words of content.body", () => {
  // Spec "Conditions": key `content.body`, pattern `ex*ple`.
  it("matches the spec's examples for `ex*ple`", () => {
    expect(globMatches("ex*ple", "An example event.", "words")).toBe(true);
    expect(globMatches("ex*ple", "exple", "words")).toBe(true);
    expect(globMatches("ex*ple", "An exciting triple-whammy", "words")).toBe(true);
  });

  it("does not match inside a word", () => {
    expect(globMatches("cake", "I like cake", "words")).toBe(true);
    expect(globMatches("cake", "I like cakes", "words")).toBe(false);
    expect(globMatches("cake", "pancake", "words")).toBe(false);
    expect(globMatches("cake", "cake_shop", "words")).toBe(false);
    expect(globMatches("cake", "cake2", "words")).toBe(false);
  });

  it("counts every character outside [A-Za-z0-9_] as a boundary", () => {
    expect(globMatches("cake", "cake-shop", "words")).toBe(true);
    expect(globMatches("cake", "(cake)", "words")).toBe(true);
    expect(globMatches("cake", "gâteau/cake/é", "words")).toBe(true);
  });

  it("lets a pattern that starts or ends with a non-word character match at that character", () => {
    expect(globMatches("@room", "Hello @room!", "words")).toBe(true);
    expect(globMatches("@room", "ping@room", "words")).toBe(true);
    expect(globMatches("@room", "@roomy", "words")).toBe(false);
  });

  it("is case-insensitive", () => {
    expect(globMatches("CaKe", "more CAKE please", "words")).toBe(true);
  });

  it("finds a later word when an earlier occurrence is inside a word", () => {
    expect(globMatches("bob", "bobby and bob", "words")).toBe(true);
    expect(globMatches("bo?", "bobby and bob", "words")).toBe(true);
  });

  it("never matches an empty pattern", () => {
    expect(globMatches("", "anything", "words")).toBe(false);
  });
});

describe("dot-separated property paths", () => {
  // Appendices "Dot-separated property paths".
  it("splits on dots and unescapes \\. and \\\\", () => {
    expect(parsePropertyPath("content.body")).toEqual(["content", "body"]);
    expect(parsePropertyPath("content.m\\.relates_to")).toEqual(["content", "m.relates_to"]);
    expect(parsePropertyPath("content.m\\\\foo")).toEqual(["content", "m\\foo"]);
  });

  it("leaves other escape sequences as they are", () => {
    expect(parsePropertyPath("content.\\x")).toEqual(["content", "\\x"]);
  });

  it("reads nested properties and nothing from prototypes or arrays", () => {
    const event = { content: { "m.relates_to": { rel_type: "m.replace" }, list: ["a"] } };
    expect(eventProperty(event, "content.m\\.relates_to.rel_type")).toBe("m.replace");
    expect(eventProperty(event, "content.m.relates_to.rel_type")).toBeUndefined();
    expect(eventProperty(event, "content.constructor")).toBeUndefined();
    expect(eventProperty(event, "content.list.0")).toBeUndefined();
    expect(eventProperty(event, "content.list")).toEqual(["a"]);
  });
});

describe("literal patterns (no * or ?), matched without the NFA", () => {
  const cases: Array<[pattern: string, value: string, whole: boolean, words: boolean]> = [
    ["alice", "hey alice, hi", false, true],
    ["alice", "malice", false, false],
    ["alice", "ALICE", true, true],
    ["@room", "ping@room", false, true],
    ["@room", "hey,@room", false, true],
    ["room", "@room", false, true],
    ["a b", "x a b y", false, true],
    ["bob", "bobby bob", false, true],
    ["bob", "bobby", false, false],
    ["é", "café é", false, true],
    ["m.room.message", "m.room.message", true, true],
    ["m.room.message", "m.room.messages", false, false],
    ["", "anything", false, false],
    ["", "", true, false],
    ["x", "", false, false],
  ];
  for (const [pattern, value, whole, words] of cases) {
    it(`${JSON.stringify(pattern)} against ${JSON.stringify(value)}`, () => {
      expect(globMatches(pattern, value, "whole")).toBe(whole);
      expect(globMatches(pattern, value, "words")).toBe(words);
    });
  }
});
