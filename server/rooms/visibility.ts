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
import { lookupStateKeys } from "./state-groups.ts";

export interface Viewer {
  userId: string;
  /**
   * "Joined the room at any point after the event": true for events with a stream position below
   * this (Infinity for a user joined now; the position of the leave that ended their last stay for
   * a former member; 0 for someone who never joined).
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

function allowed(state: { visibility: string; membership: string }, joinedAfter: boolean): boolean {
  if (state.visibility === "world_readable") return true;
  if (state.membership === "join") return true;
  if (state.visibility === "shared" && joinedAfter) return true;
  if (state.membership === "invite" && state.visibility === "invited") return true;
  return false;
}
