// Editing a user's push rules: the pure half of the `/pushrules/` endpoints.
// https://spec.matrix.org/v1.19/client-server-api/#push-rules-api (data/api/client-server/pushrules.yaml)
//
// Every function takes a ruleset and returns a new one, or throws a PushRuleError that carries the status
// and errcode the endpoint answers with. The ruleset is the user's *effective* ruleset: server-default
// rules included, each list in evaluation order. It is also what the service stores (and what the
// `m.push_rules` account data holds under `global`). withServerDefaults() turns whatever was stored into
// that shape again, picking up the server-default rules of the spec this code follows.
//
// Order within a kind (Synapse's `PushRules::iter`, and the spec's "Predefined Rules": server-default
// rules "operate at a lower priority than user-defined rules, except for the .m.rule.master rule which
// has always a higher priority than any other rule"):
//   override:  .m.rule.master, the user's override rules, the other server-default override rules
//   content:   the user's content rules, then server-default content rules (none since v1.17)
//   room, sender: the user's rules (there are no server-default ones)
//   underride: the user's underride rules, then the server-default underride rules
// `before`/`after` and "most important" in PUT therefore move a rule among the user's rules of its kind
// only; the server-default rules keep their place around them.
import { z } from "zod";
import { MatrixError } from "../http/errors.ts";
import {
  defaultRuleset,
  isServerDefaultRuleId,
  MASTER_RULE_ID,
  PUSH_RULE_KINDS,
  type PushCondition,
  type PushRule,
  type PushRuleKind,
  type Ruleset,
} from "./defaults.ts";

export type PushRuleErrorCode = "M_NOT_FOUND" | "M_INVALID_PARAM" | "M_BAD_JSON" | "M_UNKNOWN";

/**
 * A refused push rule operation. It is a MatrixError, so the HTTP layer answers with its status and
 * errcode as it does for any service error; the narrower types document what these endpoints can answer.
 */
export class PushRuleError extends MatrixError {
  override name = "PushRuleError";
  constructor(
    override readonly status: 400 | 404,
    override readonly errcode: PushRuleErrorCode,
    message: string,
  ) {
    super(status, errcode, message);
  }
}

const notFound = () => new PushRuleError(404, "M_NOT_FOUND", "The push rule was not found.");

// ---- Request bodies --------------------------------------------------------------------------------

/** Canonical JSON scalars: strings, integers in ±(2^53 - 1) (z.int() is that range), booleans, null. */
const scalarJsonValue = z.union([z.string(), z.int(), z.boolean(), z.null()]);

const setTweakAction = z.object({ set_tweak: z.string(), value: z.json().optional() }).catchall(z.json());

/**
 * `dont_notify` and `coalesce` are still accepted from old clients and kept as given, so a client
 * reads back what it wrote; evaluation ignores them ("Clients and homeservers MUST ignore these
 * actions": a rule with `["dont_notify"]` acts as one with no actions; spec "Historical Actions").
 * Other strings are refused, as Synapse does, so a typo does not silently store a no-op.
 */
const pushActions = z.array(z.union([z.enum(["notify", "dont_notify", "coalesce"]), setTweakAction]));

const knownCondition = z.discriminatedUnion("kind", [
  z.object({ kind: z.literal("event_match"), key: z.string(), pattern: z.string() }),
  z.object({ kind: z.literal("event_property_is"), key: z.string(), value: scalarJsonValue }),
  z.object({ kind: z.literal("event_property_contains"), key: z.string(), value: scalarJsonValue }),
  z.object({ kind: z.literal("contains_display_name") }),
  z.object({ kind: z.literal("room_member_count"), is: z.string().regex(/^(==|<|>|<=|>=)?[0-9]+$/) }),
  z.object({ kind: z.literal("sender_notification_permission"), key: z.string() }),
]);
const KNOWN_CONDITION_KINDS: ReadonlySet<string> = new Set(knownCondition.options.map((o) => o.shape.kind.value));

