// Push rules run when an event is persisted: which local members it notifies (and highlights).
// https://spec.matrix.org/latest/client-server-api/#push-rules
// https://spec.matrix.org/latest/client-server-api/#receiving-notifications
//
// The rooms persist path calls `actionsFor` inside its transaction, with the room's state as of the
// event, and stores the rows with the event (`UnreadCounts.recordPushActions`): a sync that sees the
// event sees its notification too. Rulesets are cached per user and dropped when the user's account
// data changes (in any process: the notifier relays account-data changes).
import type { Ruleset } from "../pushrules/defaults.ts";
import { type PushEvent, evaluatePushRules } from "../pushrules/evaluate.ts";
import type { UserData } from "../userdata/userdata.ts";
import type { Notifier } from "./notifier.ts";

const MAX_CACHED_RULESETS = 20_000;

/** The room as of the event, as far as push rules look at it. */
export interface PushRoomContext {
  /** Joined members, all servers: `room_member_count`. */
  joinedMemberCount: number;
  /** The local users joined to the room: who may be notified. */
  localJoinedMembers: readonly string[];
  powerLevels: Record<string, unknown> | null;
  /** Room version 12 creators, whose power is infinite. */
  creators: ReadonlySet<string>;
  /** A member's display name in the room, for `contains_display_name` (asked only when a rule needs it). */
  displayNameOf(userId: string): Promise<string | null>;
}

export interface PushActionFor {
  userId: string;
  threadId: string;
  highlight: boolean;
}

/** `main`, or the root of the thread the event is in (`m.relates_to` with `rel_type` `m.thread`). */
export function threadOf(content: Record<string, unknown>): string {
  const relatesTo = content["m.relates_to"];
  if (typeof relatesTo === "object" && relatesTo !== null) {
    const r = relatesTo as Record<string, unknown>;
    if (r.rel_type === "m.thread" && typeof r.event_id === "string") return r.event_id;
  }
  return "main";
}

export function powerLevelOf(userId: string, powerLevels: Record<string, unknown> | null, creators: ReadonlySet<string>): number {
  if (creators.has(userId)) return Number.POSITIVE_INFINITY;
  const users = powerLevels?.users;
  const own = typeof users === "object" && users !== null ? (users as Record<string, unknown>)[userId] : undefined;
  const level = own ?? powerLevels?.users_default ?? 0;
  return typeof level === "number" ? level : Number.parseInt(String(level), 10) || 0;
}

export class PushActions {
  private readonly rulesets = new Map<string, Ruleset>();
  /** Bumped by every invalidation: a load that overlapped one is used but not cached (it may be stale). */
  private generation = 0;

  constructor(
    private readonly userData: UserData,
    notifier: Notifier,
  ) {
    notifier.onChange("account_data", (change) => {
      this.generation++;
      for (const u of change.users ?? []) this.rulesets.delete(u);
      if (change.everyone) this.rulesets.clear();
    });
  }

  /** Who among the room's local members `event` notifies, and whether it highlights them. */
  async actionsFor(room: PushRoomContext, event: PushEvent): Promise<PushActionFor[]> {
    const candidates = room.localJoinedMembers.filter((u) => u !== event.sender);
    if (candidates.length === 0) return [];
    const rulesets = await this.rulesetsOf(candidates);
    const senderPowerLevel = powerLevelOf(event.sender, room.powerLevels, room.creators);
    const threadId = threadOf(event.content);
    const out: PushActionFor[] = [];
    for (const userId of candidates) {
      const ruleset = rulesets.get(userId)!;
      const displayName = usesDisplayName(ruleset) ? await room.displayNameOf(userId) : null;
      const outcome = evaluatePushRules(ruleset, event, {
        userId,
        displayName,
        roomMemberCount: room.joinedMemberCount,
        senderPowerLevel,
        powerLevels: room.powerLevels,
      });
      if (outcome.notify) out.push({ userId, threadId, highlight: outcome.highlight });
    }
    return out;
  }

  private async rulesetsOf(userIds: readonly string[]): Promise<Map<string, Ruleset>> {
    const missing = userIds.filter((u) => !this.rulesets.has(u));
    if (missing.length) {
      const generation = this.generation;
      const loaded = await this.userData.pushRulesOf(missing);
      if (generation === this.generation) {
        if (this.rulesets.size + loaded.size > MAX_CACHED_RULESETS) this.rulesets.clear();
        for (const [u, r] of loaded) this.rulesets.set(u, r);
      }
      const out = new Map<string, Ruleset>();
      for (const u of userIds) out.set(u, this.rulesets.get(u) ?? loaded.get(u)!);
      return out;
    }
    return new Map(userIds.map((u) => [u, this.rulesets.get(u)!]));
  }
}

function usesDisplayName(ruleset: Ruleset): boolean {
  for (const rules of Object.values(ruleset)) {
    for (const rule of rules) {
      if (rule.enabled && rule.conditions?.some((c) => c.kind === "contains_display_name")) return true;
    }
  }
  return false;
}
