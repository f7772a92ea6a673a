import { describe, expect, it } from "vitest";
import { globMatches, serverAllowedByAcl } from "./server-acl.ts";

// The spec's example m.room.server_acl (data/event-schemas/examples/m.room.server_acl.yaml).
const specExample = {
  allow: ["*"],
  allow_ip_literals: false,
  deny: ["*.evil.com", "evil.com"],
};

describe("serverAllowedByAcl: the spec's order of checks", () => {
  it("allows every server when the room has no ACL event (1)", () => {
    expect(serverAllowedByAcl(undefined, "evil.com")).toBe(true);
    expect(serverAllowedByAcl(null, "1.2.3.4")).toBe(true);
  });

  it("applies the spec's example: deny evil.com and its subdomains, and IP literals, allow the rest", () => {
    expect(serverAllowedByAcl(specExample, "evil.com")).toBe(false);
    expect(serverAllowedByAcl(specExample, "matrix.evil.com")).toBe(false);
    expect(serverAllowedByAcl(specExample, "a.b.evil.com")).toBe(false);
    expect(serverAllowedByAcl(specExample, "1.2.3.4")).toBe(false);
    expect(serverAllowedByAcl(specExample, "[::1]")).toBe(false);
    expect(serverAllowedByAcl(specExample, "good.org")).toBe(true);
    // Not a subdomain: "*.evil.com" needs the dot.
    expect(serverAllowedByAcl(specExample, "notevil.com")).toBe(true);
  });

  it("lets deny win over allow (3 before 4)", () => {
    expect(serverAllowedByAcl({ allow: ["evil.com"], deny: ["evil.com"] }, "evil.com")).toBe(false);
  });

  it("denies a server no allow entry matches (5)", () => {
    expect(serverAllowedByAcl({ allow: ["*.friends.org"] }, "stranger.org")).toBe(false);
    expect(serverAllowedByAcl({ allow: ["*.friends.org"] }, "hs.friends.org")).toBe(true);
  });

  it("denies every server when allow is empty or missing, the room's own included", () => {
    expect(serverAllowedByAcl({ allow: [] }, "example.org")).toBe(false);
    expect(serverAllowedByAcl({ deny: [] }, "example.org")).toBe(false);
    expect(serverAllowedByAcl({}, "example.org")).toBe(false);
  });
});

describe("serverAllowedByAcl: IP literals (2)", () => {
  it("allows IP literals by default, and when allow_ip_literals is true", () => {
    expect(serverAllowedByAcl({ allow: ["*"] }, "1.2.3.4")).toBe(true);
    expect(serverAllowedByAcl({ allow: ["*"] }, "[2001:db8::1]:8448")).toBe(true);
    expect(serverAllowedByAcl({ allow: ["*"], allow_ip_literals: true }, "1.2.3.4:8448")).toBe(true);
  });

  it("denies IPv4 and IPv6 literals, with or without a port, when allow_ip_literals is false", () => {
    const acl = { allow: ["*"], allow_ip_literals: false };
    for (const name of ["1.2.3.4", "1.2.3.4:8448", "[::1]", "[::1]:8448", "[2001:DB8::1]", "[::ffff:1.2.3.4]:443"]) {
      expect(serverAllowedByAcl(acl, name), name).toBe(false);
    }
    // Even when an allow entry names it: the IP check comes first.
    expect(serverAllowedByAcl({ allow: ["1.2.3.4"], allow_ip_literals: false }, "1.2.3.4")).toBe(false);
  });

  it("counts any host of digits and dots as an IPv4 literal, so shorthands cannot slip through", () => {
    const acl = { allow: ["*"], allow_ip_literals: false };
    expect(serverAllowedByAcl(acl, "127.1")).toBe(false);
    expect(serverAllowedByAcl(acl, "1.2.3.999")).toBe(false);
    expect(serverAllowedByAcl(acl, "2130706433:8448")).toBe(false);
    // A name with a numeric label that is not all digits is a DNS name.
    expect(serverAllowedByAcl(acl, "1.2.3.4.example.org")).toBe(true);
    expect(serverAllowedByAcl(acl, "123host.org")).toBe(true);
  });

  it("counts a bare IPv6 address (no valid server name) as an IP literal", () => {
    expect(serverAllowedByAcl({ allow: ["*"], allow_ip_literals: false }, "::1")).toBe(false);
  });

  it("reads an allow_ip_literals that is not a boolean as true, as the spec says", () => {
    for (const value of ["false", 0, null, [], {}]) {
      expect(serverAllowedByAcl({ allow: ["*"], allow_ip_literals: value }, "1.2.3.4"), JSON.stringify(value)).toBe(true);
    }
  });

  it("matches IPv6 literals by their bracketed form, ignoring the port and the case of hex digits", () => {
    const acl = { allow: ["*"], deny: ["[2001:db8::*]"] };
    expect(serverAllowedByAcl(acl, "[2001:db8::1]")).toBe(false);
    expect(serverAllowedByAcl(acl, "[2001:DB8::abcd]:8448")).toBe(false);
    expect(serverAllowedByAcl(acl, "[2001:db9::1]")).toBe(true);
    expect(serverAllowedByAcl({ allow: ["[::1]"] }, "[::1]:8008")).toBe(true);
  });
});

