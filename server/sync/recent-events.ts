// The recent timeline events of busy rooms, in memory: a woken long-poll usually wants exactly the
// event that woke it, and this process has just persisted it (or read it for another request).
//
// A room's entry holds every timeline event of the room with a position in `(from, last]` — and, as
// far as the notifier has heard of every room event (`Notifier.coveredEvents`), there are no others
// after `last`. That holds because:
// - events this process persists are added before their change is published;
// - a change from another process (whose events we do not have) drops the room's entry;
// - a redaction drops the room's entry (it changes an earlier event);
// - an entry is seeded or extended from a complete database read only when no event of the room
//   newer than that read has been heard of.
// Old events are trimmed from the front (`from` moves up); rooms past the budget are forgotten.
import type { StoredEvent } from "../rooms/event-store.ts";
import { type EventFilter, passesFilter } from "./filter.ts";

/** Events kept per room, and in all. */
const PER_ROOM = 50;
const TOTAL = 20_000;

interface Entry {
  from: number;
  events: StoredEvent[];
}

export class RecentEvents {
  private readonly rooms = new Map<string, Entry>();
  private total = 0;

  /** Events this process has just persisted (not yet published), in stream order. */
  add(events: readonly StoredEvent[]): void {
    const byRoom = new Map<string, StoredEvent[]>();
    for (const e of events) {
      let list = byRoom.get(e.roomId);
      if (!list) byRoom.set(e.roomId, (list = []));
      list.push(e);
    }
    for (const [roomId, list] of byRoom) {
      if (list.some((e) => e.type === "m.room.redaction")) {
        this.drop(roomId);
        continue;
      }
      const timeline = list.filter(inTimeline);
      let entry = this.rooms.get(roomId);
      if (!entry) {
        // Nothing is known of the room before this batch's first event.
        entry = { from: list[0]!.streamOrdering! - 1, events: [] };
        this.rooms.set(roomId, entry);
      } else {
        this.touch(roomId, entry);
      }
      const last = entry.events.at(-1)?.streamOrdering ?? entry.from;
      for (const e of timeline) {
        if (e.streamOrdering! <= last) continue;
        entry.events.push(e);
        this.total++;
      }
      this.trim(entry);
    }
    this.budget();
  }

  /** Another process wrote events in these rooms: what is kept of them is incomplete now. */
  dropRooms(roomIds: readonly string[]): void {
    for (const r of roomIds) this.drop(r);
  }

  /**
   * A complete read of the room's timeline in `(from, to]` (no filter, not limited), made when no
   * event of the room after `to` had been heard of: it seeds the room's entry, or extends it back.
   */
  learn(roomId: string, from: number, to: number, events: readonly StoredEvent[]): void {
    const entry = this.rooms.get(roomId);
    if (!entry) {
      const kept = events.filter(inTimeline);
      this.rooms.set(roomId, { from, events: kept });
      this.total += kept.length;
    } else if (from < entry.from && to >= entry.from) {
      const older = events.filter((e) => inTimeline(e) && e.streamOrdering! <= entry.from);
      entry.events.unshift(...older);
      entry.from = from;
      this.total += older.length;
    } else {
      return;
    }
    this.trim(this.rooms.get(roomId)!);
    this.budget();
  }

  /**
   * The newest `limit` events of the room in `(from, to]` that pass `filter`, oldest first, and
   * whether there were more; undefined when the entry cannot answer (the caller reads the database).
   * The caller guarantees that every room event at or below `to` has been heard of.
   */
  get(
    roomId: string,
    from: number,
    to: number,
    limit: number,
    filter: EventFilter | undefined,
  ): { events: StoredEvent[]; limited: boolean; all: StoredEvent[] } | undefined {
    const entry = this.rooms.get(roomId);
    if (!entry || from < entry.from) return undefined;
    const all = entry.events.filter((e) => e.streamOrdering! > from && e.streamOrdering! <= to);
    const passing = filter ? all.filter((e) => passesFilter(filter, { type: e.type, sender: e.sender })) : all;
    return { events: passing.slice(Math.max(0, passing.length - limit)), limited: passing.length > limit, all };
  }

  clear(): void {
    this.rooms.clear();
    this.total = 0;
  }

  private drop(roomId: string): void {
    const entry = this.rooms.get(roomId);
    if (!entry) return;
    this.total -= entry.events.length;
    this.rooms.delete(roomId);
  }

  private touch(roomId: string, entry: Entry): void {
    this.rooms.delete(roomId);
    this.rooms.set(roomId, entry);
  }

  private trim(entry: Entry): void {
    const extra = entry.events.length - PER_ROOM;
    if (extra <= 0) return;
    const removed = entry.events.splice(0, extra);
    entry.from = removed.at(-1)!.streamOrdering!;
    this.total -= removed.length;
  }

  private budget(): void {
    while (this.total > TOTAL) {
      const oldest = this.rooms.keys().next().value as string;
      this.drop(oldest);
    }
  }
}

function inTimeline(e: StoredEvent): boolean {
  return e.streamOrdering !== null && !e.outlier && !e.rejected && !e.softFailed;
}
