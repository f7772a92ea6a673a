import { describe, expect, it } from "vitest";
import type { PushCondition } from "./defaults.ts";
import { conditionHolds, evaluatePushRules, type PushEvent, type PushRuleContext } from "./evaluate.ts";
import { putRule, setEnabled, withServerDefaults } from "./ruleset.ts";

const alice = "@alice:example.org";
const bob = "@bob:example.org";
const room = "!636q39766251:example.com";
const defaults = withServerDefaults(undefined, alice);

const ctx = (overrides: Partial<PushRuleContext> = {}): PushRuleContext => ({
  userId: alice,
  displayName: "Alice",
  roomMemberCount: 5,
  senderPowerLevel: 0,
  powerLevels: null,
  ...overrides,
});

const message = (content: Record<string, unknown>, overrides: Partial<PushEvent> = {}): PushEvent => ({
  type: "m.room.message",
  sender: bob,
  room_id: room,
  event_id: "$143273582443PhrSn:example.org",
  content: { msgtype: "m.text", ...content },
  ...overrides,
});

describe("evaluatePushRules with the server-default rules", () => {
  it("notifies with a sound for a plain message in a two-person room", () => {
    const result = evaluatePushRules(defaults, message({ body: "hi" }), ctx({ roomMemberCount: 2 }));
    expect(result).toEqual({
      actions: ["notify", { set_tweak: "sound", value: "default" }],
      notify: true,
      highlight: false,
      tweaks: { sound: "default" },
      kind: "underride",
      ruleId: ".m.rule.room_one_to_one",
    });
  });

  it("notifies without sound or highlight for a plain message in a larger room", () => {
    const result = evaluatePushRules(defaults, message({ body: "hi" }), ctx());
    expect(result).toMatchObject({ notify: true, highlight: false, tweaks: {}, ruleId: ".m.rule.message" });
  });

  it("highlights a message whose m.mentions.user_ids contains the user", () => {
    const event = message({ body: "hey you", "m.mentions": { user_ids: ["@carol:example.org", alice] } });
    const result = evaluatePushRules(defaults, event, ctx());
    expect(result).toMatchObject({
      notify: true,
      highlight: true,
      tweaks: { sound: "default", highlight: true },
      ruleId: ".m.rule.is_user_mention",
    });
  });

  it("does not highlight a message that mentions someone else", () => {
    const event = message({ body: "hey Alice", "m.mentions": { user_ids: ["@carol:example.org"] } });
    expect(evaluatePushRules(defaults, event, ctx())).toMatchObject({ highlight: false, ruleId: ".m.rule.message" });
  });

  it("does not highlight a plain-text mention: the legacy mention rules are gone", () => {
    const event = message({ body: "alice: Alice @room" });
    expect(evaluatePushRules(defaults, event, ctx({ senderPowerLevel: 100 }))).toMatchObject({
      highlight: false,
      ruleId: ".m.rule.message",
    });
  });

  it("highlights an @room mention from a sender with enough power", () => {
    const event = message({ body: "@room lunch", "m.mentions": { room: true } });
    expect(evaluatePushRules(defaults, event, ctx({ senderPowerLevel: 50 }))).toMatchObject({
      notify: true,
      highlight: true,
      ruleId: ".m.rule.is_room_mention",
    });
  });

  it("does not highlight an @room mention from a sender without enough power", () => {
    const event = message({ body: "@room lunch", "m.mentions": { room: true } });
    expect(evaluatePushRules(defaults, event, ctx({ senderPowerLevel: 49 }))).toMatchObject({
      highlight: false,
      ruleId: ".m.rule.message",
    });
  });

  it("reads the power needed for @room from the power levels' notifications", () => {
    const event = message({ body: "@room", "m.mentions": { room: true } });
    const powerLevels = { notifications: { room: 100 } };
    expect(evaluatePushRules(defaults, event, ctx({ senderPowerLevel: 50, powerLevels })).highlight).toBe(false);
    expect(evaluatePushRules(defaults, event, ctx({ senderPowerLevel: 100, powerLevels })).highlight).toBe(true);
    const lenient = { notifications: { room: "0" } };
    expect(evaluatePushRules(defaults, event, ctx({ powerLevels: lenient })).highlight).toBe(true);
  });

  it("does not notify for notices", () => {
    const result = evaluatePushRules(
      defaults,
      message({ msgtype: "m.notice", body: "bot says hi" }),
      ctx({ roomMemberCount: 2 }),
    );
    expect(result).toEqual({
      actions: [],
      notify: false,
      highlight: false,
      tweaks: {},
      kind: "override",
      ruleId: ".m.rule.suppress_notices",
    });
  });

  it("does not notify for edits, reactions or membership changes other than invites", () => {
    const edit = message({ body: "* fixed", "m.relates_to": { rel_type: "m.replace", event_id: "$x" } });
    expect(evaluatePushRules(defaults, edit, ctx())).toMatchObject({ notify: false, ruleId: ".m.rule.suppress_edits" });
    const reaction: PushEvent = { type: "m.reaction", sender: bob, room_id: room, content: {} };
    expect(evaluatePushRules(defaults, reaction, ctx())).toMatchObject({ notify: false, ruleId: ".m.rule.reaction" });
    const join: PushEvent = {
      type: "m.room.member",
      sender: bob,
      room_id: room,
      state_key: bob,
      content: { membership: "join" },
    };
    expect(evaluatePushRules(defaults, join, ctx())).toMatchObject({ notify: false, ruleId: ".m.rule.member_event" });
  });

  it("notifies the user of their own invite", () => {
    const invite: PushEvent = {
      type: "m.room.member",
      sender: bob,
      room_id: room,
      state_key: alice,
      content: { membership: "invite" },
    };
    expect(evaluatePushRules(defaults, invite, ctx())).toMatchObject({ notify: true, ruleId: ".m.rule.invite_for_me" });
    const someoneElse = { ...invite, state_key: "@carol:example.org" };
    expect(evaluatePushRules(defaults, someoneElse, ctx()).notify).toBe(false);
  });

  it("highlights a room upgrade, but only as a state event", () => {
    const tombstone: PushEvent = {
      type: "m.room.tombstone",
      sender: bob,
      room_id: room,
      state_key: "",
      content: { body: "This room has been replaced", replacement_room: "!new:example.org" },
    };
    expect(evaluatePushRules(defaults, tombstone, ctx())).toMatchObject({
      highlight: true,
      ruleId: ".m.rule.tombstone",
    });
    const { state_key: _, ...notState } = tombstone;
    expect(evaluatePushRules(defaults, notState, ctx()).notify).toBe(false);
  });

  it("notifies for encrypted events, with a sound in two-person rooms", () => {
    const encrypted: PushEvent = {
      type: "m.room.encrypted",
      sender: bob,
      room_id: room,
      content: { algorithm: "m.megolm.v1.aes-sha2" },
    };
    expect(evaluatePushRules(defaults, encrypted, ctx({ roomMemberCount: 2 }))).toMatchObject({
      tweaks: { sound: "default" },
      ruleId: ".m.rule.encrypted_room_one_to_one",
    });
    expect(evaluatePushRules(defaults, encrypted, ctx())).toMatchObject({ notify: true, ruleId: ".m.rule.encrypted" });
  });

  it("rings for a call invite", () => {
    const call: PushEvent = { type: "m.call.invite", sender: bob, room_id: room, content: {} };
    expect(evaluatePushRules(defaults, call, ctx()).tweaks).toEqual({ sound: "ring" });
  });

  it("matches nothing for an event type no rule covers", () => {
    const topic: PushEvent = {
      type: "m.room.topic",
      sender: bob,
      room_id: room,
      state_key: "",
      content: { topic: "x" },
    };
    expect(evaluatePushRules(defaults, topic, ctx())).toEqual({
      actions: [],
      notify: false,
      highlight: false,
      tweaks: {},
    });
  });

  it("never notifies the user of their own events", () => {
    const own = message({ body: "hi", "m.mentions": { user_ids: [alice] } }, { sender: alice });
    expect(evaluatePushRules(defaults, own, ctx({ roomMemberCount: 2 })).notify).toBe(false);
  });
});

