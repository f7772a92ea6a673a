import { describe, expect, it } from "vitest";
import { defaultRuleset } from "./defaults.ts";

const alice = "@alice:example.org";
const ids = (rules: { rule_id: string }[]) => rules.map((r) => r.rule_id);

describe("defaultRuleset", () => {
  it("lists the spec's default override rules in the spec's order", () => {
    expect(ids(defaultRuleset(alice).override)).toEqual([
      ".m.rule.master",
      ".m.rule.suppress_notices",
      ".m.rule.invite_for_me",
      ".m.rule.member_event",
      ".m.rule.is_user_mention",
      ".m.rule.is_room_mention",
      ".m.rule.tombstone",
      ".m.rule.reaction",
      ".m.rule.room.server_acl",
      ".m.rule.suppress_edits",
    ]);
  });

  it("lists the spec's default underride rules in the spec's order", () => {
    expect(ids(defaultRuleset(alice).underride)).toEqual([
      ".m.rule.call",
      ".m.rule.encrypted_room_one_to_one",
      ".m.rule.room_one_to_one",
      ".m.rule.message",
      ".m.rule.encrypted",
    ]);
  });

  it("has no legacy mention rules, which v1.17 removed (MSC4210)", () => {
    const ruleset = defaultRuleset(alice);
    const all = ids([...ruleset.override, ...ruleset.content, ...ruleset.underride]);
    expect(all).not.toContain(".m.rule.contains_display_name");
    expect(all).not.toContain(".m.rule.roomnotif");
    expect(all).not.toContain(".m.rule.contains_user_name");
    expect(ruleset.content).toEqual([]);
    expect(ruleset.room).toEqual([]);
    expect(ruleset.sender).toEqual([]);
  });

  it("has the master rule first, disabled, matching everything and doing nothing", () => {
    expect(defaultRuleset(alice).override[0]).toEqual({
      rule_id: ".m.rule.master",
      default: true,
      enabled: false,
      conditions: [],
      actions: [],
    });
  });

  it("marks every rule as a default, and all but the master rule as enabled", () => {
    const ruleset = defaultRuleset(alice);
    for (const rule of [...ruleset.override, ...ruleset.underride]) {
      expect(rule.default).toBe(true);
      expect(rule.enabled).toBe(rule.rule_id !== ".m.rule.master");
    }
  });

  it("fills the user's ID into invite_for_me and is_user_mention", () => {
    const override = defaultRuleset(alice).override;
    expect(override.find((r) => r.rule_id === ".m.rule.invite_for_me")?.conditions).toContainEqual({
      kind: "event_match",
      key: "state_key",
      pattern: alice,
    });
    expect(override.find((r) => r.rule_id === ".m.rule.is_user_mention")).toEqual({
      rule_id: ".m.rule.is_user_mention",
      default: true,
      enabled: true,
      conditions: [{ kind: "event_property_contains", key: "content.m\\.mentions.user_ids", value: alice }],
      actions: ["notify", { set_tweak: "sound", value: "default" }, { set_tweak: "highlight" }],
    });
  });

  it("matches the spec's definition of .m.rule.is_room_mention", () => {
    expect(defaultRuleset(alice).override.find((r) => r.rule_id === ".m.rule.is_room_mention")).toEqual({
      rule_id: ".m.rule.is_room_mention",
      default: true,
      enabled: true,
      conditions: [
        { kind: "event_property_is", key: "content.m\\.mentions.room", value: true },
        { kind: "sender_notification_permission", key: "room" },
      ],
      actions: ["notify", { set_tweak: "highlight" }],
    });
  });

  it("returns fresh objects on each call", () => {
    const first = defaultRuleset(alice);
    first.override[1]!.enabled = false;
    expect(defaultRuleset(alice).override[1]!.enabled).toBe(true);
  });
});