describe("serverAllowedByAcl: the port is not considered", () => {
  it("matches evil.com, evil.com:8448 and evil.com:1234 alike (the spec's example)", () => {
    const acl = { allow: ["*"], deny: ["evil.com"] };
    for (const name of ["evil.com", "evil.com:8448", "evil.com:1234"]) expect(serverAllowedByAcl(acl, name), name).toBe(false);
  });

  it("never matches an entry that names a port (ports are not supported in entries)", () => {
    expect(serverAllowedByAcl({ allow: ["*"], deny: ["evil.com:8448"] }, "evil.com:8448")).toBe(true);
    expect(serverAllowedByAcl({ allow: ["good.org:8448"] }, "good.org:8448")).toBe(false);
  });

  it("lets a trailing * of an entry run over nothing but the host", () => {
    // "evil.com*" matches the host "evil.com" (the port is gone before matching) and "evil.community".
    const acl = { allow: ["*"], deny: ["evil.com*"] };
    expect(serverAllowedByAcl(acl, "evil.com:8448")).toBe(false);
    expect(serverAllowedByAcl(acl, "evil.community")).toBe(false);
  });
});

describe("serverAllowedByAcl: globs", () => {
  it("compares case-insensitively, both ways", () => {
    expect(serverAllowedByAcl({ allow: ["*"], deny: ["EVIL.com"] }, "evil.COM")).toBe(false);
    expect(serverAllowedByAcl({ allow: ["Good.Org"] }, "GOOD.org")).toBe(true);
  });

  it("reads ? as exactly one character", () => {
    const acl = { allow: ["hs?.example.org"] };
    expect(serverAllowedByAcl(acl, "hs1.example.org")).toBe(true);
    expect(serverAllowedByAcl(acl, "hs.example.org")).toBe(false);
    expect(serverAllowedByAcl(acl, "hs12.example.org")).toBe(false);
  });

  it("reads * as any run of characters, dots included, and the empty run", () => {
    const acl = { allow: ["*example.org"] };
    expect(serverAllowedByAcl(acl, "example.org")).toBe(true);
    expect(serverAllowedByAcl(acl, "a.b.c.example.org")).toBe(true);
    expect(serverAllowedByAcl(acl, "example.org.evil.com")).toBe(false);
  });

  it("matches the whole name, not a part of it", () => {
    const acl = { allow: ["*"], deny: ["evil.com"] };
    expect(serverAllowedByAcl(acl, "evil.com.good.org")).toBe(true);
    expect(serverAllowedByAcl(acl, "notevil.com")).toBe(true);
  });

  it("takes every other character literally, regular-expression ones included", () => {
    const allowed = (entry: string, name: string) => serverAllowedByAcl({ allow: [entry] }, name);
    // "." is a dot, not "any character".
    expect(allowed("a.b.org", "axb.org")).toBe(false);
    expect(allowed("a.b.org", "a.b.org")).toBe(true);
    for (const entry of ["a+.org", "(a).org", "x[ab].org", "a{2}.org", "a|b.org", "^a.org", "a.org$", "a\\.org", "a\\d.org"]) {
      expect(allowed(entry, entry), entry).toBe(true);
    }
    expect(allowed("a+.org", "aa.org")).toBe(false);
    expect(allowed("x[ab].org", "xa.org")).toBe(false);
    expect(allowed("a|b.org", "a")).toBe(false);
    expect(allowed("a\\d.org", "a1.org")).toBe(false);
    expect(allowed(".*", "anything.org")).toBe(false);
  });

  it("lets * and ? combine: ?* is at least one character", () => {
    const acl = { allow: ["?*.org"] };
    expect(serverAllowedByAcl(acl, "a.org")).toBe(true);
    expect(serverAllowedByAcl(acl, ".org")).toBe(false);
    expect(serverAllowedByAcl({ allow: ["**"] }, "x")).toBe(true);
  });
});

describe("serverAllowedByAcl: malformed content (read as Synapse reads it)", () => {
  it("reads an allow or deny that is not an array as empty", () => {
    expect(serverAllowedByAcl({ allow: "*" }, "good.org")).toBe(false);
    expect(serverAllowedByAcl({ allow: { "*": true } }, "good.org")).toBe(false);
    expect(serverAllowedByAcl({ allow: ["*"], deny: "evil.com" }, "evil.com")).toBe(true);
    expect(serverAllowedByAcl({ allow: ["*"], deny: null }, "evil.com")).toBe(true);
  });

  it("skips entries that are not strings", () => {
    expect(serverAllowedByAcl({ allow: [1, null, ["*"], { x: "*" }, "good.org"] }, "good.org")).toBe(true);
    expect(serverAllowedByAcl({ allow: [1, null, true] }, "good.org")).toBe(false);
    expect(serverAllowedByAcl({ allow: ["*"], deny: [42, null] }, "evil.com")).toBe(true);
  });

  it("denies every server when the content is not an object", () => {
    for (const content of ["*", 42, true, ["*"]]) {
      expect(serverAllowedByAcl(content, "good.org"), JSON.stringify(content)).toBe(false);
    }
  });

  it("denies every server for a redacted ACL (its content is empty)", () => {
    expect(serverAllowedByAcl({}, "good.org")).toBe(false);
  });
});

describe("globMatches", () => {
  it("matches the empty pattern only against the empty text", () => {
    expect(globMatches("", "")).toBe(true);
    expect(globMatches("", "a")).toBe(false);
    expect(globMatches("*", "")).toBe(true);
    expect(globMatches("?", "")).toBe(false);
  });

  it("backtracks to the last star", () => {
    expect(globMatches("*ab*cd", "xabyabcd")).toBe(true);
    expect(globMatches("a*b*c", "abbbc")).toBe(true);
    expect(globMatches("a*b*c", "abbbd")).toBe(false);
    expect(globMatches("*a?", "aab")).toBe(true);
  });

  it("takes linear-ish time on patterns that make backtracking regexes explode", () => {
    const pattern = `${"*a".repeat(40)}*b`;
    const text = "a".repeat(255);
    const start = performance.now();
    expect(globMatches(pattern, text)).toBe(false);
    expect(performance.now() - start).toBeLessThan(200);
  });
});
