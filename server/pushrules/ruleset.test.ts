import { describe, expect, it } from "vitest";
import { MatrixError } from "../http/errors.ts";
import { defaultRuleset, type Ruleset } from "./defaults.ts";
import {
  deleteRule,
  getPushRules,
  getRule,
  PushRuleError,
  putRule,
  setActions,
  setEnabled,
  withServerDefaults,
} from "./ruleset.ts";

const alice = "@alice:example.org";
const ids = (rules: { rule_id: string }[]) => rules.map((r) => r.rule_id);
const userIds = (rules: { rule_id: string }[]) => ids(rules).filter((id) => !id.startsWith("."));
const fresh = () => withServerDefaults(undefined, alice);

const beerRule = {
  conditions: [
    { kind: "event_match", key: "content.body", pattern: "beer" },
    { kind: "room_member_count", is: "<=10" },
  ],
  actions: ["notify", { set_tweak: "sound", value: "beeroclock.wav" }],
};

function refusal(operation: () => unknown): { status: number; errcode: string } {
  try {
    operation();
  } catch (error) {
    if (error instanceof PushRuleError) return { status: error.status, errcode: error.errcode };
    throw error;
  }
  throw new Error("expected a PushRuleError");
}

describe("putRule", () => {
  it("puts a new override rule after .m.rule.master and before the other server-default rules", () => {
    // The spec's example: PUT /pushrules/global/override/U2VlIHlvdSBpbiBUaGUgRHVrZQ
    const ruleset = putRule(fresh(), "override", "U2VlIHlvdSBpbiBUaGUgRHVrZQ", beerRule);
    expect(ids(ruleset.override).slice(0, 3)).toEqual([
      ".m.rule.master",
      "U2VlIHlvdSBpbiBUaGUgRHVrZQ",
      ".m.rule.suppress_notices",
    ]);
    expect(getRule(ruleset, "override", "U2VlIHlvdSBpbiBUaGUgRHVrZQ")).toEqual({
      rule_id: "U2VlIHlvdSBpbiBUaGUgRHVrZQ",
      default: false,
      enabled: true,
      ...beerRule,
    });
  });

  it("puts a new underride rule before the server-default underride rules", () => {
    const ruleset = putRule(fresh(), "underride", "mine", { actions: ["notify"] });
    expect(ids(ruleset.underride)[0]).toBe("mine");
    expect(getRule(ruleset, "underride", "mine").conditions).toEqual([]);
  });

  it("makes a new rule without before/after the most important user-defined rule of its kind", () => {
    let ruleset = putRule(fresh(), "content", "first", { pattern: "cake", actions: ["notify"] });
    ruleset = putRule(ruleset, "content", "second", { pattern: "pie", actions: ["notify"] });
    expect(ids(ruleset.content)).toEqual(["second", "first"]);
  });

  it("places a rule just before the rule named by `before`", () => {
    // The spec's example: the "cake*lie" rule supersedes the "cake" rule.
    let ruleset = putRule(fresh(), "content", "SSByZWFsbHkgbGlrZSBjYWtl", {
      pattern: "cake",
      actions: ["notify", { set_tweak: "sound", value: "cakealarm.wav" }],
    });
    ruleset = putRule(ruleset, "content", "other", { pattern: "x", actions: [] });
    ruleset = putRule(
      ruleset,
      "content",
      "U3BvbmdlIGNha2UgaXMgYmVzdA",
      { pattern: "cake*lie", actions: ["notify"] },
      { before: "SSByZWFsbHkgbGlrZSBjYWtl" },
    );
    expect(ids(ruleset.content)).toEqual(["other", "U3BvbmdlIGNha2UgaXMgYmVzdA", "SSByZWFsbHkgbGlrZSBjYWtl"]);
  });

  it("places a rule just after the rule named by `after`", () => {
    let ruleset = putRule(fresh(), "override", "a", beerRule);
    ruleset = putRule(ruleset, "override", "b", beerRule);
    ruleset = putRule(ruleset, "override", "c", beerRule, { after: "b" });
    expect(userIds(ruleset.override)).toEqual(["b", "c", "a"]);
    expect(ids(ruleset.override)[0]).toBe(".m.rule.master");
  });

  it("follows `before` when both `before` and `after` are given", () => {
    let ruleset = putRule(fresh(), "override", "a", beerRule);
    ruleset = putRule(ruleset, "override", "b", beerRule);
    ruleset = putRule(ruleset, "override", "c", beerRule, { before: "a", after: "b" });
    expect(userIds(ruleset.override)).toEqual(["b", "c", "a"]);
    ruleset = putRule(ruleset, "override", "c", beerRule, { before: "b", after: "a" });
    expect(userIds(ruleset.override)).toEqual(["c", "b", "a"]);
  });

  it("updates an existing rule in place, keeping it disabled if it was", () => {
    let ruleset = putRule(fresh(), "override", "a", beerRule);
    ruleset = putRule(ruleset, "override", "b", beerRule);
    ruleset = setEnabled(ruleset, "override", "a", { enabled: false });
    ruleset = putRule(ruleset, "override", "a", { conditions: [], actions: [] });
    expect(userIds(ruleset.override)).toEqual(["b", "a"]);
    expect(getRule(ruleset, "override", "a")).toMatchObject({ enabled: false, conditions: [], actions: [] });
  });

  it("moves an existing rule when given before/after", () => {
    let ruleset = putRule(fresh(), "override", "a", beerRule);
    ruleset = putRule(ruleset, "override", "b", beerRule);
    ruleset = putRule(ruleset, "override", "a", beerRule, { before: "b" });
    expect(userIds(ruleset.override)).toEqual(["a", "b"]);
  });

  it("refuses a before/after rule that does not exist with 400 M_UNKNOWN", () => {
    const ruleset = putRule(fresh(), "override", "a", beerRule);
    expect(refusal(() => putRule(ruleset, "override", "b", beerRule, { before: "nope" }))).toEqual({
      status: 400,
      errcode: "M_UNKNOWN",
    });
    // Rules of another kind do not count.
    const withContent = putRule(ruleset, "content", "c", { pattern: "x", actions: [] });
    expect(refusal(() => putRule(withContent, "override", "b", beerRule, { after: "c" })).errcode).toBe("M_UNKNOWN");
  });

  it("refuses to place a rule relative to a server-default rule", () => {
    expect(refusal(() => putRule(fresh(), "override", "a", beerRule, { after: ".m.rule.master" }))).toEqual({
      status: 400,
      errcode: "M_INVALID_PARAM",
    });
  });

  it("refuses rule IDs reserved for server-default rules, or with slashes", () => {
    expect(refusal(() => putRule(fresh(), "override", ".m.rule.master", beerRule))).toEqual({
      status: 400,
      errcode: "M_INVALID_PARAM",
    });
    expect(refusal(() => putRule(fresh(), "override", "a/b", beerRule)).errcode).toBe("M_INVALID_PARAM");
    expect(refusal(() => putRule(fresh(), "override", "a\\b", beerRule)).errcode).toBe("M_INVALID_PARAM");
  });

  it("uses the room ID or user ID as the rule ID of room and sender rules", () => {
    // The spec's examples: mute a room, and mute @spambot.
    let ruleset = putRule(fresh(), "room", "!dj234r78wl45Gh4D:matrix.org", { actions: [] });
    ruleset = putRule(ruleset, "sender", "@spambot:matrix.org", { actions: [] });
    expect(ruleset.room).toEqual([
      { rule_id: "!dj234r78wl45Gh4D:matrix.org", default: false, enabled: true, actions: [] },
    ]);
    expect(ruleset.sender).toEqual([{ rule_id: "@spambot:matrix.org", default: false, enabled: true, actions: [] }]);
    // Other IDs are stored as given (clients have used room aliases) and match nothing.
    const aliased = putRule(fresh(), "room", "#spam:example.com", { actions: ["dont_notify"] });
    expect(getRule(aliased, "room", "#spam:example.com").actions).toEqual(["dont_notify"]);
  });

  it("refuses a content rule without a pattern, a body without actions, and unknown actions", () => {
    expect(refusal(() => putRule(fresh(), "content", "c", { actions: ["notify"] }))).toEqual({
      status: 400,
      errcode: "M_BAD_JSON",
    });
    expect(refusal(() => putRule(fresh(), "override", "o", { conditions: [] })).errcode).toBe("M_BAD_JSON");
    expect(refusal(() => putRule(fresh(), "override", "o", { actions: ["ring"] })).errcode).toBe("M_BAD_JSON");
    expect(refusal(() => putRule(fresh(), "override", "o", "not an object")).errcode).toBe("M_BAD_JSON");
  });

  it("refuses known conditions without their parameters but keeps unknown ones", () => {
    const noPattern = { conditions: [{ kind: "event_match", key: "content.body" }], actions: [] };
    expect(refusal(() => putRule(fresh(), "override", "o", noPattern)).errcode).toBe("M_BAD_JSON");
    const badCount = { conditions: [{ kind: "room_member_count", is: "two" }], actions: [] };
    expect(refusal(() => putRule(fresh(), "override", "o", badCount)).errcode).toBe("M_BAD_JSON");
    const float = { conditions: [{ kind: "event_property_is", key: "content.n", value: 1.5 }], actions: [] };
    expect(refusal(() => putRule(fresh(), "override", "o", float)).errcode).toBe("M_BAD_JSON");

    const future = { kind: "org.example.future", level: 3 };
    const ruleset = putRule(fresh(), "override", "o", { conditions: [future], actions: [] });
    expect(getRule(ruleset, "override", "o").conditions).toEqual([future]);
  });

  it("keeps the historical dont_notify and coalesce actions as written (evaluation ignores them)", () => {
    const ruleset = putRule(fresh(), "override", "o", { conditions: [], actions: ["dont_notify"] });
    expect(getRule(ruleset, "override", "o").actions).toEqual(["dont_notify"]);
    const coalesced = putRule(fresh(), "override", "o", { conditions: [], actions: ["coalesce", "notify"] });
    expect(getRule(coalesced, "override", "o").actions).toEqual(["coalesce", "notify"]);
  });

  it("refuses an unknown kind", () => {
    expect(refusal(() => putRule(fresh(), "everything", "o", beerRule))).toEqual({
      status: 400,
      errcode: "M_INVALID_PARAM",
    });
  });

  it("does not change the ruleset it was given", () => {
    const before = fresh();
    const copy = structuredClone(before);
    putRule(before, "override", "a", beerRule);
    expect(before).toEqual(copy);
  });
});

