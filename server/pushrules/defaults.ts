// Push rule types and the server-default ("predefined") rules.
// https://spec.matrix.org/v1.19/client-server-api/#push-rules
// https://spec.matrix.org/v1.19/client-server-api/#predefined-rules
//
// The predefined set follows the current spec (v1.17 and later). MSC4210 ("Remove legacy mentions",
// matrix-spec#2186, released in v1.17) removed `.m.rule.contains_display_name`, `.m.rule.roomnotif`
// and `.m.rule.contains_user_name`: mentions now come only from `m.mentions` through
// `.m.rule.is_user_mention` and `.m.rule.is_room_mention`. So there is no default content rule. The
// `contains_display_name` condition is only deprecated, and evaluate.ts still handles it for rules a
// user adds.

/** The kinds of push rule, in the order they are evaluated (spec "Push Rules"). */
export const PUSH_RULE_KINDS = ["override", "content", "room", "sender", "underride"] as const;
export type PushRuleKind = (typeof PUSH_RULE_KINDS)[number];

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** The only values `event_property_is` and `event_property_contains` compare: canonical JSON scalars. */
export type ScalarJsonValue = string | number | boolean | null;

/** `{"set_tweak": "sound", "value": "default"}`. Other keys are kept because tweaks pass through to push gateways. */
export interface SetTweakAction {
  set_tweak: string;
  value?: JsonValue;
  [key: string]: JsonValue | undefined;
}

/**
 * An action of a push rule. The historical `dont_notify` and `coalesce` actions are kept as the
 * client wrote them and ignored when a rule is evaluated (spec "Historical Actions").
 */
export type PushAction = "notify" | "dont_notify" | "coalesce" | SetTweakAction;

export interface EventMatchCondition {
  kind: "event_match";
  /** A dot-separated property path, e.g. `content.body` (appendices "Dot-separated property paths"). */
  key: string;
  /** A glob: `*` is zero or more characters, `?` exactly one (appendices "Glob-style matching"). */
  pattern: string;
}

export interface EventPropertyIsCondition {
  kind: "event_property_is";
  key: string;
  value: ScalarJsonValue;
}

export interface EventPropertyContainsCondition {
  kind: "event_property_contains";
  key: string;
  value: ScalarJsonValue;
}

/** Deprecated since v1.17 (MSC4210), still evaluated. */
export interface ContainsDisplayNameCondition {
  kind: "contains_display_name";
}

export interface RoomMemberCountCondition {
  kind: "room_member_count";
  /** A decimal integer, optionally prefixed by `==`, `<`, `>`, `>=` or `<=`. */
  is: string;
}

export interface SenderNotificationPermissionCondition {
  kind: "sender_notification_permission";
  /** A key of the `notifications` object in `m.room.power_levels`, e.g. `room`. */
  key: string;
}

/** A condition of a kind this server does not know. It is stored as given and never matches. */
export interface UnrecognisedPushCondition {
  kind: string;
  [param: string]: unknown;
}

export type PushCondition =
  | EventMatchCondition
  | EventPropertyIsCondition
  | EventPropertyContainsCondition
  | ContainsDisplayNameCondition
  | RoomMemberCountCondition
  | SenderNotificationPermissionCondition
  | UnrecognisedPushCondition;

/** The `PushRule` object of the spec (`data/api/client-server/definitions/push_rule.yaml`). */
export interface PushRule {
  rule_id: string;
  /** True for server-default rules, whose `rule_id` starts with a dot. */
  default: boolean;
  enabled: boolean;
  actions: PushAction[];
  /** Only on `override` and `underride` rules. */
  conditions?: PushCondition[];
  /** Only on `content` rules: a glob matched against words of `content.body`. */
  pattern?: string;
}

/** The global ruleset (`push_ruleset.yaml`). Each list is in evaluation order, most important first. */
export type Ruleset = Record<PushRuleKind, PushRule[]>;

/** Server-default rule IDs start with a dot, and only they may (spec "Predefined Rules"). */
export function isServerDefaultRuleId(ruleId: string): boolean {
  return ruleId.startsWith(".");
}

/**
 * The one server-default rule evaluated before the user's own rules of its kind: `.m.rule.master` "has
 * always a higher priority than any other rule, even user defined ones". All other server-default rules
 * come after the user's rules of the same kind.
 */
export const MASTER_RULE_ID = ".m.rule.master";

const soundDefault: SetTweakAction = { set_tweak: "sound", value: "default" };
const highlight: SetTweakAction = { set_tweak: "highlight" };

function serverDefault(rule_id: string, conditions: PushCondition[], actions: PushAction[], enabled = true): PushRule {
  return { rule_id, default: true, enabled, conditions, actions };
}

const eventType = (pattern: string): EventMatchCondition => ({ kind: "event_match", key: "type", pattern });
const emptyStateKey: EventMatchCondition = { kind: "event_match", key: "state_key", pattern: "" };
const twoMembers: RoomMemberCountCondition = { kind: "room_member_count", is: "2" };

/**
 * The spec's predefined rules for `userId`, in the spec's order. Each call returns fresh objects, so a
 * caller may change them.
 */
export function defaultRuleset(userId: string): Ruleset {
  return {
    override: [
      serverDefault(MASTER_RULE_ID, [], [], false),
      serverDefault(
        ".m.rule.suppress_notices",
        [{ kind: "event_match", key: "content.msgtype", pattern: "m.notice" }],
        [],
      ),
      serverDefault(
        ".m.rule.invite_for_me",
        [
          eventType("m.room.member"),
          { kind: "event_match", key: "content.membership", pattern: "invite" },
          { kind: "event_match", key: "state_key", pattern: userId },
        ],
        ["notify", { ...soundDefault }],
      ),
      serverDefault(".m.rule.member_event", [eventType("m.room.member")], []),
      serverDefault(
        ".m.rule.is_user_mention",
        [{ kind: "event_property_contains", key: "content.m\\.mentions.user_ids", value: userId }],
        ["notify", { ...soundDefault }, { ...highlight }],
      ),
      serverDefault(
        ".m.rule.is_room_mention",
        [
          { kind: "event_property_is", key: "content.m\\.mentions.room", value: true },
          { kind: "sender_notification_permission", key: "room" },
        ],
        ["notify", { ...highlight }],
      ),
      serverDefault(
        ".m.rule.tombstone",
        [eventType("m.room.tombstone"), { ...emptyStateKey }],
        ["notify", { ...highlight }],
      ),
      serverDefault(".m.rule.reaction", [eventType("m.reaction")], []),
      serverDefault(".m.rule.room.server_acl", [eventType("m.room.server_acl"), { ...emptyStateKey }], []),
      serverDefault(
        ".m.rule.suppress_edits",
        [{ kind: "event_property_is", key: "content.m\\.relates_to.rel_type", value: "m.replace" }],
        [],
      ),
    ],
    content: [],
    room: [],
    sender: [],
    underride: [
      serverDefault(".m.rule.call", [eventType("m.call.invite")], ["notify", { set_tweak: "sound", value: "ring" }]),
      serverDefault(
        ".m.rule.encrypted_room_one_to_one",
        [{ ...twoMembers }, eventType("m.room.encrypted")],
        ["notify", { ...soundDefault }],
      ),
      serverDefault(
        ".m.rule.room_one_to_one",
        [{ ...twoMembers }, eventType("m.room.message")],
        ["notify", { ...soundDefault }],
      ),
      serverDefault(".m.rule.message", [eventType("m.room.message")], ["notify"]),
      serverDefault(".m.rule.encrypted", [eventType("m.room.encrypted")], ["notify"]),
    ],
  };
}
