// The server admin's moderation of rooms (Synapse's admin API, server/rooms/room-admin.ts): rooms
// blocked from joining, and the events users reported. Owned by server/rooms/.
import { bigint, bigserial, index, integer, pgTable, text } from "drizzle-orm/pg-core";

/**
 * Rooms an admin blocked (`DELETE /_synapse/admin/v2/rooms/{roomId}` with `block`): no local user
 * may join them and no other server may join them through us. Kept after the room is purged, so
 * the room cannot come back through a join.
 */
export const blockedRooms = pgTable("blocked_rooms", {
  roomId: text("room_id").primaryKey(),
  /** The admin who blocked it. */
  userId: text("user_id").notNull(),
  blockedTs: bigint("blocked_ts", { mode: "number" }).notNull(),
});

/**
 * `POST /rooms/{roomId}/report/{eventId}`: what a user reported, for the server admins
 * (`GET /_synapse/admin/v1/event_reports`). Kept when the event is purged: the report is the admin's
 * record of what was reported.
 */
export const eventReports = pgTable(
  "event_reports",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    receivedTs: bigint("received_ts", { mode: "number" }).notNull(),
    roomId: text("room_id").notNull(),
    eventId: text("event_id").notNull(),
    userId: text("user_id").notNull(),
    reason: text("reason"),
    /** -100 (most offensive) to 0; null when the reporter gave none. */
    score: integer("score"),
  },
  (t) => [index("event_reports_room_idx").on(t.roomId), index("event_reports_user_idx").on(t.userId)],
);
