// Push rules run when an event is persisted: which local members it notifies (and highlights).
// https://spec.matrix.org/latest/client-server-api/#push-rules
// https://spec.matrix.org/latest/client-server-api/#receiving-notifications
//
// The rooms persist path runs `writeExtension` for every batch of events, with the room's state,
// and stores the rows in the statement that stores the events: a sync that sees an event sees its
// notifications too. Rulesets are cached per user and dropped when the user's account
// data changes (in any process: the notifier relays account-data changes).
import { type SQL, sql } from "drizzle-orm";
import { userPowerLevel } from "../../federation/protocol/auth-rules.ts";
import { serverNameOf } from "../../federation/protocol/identifiers.ts";
import type { Ruleset } from "../pushrules/defaults.ts";
import { withServerDefaults } from "../pushrules/ruleset.ts";
import { type PushEvent, evaluatePushRules } from "../pushrules/evaluate.ts";
import type { EventsWriteExtension } from "../rooms/persister.ts";
import type { UserData } from "../userdata/userdata.ts";
import type { Notifier } from "./notifier.ts";
import type { Queryable } from "./streams.ts";

/** Users whose rules are kept in memory (those who never changed theirs share one entry). */
const MAX_CACHED_RULESETS = 200_000;

/**
 * A user's effective rules, whether they changed any (`custom`), and whether a rule looks at display
 * names. Users with the server's rules share one entry without `ruleset` (theirs differs from
 * another's only by their user ID: built when needed).
 */
interface UserRules {
  ruleset?: Ruleset;
  custom: boolean;
  displayName: boolean;
}

/**
 * A user ID no event can contain (not a valid user ID), for evaluating the server-default rules once.
 * In those rules a user ID is only compared whole with a string of the event (`state_key` of an
 * invite, an entry of `m.mentions.user_ids`): a user whose ID is no string of the event gets the
 * same outcome as this one (push-actions.test.ts checks the rules still read that way).
 */
export const NOBODY = "@\u0000:\u0000";
const DEFAULT_RULES = { ruleset: withServerDefaults(undefined, NOBODY), custom: false, displayName: false } satisfies UserRules;
/** The entry of every user with the server's rules. */
const SERVER_RULES: UserRules = { custom: false, displayName: usesDisplayName(DEFAULT_RULES.ruleset) };

/** The room as of the event, as far as push rules look at it. */
export interface PushRoomContext {
  /** Joined members, all servers: `room_member_count`. */
  joinedMemberCount: number;
  /** The local users joined to the room: who may be notified. */
  localJoinedMembers: readonly string[];
  powerLevels: Record<string, unknown> | null;
  /** A user's power level in the room (room version 12 creators: Infinity). */
  powerLevelOf(userId: string): number;
  /** A member's display name in the room, for `contains_display_name` (asked only when a rule needs it). */
  displayNameOf(userId: string): Promise<string | null>;
}

export interface PushActionFor {
  userId: string;
  threadId: string;
  highlight: boolean;
  /** The matching rule's actions (kept for the push gateway and `GET /notifications`). */
  actions: unknown[];
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

/** What an event did to unread counts: who it notified, and whose own thread it marked read (a local sender). */
export interface PushActionsOf {
  notified: PushActionFor[];
  /** The local sender, whose notifications in `threadId` up to the event are read. */
  reader?: { userId: string; threadId: string };
}

/** Actions remembered for events whose transaction has not reported back, at most. */
const MAX_PENDING = 10_000;

export class PushActions {
  private readonly rulesets = new Map<string, UserRules>();
  /** Per event ID: what it did, until the persist path reports the event committed (`take`). */
  private readonly pending = new Map<string, PushActionsOf>();
  /** Bumped when `pending` was emptied to bound it: what it held is lost (caches must start over). */
  forgotten = 0;
  /** Bumped by every invalidation: a load that overlapped one is used but not cached (it may be stale). */
  private generation = 0;

  constructor(
    private readonly userData: UserData,
    notifier: Notifier,
    private readonly serverName: string,
  ) {
    notifier.onChange("account_data", (change) => {
      this.generation++;
      for (const u of change.users ?? []) this.rulesets.delete(u);
      if (change.everyone) this.rulesets.clear();
    });
  }

  /**
   * The persist path's extension (EventsWriteExtension): push actions for the local members each
   * event notifies, and — the spec counts sending an event as reading up to it — the sender's
   * notifications in that thread up to the event marked read. Written with the events.
   */
  readonly writeExtension: EventsWriteExtension = async (tx, view, events, position) => {
    const joined = view.joinedMembers();
    const local = joined.filter((u) => serverNameOf(u) === this.serverName);
    if (local.length === 0 || events.length === 0) return [];
    const [create, powerLevels] = await Promise.all([view.stateEvent("m.room.create", ""), view.stateEvent("m.room.power_levels", "")]);
    const room: PushRoomContext = {
      joinedMemberCount: joined.length,
      localJoinedMembers: local,
      powerLevels: powerLevels?.content ?? null,
      powerLevelOf: (userId) => userPowerLevel(view.rules, userId, create, powerLevels),
      displayNameOf: async (userId) => {
        const name = (await view.stateEvent("m.room.member", userId))?.content.displayname;
        return typeof name === "string" ? name : null;
      },
    };
    const statements: SQL[] = [];
    const readUpTo = new Map<string, { userId: string; threadId: string; k: number }>();
    for (const [k, event] of events.entries()) {
      const pushEvent = event as unknown as PushEvent;
      const of: PushActionsOf = { notified: [] };
      if (serverNameOf(event.sender) === this.serverName) {
        const threadId = threadOf(event.content);
        readUpTo.set(`${event.sender}\u0000${threadId}`, { userId: event.sender, threadId, k });
        of.reader = { userId: event.sender, threadId };
      }
      const actions = await this.actionsFor(room, pushEvent, tx);
      of.notified = actions;
      if (this.pending.size >= MAX_PENDING) {
        this.pending.clear();
        this.forgotten++;
      }
      this.pending.set(event.event_id, of);
      if (actions.length === 0) continue;
      const rows = JSON.stringify(actions.map((a) => ({ u: a.userId, t: a.threadId, h: a.highlight, a: a.actions })));
      statements.push(sql`insert into event_push_actions (user_id, room_id, stream_ordering, event_id, thread_id, highlight, actions)
        select x.u, ${view.roomId}, ${position(k)}, ${event.event_id}, x.t, x.h, x.a
        from jsonb_to_recordset(${rows}::jsonb) as x(u text, t text, h boolean, a jsonb) on conflict do nothing`);
    }
    for (const { userId, threadId, k } of readUpTo.values()) {
      // (Not kept in `push_notifications` first as a receipt's read is: here that would race the push
      // sender's copy inside the persist statement. See UnreadCounts.markRead.)
      statements.push(sql`delete from event_push_actions where user_id = ${userId} and room_id = ${view.roomId}
        and thread_id = ${threadId} and stream_ordering < ${position(k)}`);
    }
    return statements;
  };

