import { describe, expect, it } from "vitest";
import { overlapWitness } from "./regex-overlap.ts";

// Every witness must really be claimed by both regexes, as registration.ts compiles them.
function claims(regex: string, name: string): boolean {
  return new RegExp(`^(?:${regex})`, "u").test(name);
}

function expectOverlap(a: string, b: string): string {
  const w = overlapWitness(a, b);
  expect(typeof w === "string" && w !== "unknown", `${a} and ${b} should overlap`).toBe(true);
  expect(claims(a, w as string) && claims(b, w as string), `${JSON.stringify(w)} should match ${a} and ${b}`).toBe(true);
  return w as string;
}

describe("overlapWitness: do two namespace regexes claim a common name", () => {
  it("finds a shortest common name for overlapping regexes", () => {
    expect(expectOverlap("@_irc_.*", "@_irc_.*")).toBe("@_irc_");
    expect(expectOverlap("@_irc_.*", "@_irc_bot:hs")).toBe("@_irc_bot:hs");
    // Matched at the start only: a regex claims every name that begins with a match.
    expect(expectOverlap("@_irc", "@_irc_bridge_.*:hs\\.org")).toBe("@_irc_bridge_:hs.org");
    expectOverlap("@[a-z]+_bridge:hs", "@x.*");
    expectOverlap("@(slack|discord)_\\d{2,3}:example\\.org", "@discord_[0-9]+:.*");
    expectOverlap("@a_.*:x", "@.*_b:x");
    expectOverlap("@telegram_[^:]+:hs", "@telegram_bot");
    expectOverlap("#\\u{1F600}.*", "#.+");
    expectOverlap("@(?<kind>bot|user)-\\w+", "@user-abc");
  });

  it("finds none for regexes that cannot claim the same name", () => {
    expect(overlapWitness("@_irc_.*", "@_slack_.*")).toBeNull();
    expect(overlapWitness("@a_.*:x$", "@a_.*:y$")).toBeNull();
    expect(overlapWitness("@a_\\d+$", "@a_[a-z]+")).toBeNull();
    expect(overlapWitness("@[^_].*", "@_.*")).toBeNull();
    expect(overlapWitness("@x{3}$", "@x{4}")).toBeNull();
    expect(overlapWitness("@x{3}$", "@xxx")).not.toBeNull();
    // `$` ends a match: without it the shorter regex claims the longer name too.
    expect(overlapWitness("@bot:hs$", "@bot:hs.org")).toBeNull();
    expect(expectOverlap("@bot:hs", "@bot:hs\\.org")).toBe("@bot:hs.org");
  });

  it("says unknown for syntax outside the regular subset", () => {
    expect(overlapWitness("@(?!admin).*", "@admin")).toBe("unknown");
    expect(overlapWitness("@(a)\\1", "@aa")).toBe("unknown");
    expect(overlapWitness("@\\p{L}+", "@a")).toBe("unknown");
  });

  it("agrees with the regex engine on random names", () => {
    const regexes = ["@_irc_.*", "@[a-c]+_\\d?$", "@(ab|ba)*c", "@a.b", "@[^a]b+", "@ab?c{1,2}$", "@.*c$", "@b"];
    const alphabet = ["@", "a", "b", "c", "_", "1"];
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
    for (const a of regexes) {
      for (const b of regexes) {
        const w = overlapWitness(a, b);
        if (typeof w === "string" && w !== "unknown") {
          expect(claims(a, w) && claims(b, w), `${a} / ${b}: ${w}`).toBe(true);
          continue;
        }
        expect(w).toBeNull();
        // No overlap claimed: no random name may be claimed by both.
        for (let k = 0; k < 3000; k++) {
          let name = "@";
          const length = Math.floor(random() * 7);
          for (let i = 0; i < length; i++) name += alphabet[Math.floor(random() * alphabet.length)];
          expect(claims(a, name) && claims(b, name), `${a} / ${b} both claim ${name}`).toBe(false);
        }
      }
    }
  });
});
