// Running a user's push rules against an event: which rule applies and what it says to do.
// https://spec.matrix.org/v1.19/client-server-api/#push-rules (kinds, order, actions, conditions)
// The outcome feeds the push gateway and the `unread_notifications` counts of /sync.
import { dictionary } from "../../federation/protocol/dictionary.ts";
import {
  PUSH_RULE_KINDS,
  type JsonValue,
  type PushAction,
  type PushCondition,
  type PushRule,
  type PushRuleKind,
  type Ruleset,
  type ScalarJsonValue,
} from "./defaults.ts";
import { globMatches } from "./glob.ts";
import { eventProperty } from "./property-path.ts";

/** A room event as clients see it. Conditions may look at any property, so all others are kept too. */
export interface PushEvent {
  type: string;
  sender: string;
  room_id: string;
  content: Record<string, unknown>;
  state_key?: string;
  [property: string]: unknown;
}

/** What the conditions need to know about the room and the user, as of the event. */
export interface PushRuleContext {
  /** The user whose rules these are. */
  userId: string;
  /** The user's display name in this room (their `m.room.member` `displayname`), for `contains_display_name`. */
  displayName?: string | null;
  /** The number of joined members, for `room_member_count`. */
  roomMemberCount: number;
  /** The sender's power level in the room. Room version 12 creators may be passed as `Infinity`. */
  senderPowerLevel: number;
  /** The content of the room's `m.room.power_levels` event, if there is one: its `notifications` is read. */
  powerLevels?: Record<string, unknown> | null;
}

export interface PushRuleOutcome {
  /** The actions of the rule that applied, without historical ones; empty when no rule applied. */
  actions: PushAction[];
  /** The event counts as a notification (the rule's actions contain `notify`). */
  notify: boolean;
  /**
   * A notification with the `highlight` tweak set. An event that does not notify is not a highlight
   * either: `highlight_count` counts "unread notifications … with the highlight flag set".
   */
  highlight: boolean;
  /** The tweaks for the push gateway's `devices[].tweaks`, e.g. `{sound: "default", highlight: true}`. */
  tweaks: Record<string, JsonValue>;
  /** Which rule applied, if one did. */
  kind?: PushRuleKind;
  ruleId?: string;
}

const noRuleApplied = (): PushRuleOutcome => ({ actions: [], notify: false, highlight: false, tweaks: {} });

/**
 * Finds the first enabled rule, in the order of `ruleset` (override, content, room, sender, underride,
 * each list most important first), whose conditions all hold for `event`, and returns what its actions
 * mean. `ruleset` is expected in the shape ruleset.ts produces (withServerDefaults and the editing
 * operations), which is already in evaluation order.
 */
export function evaluatePushRules(ruleset: Ruleset, event: PushEvent, ctx: PushRuleContext): PushRuleOutcome {
  // "Homeservers MUST NOT notify the Push Gateway for events that the user has sent themselves."
  if (event.sender === ctx.userId) return noRuleApplied();

  for (const kind of PUSH_RULE_KINDS) {
    for (const rule of ruleset[kind]) {
      // "Disabled rules never match."
      if (rule.enabled !== true) continue;
      if (ruleMatches(kind, rule, event, ctx)) return outcome(kind, rule);
    }
  }
  // "If no rules match an event, the homeserver MUST NOT notify the Push Gateway for that event."
  return noRuleApplied();
}

function ruleMatches(kind: PushRuleKind, rule: PushRule, event: PushEvent, ctx: PushRuleContext): boolean {
  switch (kind) {
    case "override":
    case "underride":
      // "All conditions must hold true … A rule with no conditions always matches."
      return (rule.conditions ?? []).every((condition) => conditionHolds(condition, event, ctx));
    case "content": {
      // Content rules match their pattern against words of `content.body`, like `event_match` on that key.
      const body = eventProperty(event, "content.body");
      return typeof rule.pattern === "string" && typeof body === "string" && globMatches(rule.pattern, body, "words");
    }
    case "room":
      return event.room_id === rule.rule_id;
    case "sender":
      return event.sender === rule.rule_id;
  }
}