/**
 * Conditions of a known kind must carry their parameters. Conditions of an unknown kind are kept as given:
 * the spec only says they "MUST NOT match any events", and a newer client may know them.
 */
const pushCondition: z.ZodType<PushCondition> = z.union([
  knownCondition,
  z.object({ kind: z.string().refine((kind) => !KNOWN_CONDITION_KINDS.has(kind)) }).catchall(z.json()),
]);

/** Body of `PUT /pushrules/global/{kind}/{ruleId}`. Which fields apply depends on the kind. */
export const putPushRuleBody = z.object({
  actions: pushActions,
  conditions: z.array(pushCondition).optional(),
  pattern: z.string().optional(),
});

/** Body of `PUT /pushrules/global/{kind}/{ruleId}/enabled`. */
export const putPushRuleEnabledBody = z.object({ enabled: z.boolean() });

/** Body of `PUT /pushrules/global/{kind}/{ruleId}/actions`. */
export const putPushRuleActionsBody = z.object({ actions: pushActions });

function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  const result = schema.safeParse(body);
  if (!result.success) throw new PushRuleError(400, "M_BAD_JSON", z.prettifyError(result.error));
  return result.data;
}

// ---- Path parameters -------------------------------------------------------------------------------

export function parsePushRuleKind(kind: string): PushRuleKind {
  const found = PUSH_RULE_KINDS.find((k) => k === kind);
  if (found === undefined) throw new PushRuleError(400, "M_INVALID_PARAM", `Unknown push rule kind: ${kind}`);
  return found;
}

/** The checks on the `ruleId` of a rule the user creates (pushrules.yaml, PUT `ruleId`). */
function checkNewRuleId(kind: PushRuleKind, ruleId: string): void {
  if (ruleId === "") throw new PushRuleError(400, "M_INVALID_PARAM", "The rule ID is empty");
  if (isServerDefaultRuleId(ruleId)) {
    throw new PushRuleError(400, "M_INVALID_PARAM", "Rule IDs starting with '.' are reserved for server-default rules");
  }
  if (ruleId.includes("/") || ruleId.includes("\\")) {
    throw new PushRuleError(400, "M_INVALID_PARAM", "Rule IDs may not contain slashes or backslashes");
  }
  // "The rule_id of a room rule is always the ID of the room that it affects", and of a sender rule
  // the user ID: evaluation compares them with the event's room_id and sender. Any other string is
  // stored as given and matches nothing (clients have used room aliases; Synapse takes them too).
}

// ---- Order ------------------------------------------------------------------------------------------

/** Lays out one kind's rules in evaluation order (see the comment at the top of this file). */
function arrange(kind: PushRuleKind, userRules: PushRule[], serverDefaultRules: PushRule[]): PushRule[] {
  const first = kind === "override" ? serverDefaultRules.filter((r) => r.rule_id === MASTER_RULE_ID) : [];
  const last = serverDefaultRules.filter((r) => !first.includes(r));
  return [...first, ...userRules, ...last];
}

function split(rules: PushRule[]): { userRules: PushRule[]; serverDefaultRules: PushRule[] } {
  return {
    userRules: rules.filter((r) => !isServerDefaultRuleId(r.rule_id)),
    serverDefaultRules: rules.filter((r) => isServerDefaultRuleId(r.rule_id)),
  };
}

function findRule(ruleset: Ruleset, kind: PushRuleKind, ruleId: string): PushRule {
  const rule = ruleset[kind].find((r) => r.rule_id === ruleId);
  if (rule === undefined) throw notFound();
  return rule;
}

function replaceRule(ruleset: Ruleset, kind: PushRuleKind, updated: PushRule): Ruleset {
  return { ...ruleset, [kind]: ruleset[kind].map((r) => (r.rule_id === updated.rule_id ? updated : r)) };
}

// ---- Operations -------------------------------------------------------------------------------------

