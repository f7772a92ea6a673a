// Unread notification counts (`unread_notifications`, `unread_thread_notifications` of /sync).
// https://spec.matrix.org/latest/client-server-api/#receiving-notifications
//
// Push rules are evaluated once, when an event is persisted (push-actions.ts, in the statement that
// stores the event): every local member the event notifies gets a row in `event_push_actions`. A read receipt — or the user sending an event, which the spec counts as
// reading up to it — deletes the user's rows up to that event. So the counts a sync sends are a
// `count(*)` over the rows left, one grouped query for all the rooms of a response.
import { sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import type { Queryable } from "./streams.ts";

export interface NotificationCounts {
  notification_count: number;
  highlight_count: number;
}

export interface RoomUnreadCounts {
  /** Every thread together: what a client that does not ask for thread counts gets. */
  all: NotificationCounts;
  /** Per thread, `main` included; only threads with notifications. */
  threads: Map<string, NotificationCounts>;
}

export class UnreadCounts {
  constructor(private readonly db: Database) {}

  /**
   * Marks the user's notifications in the room as read up to and including `streamOrdering`: in one
   * thread (`main` or a thread root), or in every thread when `threadId` is null (an unthreaded receipt).
   *
   * The rows go from `event_push_actions`, but those the push sender has not copied yet into
   * `push_notifications` (the history `GET /notifications` lists, server/push) are kept there first:
   * it copies a little after each commit, after the woken /syncs, and a client that sends a receipt
   * as soon as a message shows would otherwise lose it from the history. Under a share lock on the
   * sender's cursor row, so a copy in progress finishes first (no two transactions insert the same
   * rows at once); either copy skips a notification already there. It shows as read (its row is gone).
   */
  async markRead(q: Queryable, userId: string, roomId: string, threadId: string | null, streamOrdering: number): Promise<void> {
    const where = sql`user_id = ${userId} and room_id = ${roomId} and stream_ordering <= ${streamOrdering}${threadId === null ? sql`` : sql` and thread_id = ${threadId}`}`;
    const [cursor] = rowsOf<{ stream_ordering: string | number }>(await q.execute(sql`select stream_ordering from push_progress where id = 1 for share`));
    await q.execute(sql`insert into push_notifications (user_id, stream_ordering, room_id, event_id, highlight, actions, ts)
      select user_id, stream_ordering, room_id, event_id, highlight, coalesce(actions, '["notify"]'::jsonb), ${Date.now()}
      from event_push_actions where ${where} and stream_ordering > ${Number(cursor?.stream_ordering ?? 0)}
      order by stream_ordering
      on conflict do nothing`);
    await q.execute(sql`delete from event_push_actions where ${where}`);
  }

  /**
   * The counts of each user in each of their rooms with unread notifications, in one query for all
   * of them (the long-polls a change wakes all ask at once), and `asOf`: the room-event position the
   * read saw everything up to and nothing beyond (one statement, one snapshot).
   */
  async countsOf(userIds: readonly string[]): Promise<Map<string, UserUnreadCounts>> {
    const out = new Map<string, UserUnreadCounts>();
    if (userIds.length === 0) return out;
    const rows = rowsOf<{ as_of: string | number; user_id: string | null; room_id: string; thread_id: string; n: string | number; h: string | number }>(
      await this.db.execute(sql`select p.as_of, c.user_id, c.room_id, c.thread_id, c.n, c.h
        from (select coalesce(max(position), 0) as as_of from stream_positions where stream = 'events') p
        left join (select user_id, room_id, thread_id, count(*) as n, count(*) filter (where highlight) as h
          from event_push_actions where user_id in (${sql.join(userIds.map((u) => sql`${u}`), sql`, `)})
          group by user_id, room_id, thread_id) c on true`),
    );
    const asOf = Number(rows[0]?.as_of ?? 0);
    for (const u of userIds) out.set(u, { asOf, rooms: new Map() });
    for (const r of rows) {
      if (r.user_id === null) continue;
      addCounts(out.get(r.user_id)!.rooms, r.room_id, r.thread_id, Number(r.n), Number(r.h));
    }
    return out;
  }
}

/** A user's unread counts per room, read at room-event position `asOf`. */
export interface UserUnreadCounts {
  asOf: number;
  rooms: Map<string, RoomUnreadCounts>;
}

/** Adds notifications (and highlights) in one thread of a room. */
export function addCounts(rooms: Map<string, RoomUnreadCounts>, roomId: string, threadId: string, notifications: number, highlights: number): void {
  let room = rooms.get(roomId);
  if (!room) rooms.set(roomId, (room = { all: { notification_count: 0, highlight_count: 0 }, threads: new Map() }));
  room.all.notification_count += notifications;
  room.all.highlight_count += highlights;
  const thread = room.threads.get(threadId) ?? { notification_count: 0, highlight_count: 0 };
  thread.notification_count += notifications;
  thread.highlight_count += highlights;
  room.threads.set(threadId, thread);
}