describe("evaluatePushRules with user changes", () => {
  it("skips a disabled rule", () => {
    const ruleset = setEnabled(defaults, "override", ".m.rule.suppress_notices", { enabled: false });
    const notice = message({ msgtype: "m.notice", body: "bot says hi" });
    expect(evaluatePushRules(ruleset, notice, ctx({ roomMemberCount: 2 }))).toMatchObject({
      notify: true,
      ruleId: ".m.rule.room_one_to_one",
    });
  });

  it("silences everything once the master rule is enabled, mentions included", () => {
    const ruleset = setEnabled(defaults, "override", ".m.rule.master", { enabled: true });
    const mention = message({ body: "hey", "m.mentions": { user_ids: [alice] } });
    expect(evaluatePushRules(ruleset, mention, ctx())).toMatchObject({ notify: false, ruleId: ".m.rule.master" });
  });

  it("mutes a room with a room rule, but lets mentions there through", () => {
    const ruleset = putRule(defaults, "room", room, { actions: [] });
    expect(evaluatePushRules(ruleset, message({ body: "hi" }), ctx())).toMatchObject({ notify: false, kind: "room" });
    const elsewhere = message({ body: "hi" }, { room_id: "!other:example.org" });
    expect(evaluatePushRules(ruleset, elsewhere, ctx()).ruleId).toBe(".m.rule.message");
    const mention = message({ body: "hey", "m.mentions": { user_ids: [alice] } });
    expect(evaluatePushRules(ruleset, mention, ctx()).ruleId).toBe(".m.rule.is_user_mention");
  });

  it("mutes a sender with a sender rule", () => {
    const ruleset = putRule(defaults, "sender", bob, { actions: ["dont_notify"] });
    expect(evaluatePushRules(ruleset, message({ body: "hi" }), ctx())).toMatchObject({ notify: false, kind: "sender" });
  });

  it("applies a content rule to whole words of the body", () => {
    const ruleset = putRule(defaults, "content", "cake", {
      pattern: "cake",
      actions: ["notify", { set_tweak: "sound", value: "cakealarm.wav" }, { set_tweak: "highlight" }],
    });
    expect(evaluatePushRules(ruleset, message({ body: "It's time for CAKE!" }), ctx())).toMatchObject({
      highlight: true,
      tweaks: { sound: "cakealarm.wav", highlight: true },
      ruleId: "cake",
    });
    expect(evaluatePushRules(ruleset, message({ body: "pancakes" }), ctx()).ruleId).toBe(".m.rule.message");
  });

  it("matches the user's display name in the body only as a whole word", () => {
    const ruleset = putRule(defaults, "override", "my-name", {
      conditions: [{ kind: "contains_display_name" }],
      actions: ["notify", { set_tweak: "highlight" }],
    });
    const highlightFor = (body: string, displayName: string | null = "Alice") =>
      evaluatePushRules(ruleset, message({ body }), ctx({ displayName })).highlight;
    expect(highlightFor("hi Alice, lunch?")).toBe(true);
    expect(highlightFor("ALICE")).toBe(true);
    expect(highlightFor("Alice's turn")).toBe(true);
    expect(highlightFor("Malice aforethought")).toBe(false);
    expect(highlightFor("Alicea")).toBe(false);
    expect(highlightFor("Alice_2")).toBe(false);
    expect(highlightFor("hi Alice", null)).toBe(false);
    expect(highlightFor("hi there", "")).toBe(false);
  });

  it("treats dont_notify as no notification, and a highlight tweak of false as no highlight", () => {
    const stored = {
      override: [
        {
          rule_id: "quiet",
          default: false,
          enabled: true,
          conditions: [{ kind: "event_match", key: "content.body", pattern: "quiet" }],
          actions: ["dont_notify"],
        },
        {
          rule_id: "plain",
          default: false,
          enabled: true,
          conditions: [{ kind: "event_match", key: "content.body", pattern: "plain" }],
          actions: ["notify", { set_tweak: "highlight", value: false }],
        },
      ],
    };
    const ruleset = withServerDefaults(stored, alice);
    expect(evaluatePushRules(ruleset, message({ body: "quiet please" }), ctx())).toMatchObject({
      notify: false,
      ruleId: "quiet",
    });
    expect(evaluatePushRules(ruleset, message({ body: "plain text" }), ctx())).toMatchObject({
      notify: true,
      highlight: false,
      ruleId: "plain",
    });
  });

  it("does not count a highlight tweak on a rule that does not notify", () => {
    const ruleset = putRule(defaults, "override", "odd", { conditions: [], actions: [{ set_tweak: "highlight" }] });
    expect(evaluatePushRules(ruleset, message({ body: "x" }), ctx())).toMatchObject({
      notify: false,
      highlight: false,
    });
  });

  it("never matches a rule with an unrecognised condition", () => {
    const ruleset = putRule(defaults, "override", "future", {
      conditions: [{ kind: "org.example.always" }],
      actions: ["notify", { set_tweak: "highlight" }],
    });
    expect(evaluatePushRules(ruleset, message({ body: "x" }), ctx()).ruleId).toBe(".m.rule.message");
  });
});