/** `GET /pushrules/global/{kind}/`: the rules of one kind, in evaluation order. */
export function getRulesOfKind(ruleset: Ruleset, kind: string): PushRule[] {
  return ruleset[parsePushRuleKind(kind)];
}

/** `GET /pushrules/global/{kind}/{ruleId}` (and its `/enabled` and `/actions`). */
export function getRule(ruleset: Ruleset, kind: string, ruleId: string): PushRule {
  return findRule(ruleset, parsePushRuleKind(kind), ruleId);
}

export interface RulePosition {
  /** Make the rule the next more important one than this user-defined rule. Wins over `after`. */
  before?: string;
  /** Make the rule the next less important one than this user-defined rule. */
  after?: string;
}

/**
 * `PUT /pushrules/global/{kind}/{ruleId}`: creates a user-defined rule, or replaces the parameters of the
 * one with that ID.
 *
 * - A new rule is enabled, and without `before`/`after` it becomes the most important user-defined rule
 *   of its kind. An updated rule keeps its `enabled` state and, without `before`/`after`, its place.
 * - With both `before` and `after`, `before` decides ("the new or updated rule must be the next most
 *   important rule with respect to the rule identified by `before`").
 * - `before`/`after` must name another user-defined rule of the same kind: "It is not possible to add a
 *   rule relative to a predefined server rule." A missing one is 400 M_UNKNOWN, as in the spec's example.
 */
export function putRule(
  ruleset: Ruleset,
  kind: string,
  ruleId: string,
  body: unknown,
  position: RulePosition = {},
): Ruleset {
  const ruleKind = parsePushRuleKind(kind);
  checkNewRuleId(ruleKind, ruleId);
  const { actions, conditions, pattern } = parseBody(putPushRuleBody, body);

  const { userRules, serverDefaultRules } = split(ruleset[ruleKind]);
  const existingIndex = userRules.findIndex((r) => r.rule_id === ruleId);
  const rule: PushRule = {
    rule_id: ruleId,
    default: false,
    enabled: userRules[existingIndex]?.enabled ?? true,
    actions,
  };
  if (ruleKind === "override" || ruleKind === "underride") {
    // The spec makes conditions optional ("a rule with no conditions always matches").
    rule.conditions = conditions ?? [];
  } else if (ruleKind === "content") {
    if (pattern === undefined) throw new PushRuleError(400, "M_BAD_JSON", "A content rule needs a 'pattern'");
    rule.pattern = pattern;
  }

  const others = userRules.filter((r) => r.rule_id !== ruleId);
  // An empty query parameter (`?before=`) counts as absent.
  const before = position.before || undefined;
  const after = position.after || undefined;
  const anchor = before ?? after;
  let index: number;
  if (anchor !== undefined) {
    if (isServerDefaultRuleId(anchor)) {
      throw new PushRuleError(400, "M_INVALID_PARAM", "A rule cannot be placed relative to a server-default rule");
    }
    const anchorIndex = others.findIndex((r) => r.rule_id === anchor);
    if (anchorIndex === -1) throw new PushRuleError(400, "M_UNKNOWN", `before/after rule not found: ${anchor}`);
    index = before !== undefined ? anchorIndex : anchorIndex + 1;
  } else {
    index = existingIndex === -1 ? 0 : existingIndex;
  }
  others.splice(index, 0, rule);

  return { ...ruleset, [ruleKind]: arrange(ruleKind, others, serverDefaultRules) };
}

/** `DELETE /pushrules/global/{kind}/{ruleId}`. Server-default rules can be disabled, not deleted. */
export function deleteRule(ruleset: Ruleset, kind: string, ruleId: string): Ruleset {
  const ruleKind = parsePushRuleKind(kind);
  const rule = findRule(ruleset, ruleKind, ruleId);
  if (isServerDefaultRuleId(rule.rule_id)) {
    throw new PushRuleError(400, "M_INVALID_PARAM", "Server-default rules cannot be deleted; disable them instead");
  }
  return { ...ruleset, [ruleKind]: ruleset[ruleKind].filter((r) => r !== rule) };
}