  /**
   * What a committed event did to unread counts (as its write extension computed it), once; undefined
   * when the extension did not run for it (a room with no local member).
   */
  take(eventId: string): PushActionsOf | undefined {
    const of = this.pending.get(eventId);
    this.pending.delete(eventId);
    return of;
  }

  /**
   * Who among the room's local members `event` notifies, and whether it highlights them.
   *
   * Users who never changed their push rules have the server-default rules, in which their user ID
   * appears only in conditions that compare it with the event (`invite_for_me`, `is_user_mention`).
   * For those the event does not name, the outcome is the same: it is computed once, for a user ID
   * the event cannot contain. (A big room's message is evaluated once instead of once per member.)
   */
  async actionsFor(room: PushRoomContext, event: PushEvent, q?: Queryable): Promise<PushActionFor[]> {
    // A local user invited is not joined yet, but is the one `.m.rule.invite_for_me` is for.
    const invitee =
      event.type === "m.room.member" && event.content.membership === "invite" && typeof event.state_key === "string" && serverNameOf(event.state_key) === this.serverName
        ? event.state_key
        : undefined;
    const members = invitee !== undefined && !room.localJoinedMembers.includes(invitee) ? [...room.localJoinedMembers, invitee] : room.localJoinedMembers;
    const candidates = members.filter((u) => u !== event.sender);
    if (candidates.length === 0) return [];
    const rulesets = await this.rulesetsOf(candidates, q);
    const senderPowerLevel = room.powerLevelOf(event.sender);
    const threadId = threadOf(event.content);
    const evaluate = async (userId: string, rules: UserRules) =>
      evaluatePushRules(rules.ruleset ?? withServerDefaults(undefined, userId), event, {
        userId,
        displayName: rules.displayName ? await room.displayNameOf(userId) : null,
        roomMemberCount: room.joinedMemberCount,
        senderPowerLevel,
        powerLevels: room.powerLevels,
      });
    const named = stringValues(event);
    let shared: Awaited<ReturnType<typeof evaluate>> | undefined;
    const out: PushActionFor[] = [];
    for (const userId of candidates) {
      const rules = rulesets.get(userId)!;
      let outcome;
      if (!rules.custom && !rules.displayName && !named.has(userId)) {
        shared ??= await evaluate(NOBODY, DEFAULT_RULES);
        outcome = shared;
      } else {
        outcome = await evaluate(userId, rules);
      }
      if (outcome.notify) out.push({ userId, threadId, highlight: outcome.highlight, actions: outcome.actions });
    }
    return out;
  }

  private async rulesetsOf(userIds: readonly string[], q?: Queryable): Promise<Map<string, UserRules>> {
    // What the cache holds is taken now: it may be cleared while the rest is read.
    const out = new Map<string, UserRules>();
    const missing: string[] = [];
    for (const u of userIds) {
      const known = this.rulesets.get(u);
      if (known) out.set(u, known);
      else missing.push(u);
    }
    if (missing.length === 0) return out;
    const generation = this.generation;
    const loaded = await this.userData.pushRulesOf(missing, q);
    // Kept only if no change of push rules came while they were read.
    const keep = generation === this.generation;
    if (keep && this.rulesets.size + missing.length > MAX_CACHED_RULESETS) this.rulesets.clear();
    for (const u of missing) {
      const r = loaded.get(u)!;
      const entry: UserRules = r.custom ? { ruleset: r.ruleset, custom: true, displayName: usesDisplayName(r.ruleset) } : SERVER_RULES;
      out.set(u, entry);
      if (keep) this.rulesets.set(u, entry);
    }
    return out;
  }
}

/** Every string value in an event (keys aside): the user IDs it could name. */
function stringValues(value: unknown, out = new Set<string>()): Set<string> {
  if (typeof value === "string") out.add(value);
  else if (Array.isArray(value)) for (const v of value) stringValues(v, out);
  else if (value !== null && typeof value === "object") for (const v of Object.values(value)) stringValues(v, out);
  return out;
}

export function usesDisplayName(ruleset: Ruleset): boolean {
  for (const rules of Object.values(ruleset)) {
    for (const rule of rules) {
      if (rule.enabled && rule.conditions?.some((c) => c.kind === "contains_display_name")) return true;
    }
  }
  return false;
}
