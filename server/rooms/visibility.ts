// History visibility: which events of a room a user may see.
// https://spec.matrix.org/latest/client-server-api/#history-visibility
//
// "The rules governing whether a user is allowed to see an event depend on the state of the room at
// that event:
//  1. If the history_visibility was set to world_readable, allow.
//  2. If the user's membership was join, allow.
//  3. If history_visibility was set to shared, and the user joined the room at any point after the
//     event was sent, allow.
//  4. If the user's membership was invite, and the history_visibility was set to invited, allow.
//  5. Otherwise, deny.
// For m.room.history_visibility events themselves, the user should be allowed to see the event if the
// history_visibility before or after the event would allow them to see it. ... Likewise, for the
// user's own m.room.member events, the user should be allowed to see the event if their membership
// before or after the event would allow them to see it."
//
// "The state at the event" is the state before it (its state group), and for those two kinds of
// state events also the state after it.
import { sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import { stateMapKey } from "../../federation/protocol/room-state.ts";
import { type StoredEvent, sqlList } from "./event-store.ts";
import { chainCte, lookupStateKeys } from "./state-groups.ts";

export interface Viewer {
  userId: string;
  /**
   * "Joined the room at any point after the event": true for events with a stream position below
   * this (Infinity for a user joined now; the position of the leave that ended their last stay for
   * a former member; 0 for someone who never joined).
   */
  joinedUntil: number;
}

/**
 * Another server, for the events it may see (server-reads.ts). "The server sees an event if any of
 * its users could": its users' memberships at the event stand in for the one user's.
 */
export interface ServerViewer {
  serverName: string;
  /**
   * "One of its users joined the room at any point after the event": true for events with a stream
   * position below this (Infinity while one of its users is joined; the position of the membership
   * change that ended the last stay of any of them for a server no longer in the room; 0 when none
   * ever joined).
   */
  joinedUntil: number;
}

const HISTORY_VISIBILITY = "m.room.history_visibility";
const MEMBER = "m.room.member";
/** Cached `history_visibility` / `membership` values of state events (events never change). */
const VALUE_CACHE_LIMIT = 50_000;

export class HistoryVisibility {
  private readonly values = new Map<string, string>();

  constructor(private readonly db: Database) {}

  /** The events of `events` the viewer may see, in the same order. */
  async filter(viewer: Viewer, events: StoredEvent[]): Promise<StoredEvent[]> {
    if (events.length === 0) return events;
    const needsAfter = (e: StoredEvent) =>
      e.stateAfterGroup !== null && (e.type === HISTORY_VISIBILITY || (e.type === MEMBER && e.stateKey === viewer.userId));
    const groups = new Set<number>();
    for (const e of events) {
      if (e.stateBeforeGroup !== null) groups.add(e.stateBeforeGroup);
      if (needsAfter(e)) groups.add(e.stateAfterGroup!);
    }
    const hvKey = stateMapKey(HISTORY_VISIBILITY, "");
    const memberKey = stateMapKey(MEMBER, viewer.userId);
    const states = await lookupStateKeys(this.db, [...groups], [
      [HISTORY_VISIBILITY, ""],
      [MEMBER, viewer.userId],
    ]);
    const ids = new Set<string>();
    for (const state of states.values()) for (const id of state.values()) ids.add(id);
    await this.loadValues([...ids]);

    const at = (group: number | null) => {
      const state = group === null ? undefined : states.get(group);
      const hvId = state?.get(hvKey);
      const memberId = state?.get(memberKey);
      return {
        visibility: (hvId && this.values.get(hvId)) || "shared",
        membership: (memberId && this.values.get(memberId)) || "leave",
      };
    };
    return events.filter((e) => {
      const joinedAfter = (e.streamOrdering ?? 0) < viewer.joinedUntil;
      if (allowed(at(e.stateBeforeGroup), joinedAfter)) return true;
      return needsAfter(e) && allowed(at(e.stateAfterGroup), joinedAfter);
    });
  }

  /** The history visibility of a room at a state group ("shared" when unset). */
  async visibilityAt(group: number | null): Promise<string> {
    if (group === null) return "shared";
    const states = await lookupStateKeys(this.db, [group], [[HISTORY_VISIBILITY, ""]]);
    const id = states.get(group)?.get(stateMapKey(HISTORY_VISIBILITY, ""));
    if (!id) return "shared";
    await this.loadValues([id]);
    return this.values.get(id) ?? "shared";
  }

  /**
   * The IDs of the events (of one room) a server may see. As Synapse's `filter_events_for_server`
   * (synapse/visibility.py) with the client rules above applied to the server's users together:
   * world_readable, or one of its users joined at the event, or `shared` and one of them joined at
   * any point after it (for a server in the room now: always), or `invited` and one of them invited
   * at the event. A value of `history_visibility` that is not understood counts as `shared` ("Server
   * behaviour"). An event without state (an outlier) counts as `shared` with no members there.
   */
  async visibleToServer(viewer: ServerViewer, events: StoredEvent[]): Promise<Set<string>> {
    const visible = new Set<string>();
    if (events.length === 0) return visible;
    const onServer = (userId: string | undefined) => userId !== undefined && serverOfUser(userId) === viewer.serverName;
    const needsAfter = (e: StoredEvent) =>
      e.stateAfterGroup !== null && (e.type === HISTORY_VISIBILITY || (e.type === MEMBER && onServer(e.stateKey)));
    const groups = new Set<number>();
    for (const e of events) {
      if (e.stateBeforeGroup !== null) groups.add(e.stateBeforeGroup);
      if (needsAfter(e)) groups.add(e.stateAfterGroup!);
    }
    const hvKey = stateMapKey(HISTORY_VISIBILITY, "");
    const hvStates = await lookupStateKeys(this.db, [...groups], [[HISTORY_VISIBILITY, ""]]);
    await this.loadValues([...hvStates.values()].flatMap((s) => [...s.values()]));
    const visibilityAt = (group: number | null): string => {
      const id = group === null ? undefined : hvStates.get(group)?.get(hvKey);
      const value = id === undefined ? undefined : this.values.get(id);
      return value !== undefined && KNOWN_VISIBILITIES.has(value) ? value : "shared";
    };
    // The rules that need no membership first; the memberships of the server's users are read only
    // for the groups of the events still undecided (as Synapse: `joined` and `invited` rooms).
    const undecided: StoredEvent[] = [];
    const openAt = (group: number | null, joinedAfter: boolean) => {
      const v = visibilityAt(group);
      return v === "world_readable" || (v === "shared" && joinedAfter);
    };
    for (const e of events) {
      const joinedAfter = (e.streamOrdering ?? 0) < viewer.joinedUntil;
      if (openAt(e.stateBeforeGroup, joinedAfter) || (needsAfter(e) && openAt(e.stateAfterGroup, joinedAfter))) visible.add(e.eventId);
      else undecided.push(e);
    }
    if (undecided.length === 0) return visible;
    const memberGroups = new Set<number>();
    for (const e of undecided) {
      if (e.stateBeforeGroup !== null) memberGroups.add(e.stateBeforeGroup);
      if (needsAfter(e)) memberGroups.add(e.stateAfterGroup!);
    }
    const members = await this.serverMemberships(viewer.serverName, [...memberGroups]);
    const allowedAt = (group: number | null) => {
      if (group === null) return false;
      const v = visibilityAt(group);
      const m = members.get(group);
      return m?.has("join") === true || (v === "invited" && m?.has("invite") === true);
    };
    for (const e of undecided) {
      if (allowedAt(e.stateBeforeGroup) || (needsAfter(e) && allowedAt(e.stateAfterGroup))) visible.add(e.eventId);
    }
    return visible;
  }

  /** The memberships the users of one server hold in each of some state groups. */
  private async serverMemberships(serverName: string, groupIds: number[]): Promise<Map<number, Set<string>>> {
    const result = new Map<number, Set<string>>();
    if (groupIds.length === 0) return result;
    // The server of a user ID is everything after its first colon (the localpart holds none).
    const rows = rowsOf<{ start: string | number; event_id: string | null }>(
      await this.db.execute(sql`${chainCte(groupIds)}
        select distinct on (c.start, e.state_key) c.start, e.event_id
        from chain c join state_group_entries e on e.group_id = c.id
        where e.type = ${MEMBER} and substr(e.state_key, strpos(e.state_key, ':') + 1) = ${serverName}
        order by c.start, e.state_key, c.n`),
    );
    await this.loadValues(rows.flatMap((r) => (r.event_id === null ? [] : [r.event_id])));
    for (const r of rows) {
      if (r.event_id === null) continue;
      const membership = this.values.get(r.event_id);
      if (membership === undefined) continue;
      const group = Number(r.start);
      let set = result.get(group);
      if (!set) result.set(group, (set = new Set()));
      set.add(membership);
    }
    return result;
  }

  private async loadValues(eventIds: string[]): Promise<void> {
    const missing = eventIds.filter((id) => !this.values.has(id));
    if (missing.length === 0) return;
    const rows = rowsOf<{ event_id: string; type: string; json: string }>(
      await this.db.execute(sql`select event_id, type, json from events where event_id in (${sqlList(missing)})`),
    );
    if (this.values.size + rows.length > VALUE_CACHE_LIMIT) this.values.clear();
    for (const r of rows) {
      const content = (JSON.parse(r.json) as { content?: Record<string, unknown> }).content ?? {};
      const value = r.type === HISTORY_VISIBILITY ? content.history_visibility : content.membership;
      this.values.set(r.event_id, typeof value === "string" ? value : "");
    }
  }
}

const KNOWN_VISIBILITIES = new Set(["world_readable", "shared", "invited", "joined"]);

function serverOfUser(userId: string): string {
  return userId.slice(userId.indexOf(":") + 1);
}

function allowed(state: { visibility: string; membership: string }, joinedAfter: boolean): boolean {
  if (state.visibility === "world_readable") return true;
  if (state.membership === "join") return true;
  if (state.visibility === "shared" && joinedAfter) return true;
  if (state.membership === "invite" && state.visibility === "invited") return true;
  return false;
}