/** `PUT /pushrules/global/{kind}/{ruleId}/enabled` with `{"enabled": boolean}`. Works on server-default rules. */
export function setEnabled(ruleset: Ruleset, kind: string, ruleId: string, body: unknown): Ruleset {
  const ruleKind = parsePushRuleKind(kind);
  const rule = findRule(ruleset, ruleKind, ruleId);
  const { enabled } = parseBody(putPushRuleEnabledBody, body);
  return replaceRule(ruleset, ruleKind, { ...rule, enabled });
}

/**
 * `PUT /pushrules/global/{kind}/{ruleId}/actions` with `{"actions": [...]}`. "This can be used to change
 * the actions of builtin rules."
 */
export function setActions(ruleset: Ruleset, kind: string, ruleId: string, body: unknown): Ruleset {
  const ruleKind = parsePushRuleKind(kind);
  const rule = findRule(ruleset, ruleKind, ruleId);
  const { actions } = parseBody(putPushRuleActionsBody, body);
  return replaceRule(ruleset, ruleKind, { ...rule, actions });
}

// ---- Stored rules and server defaults ---------------------------------------------------------------

const storedRule = z.object({
  rule_id: z.string(),
  enabled: z.boolean(),
  actions: pushActions,
  conditions: z.array(pushCondition).optional(),
  pattern: z.string().optional(),
});

/** The stored rules of one kind that still parse. Anything else was never written by this module. */
function storedRules(stored: unknown, kind: PushRuleKind): z.infer<typeof storedRule>[] {
  if (typeof stored !== "object" || stored === null) return [];
  const list: unknown = (stored as Record<string, unknown>)[kind];
  if (!Array.isArray(list)) return [];
  return list.flatMap((item) => {
    const parsed = storedRule.safeParse(item);
    return parsed.success ? [parsed.data] : [];
  });
}

/**
 * The user's effective ruleset: their stored rules laid out around the server-default rules of the
 * current spec. `stored` is a ruleset as these functions returned it earlier, or nothing for a user who
 * never changed a rule.
 *
 * - A stored server-default rule gives its `enabled` and `actions` to the current rule of that ID.
 * - A stored server-default rule the spec no longer has (`.m.rule.contains_user_name`, removed in v1.17)
 *   is dropped. A server-default rule the stored set lacks is added with its defaults. This follows
 *   ruma's `Ruleset::update_with_server_default`.
 * - User-defined rules keep their relative order.
 */
export function withServerDefaults(stored: unknown, userId: string): Ruleset {
  const defaults = defaultRuleset(userId);
  const result = {} as Ruleset;
  for (const kind of PUSH_RULE_KINDS) {
    const rules = storedRules(stored, kind);
    const seen = new Set<string>();
    const userRules: PushRule[] = [];
    for (const { rule_id, enabled, actions, conditions, pattern } of rules) {
      if (isServerDefaultRuleId(rule_id) || seen.has(rule_id)) continue;
      seen.add(rule_id);
      const rule: PushRule = { rule_id, default: false, enabled, actions };
      if (kind === "override" || kind === "underride") rule.conditions = conditions ?? [];
      if (kind === "content") {
        if (pattern === undefined) continue;
        rule.pattern = pattern;
      }
      userRules.push(rule);
    }
    const serverDefaultRules = defaults[kind].map((rule) => {
      const saved = rules.find((r) => r.rule_id === rule.rule_id);
      return saved === undefined ? rule : { ...rule, enabled: saved.enabled, actions: saved.actions };
    });
    result[kind] = arrange(kind, userRules, serverDefaultRules);
  }
  return result;
}

/**
 * `GET /pushrules/`: `{"global": ruleset}`. The same object is the content of the `m.push_rules` account
 * data event (spec "Push Rules: Events").
 */
export function getPushRules(stored: unknown, userId: string): { global: Ruleset } {
  return { global: withServerDefaults(stored, userId) };
}