/** Whether one condition holds (spec "Conditions"). Unknown and malformed conditions never hold. */
export function conditionHolds(condition: PushCondition, event: PushEvent, ctx: PushRuleContext): boolean {
  const params = condition as Record<string, unknown>;
  switch (condition.kind) {
    case "event_match": {
      const { key, pattern } = params;
      if (typeof key !== "string" || typeof pattern !== "string") return false;
      // "If the property … is completely absent from the event, or does not have a string value, then the
      // condition will not match, even if pattern is `*`." `content.body` alone is matched word by word.
      const value = eventProperty(event, key);
      return typeof value === "string" && globMatches(pattern, value, key === "content.body" ? "words" : "whole");
    }
    case "event_property_is": {
      const { key, value } = params;
      if (typeof key !== "string" || !isScalar(value)) return false;
      const actual = eventProperty(event, key);
      // Exact, without casting: `"true"` and `1` are not `true`.
      return isScalar(actual) && actual === value;
    }
    case "event_property_contains": {
      const { key, value } = params;
      if (typeof key !== "string" || !isScalar(value)) return false;
      const actual = eventProperty(event, key);
      // Array entries that are not scalars are ignored.
      return Array.isArray(actual) && actual.some((entry) => isScalar(entry) && entry === value);
    }
    case "contains_display_name": {
      // Deprecated (v1.17, MSC4210) but defined. An empty display name would match every message.
      const body = eventProperty(event, "content.body");
      const name = ctx.displayName;
      return typeof body === "string" && typeof name === "string" && name !== "" && globMatches(name, body, "words");
    }
    case "room_member_count": {
      const { is } = params;
      return typeof is === "string" && memberCountMatches(is, ctx.roomMemberCount);
    }
    case "sender_notification_permission": {
      const { key } = params;
      return typeof key === "string" && ctx.senderPowerLevel >= notificationPowerLevel(ctx.powerLevels, key);
    }
    default:
      // "Unrecognised conditions MUST NOT match any events, effectively making the push rule disabled."
      return false;
  }
}

/** Strings, integers in ±(2^53 - 1), booleans and null: the values these conditions compare. */
function isScalar(value: unknown): value is ScalarJsonValue {
  return (
    typeof value === "string" ||
    typeof value === "boolean" ||
    value === null ||
    (typeof value === "number" && Number.isSafeInteger(value))
  );
}

/** `is` is a decimal integer, optionally prefixed by `==`, `<`, `>`, `>=` or `<=`; no prefix means `==`. */
function memberCountMatches(is: string, count: number): boolean {
  const match = /^(==|<|>|<=|>=)?([0-9]+)$/.exec(is);
  if (match === null) return false;
  const wanted = Number(match[2]);
  switch (match[1]) {
    case undefined:
    case "==":
      return count === wanted;
    case "<":
      return count < wanted;
    case ">":
      return count > wanted;
    case "<=":
      return count <= wanted;
    case ">=":
      return count >= wanted;
    default:
      return false;
  }
}

/**
 * The power level needed to send a notification of type `key`: `notifications[key]` of
 * `m.room.power_levels`. The spec's default for `room` is 50; we use 50 for any key the event does not
 * set, as Synapse does. Old room versions may hold levels as strings of digits.
 */
function notificationPowerLevel(powerLevels: Record<string, unknown> | null | undefined, key: string): number {
  const notifications = powerLevels?.["notifications"];
  if (typeof notifications === "object" && notifications !== null && Object.hasOwn(notifications, key)) {
    const level: unknown = (notifications as Record<string, unknown>)[key];
    if (typeof level === "number" && Number.isFinite(level)) return level;
    if (typeof level === "string" && /^\s*[+-]?[0-9]+\s*$/.test(level)) return Number.parseInt(level, 10);
  }
  return 50;
}

function outcome(kind: PushRuleKind, rule: PushRule): PushRuleOutcome {
  // Historical `dont_notify` and `coalesce`, kept as written, are ignored as the spec says.
  const actions = rule.actions.filter(
    (action) =>
      action === "notify" || (typeof action === "object" && action !== null && typeof action.set_tweak === "string"),
  );
  // Tweak names are the rule author's: `__proto__` is a tweak like any other, not the prototype.
  const tweaks = dictionary<JsonValue>();
  for (const action of actions) {
    // "If a highlight tweak is given with no value, its value is defined to be true."
    if (typeof action === "object") tweaks[action.set_tweak] = action.value === undefined ? true : action.value;
  }
  const notify = actions.includes("notify");
  // Only a boolean `true` highlights; "If no highlight tweak is given at all then the value of highlight is
  // defined to be false."
  const highlight = notify && tweaks["highlight"] === true;
  return { actions, notify, highlight, tweaks, kind, ruleId: rule.rule_id };
}