describe("getRule", () => {
  it("finds server-default and user-defined rules", () => {
    const ruleset = putRule(fresh(), "content", "nocake", { pattern: "cake*lie", actions: [] });
    expect(getRule(ruleset, "override", ".m.rule.master").enabled).toBe(false);
    // The spec's example response of GET /pushrules/global/content/nocake.
    expect(getRule(ruleset, "content", "nocake")).toEqual({
      actions: [],
      pattern: "cake*lie",
      rule_id: "nocake",
      enabled: true,
      default: false,
    });
  });

  it("throws a MatrixError whose body is the spec's 404 example", () => {
    const error = (() => {
      try {
        getRule(fresh(), "content", "nocake");
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(MatrixError);
    expect((error as MatrixError).toJSON()).toEqual({ errcode: "M_NOT_FOUND", error: "The push rule was not found." });
  });

  it("answers 404 M_NOT_FOUND for a missing rule, or a rule of another kind", () => {
    expect(refusal(() => getRule(fresh(), "override", "nocake"))).toEqual({ status: 404, errcode: "M_NOT_FOUND" });
    expect(refusal(() => getRule(fresh(), "underride", ".m.rule.master")).status).toBe(404);
  });
});

describe("deleteRule", () => {
  it("removes a user-defined rule", () => {
    const ruleset = deleteRule(putRule(fresh(), "override", "a", beerRule), "override", "a");
    expect(ruleset).toEqual(fresh());
  });

  it("answers 404 for a missing rule", () => {
    expect(refusal(() => deleteRule(fresh(), "override", "a"))).toEqual({ status: 404, errcode: "M_NOT_FOUND" });
  });

  it("refuses to delete a server-default rule", () => {
    expect(refusal(() => deleteRule(fresh(), "override", ".m.rule.suppress_notices"))).toEqual({
      status: 400,
      errcode: "M_INVALID_PARAM",
    });
  });
});

describe("setEnabled and setActions", () => {
  it("enables the master rule", () => {
    const ruleset = setEnabled(fresh(), "override", ".m.rule.master", { enabled: true });
    expect(getRule(ruleset, "override", ".m.rule.master").enabled).toBe(true);
    expect(ids(ruleset.override)).toEqual(ids(fresh().override));
  });

  it("changes the actions of a server-default rule", () => {
    const ruleset = setActions(fresh(), "underride", ".m.rule.message", {
      actions: ["notify", { set_tweak: "sound", value: "bing" }],
    });
    expect(getRule(ruleset, "underride", ".m.rule.message").actions).toEqual([
      "notify",
      { set_tweak: "sound", value: "bing" },
    ]);
  });

  it("answers 404 for a missing rule and 400 for a bad body", () => {
    expect(refusal(() => setEnabled(fresh(), "override", "nope", { enabled: true })).status).toBe(404);
    expect(refusal(() => setActions(fresh(), "override", "nope", { actions: [] })).status).toBe(404);
    expect(refusal(() => setEnabled(fresh(), "override", ".m.rule.master", { enabled: "yes" }))).toEqual({
      status: 400,
      errcode: "M_BAD_JSON",
    });
    expect(refusal(() => setActions(fresh(), "override", ".m.rule.master", {})).errcode).toBe("M_BAD_JSON");
  });
});

describe("withServerDefaults and getPushRules", () => {
  it("gives the server-default rules to a user who never changed anything", () => {
    expect(withServerDefaults(undefined, alice)).toEqual(defaultRuleset(alice));
    expect(withServerDefaults(null, alice)).toEqual(defaultRuleset(alice));
    expect(getPushRules(undefined, alice)).toEqual({ global: defaultRuleset(alice) });
  });

  it("reproduces a ruleset that the editing operations returned", () => {
    let ruleset = putRule(fresh(), "override", "a", beerRule);
    ruleset = putRule(ruleset, "content", "c", { pattern: "cake", actions: ["notify"] });
    ruleset = setEnabled(ruleset, "override", ".m.rule.master", { enabled: true });
    ruleset = setActions(ruleset, "underride", ".m.rule.message", { actions: [] });
    const stored: unknown = JSON.parse(JSON.stringify(ruleset));
    expect(withServerDefaults(stored, alice)).toEqual(ruleset);
  });

  it("drops server-default rules the spec removed and adds ones the stored set lacks", () => {
    const stored = {
      override: [
        { rule_id: "mine", default: false, enabled: true, conditions: [], actions: [] },
        { rule_id: ".m.rule.master", default: true, enabled: true, conditions: [], actions: [] },
        {
          rule_id: ".m.rule.roomnotif",
          default: true,
          enabled: true,
          conditions: [{ kind: "event_match", key: "content.body", pattern: "@room" }],
          actions: ["notify"],
        },
      ],
      content: [
        { rule_id: ".m.rule.contains_user_name", default: true, enabled: true, pattern: "alice", actions: ["notify"] },
      ],
    };
    const ruleset: Ruleset = withServerDefaults(stored, alice);
    const expectedOverride = ids(defaultRuleset(alice).override);
    expectedOverride.splice(1, 0, "mine");
    expect(ids(ruleset.override)).toEqual(expectedOverride);
    expect(getRule(ruleset, "override", ".m.rule.master").enabled).toBe(true);
    expect(ruleset.content).toEqual([]);
    expect(ruleset.underride).toEqual(defaultRuleset(alice).underride);
  });

  it("keeps a user's actions on a server-default rule but takes the conditions from the spec", () => {
    const stored = {
      override: [
        { rule_id: ".m.rule.suppress_notices", default: true, enabled: false, conditions: [], actions: ["notify"] },
      ],
    };
    const rule = getRule(withServerDefaults(stored, alice), "override", ".m.rule.suppress_notices");
    expect(rule).toEqual({ ...defaultRuleset(alice).override[1], enabled: false, actions: ["notify"] });
  });

  it("skips stored entries that are not rules", () => {
    const stored = { override: [42, { rule_id: "x" }, { rule_id: "ok", enabled: true, actions: [] }], room: "nope" };
    const ruleset = withServerDefaults(stored, alice);
    expect(userIds(ruleset.override)).toEqual(["ok"]);
    expect(getRule(ruleset, "override", "ok")).toEqual({
      rule_id: "ok",
      default: false,
      enabled: true,
      actions: [],
      conditions: [],
    });
    expect(ruleset.room).toEqual([]);
  });
});