describe("conditions", () => {
  const holds = (condition: PushCondition, event: PushEvent, context = ctx()) =>
    conditionHolds(condition, event, context);

  it("event_match needs a string value, even for pattern *", () => {
    // The spec's example: key content.topic, pattern lunc?*.
    const topic = (value: unknown): PushEvent => ({
      type: "m.room.topic",
      sender: bob,
      room_id: room,
      state_key: "",
      content: { topic: value },
    });
    const condition: PushCondition = { kind: "event_match", key: "content.topic", pattern: "lunc?*" };
    expect(holds(condition, topic("Lunch plans"))).toBe(true);
    expect(holds(condition, topic(" lunch"))).toBe(false);
    expect(holds(condition, topic(null))).toBe(false);
    expect(holds({ kind: "event_match", key: "content.missing", pattern: "*" }, topic("x"))).toBe(false);
    expect(holds({ kind: "event_match", key: "content.topic", pattern: "*" }, topic(5))).toBe(false);
  });

  it("event_match on content.body matches words, on other keys the whole value", () => {
    const event = message({ body: "An example event.", format: "An example event." });
    expect(holds({ kind: "event_match", key: "content.body", pattern: "ex*ple" }, event)).toBe(true);
    expect(holds({ kind: "event_match", key: "content.format", pattern: "ex*ple" }, event)).toBe(false);
  });

  it("event_property_is compares exactly, without casting", () => {
    // The spec's example: key content.m\.federate, value true.
    const create = (federate: unknown): PushEvent => ({
      type: "m.room.create",
      sender: bob,
      room_id: room,
      state_key: "",
      content: { creator: bob, "m.federate": federate, room_version: "1" },
    });
    const condition: PushCondition = { kind: "event_property_is", key: "content.m\\.federate", value: true };
    expect(holds(condition, create(true))).toBe(true);
    expect(holds(condition, create("true"))).toBe(false);
    expect(holds(condition, create(1))).toBe(false);
    expect(holds({ kind: "event_property_is", key: "content.m\\.federate", value: null }, create(null))).toBe(true);
    expect(holds({ kind: "event_property_is", key: "content.room_version", value: "1" }, create(true))).toBe(true);
  });

  it("event_property_contains looks for an exact entry of an array", () => {
    // The spec's example: key content.alt_aliases, value "#myroom:example.com".
    const aliases: PushEvent = {
      type: "m.room.canonical_alias",
      sender: bob,
      room_id: room,
      state_key: "",
      content: {
        alias: "#somewhere:localhost",
        alt_aliases: ["#somewhere:example.org", "#myroom:example.com", { x: 1 }],
      },
    };
    expect(
      holds({ kind: "event_property_contains", key: "content.alt_aliases", value: "#myroom:example.com" }, aliases),
    ).toBe(true);
    expect(holds({ kind: "event_property_contains", key: "content.alt_aliases", value: ":example.com" }, aliases)).toBe(
      false,
    );
    expect(
      holds({ kind: "event_property_contains", key: "content.alias", value: "#somewhere:localhost" }, aliases),
    ).toBe(false);
  });

  it("room_member_count understands ==, <, >, <=, >= and no prefix", () => {
    const event = message({ body: "x" });
    const count = (is: string, roomMemberCount: number) =>
      holds({ kind: "room_member_count", is }, event, ctx({ roomMemberCount }));
    expect(count("2", 2)).toBe(true);
    expect(count("2", 3)).toBe(false);
    expect(count("==3", 3)).toBe(true);
    expect(count("<10", 9)).toBe(true);
    expect(count("<10", 10)).toBe(false);
    expect(count("<=10", 10)).toBe(true);
    expect(count(">10", 10)).toBe(false);
    expect(count(">=10", 10)).toBe(true);
    expect(count("=>10", 10)).toBe(false);
    expect(count("lots", 10)).toBe(false);
  });

  it("sender_notification_permission compares the sender's level with the notifications level", () => {
    const event = message({ body: "x" });
    const condition: PushCondition = { kind: "sender_notification_permission", key: "room" };
    expect(holds(condition, event, ctx({ senderPowerLevel: 50 }))).toBe(true);
    expect(holds(condition, event, ctx({ senderPowerLevel: 10 }))).toBe(false);
    expect(holds(condition, event, ctx({ senderPowerLevel: 10, powerLevels: { notifications: { room: 10 } } }))).toBe(
      true,
    );
    expect(
      holds(condition, event, ctx({ senderPowerLevel: Infinity, powerLevels: { notifications: { room: 100 } } })),
    ).toBe(true);
  });
});
