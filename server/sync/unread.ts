// Unread notification counts (`unread_notifications`, `unread_thread_notifications` of /sync).
// https://spec.matrix.org/latest/client-server-api/#receiving-notifications
//
// Push rules are evaluated once, when an event is persisted (push-actions.ts, in the statement that
// stores the event): every local member the event notifies gets a row in `event_push_actions`. A read receipt — or the user sending an event, which the spec counts as
// reading up to it — deletes the user's rows up to that event. So the counts a sync sends are a
// `count(*)` over the rows left, one grouped query for all the rooms of a response.
import { and, eq, inArray, lte, sql } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
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
   */
  async markRead(q: Queryable, userId: string, roomId: string, threadId: string | null, streamOrdering: number): Promise<void> {
    const t = schema.eventPushActions;
    await q
      .delete(t)
      .where(
        and(
          eq(t.userId, userId),
          eq(t.roomId, roomId),
          lte(t.streamOrdering, streamOrdering),
          ...(threadId === null ? [] : [eq(t.threadId, threadId)]),
        ),
      );
  }

  /**
   * The counts of each user in each of their rooms with unread notifications, in one query for all
   * of them (the long-polls a message wakes all ask at once).
   */
  async countsOf(userIds: readonly string[]): Promise<Map<string, Map<string, RoomUnreadCounts>>> {
    const out = new Map<string, Map<string, RoomUnreadCounts>>(userIds.map((u) => [u, new Map()]));
    if (userIds.length === 0) return out;
    const t = schema.eventPushActions;
    const rows = await this.db
      .select({
        userId: t.userId,
        roomId: t.roomId,
        threadId: t.threadId,
        notifications: sql<string>`count(*)`,
        highlights: sql<string>`count(*) filter (where ${t.highlight})`,
      })
      .from(t)
      .where(inArray(t.userId, [...userIds]))
      .groupBy(t.userId, t.roomId, t.threadId);
    for (const r of rows) {
      const rooms = out.get(r.userId)!;
      let room = rooms.get(r.roomId);
      if (!room) rooms.set(r.roomId, (room = { all: { notification_count: 0, highlight_count: 0 }, threads: new Map() }));
      const counts = { notification_count: Number(r.notifications), highlight_count: Number(r.highlights) };
      room.all.notification_count += counts.notification_count;
      room.all.highlight_count += counts.highlight_count;
      room.threads.set(r.threadId, counts);
    }
    return out;
  }
}
